"""Atomic file writes and the per-epoch training checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from distillab.errors import CheckpointError


def _umask() -> int:
    """The process umask, read without changing it (os.umask would change it for a moment
    for every thread); Linux reports it in /proc/self/status."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _default_mode(path) -> None:
    """mkstemp creates files 0600; give them the mode a plain open() would (0666 & ~umask), so
    the service's umask 077 keeps job files private and a CLI user's runs stay shareable."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_training_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: corrupt or truncated training checkpoint ({error})") from None


def refuse_used_folder(out: Path, overwrite: bool, error_cls=CheckpointError) -> None:
    """A non-empty ``out`` is replaced only when the user said so."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise error_cls(f"--out {out}: the folder exists and is not empty (pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_folder(out: Path, kind: str):
    """A fresh folder beside ``out`` to write into; when the block ends without an error it
    replaces ``out`` whole, otherwise it is removed: no half-written folder is ever at ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{kind}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
