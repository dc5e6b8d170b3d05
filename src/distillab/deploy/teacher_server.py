"""``distillab serve-teacher SPEC``: a teacher behind HTTP that answers only its top-k
probabilities per input, at a fixed temperature, to callers with the API key. Its weights and
full logits never leave the process (seed 000: the teacher stays protected).

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

import numpy as np
import torch

from distillab.models.remote import INFO_PATH, NPY, TOPK_PATH


def create_teacher_app(model: torch.nn.Module, *, k: int, temperature: float, api_key: str, in_shape, num_classes: int,
                       checksum: str, max_batch: int = 4096, max_body_bytes: int = 256 << 20):
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

    def top_k_of(inputs: np.ndarray):
        with torch.no_grad():
            probabilities = torch.softmax(model(torch.from_numpy(inputs)).float() / temperature, dim=-1)  # (B, K)
        return probabilities.topk(k, dim=-1)

    def refused(request: Request):
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if hmac.compare_digest(given.encode(), api_key.encode()):
            return None
        return JSONResponse({"detail": "a valid API key is needed (Authorization: Bearer KEY)"}, status_code=401)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get(INFO_PATH)
    async def info(request: Request):
        if (error := refused(request)) is not None:
            return error
        return {"k": k, "temperature": temperature, "num_classes": num_classes, "in_shape": list(in_shape),
                "fingerprint": fingerprint}

    @app.post(TOPK_PATH)
    async def topk(request: Request):
        if (error := refused(request)) is not None:
            return error
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_body_bytes:
            return JSONResponse({"detail": f"body: over the limit of {max_body_bytes} bytes"}, status_code=413)
        if request.headers.get("content-type", "").split(";")[0].strip() != NPY:
            return JSONResponse({"detail": f"Content-Type: send a float32 array as {NPY}"}, status_code=415)
        body = await request.body()
        if len(body) > max_body_bytes:
            return JSONResponse({"detail": f"body: over the limit of {max_body_bytes} bytes"}, status_code=413)
        try:
            inputs = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError):
            return JSONResponse({"detail": "body: not a .npy array"}, status_code=422)
        if inputs.dtype != np.float32 or inputs.shape[1:] != in_shape or not 1 <= len(inputs) <= max_batch:
            return JSONResponse({"detail": f"body: expected float32 (B, {', '.join(map(str, in_shape))}) with "
                                           f"1 <= B <= {max_batch}, got {inputs.dtype} {inputs.shape}"},
                                status_code=422)
        top = await asyncio.to_thread(top_k_of, inputs)  # the event loop keeps answering meanwhile
        return {"indices": top.indices.tolist(), "probabilities": top.values.tolist()}

    return app
