"""The model registry: teacher uploads.

- Image classifiers: a safetensors file with a zoo architecture, or an ONNX file.
- Language models: a GGUF file, or a tar archive (optionally gzipped) of a Hugging Face
  folder (config.json, safetensors weights, tokenizer files), at its root or in one folder.

An upload streams to a temporary file under ``DATA_DIR/models`` while it is counted
(over ``max_upload_mb`` -> 413) and hashed; pickle and ``torch.save`` files are refused
(loading them can run code), in an archive too (``.bin``, ``.pt``, ``.pth``, ``.pkl``);
an archive holds plain files and folders only, inside itself, unpacked to at most
``max_upload_mb``. The model is then loaded once, as a job would load it, and only one that
loads is kept: an image teacher that gives one logit per class of its data set, a language
model with its tokenizer.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import uuid
from pathlib import Path

from distillab.errors import DistillabError

SAFETENSORS, ONNX = "safetensors", "onnx"
GGUF, HF_ARCHIVE = "gguf", "hf"  # language models: a GGUF file, a tar of a Hugging Face folder
LANGUAGE_MODEL_FORMATS = (GGUF, HF_ARCHIVE)
MAX_ARCHIVE_MEMBERS = 200
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class UploadError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def sniff(head: bytes) -> str:
    """The format of a file from its first bytes (up to 512); pickles and zip archives are refused."""
    if head[:4] == b"GGUF":
        return GGUF
    if head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar":  # gzip, or a POSIX tar header
        return HF_ARCHIVE
    if head[:1] == b"\x80" or head[:2] in (b"(d", b"(l", b"}q", b"]q", b"cc") or head[:4] == b"PK\x03\x04":
        raise UploadError(400, "pickle and torch.save files are refused (loading them can run code): "
                               "save the weights with safetensors, or export ONNX")
    if len(head) >= 9 and head[8:9] == b"{":
        return SAFETENSORS  # 8-byte little-endian header length, then the JSON header
    if head[:1] in (b"\x08", b"\x0a", b"\x12", b"\x1a", b"\x22", b"\x3a", b"\x42"):
        return ONNX  # a protobuf ModelProto (field 1 ir_version or another field tag)
    raise UploadError(400, "not a safetensors, ONNX or GGUF file, nor a tar archive of a Hugging Face folder")


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
                if len(head) < 512:
                    head += chunk[: 512 - len(head)]
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


def validate_and_store_language_model(tmp: Path, fmt: str, models_dir: Path, unpacked_limit: int,
                                      cache_dir: Path | None = None,
                                      max_parameters: int | None = None) -> tuple[str, Path, int]:
    """Load the upload once as a causal language model (a GGUF file is converted once, into
    ``cache_dir``, where jobs find it); keep it as models/<id>/model.gguf or models/<id>/hf/.
    A model over ``max_parameters`` is refused (400) and nothing is kept. Returns (id, path,
    parameters)."""
    from distillab.models.hf import load_causal_lm, load_causal_lm_skeleton

    model_id = uuid.uuid4().hex
    staging = models_dir / f".staging-{model_id}"
    staging.mkdir(parents=True)
    try:
        if fmt == GGUF:
            os.replace(tmp, staging / "model.gguf")
            source, gguf_file = staging, "model.gguf"
        else:
            unpacked = staging / "unpacked"
            _unpack(tmp, unpacked, unpacked_limit)
            os.replace(_hf_root(unpacked), staging / "hf")
            source, gguf_file = staging / "hf", None
        try:
            # counted from the config on the meta device first: a small file that declares a giant
            # model is refused before a byte of it is allocated
            skeleton = load_causal_lm_skeleton(source, gguf_file, where="upload")
            parameters = sum(p.numel() for p in skeleton.parameters())
            if max_parameters is not None and parameters > max_parameters:
                raise UploadError(400, f"the language model has {parameters:,} parameters; this service builds at "
                                       f"most {max_parameters:,} (DISTILLAB_MAX_MODEL_PARAMETERS)")
            model = load_causal_lm(source, gguf_file, where="upload", cache_dir=cache_dir)
        except DistillabError as problem:
            raise UploadError(400, str(problem).replace(str(staging), "the upload")) from None
        parameters = sum(p.numel() for p in model.parameters())
        shutil.rmtree(staging / "unpacked", ignore_errors=True)
        final = models_dir / model_id
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model_id, model_path(models_dir, model_id, fmt), parameters


def _unpack(archive_path: Path, dest: Path, limit_bytes: int) -> None:
    """Extract a tar(.gz) of plain files and folders that stay inside ``dest``."""
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = archive.getmembers()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise UploadError(400, f"the archive has {len(members)} entries; at most {MAX_ARCHIVE_MEMBERS}")
            total = 0
            for member in members:
                if not (member.isfile() or member.isdir()):
                    raise UploadError(400, f"the archive entry {member.name!r} is not a plain file or folder")
                if member.isfile() and member.name.lower().endswith(PICKLE_SUFFIXES):
                    raise UploadError(400, f"the archive entry {member.name!r} is a pickle (loading it can run "
                                           "code): save the weights with safetensors")
                total += member.size
            if total > limit_bytes:
                raise UploadError(413, f"the archive unpacks to {total} bytes, over the limit of {limit_bytes} "
                                       "(DISTILLAB_MAX_UPLOAD_MB)")
            archive.extractall(dest, filter="data")
    except tarfile.FilterError as problem:  # an entry outside the archive: name it, not the server's folders
        member = getattr(problem, "tarinfo", None)
        raise UploadError(400, f"the archive entry {member.name[:200] if member else '?'!r} would be written outside "
                               "the upload (absolute paths, .. and links out are refused)") from None
    except tarfile.TarError as problem:  # a corrupt archive
        raise UploadError(400, "not a readable tar archive of a Hugging Face folder: "
                               f"{str(problem).replace(str(dest), 'the upload')[:200]}") from None
    except EOFError:
        raise UploadError(400, "the tar archive is truncated") from None


def _hf_root(folder: Path) -> Path:
    """The folder with config.json: the archive's root, or its one top-level folder."""
    if (folder / "config.json").is_file():
        return folder
    entries = list(folder.iterdir()) if folder.is_dir() else []
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / "config.json").is_file():
        return entries[0]
    raise UploadError(400, "the archive has no config.json at its root or in its one top-level folder: "
                           "archive a Hugging Face model folder (save_pretrained)")


def model_path(models_dir: Path, model_id: str, fmt: str) -> Path:
    if fmt == HF_ARCHIVE:
        return models_dir / model_id / "hf"
    suffix = {ONNX: "onnx", GGUF: "gguf"}.get(fmt, "safetensors")
    return models_dir / model_id / f"model.{suffix}"
