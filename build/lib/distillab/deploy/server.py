"""The inference server of a distillab package (``distillab serve-model PKG``): FastAPI on ONNX
Runtime with dynamic micro-batching, ``/predict``, ``/healthz``, ``/metrics`` (Prometheus text
format) and ``/stats``, a bounded request size, and an optional second package served in canary
or shadow mode, so a new student can be tried on live traffic and rolled back.

This file is copied into every package as ``serve.py``: it imports nothing from distillab, so a
container runs it with numpy, onnxruntime, fastapi, uvicorn, prometheus-client and pillow only.

    python serve.py PKG [--candidate PKG2 --mode shadow|canary --fraction 0.1] [--port 8080]
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations (Request) at run time.
import argparse
import asyncio
import hashlib
import hmac
import io
import json
import logging
import os
import random
import sys
import time
from collections import deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MANIFEST = "package.json"
SIGNATURE = "package.json.sig"  # HMAC-SHA256 of package.json's bytes, hex; written by `package --sign-key-env`
MAX_IMAGE_PIXELS = 4096 * 4096  # an image body larger than this is not decoded (a 31 KB PNG can hold 256 Mpx)
log = logging.getLogger("distillab")
MODES = ("shadow", "canary")


class PackageError(Exception):
    """A package folder that is missing, incomplete or tampered with."""


class InputError(Exception):
    """A request the server cannot answer (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_signature(manifest_bytes: bytes, key: bytes) -> str:
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def sign_manifest(folder: Path, key: bytes) -> None:
    """Write ``package.json.sig``: the manifest's HMAC under the operator's key. As the manifest
    holds every file's sha256, the signature covers the whole package."""
    folder = Path(folder)
    (folder / SIGNATURE).write_text(manifest_signature((folder / MANIFEST).read_bytes(), key) + "\n")


def read_manifest(folder: Path, verify_key: bytes | None = None) -> dict:
    """The package's manifest, after checking every file it lists against its sha256, and, with
    ``verify_key``, the manifest against its signature. The checksums catch a damaged or partly
    copied package; only the signature catches a consistent swap (files and checksums changed
    together) by someone without the key."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise PackageError(f"{folder}: no such package folder")
    if not path.is_file():
        raise PackageError(f"{folder}: incomplete package: {MANIFEST} is missing")
    if verify_key is not None:
        signature = folder / SIGNATURE
        if not signature.is_file():
            raise PackageError(f"{folder}: {SIGNATURE} is missing; the package was not signed (package "
                               "--sign-key-env)")
        if not hmac.compare_digest(signature.read_text().strip(), manifest_signature(path.read_bytes(), verify_key)):
            raise PackageError(f"{folder}: {MANIFEST} does not match its signature (changed after signing, or "
                               "signed with another key)")
    try:
        manifest = json.loads(path.read_text())
        files, model = manifest["files"], manifest["model"]["file"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise PackageError(f"{path}: not a package manifest ({error!r})") from None
    if model not in files:
        raise PackageError(f"{path}: the model file {model} has no checksum in the manifest")
    for name, expected in files.items():
        file = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not file.is_file():
            raise PackageError(f"{folder}: incomplete package: {name} is missing")
        if sha256(file) != expected:
            raise PackageError(f"{folder}: {name} does not match its sha256 in {MANIFEST} (the package was changed "
                               "after it was written)")
    return manifest


@dataclass
class Package:
    """One loaded package: its ONNX Runtime session and its preprocessing."""

    name: str
    folder: Path
    manifest: dict
    session: object
    input_name: str
    in_shape: tuple
    labels: list
    mean: np.ndarray | None
    std: np.ndarray | None
    scale: float

    @classmethod
    def load(cls, folder: Path | str, threads: int = 1, verify_key: bytes | None = None) -> "Package":
        import onnxruntime

        folder = Path(folder)
        manifest = read_manifest(folder, verify_key)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(str(folder / manifest["model"]["file"]), options,
                                                   providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's errors are untyped
            raise PackageError(f"{folder}: the model does not load in ONNX Runtime ({error})") from None
        pre = manifest["preprocessing"]
        normalize = pre.get("normalize") or {}
        channels = pre["in_shape"][0]
        mean = np.asarray(normalize["mean"], np.float32).reshape(1, channels, 1, 1) if normalize.get("mean") else None
        std = np.asarray(normalize["std"], np.float32).reshape(1, channels, 1, 1) if normalize.get("std") else None
        return cls(manifest["name"], folder, manifest, session, session.get_inputs()[0].name,
                   tuple(pre["in_shape"]), pre.get("labels") or [], mean, std, float(normalize.get("scale", 1.0)))

    def as_batch(self, values) -> np.ndarray:
        """(N, *in_shape) float32 raw inputs from one sample or a list of them; 422 otherwise."""
        try:
            array = np.asarray(values)  # its dtype says what the JSON held: numbers, text, booleans
        except (ValueError, TypeError, OverflowError, RecursionError):
            raise InputError("inputs: must be a (nested) list of numbers of one shape") from None
        if array.dtype.kind not in "iuf":  # booleans, strings, integers too large for int64 (object)
            raise InputError("inputs: must be numbers (not text, booleans or integers beyond 64 bits), in a "
                             "(nested) list of one shape")
        with np.errstate(over="ignore"):
            array = array.astype(np.float32)  # beyond float32's range: infinite, refused below
        if array.shape == self.in_shape:
            array = array[None]
        if array.ndim != len(self.in_shape) + 1 or array.shape[1:] != self.in_shape or len(array) == 0:
            raise InputError(f"inputs: expected shape (N, {', '.join(map(str, self.in_shape))}) or "
                             f"({', '.join(map(str, self.in_shape))}), got {tuple(array.shape)}")
        if not np.isfinite(array).all():
            raise InputError("inputs: values must be finite numbers")
        return array

    def image(self, data: bytes) -> np.ndarray:
        """(1, *in_shape) raw pixels of an uploaded image, converted and resized to the model's input."""
        from PIL import Image, UnidentifiedImageError

        channels, height, width = self.in_shape
        try:
            with Image.open(io.BytesIO(data)) as picture:  # reads the header only
                if picture.width * picture.height > MAX_IMAGE_PIXELS:
                    raise InputError(f"body: a {picture.width}x{picture.height} image; at most "
                                     f"{MAX_IMAGE_PIXELS:,} pixels are decoded", 413)
                picture = picture.convert("L" if channels == 1 else "RGB").resize((width, height))
                pixels = np.asarray(picture, dtype=np.float32)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError):
            raise InputError("body: not a readable image (PNG, JPEG, ...)") from None
        return (pixels[None] if channels == 1 else pixels.transpose(2, 0, 1))[None]

    def infer(self, raw: np.ndarray) -> np.ndarray:
        """Logits (N, K) of raw inputs (N, *in_shape): normalised as the student was trained."""
        x = raw * self.scale
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return self.session.run(None, {self.input_name: x.astype(np.float32)})[0]


class MicroBatcher:
    """Merges concurrent requests into one model call: a batch closes at ``max_batch`` samples
    or ``max_wait_s`` after its first request, whichever comes first."""

    def __init__(self, package: Package, max_batch: int, max_wait_s: float, on_batch=None):
        self.package, self.max_batch, self.max_wait_s = package, max_batch, max_wait_s
        self.on_batch = on_batch or (lambda size: None)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def submit(self, inputs: np.ndarray) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((inputs, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            size, deadline = len(items[0][0]), loop.time() + self.max_wait_s
            while size < self.max_batch:
                try:
                    item = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                items.append(item)
                size += len(item[0])
            batch = np.concatenate([inputs for inputs, _ in items])
            self.on_batch(len(batch))
            try:
                logits = await asyncio.to_thread(self.package.infer, batch)
            except Exception as error:  # a model failure answers every request of the batch
                for _, future in items:
                    if not future.done():
                        future.set_exception(error)
                continue
            start = 0
            for inputs, future in items:
                if not future.done():
                    future.set_result(logits[start : start + len(inputs)])
                start += len(inputs)


@dataclass
class Stats:
    """Per-package latency (the last 10,000 requests) and shadow agreement, for ``/stats``."""

    latency_ms: dict = field(default_factory=dict)
    requests: dict = field(default_factory=dict)
    compared: int = 0
    agreed: int = 0

    def record(self, name: str, seconds: float) -> None:
        self.latency_ms.setdefault(name, deque(maxlen=10_000)).append(seconds * 1000)
        self.requests[name] = self.requests.get(name, 0) + 1

    def summary(self) -> dict:
        packages = {}
        for name, samples in self.latency_ms.items():
            values = np.asarray(samples)
            packages[name] = {"requests": self.requests[name], "p50_ms": float(np.percentile(values, 50)),
                              "p99_ms": float(np.percentile(values, 99))}
        shadow = {"compared": self.compared, "agreement": self.agreed / self.compared if self.compared else None}
        return {"packages": packages, "shadow": shadow}


def create_app(primary: Package, candidate: Package | None = None, *, mode: str = "shadow", fraction: float = 0.1,
               max_batch: int = 32, max_wait_ms: float = 5.0, max_body_bytes: int = 8 << 20, seed: int | None = None,
               api_key: str | None = None, auth_failures_per_minute: int = 20):
    """The FastAPI app serving ``primary`` (and ``candidate`` on ``fraction`` of the requests:
    answering them in canary mode, or only compared with ``primary`` in shadow mode). With
    ``api_key``, /predict, /metrics and /stats need ``Authorization: Bearer KEY`` (/healthz
    does not); wrong keys past ``auth_failures_per_minute`` from one address get 429."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose from {', '.join(MODES)}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction {fraction}: must be between 0 and 1")
    if candidate is not None and candidate.in_shape != primary.in_shape:
        raise PackageError(f"{candidate.folder}: input shape {candidate.in_shape} differs from {primary.in_shape}")
    if candidate is not None and candidate.name == primary.name:
        raise PackageError(f"{candidate.folder}: the candidate has the same name as the primary ({primary.name})")
    registry = CollectorRegistry()  # one per app, so two servers in a process keep apart
    requests_total = Counter("distillab_requests", "Predict requests", ["package", "outcome"], registry=registry)
    latency = Histogram("distillab_request_latency_seconds", "Predict latency", ["package"], registry=registry,
                        buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
    batch_size = Histogram("distillab_batch_size", "Samples per model call", ["package"], registry=registry,
                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
    shadow_total = Counter("distillab_shadow_comparisons", "Shadow predictions compared with the primary",
                           ["result"], registry=registry)
    stats = Stats()
    rng = random.Random(seed)
    packages = [primary] + ([candidate] if candidate is not None else [])
    batchers = {package.name: MicroBatcher(package, max_batch, max_wait_ms / 1000,
                                           on_batch=batch_size.labels(package.name).observe) for package in packages}
    shadow_tasks: set = set()

    @asynccontextmanager
    async def lifespan(app):
        for batcher in batchers.values():
            batcher.start()
        yield
        for batcher in batchers.values():
            await batcher.stop()

    app = FastAPI(title=f"distillab model server: {primary.name}", lifespan=lifespan)
    failures: dict[str, deque] = {}  # address -> times of its recent wrong keys

    @app.middleware("http")
    async def key_check(request: Request, call_next):
        if api_key is None or request.url.path not in ("/predict", "/metrics", "/stats"):  # health, docs: open
            return await call_next(request)
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if hmac.compare_digest(given.encode(), api_key.encode()):
            return await call_next(request)
        client, now = (request.client.host if request.client else "unknown"), time.monotonic()
        recent = failures.setdefault(client, deque())
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= auth_failures_per_minute:
            return JSONResponse({"detail": "too many wrong API keys from this address; try again later"},
                                status_code=429, headers={"Retry-After": str(max(1, int(61 - (now - recent[0]))))})
        recent.append(now)
        if len(failures) > 10_000:  # forget idle addresses
            for address in [a for a, times in failures.items() if not times][:5_000]:
                del failures[address]
        return JSONResponse({"detail": "a valid API key is needed (Authorization: Bearer KEY)"}, status_code=401)

    @app.exception_handler(InputError)
    async def input_error(request, error: InputError):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(Exception)
    async def internal(request, error):  # never a plain-text 500
        log.error("%s %s: internal error", request.method, request.url.path, exc_info=error)
        return JSONResponse({"detail": "internal error; the server log has the details"}, status_code=500)

    async def timed(package: Package, inputs: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        logits = await batchers[package.name].submit(inputs)
        elapsed = time.perf_counter() - started
        latency.labels(package.name).observe(elapsed)
        stats.record(package.name, elapsed)
        return logits

    async def shadow(inputs: np.ndarray, served: np.ndarray) -> None:
        try:
            logits = await timed(candidate, inputs)
        except Exception:
            requests_total.labels(candidate.name, "error").inc()
            return
        agree = logits.argmax(-1) == served.argmax(-1)
        stats.compared += len(agree)
        stats.agreed += int(agree.sum())
        shadow_total.labels("agree").inc(int(agree.sum()))
        shadow_total.labels("disagree").inc(int((~agree).sum()))

    async def body_of(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise InputError(f"body: {int(declared)} bytes is over the limit of {max_body_bytes}", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise InputError(f"body: over the limit of {max_body_bytes} bytes", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    error = {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "detail": {"type": "string"}}, "required": ["detail"]}}}}
    keyed = {401: {"description": "a valid API key is needed (when the server has one)", **error},
             429: {"description": "too many wrong API keys from this address", **error}} if api_key else {}

    @app.post("/predict", responses={413: {"description": "body over the limit", **error},
                                     415: {"description": "neither JSON nor an image", **error},
                                     422: {"description": "inputs that the model cannot take", **error}, **keyed},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
                      "inputs": {"type": "array", "description": "one sample or a list of samples, raw values "
                                                                 "as the dataset stores them"}}}},
                  "image/png": {"schema": {"type": "string", "format": "binary"}}}}})
    async def predict(request: Request):
        """JSON ``{"inputs": [...]}`` (one sample or a list, raw values as the dataset stores them:
        0-255 pixels for images) or an image body (``Content-Type: image/png``, ``image/jpeg``...)."""
        body = await body_of(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        serving = primary
        if candidate is not None and mode == "canary" and rng.random() < fraction:
            serving = candidate
        try:
            if kind.startswith("image/"):
                inputs = serving.image(body)
            elif kind in ("application/json", ""):
                try:
                    document = json.loads(body)
                except (ValueError, RecursionError):  # bad JSON or UTF-8, a 5,000-digit number, deep nesting
                    raise InputError("body: not valid JSON (or nested too deep, or a number too long)") from None
                if not isinstance(document, dict) or "inputs" not in document:
                    raise InputError('body: expected a JSON object {"inputs": [...]}')
                inputs = serving.as_batch(document["inputs"])
            else:
                raise InputError(f"Content-Type {kind!r}: send application/json or an image/* body", 415)
        except InputError:
            requests_total.labels(serving.name, "rejected").inc()
            raise
        logits = await timed(serving, inputs)
        requests_total.labels(serving.name, "ok").inc()
        if candidate is not None and mode == "shadow" and rng.random() < fraction:
            task = asyncio.get_running_loop().create_task(shadow(inputs, logits))
            shadow_tasks.add(task)  # held until done, so it is not collected mid-flight
            task.add_done_callback(shadow_tasks.discard)
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities = shifted / shifted.sum(-1, keepdims=True)
        predictions = []
        for row in probabilities:
            index = int(row.argmax())
            label = serving.labels[index] if index < len(serving.labels) else str(index)
            predictions.append({"index": index, "label": label, "probabilities": [round(float(p), 6) for p in row]})
        return {"package": serving.name, "predictions": predictions}

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "primary": primary.name, "candidate": candidate.name if candidate else None,
                "mode": mode if candidate else None, "fraction": fraction if candidate else None}

    @app.get("/metrics", responses=keyed, response_class=PlainTextResponse)
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/stats", responses=keyed)
    async def stats_route():
        return stats.summary()

    return app


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Serve a distillab package over HTTP.")
    parser.add_argument("package", help="the package folder (package.json, model.onnx, ...)")
    parser.add_argument("--candidate", help="a second package, tried on --fraction of the traffic")
    parser.add_argument("--mode", choices=MODES, default="shadow",
                        help="shadow: the candidate is only compared; canary: it answers its share")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-body-mb", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per package")
    parser.add_argument("--api-key-env", help="variable holding an API key that /predict, /metrics and /stats "
                                              "then require (Authorization: Bearer KEY)")
    parser.add_argument("--verify-key-env", help="variable holding the key the package was signed with; the "
                                                 "server refuses to start unless package.json's signature matches")
    return parser


def key_from_env(variable: str | None, option: str) -> str | None:
    """The value of the environment variable an option names; PackageError when it is unset."""
    if not variable:
        return None
    value = os.environ.get(variable)
    if not value:
        raise PackageError(f"{option}: the environment variable {variable} is not set")
    return value


def build(args) -> object:
    if args.max_batch < 1 or args.max_wait_ms < 0 or args.max_body_mb <= 0 or args.threads < 1:
        raise PackageError("--max-batch and --threads must be >= 1, --max-wait-ms >= 0 and --max-body-mb > 0")
    api_key = key_from_env(getattr(args, "api_key_env", None), "--api-key-env")
    verify = key_from_env(getattr(args, "verify_key_env", None), "--verify-key-env")
    verify_key = verify.encode() if verify else None
    primary = Package.load(args.package, args.threads, verify_key)
    candidate = Package.load(args.candidate, args.threads, verify_key) if args.candidate else None
    try:
        return create_app(primary, candidate, mode=args.mode, fraction=args.fraction, max_batch=args.max_batch,
                          max_wait_ms=args.max_wait_ms, max_body_bytes=int(args.max_body_mb * (1 << 20)),
                          api_key=api_key)
    except ValueError as error:
        raise PackageError(str(error)) from None


def main(argv=None) -> None:
    import uvicorn

    args = parser().parse_args(argv)
    try:
        app = build(args)
    except PackageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", proxy_headers=False)


if __name__ == "__main__":
    main()
