"""The offline teacher cache for language models: per training token, the teacher's top-k
log-probabilities at a recorded temperature and the tail bucket log(1 - sum of the top-k),
the mass of the other V - k tokens. A KL over those k + 1 buckets is a true KL of two
distributions (a lower bound of the full one, by the data-processing inequality), where a
truncated top-k sum is not (verl #7856); the student's own k + 1 buckets are gathered from
its full softmax at the teacher's ids.

On disk, one folder per key (teacher, tokenizer, corpus and its split, context length,
temperature, precision) and k (``<key>-k32``; a larger k serves a smaller one, the top-k being
sorted): ``ids.npy`` (N, T, k) uint16 (int32 for a vocabulary over 65,536) and ``logprobs.npy``
(N, T, k) float16, memory-mapped for reading: k x 4 bytes per token (128 at k = 32). The tail
bucket is not stored: it is what the stored log-probabilities leave, log(1 - sum over the
distinct stored ids of p), computed on reading, so the k + 1 buckets read back sum to 1 exactly
and the tail absorbs the fp16 rounding of the k values (a few 1e-4 of mass; earlier versions
stored it, and their ``tail.npy`` is ignored). The fill writes block rows into a preallocated staging folder
with a progress file, so an interrupted fill resumes where it stopped; ``meta.json`` records
its cost (seconds, tokens per second) and how much teacher mass the top-k holds on this text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillab import losses
from distillab.data.cache import _Array, _locked, default_cache_dir, full_disk_removes, publish_fill, staging_folder
from distillab.runtime import autocast
from distillab.errors import SpecError

log = logging.getLogger("distillab")


def bytes_per_token(k: int, vocabulary: int) -> int:
    return k * (2 if vocabulary <= 65_536 else 4) + k * 2


def distinct_tail(ids: torch.Tensor, values: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The tail bucket of stored ids and log-probabilities (..., k) -> (...,): log(1 - the mass
    of the distinct ids), a repeated id (a sampled cache draws with replacement) counted once;
    the mass is clamped below 1 - eps, as ``losses.log1m_sumexp`` does."""
    order = ids.argsort(dim=-1)
    sorted_ids, probs = ids.gather(-1, order), values.float().gather(-1, order).exp()
    first = torch.ones_like(sorted_ids, dtype=torch.bool)
    first[..., 1:] = sorted_ids[..., 1:] != sorted_ids[..., :-1]
    mass = (probs * first).sum(-1).clamp(max=1 - eps)
    return torch.log1p(-mass)


def topk_logprobs(teacher_logits: torch.Tensor, k: int, temperature: float):
    """(ids (..., k) int64, log-probabilities (..., k), tail (...,)) of softmax(logits / T)."""
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (..., V)
    values, ids = log_p.topk(k, dim=-1)  # (..., k) each, sorted
    return ids, values, losses.log1m_sumexp(values)


def sampled_logprobs(teacher_logits: torch.Tensor, k: int, temperature: float, generator=None):
    """k token ids drawn with replacement from softmax(logits / T) per position (Sparse Logit
    Sampling's random-sampling KD: an unbiased estimate of the forward KL and its gradient),
    their log-probabilities, and the tail: log(1 - the mass of the distinct ids drawn).
    Shapes as ``topk_logprobs``; the first k' of the k draws are themselves a sample of k'."""
    log_p = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (..., V)
    shape = log_p.shape
    ids = torch.multinomial(log_p.reshape(-1, shape[-1]).exp(), k, replacement=True, generator=generator)
    ids = ids.reshape(*shape[:-1], k)
    values = log_p.gather(-1, ids)  # (..., k)
    distinct = torch.zeros_like(log_p).scatter_(-1, ids, values.exp()).sum(-1)  # duplicates written once
    return ids, values, torch.log1p(-distinct.clamp(max=1 - 1e-7))


@dataclass
class TopKCache:
    """A stored top-k, read as its first ``k`` entries (the top-k is sorted, so a cache of
    top-128 serves top-32 too; the tail of a smaller k is the mass of everything after it)."""

    folder: Path
    ids: np.ndarray  # (N, T, k_stored)
    logprobs: np.ndarray  # (N, T, k_stored) float16
    meta: dict
    hit: bool
    k: int = 0  # 0: all that is stored

    def __post_init__(self):
        self.k = self.k or self.ids.shape[-1]

    def lookup(self, rows: torch.Tensor):
        """(ids (B, T, k) int64, log-probabilities (B, T, k) fp32, tail (B, T) fp32) of block rows."""
        index = np.sort(rows.numpy())  # sorted reads of a memory map, then back to the batch's order
        order = torch.from_numpy(np.searchsorted(index, rows.numpy()))
        ids = torch.from_numpy(np.asarray(self.ids[index, :, : self.k], dtype=np.int64))[order]
        values = torch.from_numpy(np.asarray(self.logprobs[index, :, : self.k], dtype=np.float32))[order]
        return ids, values, distinct_tail(ids, values)


def cache_key(checksum: str, data, temperature: float, precision: str, selection: str = "top_k") -> str:
    parts = [f"teacher={checksum}", f"data={data.source}", f"T={temperature!r}", f"precision={precision}"]
    if selection != "top_k":  # top-k keys are those of earlier versions: their entries stay valid
        parts.append(f"selection={selection}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def _stored(root: Path, key: str, rows: int, k: int) -> TopKCache | None:
    """The smallest finished entry of this key holding at least the top-k, read as top-k."""
    entries = []
    for folder in root.glob(f"{key}-k*"):
        suffix = folder.name.rsplit("-k", 1)[1]
        if suffix.isdigit() and int(suffix) >= k:
            entries.append((int(suffix), folder))
    for _, folder in sorted(entries):
        found = _read(folder, rows)
        if found is not None:
            found.k = k
            return found
    return None


def _read(folder: Path, rows: int) -> TopKCache | None:
    if not (folder / "meta.json").exists():
        return None
    try:
        arrays = [np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("ids", "logprobs")]
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        log.warning("teacher top-k: cache entry %s unreadable, recomputing", folder)
        return None
    if arrays[0].shape[0] != rows:
        return None
    return TopKCache(folder, *arrays, meta=meta, hit=True)


def teacher_topk(teacher, checksum: str, data, *, k: int, temperature: float, cache_dir: Path | None,
                 batch_size: int = 8, device="cpu", precision: str = "fp32", max_gb: float | None = None,
                 progress=None, selection: str = "top_k") -> TopKCache:
    """The cached top-k of ``teacher`` on every training block of ``data``, computed once
    (``selection="sampled"``: k draws from the teacher instead, seeded by block row, so a
    resumed fill draws what an uninterrupted one would). ``progress(done_rows, rows)`` follows a fill."""
    if k > data.num_classes:
        raise SpecError(f"strategy.params.top_k: {k} is larger than the vocabulary ({data.num_classes})")
    rows, context = len(data.train), data.context_length
    needed = rows * context * bytes_per_token(k, data.num_classes)
    if max_gb is not None and needed > max_gb * 1e9:
        raise SpecError(f"cache.max_gb: the top-{k} cache of {rows * context:,} tokens needs {needed / 1e9:.1f} GB, "
                        f"over {max_gb:g}")
    root = cache_dir or default_cache_dir()
    key = cache_key(checksum, data, temperature, precision, selection)
    folder = root / "teacher_topk" / f"{key}-k{k}"
    found = _stored(folder.parent, key, rows, k)
    if found is not None:
        log.info("teacher top-k: cache hit %s (top-%d of %d)", found.folder, k, found.ids.shape[-1])
        return found
    staging, lock = staging_folder(root / "teacher_topk", f"{key}-k{k}")
    with _locked(lock):
        found = _stored(folder.parent, key, rows, k)
        if found is not None:
            return found
        with full_disk_removes(staging, f"the teacher cache needs {needed / 1e6:.0f} MB under {root}"):
            meta = _fill(teacher, data, staging, k, temperature, batch_size, device, precision, progress, selection)
            meta.update(teacher_checksum=checksum, source=data.source, k=k, temperature=temperature, selection=selection,
                        bytes_per_token=bytes_per_token(k, data.num_classes), bytes=needed)
            publish_fill(staging, folder, meta)
    lock.unlink(missing_ok=True)
    computed = _read(folder, rows)
    if computed is None:
        raise SpecError(f"cache.dir: the teacher cache {folder} could not be read back after it was written")
    computed.hit = False
    return computed


def _fill(teacher, data, staging: Path, k: int, temperature: float, batch_size: int, device, precision: str,
          progress, selection: str = "top_k") -> dict:
    rows, context = len(data.train), data.context_length
    id_type = np.uint16 if data.num_classes <= 65_536 else np.int32
    ids_out = _Array(staging / "ids.npy", (rows, context, k), id_type)
    values_out = _Array(staging / "logprobs.npy", (rows, context, k), np.float16)
    state_path = staging / "progress.json"
    state = (json.loads(state_path.read_text()) if state_path.exists()
             else {"rows_done": 0, "seconds": 0.0, "mass": 0.0, "tokens": 0})
    if state["rows_done"]:
        log.info("teacher top-k: resuming a fill at %d of %d blocks", state["rows_done"], rows)
    log.info("teacher top-k: computing top-%d of %d blocks x %d tokens (%s) -> %s", k, rows, context, precision,
             staging.parent)
    device = torch.device(device)
    teacher.to(device)
    for start in range(state["rows_done"], rows, batch_size):
        started = time.perf_counter()
        chunk = torch.arange(start, min(start + batch_size, rows))
        batch = data._batch(data.train, chunk)
        with torch.no_grad(), autocast(device, precision):
            logits = teacher(batch["inputs"].to(device))  # (B, T, V)
        if selection == "sampled":  # each block's draws seeded by its row: the same whatever the batching
            ids, values, tail = (torch.cat(parts) for parts in zip(*(
                sampled_logprobs(logits[i : i + 1], k, temperature, torch.Generator(device).manual_seed(int(row)))
                for i, row in enumerate(chunk))))
        else:
            ids, values, tail = topk_logprobs(logits, k, temperature)
        mask = batch["mask"].to(device)
        ids_out.write_rows(start, ids.cpu().numpy().astype(id_type))
        values_out.write_rows(start, values.cpu().numpy())
        covered = -torch.expm1(tail.float())  # (B, T) teacher mass inside the top-k (the distinct ids drawn)
        state = {"rows_done": int(chunk[-1]) + 1, "seconds": state["seconds"] + time.perf_counter() - started,
                 "mass": state["mass"] + float((covered * mask).sum()), "tokens": state["tokens"] + int(mask.sum())}
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_path)
        if progress is not None:
            progress(state["rows_done"], rows)
    tokens = rows * context
    return {"precision": precision, "fill_seconds": round(state["seconds"], 2), "teacher_tokens": tokens,
            "tokens_per_s": round(tokens / max(state["seconds"], 1e-9), 1),
            "topk_mass": state["mass"] / max(1, state["tokens"])}
