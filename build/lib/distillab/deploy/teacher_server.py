"""``distillab serve-teacher SPEC``: a teacher behind HTTP that answers only its top-k
probabilities per input, at a fixed temperature, to callers with the API key. Its weights and
full logits never leave the process (the teacher stays protected).

    GET  /healthz    no key
    GET  /v1/info    k, temperature, classes, input shape, a fingerprint of (weights, k, T)
    POST /v1/topk    body: a float32 .npy array (B, *in_shape) of inputs as the teacher takes them
                     (normalised); answer: {"indices": [[...]], "probabilities": [[...]]}, k per row
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) at run time.
import asyncio
import hashlib
import hmac
import io

import logging

import numpy as np
import torch

from distillab.models.remote import INFO_PATH, NPY, TOPK_PATH
from distillab.service.guards import AuthLimiter

log = logging.getLogger("distillab")


def create_teacher_app(model: torch.nn.Module, *, k: int, temperature: float, api_key: str, in_shape, num_classes: int,
                       checksum: str, max_batch: int = 4096, max_body_bytes: int = 256 << 20,
                       auth_failures_per_minute: int = 20):
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    if not 1 <= k <= num_classes:
        raise ValueError(f"--k {k}: must be between 1 and the {num_classes} classes")
    if temperature <= 0:
        raise ValueError(f"--temperature {temperature}: must be > 0")
    if not api_key:
        raise ValueError("the API key is empty")
    model = model.eval()
    in_shape = tuple(in_shape)
    fingerprint = hashlib.sha256(f"{checksum}:{k}:{temperature}".encode()).hexdigest()[:24]
    app = FastAPI(title="distillab teacher (top-k only)")
    limiter = AuthLimiter(auth_failures_per_minute)

    @app.exception_handler(Exception)
    async def internal(request, error):  # never a plain-text 500
        log.error("%s %s: internal error", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    def top_k_of(inputs: np.ndarray):
        with torch.no_grad():
            probabilities = torch.softmax(model(torch.from_numpy(inputs)).float() / temperature, dim=-1)  # (B, K)
        return probabilities.topk(k, dim=-1)

    def refused(request: Request):
        """None for the right key; else 429 past the wrong-key limit of the address, or 401."""
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if hmac.compare_digest(given.encode(), api_key.encode()):
            return None
        client = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(client)
        if wait is not None:
            return JSONResponse({"detail": "too many wrong API keys from this address; try again later"},
                                status_code=429, headers={"Retry-After": str(wait)})
        limiter.failed(client)
        return JSONResponse({"detail": "a valid API key is needed (Authorization: Bearer KEY)"}, status_code=401)

    async def body_of(request: Request) -> bytes | None:
        """The body, read while counting: None as soon as it passes the limit."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    error = {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "detail": {"type": "string"}}, "required": ["detail"]}}}}
    keyed = {401: {"description": "a valid API key is needed", **error},
             429: {"description": "too many wrong API keys from this address", **error}}

    @app.get(INFO_PATH, responses=keyed)
    async def info(request: Request):
        if (error := refused(request)) is not None:
            return error
        return {"k": k, "temperature": temperature, "num_classes": num_classes, "in_shape": list(in_shape),
                "fingerprint": fingerprint}

    @app.post(TOPK_PATH, responses={**keyed, 413: {"description": "body over the limit", **error},
                                    415: {"description": f"not {NPY}", **error},
                                    422: {"description": "not a float32 array of the teacher's input shape, or "
                                                         "not finite", **error}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  NPY: {"schema": {"type": "string", "format": "binary"}}}}})
    async def topk(request: Request):
        if (error := refused(request)) is not None:
            return error
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return JSONResponse({"detail": f"body: over the limit of {max_body_bytes} bytes"}, status_code=413)
        if request.headers.get("content-type", "").split(";")[0].strip() != NPY:
            return JSONResponse({"detail": f"Content-Type: send a float32 array as {NPY}"}, status_code=415)
        body = await body_of(request)
        if body is None:
            return JSONResponse({"detail": f"body: over the limit of {max_body_bytes} bytes"}, status_code=413)
        try:
            inputs = read_npy(body, in_shape, max_batch)
        except ValueError as problem:
            return JSONResponse({"detail": f"body: {problem}"}, status_code=422)
        if not np.isfinite(inputs).all():
            return JSONResponse({"detail": "body: inputs must be finite numbers (no NaN or infinity)"},
                                status_code=422)
        top = await asyncio.to_thread(top_k_of, inputs)  # the event loop keeps answering meanwhile
        if not torch.isfinite(top.values).all():
            return JSONResponse({"detail": "body: the teacher's outputs on these inputs are not finite numbers "
                                           "(inputs far outside the range it was trained on?)"}, status_code=422)
        return {"indices": top.indices.tolist(), "probabilities": top.values.tolist()}

    return app


def read_npy(body: bytes, in_shape: tuple, max_batch: int) -> np.ndarray:
    """A float32 (B, *in_shape) array from .npy bytes, its header checked before any data is read
    or allocated: the shape it declares must fit the body's size. ValueError says what is wrong."""
    expected = f"float32 (B, {', '.join(map(str, in_shape))}) with 1 <= B <= {max_batch}"
    stream = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(stream, max_header_size=10_000)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError):
        raise ValueError("not a .npy array") from None
    if dtype != np.float32 or tuple(shape[1:]) != in_shape or not shape or not 1 <= shape[0] <= max_batch:
        raise ValueError(f"expected {expected}, got {dtype} {tuple(shape)}")
    size = int(np.prod(shape)) * dtype.itemsize
    if len(body) - stream.tell() != size:
        raise ValueError(f"the header declares {tuple(shape)} ({size} bytes) but {len(body) - stream.tell()} "
                         "bytes of data follow")
    array = np.frombuffer(body, dtype=dtype, count=int(np.prod(shape)), offset=stream.tell())
    return array.reshape(shape, order="F" if fortran else "C").copy()
