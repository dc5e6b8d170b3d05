"""The model registry: teacher uploads (safetensors or ONNX with a zoo architecture).

An upload streams to a temporary file under ``DATA_DIR/models`` while it is counted
(over ``max_upload_mb`` -> 413) and hashed; pickle and ``torch.save`` files are refused
(loading them can run code); the file is then loaded once, as a job would load it, and
only a file that loads and gives one logit per class of its data set is kept.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from pathlib import Path

from distillab.errors import DistillabError

SAFETENSORS, ONNX = "safetensors", "onnx"


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def sniff(head: bytes) -> str:
    """The format of a file from its first bytes; pickles and zip archives are refused."""
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"}q", b"]q", b"cc") or head[:4] == b"PK\x03\x04":
        raise UploadError(400, "pickle and torch.save files are refused (loading them can run code): "
                               "save the weights with safetensors, or export ONNX")
    if len(head) >= 9 and head[8:9] == b"{":
        return SAFETENSORS  # 8-byte little-endian header length, then the JSON header
    if head[:1] in (b"\x08", b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42"):
        return ONNX  # a protobuf ModelProto (field 1 ir_version or another field tag)
    raise UploadError(400, "not a safetensors or ONNX file")


async def receive(request, folder: Path, limit_bytes: int) -> tuple[Path, str, int, str]:
    """Stream the request body to a temporary file; (path, sha256, size, format)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise UploadError(413, f"upload of {int(declared)} bytes exceeds the limit of {limit_bytes} bytes "
                               "(DISTILLAB_MAX_UPLOAD_MB)")
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".tmp")
    path, digest, size, head = Path(name), hashlib.sha256(), 0, b""
    write_error: OSError | None = None
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit_bytes:
                    raise UploadError(413, f"upload exceeds the limit of {limit_bytes} bytes (DISTILLAB_MAX_UPLOAD_MB)")
                if write_error is not None:
                    continue  # read the rest, so the client gets the error instead of a reset connection
                if len(head) < 16:
                    head += chunk[: 16 - len(head)]
                digest.update(chunk)
                try:
                    handle.write(chunk)
                except OSError as error:  # a full disk: answered once the body is read (507 upstream)
                    write_error = error
        # (closing flushes; a full disk that fails only there raises here, after the whole body was read)
        if write_error is not None:
            raise write_error
        if size == 0:
            raise UploadError(400, "empty upload: send the model file as the request body")
        return path, digest.hexdigest(), size, sniff(head)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def validate_and_store(tmp: Path, fmt: str, architecture: str, model_args: dict, dataset: str,
                       models_dir: Path) -> tuple[str, Path]:
    """Load the upload once as a teacher of ``dataset``; keep it as models/<id>/model.<ext>."""
    from distillab import data as data_module
    from distillab.spec import DataSpec, TeacherSpec

    try:
        bundle = data_module.build(DataSpec(dataset=dataset), 0)
        teacher = TeacherSpec(model=architecture, model_args=model_args, checkpoint=tmp, format=fmt)
        from distillab.models.loading import load_teacher

        load_teacher(teacher, bundle.in_shape, bundle.num_classes, where="upload")
    except DistillabError as problem:
        raise UploadError(400, str(problem).replace(str(tmp), "the upload")) from None
    except (ValueError, TypeError, RuntimeError) as problem:  # a zoo model rejecting model_args, say
        raise UploadError(400, f"the upload does not load as {architecture}: "
                               f"{str(problem).replace(str(tmp), 'the upload')}") from None
    model_id = uuid.uuid4().hex
    final = model_path(models_dir, model_id, fmt)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, final)
    return model_id, final


def model_path(models_dir: Path, model_id: str, fmt: str) -> Path:
    return models_dir / model_id / f"model.{'onnx' if fmt == ONNX else 'safetensors'}"
