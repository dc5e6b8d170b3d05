"""The teacher-output cache: the teacher is frozen, so its logits are computed once and
reused across epochs, seeds and students.

With augmentation on, the cache holds ``views`` augmented views of every training sample
(FKD, Shen & Xing 2022: soft labels per augmented crop). Each view's augmentation parameters
come from a generator seeded by the view number (or, with ``views: all``, view v is the v-th of
every distinct crop offset and flip), and are stored beside the logits; the training loop
replays exactly those parameters to the student, so a cached output is never paired with
another view (Beyer et al. 2022's "consistent" teaching).

On disk (one folder per key): ``logits.npy`` (V, N, K) float16 or float32 and ``augment.npy``
(V, N, 3) int16, memory-mapped for reading; ``meta.json`` with the fill's cost and, under
bf16, its agreement with fp32. The key hashes the teacher checksum, the data, the transform,
the views, the storage dtype and the inference precision; any change gives a new folder.

A fill is written view by view into ``.fill-<key>`` (its files preallocated, so a disk too
small fails at once rather than half-way) with ``progress.json`` naming the views done: an
interrupted fill resumes where it stopped; a full disk removes it; the folder is renamed into
place when complete. One process fills a key at a time (a lock); the others wait and read.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillab.data.transforms import MIX_COLUMNS, Augment, augmented, draw_augment_params, draw_mix_params
from distillab.runtime import agreement, autocast, requested_precision, resolve_device, resolve_precision
from distillab.errors import DiskFull, SpecError, is_disk_full

log = logging.getLogger("distillab")

MAX_VIEWS = 1024
AGREEMENT_SAMPLES = 512


def default_cache_dir() -> Path:
    return Path(os.environ.get("DISTILLAB_CACHE", Path.home() / ".cache" / "distillab"))


def exhaustive_views(augment: Augment) -> torch.Tensor:
    """(V, 3) int16: every distinct (dy, dx, flip) of the augmentation, V = (2p+1)^2 x (2 if flips)."""
    offsets = range(2 * augment.crop_padding + 1)
    flips = (0, 1) if augment.hflip else (0,)
    return torch.tensor([(dy, dx, f) for dy in offsets for dx in offsets for f in flips], dtype=torch.int16)


def resolve_views(augment: Augment, views: int | str) -> int:
    """Views to cache: 1 without augmentation (every view is the same), all distinct ones for
    ``"all"``, else ``views``."""
    if not augment.enabled:
        return 1
    return len(exhaustive_views(augment)) if views == "all" else int(views)


def cache_bytes(views: int, rows: int, classes: int, fp16: bool, mixing: bool = False) -> int:
    per_entry = classes * (2 if fp16 else 4) + 3 * 2 + ((4 + MIX_COLUMNS * 4) if mixing else 0)
    return views * rows * per_entry


def cache_key(teacher_checksum: str, bundle, views: int | str, fp16: bool, precision: str = "fp32") -> str:
    parts = [
        f"teacher={teacher_checksum}",
        f"data={bundle.source}",
        f"rows={bundle.n_rows}",
        f"normalize={bundle.normalize.describe()}",
        f"augment={bundle.augment.describe()}",
        f"views={views}",
        f"fp16={fp16}",
    ]
    if precision != "fp32":  # fp32 keys are those of earlier versions: their entries stay valid
        parts.append(f"precision={precision}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


@dataclass
class TeacherOutputCache:
    """Cached logits of one teacher. ``logits`` (V, N, K) and ``augment`` (V, N, 3) are
    indexed by the row in the training file."""

    folder: Path
    logits: np.ndarray
    augment: np.ndarray
    hit: bool  # True when the outputs were read, not computed
    meta: dict
    partner: np.ndarray | None = None  # (V, N) int32: the row each view is mixed with (mixing only)
    mix: np.ndarray | None = None  # (V, N, 5) float32: lam and the cutmix box (mixing only)

    @property
    def views(self) -> int:
        return self.logits.shape[0]

    def lookup(self, views: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """(B, K) float32 logits for each (view, row) pair."""
        return torch.from_numpy(np.asarray(self.logits[views.numpy(), rows.numpy()], dtype=np.float32))

    def augment_params(self, views: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.augment[views.numpy(), rows.numpy()]))

    def partner_rows(self, views: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.partner[views.numpy(), rows.numpy()], dtype=np.int64))

    def mix_params(self, views: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.mix[views.numpy(), rows.numpy()]))


def _view_params(augment: Augment, view: int, n: int, exhaustive: torch.Tensor | None) -> torch.Tensor:
    """(n, 3) int16 augmentation of view ``view`` for the first n rows."""
    if not augment.enabled:
        return torch.zeros(n, 3, dtype=torch.int16) + augment.crop_padding
    if exhaustive is not None:
        return exhaustive[view].expand(n, 3).clone()
    return draw_augment_params(augment, n, torch.Generator().manual_seed(1_000_003 * (view + 1)))


def _view_logits(teacher, bundle, params: torch.Tensor, batch_size: int, device, precision: str,
                 partner: torch.Tensor | None = None, mix: torch.Tensor | None = None) -> np.ndarray:
    """(n, K) float32 teacher logits of one view (mixed with ``partner`` rows when mixing)."""
    n = len(params)
    images = bundle.full_train.images[:n]
    out = []
    for start in range(0, n, batch_size):
        chunk = slice(start, start + batch_size)
        if partner is None:
            view = augmented(bundle.augment, images[chunk], params[chunk])
        else:
            rows = partner[chunk]
            view = augmented(bundle.augment, images[chunk], params[chunk], images[rows], params[rows], mix[chunk])
        inputs = bundle.normalize(view)
        with torch.no_grad(), autocast(torch.device(device), precision):
            out.append(teacher(inputs.to(device)).float().cpu().numpy())
    return np.concatenate(out)


class _Array:
    """A .npy file written block by block with pwrite (never through a memory map, where a
    full disk would kill the process with SIGBUS), its space reserved up front."""

    def __init__(self, path: Path, shape: tuple, dtype):
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        fresh = not path.exists()
        if not fresh:
            try:
                existing = np.load(path, mmap_mode="r")
                fresh = existing.shape != shape or existing.dtype != self.dtype
            except (OSError, ValueError):
                fresh = True
        with open(path, "w+b" if fresh else "r+b") as handle:
            if fresh:
                np.lib.format.write_array_header_2_0(handle, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                              "fortran_order": False, "shape": shape})
            handle.seek(0, os.SEEK_SET)
            np.lib.format.read_magic(handle)
            np.lib.format.read_array_header_2_0(handle)
            self.offset = handle.tell()
            if fresh:
                size = self.offset + int(np.prod(shape)) * self.dtype.itemsize
                os.posix_fallocate(handle.fileno(), 0, size)  # ENOSPC now, not half-way through the fill

    def write_view(self, view: int, block: np.ndarray) -> None:
        """Write ``block``, one entry of the first axis, at entry ``view``."""
        self.write_rows(view, block[None])

    def write_rows(self, start: int, block: np.ndarray) -> None:
        """Write ``block`` (n, *shape[1:]) at entries start .. start + n of the first axis."""
        data = np.ascontiguousarray(block, dtype=self.dtype).tobytes()
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        with open(self.path, "r+b") as handle:
            os.pwrite(handle.fileno(), data, self.offset + start * row_bytes)
            os.fsync(handle.fileno())


@contextmanager
def full_disk_removes(staging: Path, need: str):
    """A full disk during a fill removes the staging folder (nothing half-written stays
    behind) and becomes a DiskFull naming cache.dir and ``need``; other errors pass."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error, staging):
            raise
        shutil.rmtree(staging, ignore_errors=True)
        raise DiskFull(f"cache.dir: the disk is full: {need} ({error})") from None


def publish_fill(staging: Path, folder: Path, meta: dict) -> None:
    """A finished fill: its meta written, its progress file dropped, renamed into place."""
    (staging / "meta.json").write_text(json.dumps(meta, indent=2))
    (staging / "progress.json").unlink(missing_ok=True)
    _publish(staging, folder)


def staging_folder(parent: Path, name: str) -> tuple[Path, Path]:
    """(``parent/.fill-<name>``, its lock file), created; an unwritable cache folder is a
    SpecError naming cache.dir."""
    staging = parent / f".fill-{name}"
    try:
        staging.mkdir(parents=True, exist_ok=True)
        lock = parent / f".fill-{name}.lock"
        lock.touch()
    except OSError as error:
        raise SpecError(f"cache.dir: cannot write the teacher cache under {parent.parent} "
                        f"({error.strerror or error})") from None
    return staging, lock


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read(folder: Path, views: int, rows: int) -> TeacherOutputCache | None:
    if not (folder / "meta.json").exists():
        return None
    try:
        logits = np.load(folder / "logits.npy", mmap_mode="r")
        augment = np.load(folder / "augment.npy", mmap_mode="r")
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        log.warning("teacher outputs: cache entry %s unreadable, recomputing", folder)
        return None
    if logits.shape[:2] != (views, rows):
        return None
    mixed = (folder / "partner.npy").exists()
    partner = np.load(folder / "partner.npy", mmap_mode="r") if mixed else None
    mix = np.load(folder / "mix.npy", mmap_mode="r") if mixed else None
    return TeacherOutputCache(folder, logits, augment, hit=True, meta=meta, partner=partner, mix=mix)


def teacher_outputs(
    teacher, checksum: str, bundle, *, views: int | str, fp16: bool, cache_dir: Path | None, batch_size: int = 1024,
    device="cpu", precision: str = "fp32", max_gb: float | None = None, progress=None,
) -> TeacherOutputCache:
    """Load the cached outputs for this (teacher, data, transform, views), computing them once.
    ``progress(done_views, total_views)`` is told after every view of a fill."""
    count = resolve_views(bundle.augment, views)
    if count > MAX_VIEWS:
        raise SpecError(f"cache.views: {count} views; at most {MAX_VIEWS}")
    root = cache_dir or default_cache_dir()
    key = cache_key(checksum, bundle, views if bundle.augment.enabled else 1, fp16, precision)
    folder = root / "teacher_outputs" / key
    found = _read(folder, count, bundle.n_rows)
    if found is not None:
        log.info("teacher outputs: cache hit %s", folder)
        return found
    classes = bundle.num_classes  # every teacher was checked to give one logit per class when it was loaded
    needed = cache_bytes(count, bundle.n_rows, classes, fp16, bundle.augment.mixing)
    if max_gb is not None and needed > max_gb * 1e9:
        raise SpecError(f"cache.views: {count} views x {bundle.n_rows} samples x {classes} classes need "
                        f"{needed / 1e9:.1f} GB, over cache.max_gb ({max_gb:g})")
    staging, lock = staging_folder(root / "teacher_outputs", key)
    with _locked(lock):
        found = _read(folder, count, bundle.n_rows)  # another process finished it while we waited
        if found is not None:
            return found
        with full_disk_removes(staging, f"the teacher-output cache needs {needed / 1e6:.0f} MB under {root}"):
            meta = _fill(teacher, bundle, staging, count, views, fp16, classes, batch_size, device, precision,
                         progress)
            meta.update(teacher_checksum=checksum, source=bundle.source, views=count, fp16=fp16,
                        augment=bundle.augment.describe(), normalize=bundle.normalize.describe())
            publish_fill(staging, folder, meta)
    lock.unlink(missing_ok=True)
    computed = _read(folder, count, bundle.n_rows) or _fail(folder)
    computed.hit = False
    return computed


def _fail(folder: Path):
    raise SpecError(f"cache.dir: the teacher-output cache {folder} could not be read back after it was written")


def _fill(teacher, bundle, staging: Path, count: int, views: int | str, fp16: bool, classes: int, batch_size: int,
          device, precision: str, progress) -> dict:
    """Compute every missing view into ``staging``; returns the fill's meta (cost, agreement)."""
    n = bundle.n_rows  # the first n rows of the training file: those limit_train keeps
    logits = _Array(staging / "logits.npy", (count, n, classes), np.float16 if fp16 else np.float32)
    augment = _Array(staging / "augment.npy", (count, n, 3), np.int16)
    mixing = bundle.augment.mixing
    if mixing:  # function matching: every view is an image mixed with a partner, and so is its logit
        partners = _Array(staging / "partner.npy", (count, n), np.int32)
        mixes = _Array(staging / "mix.npy", (count, n, MIX_COLUMNS), np.float32)
        height, width = bundle.full_train.images.shape[-2:]
    state_path = staging / "progress.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"done": [], "seconds": 0.0}
    done = set(state["done"])
    if done:
        log.info("teacher outputs: resuming a fill at %d of %d views", len(done), count)
    exhaustive = exhaustive_views(bundle.augment) if views == "all" and bundle.augment.enabled else None
    meta: dict = {"precision": precision}
    if precision != "fp32":
        sample = bundle.normalize(bundle.full_train.images[:AGREEMENT_SAMPLES])
        meta["agreement_with_fp32"] = agreement(teacher, sample, torch.device(device), precision)
    log.info("teacher outputs: computing %d view(s) of %d samples (%s) -> %s", count, n, precision, staging.parent)
    for view in range(count):
        if view in done:
            continue
        started = time.perf_counter()
        params = _view_params(bundle.augment, view, n, exhaustive)
        augment.write_view(view, params.numpy())
        partner = mix = None
        if mixing:  # any row may be a partner here; the loop only uses views whose partner is in its split
            generator = torch.Generator().manual_seed(7_000_003 * (view + 1))
            partner = torch.randint(0, n, (n,), generator=generator)
            mix = draw_mix_params(bundle.augment, n, height, width, generator)
            partners.write_view(view, partner.numpy().astype(np.int32))
            mixes.write_view(view, mix.numpy())
        logits.write_view(view, _view_logits(teacher, bundle, params, batch_size, device, precision, partner, mix))
        done.add(view)
        state = {"done": sorted(done), "seconds": state["seconds"] + time.perf_counter() - started}
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_path)
        if progress is not None:
            progress(len(done), count)
    meta.update(fill_seconds=round(state["seconds"], 2), teacher_passes=count * n,
                bytes=cache_bytes(count, n, classes, fp16, mixing))
    return meta


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


def fill_teacher_caches(spec, bundle, teachers, progress=None) -> list:
    """The cached outputs of every teacher for this bundle ([] when the spec disables the cache,
    or when the data has no stable rows to cache by). ``progress(done_views, views)`` follows a fill."""
    if not spec.cache.enabled or not bundle.cacheable:
        return []
    device = resolve_device(spec.training.device)
    return [
        teacher_outputs(model, checksum, bundle, views=spec.cache.views, fp16=spec.cache.fp16,
                        cache_dir=spec.cache.dir, batch_size=spec.training.eval_batch_size, device=device,
                        precision=resolve_precision(requested_precision(spec.training), device),
                        max_gb=spec.cache.max_gb, progress=progress)
        for model, checksum, _ in teachers
    ]
