"""The teacher-output cache: the teacher is frozen, so its logits are computed once and
reused across epochs, seeds and students.

With augmentation on, the cache holds ``views`` augmented views of every training
sample. Each view's augmentation parameters come from a generator seeded by the view
number, and are stored beside the logits; the training loop replays exactly those
parameters to the student, so a cached output is never paired with another view.

On disk (one folder per key): ``logits.npy`` (views, N, K) float32/float16, memory-mapped;
``augment.npy`` (views, N, 3) int16; ``meta.json``. The key hashes the teacher checksum,
the dataset source, the transform and the view count; any change gives a new folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillab.data.transforms import apply_augment, draw_augment_params

log = logging.getLogger("distillab")


def default_cache_dir() -> Path:
    return Path(os.environ.get("DISTILLAB_CACHE", Path.home() / ".cache" / "distillab"))


def cache_key(teacher_checksum: str, bundle, views: int, fp16: bool) -> str:
    parts = [
        f"teacher={teacher_checksum}",
        f"data={bundle.source}",
        f"rows={bundle.n_rows}",
        f"normalize={bundle.normalize.describe()}",
        f"augment={bundle.augment.describe()}",
        f"views={views}",
        f"fp16={fp16}",
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


@dataclass
class TeacherOutputCache:
    """Cached logits of one teacher. ``logits`` (V, N, K) and ``augment`` (V, N, 3) are
    indexed by the row in the training file."""

    folder: Path
    logits: np.ndarray
    augment: np.ndarray
    hit: bool  # True when the outputs were read, not computed

    @property
    def views(self) -> int:
        return self.logits.shape[0]

    def lookup(self, views: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, K) float32 logits for each (view, row) pair."""
        return torch.from_numpy(np.asarray(self.logits[views.numpy(), rows.numpy()], dtype=np.float32))

    def augment_params(self, views: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.augment[views.numpy(), rows.numpy()]))


def _compute(teacher, bundle, views: int, fp16: bool, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    n = bundle.n_rows  # the first n rows of the training file: those limit_train keeps
    images = bundle.full_train.images[:n]
    augment = np.zeros((views, n, 3), dtype=np.int16)
    logits = None
    for view in range(views):
        if bundle.augment.enabled:
            params = draw_augment_params(bundle.augment, n, torch.Generator().manual_seed(1_000_003 * (view + 1)))
        else:
            params = torch.zeros(n, 3, dtype=torch.int16) + bundle.augment.crop_padding
        augment[view] = params.numpy()
        for start in range(0, n, batch_size):
            chunk = slice(start, start + batch_size)
            inputs = bundle.normalize(apply_augment(images[chunk], params[chunk], bundle.augment.crop_padding))
            with torch.no_grad():
                out = teacher(inputs.to(device)).float().cpu().numpy()
            if logits is None:
                logits = np.zeros((views, n, out.shape[1]), dtype=np.float16 if fp16 else np.float32)
            logits[view, chunk] = out
    return logits, augment


def _publish(staging: Path, folder: Path) -> None:
    """Rename the staged entry into place, atomically: a reader sees all of an entry or none.
    When another process published the same key first, its entry wins and ours is dropped
    (the same teacher and data give the same outputs); an unreadable old entry is replaced."""
    try:
        os.rename(staging, folder)  # fails when folder exists and is not empty
    except OSError:
        if (folder / "meta.json").exists():
            shutil.rmtree(staging)
            return
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(staging, folder)


def teacher_outputs(
    teacher, checksum: str, bundle, *, views: int, fp16: bool, cache_dir: Path | None, batch_size: int = 1024, device="cpu"
) -> TeacherOutputCache:
    """Load the cached outputs for this (teacher, data, transform, views), computing them once."""
    views = views if bundle.augment.enabled else 1  # without augmentation every view is the same
    root = cache_dir or default_cache_dir()
    folder = root / "teacher_outputs" / cache_key(checksum, bundle, views, fp16)
    if (folder / "meta.json").exists():
        try:
            logits = np.load(folder / "logits.npy", mmap_mode="r")
            augment = np.load(folder / "augment.npy", mmap_mode="r")
            if logits.shape[:2] == (views, bundle.n_rows):
                log.info("teacher outputs: cache hit %s", folder)
                return TeacherOutputCache(folder, logits, augment, hit=True)
        except (OSError, ValueError):
            pass
        log.warning("teacher outputs: cache entry %s unreadable, recomputing", folder)
    log.info("teacher outputs: computing %d view(s) of %d samples -> %s", views, bundle.n_rows, folder)
    logits, augment = _compute(teacher, bundle, views, fp16, batch_size, device)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".staging-"))
    try:
        np.save(staging / "logits.npy", logits)
        np.save(staging / "augment.npy", augment)
        meta = {"teacher_checksum": checksum, "source": bundle.source, "views": views, "fp16": fp16,
                "augment": bundle.augment.describe(), "normalize": bundle.normalize.describe()}
        (staging / "meta.json").write_text(json.dumps(meta, indent=2))
        _publish(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a failed fill (a full disk) leaves nothing behind
        raise
    return TeacherOutputCache(
        folder, np.load(folder / "logits.npy", mmap_mode="r"), np.load(folder / "augment.npy", mmap_mode="r"), hit=False
    )

