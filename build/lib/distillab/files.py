"""Files distillab writes: atomic writes (a failure never leaves half a file, nor loses the one
that was there) and the rule for output folders (a command never replaces what another
command, or a user, put there)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
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


OUTPUT_MARKER = ".distillab-output.json"  # in every folder a command writes: which command, which entries


def _written_by(out: Path, command: str) -> set[str] | None:
    """The entries ``command`` wrote into ``out`` (None when another command, or none, wrote it)."""
    try:
        record = json.loads((out / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("command") != command:
        return None
    return set(record.get("entries") or ())


def check_output_folder(out: Path | str, command: str, *, overwrite: bool, inputs=(), error_cls=CheckpointError) -> Path:
    """``out`` as an absolute path, once it is safe to write: a new or empty folder, or with
    ``overwrite`` an earlier output of the same ``command`` that holds nothing else. It is
    never one of ``inputs``, a folder above one, or the working folder (or one above it)."""
    text = str(out)
    if not text.strip():
        raise error_cls("--out: empty path")
    target = Path(os.path.abspath(text))
    here = Path(os.getcwd())
    for source in inputs:
        source = Path(os.path.abspath(source))
        if source == target or target in source.parents:
            raise error_cls(f"--out {text}: {target} is (or holds) the input {source}; write to a new folder")
    if target == here or target in here.parents:
        raise error_cls(f"--out {text}: {target} is the working folder or above it; write to a new folder")
    if target.exists() and not target.is_dir():
        raise error_cls(f"--out {text}: {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        entries = {entry.name for entry in target.iterdir()}
        written = _written_by(target, command)
        if written is None:
            raise error_cls(f"--out {text}: {target} is not empty and is not an earlier `distillab {command}` "
                            "output; refusing to touch it (choose a new or empty folder)")
        foreign = sorted(entries - written - {OUTPUT_MARKER})
        if foreign:
            raise error_cls(f"--out {text}: {target} holds files that `distillab {command}` did not write "
                            f"({', '.join(foreign[:5])}); refusing to replace it")
        if not overwrite:
            raise error_cls(f"--out {text}: {target} holds an earlier `distillab {command}` output "
                            "(pass --overwrite to replace it)")
    return target


@contextlib.contextmanager
def staged_folder(out: Path, kind: str):
    """A fresh folder beside ``out`` to write into; when the block ends without an error it
    replaces ``out`` whole, otherwise it is removed: no half-written folder is ever at ``out``.
    ``out`` was checked by ``check_output_folder`` (new, empty, or an earlier ``kind`` output);
    the folder records that ``kind`` wrote it, and what."""
    out = Path(os.path.abspath(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.{kind}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        entries = sorted(entry.name for entry in staging.iterdir())
        atomic_write_json(staging / OUTPUT_MARKER, {"command": kind, "entries": entries})
        aside = None
        if out.exists():
            aside = out.parent / f".{out.name}.replaced-{os.getpid()}"
            os.replace(out, aside)
        os.replace(staging, out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
