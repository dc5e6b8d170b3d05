"""What identifies a teacher to the caches that store its outputs.

A teacher loaded from a file is its file's checksum and format, plus how its inputs are
prepared (``teacher.input``). A teacher given from Python is an object: its weights alone do
not identify it (a wrapper around an onnxruntime session or a remote model has none, and a
``forward`` whose code changed keeps the same weights). Its key hashes its class, its state
and its outputs on a fixed probe batch of the data's own inputs. A teacher whose outputs on
that batch differ between two calls cannot be identified: nothing of it is cached.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn

from distillab.models.loading import state_checksum

log = logging.getLogger("distillab")

PROBE_ROWS = 16  # images or tensors; text data probes 2 blocks (a language model's outputs are (T, V) each)
PROBE_DECIMALS = 4  # outputs are hashed rounded, so float noise between identical calls stays the same key


def probe_inputs(data) -> torch.Tensor:
    """The fixed probe batch of ``data``: the first rows of its full training file, prepared as the
    teacher sees them (a split's rows depend on the seed; the file's first rows do not)."""
    full = getattr(data, "full_train", None)
    if full is not None and hasattr(data, "normalize"):
        return data.normalize(full.images[:PROBE_ROWS])
    rows = 2 if data.__class__.__module__.startswith("distillab.data.text") else PROBE_ROWS
    return data.example_inputs(rows)


@torch.no_grad()
def _outputs_digest(model: nn.Module, inputs: torch.Tensor) -> str | None:
    """sha256 of the outputs on ``inputs`` (fp32, eval mode, rounded), or None when two calls disagree."""
    was_training = getattr(model, "training", False)
    model.eval()
    device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
    try:
        first, second = (model(inputs.to(device)) for _ in range(2))
    finally:
        model.train(was_training)
    if not isinstance(first, torch.Tensor) or not isinstance(second, torch.Tensor):
        return None
    first, second = first.detach().float().cpu(), second.detach().float().cpu()
    if first.shape != second.shape or not torch.allclose(first, second, rtol=1e-5, atol=1e-6):
        return None
    rounded = torch.round(first * 10**PROBE_DECIMALS).to(torch.int64)
    return hashlib.sha256(str(tuple(first.shape)).encode() + rounded.numpy().tobytes()).hexdigest()


def python_teacher_key(model: nn.Module, data) -> str | None:
    """The cache key of a teacher object: class, state and outputs on the probe batch; None when
    its outputs are not reproducible (then nothing of it may be cached)."""
    outputs = _outputs_digest(model, probe_inputs(data))
    if outputs is None:
        return None
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    return hashlib.sha256(f"class={kind}|state={state_checksum(model)}|probe={outputs}".encode()).hexdigest()


def file_teacher_key(checksum: str, fmt: str | None, teacher_input: str) -> str:
    """The cache key of a teacher file: its checksum, its format and how its inputs are prepared."""
    if fmt in (None, "safetensors") and teacher_input == "normalized":
        return checksum  # the keys of earlier versions: their cached outputs stay valid
    return hashlib.sha256(f"file={checksum}|format={fmt}|input={teacher_input}".encode()).hexdigest()


_warned: set[str] = set()


def warn_uncached(where: str) -> None:
    """Say once per teacher that its outputs are computed online, and why."""
    if where not in _warned:
        _warned.add(where)
        log.warning("%s: its outputs on a fixed batch differ between two calls, so it cannot be identified; its "
                    "outputs are computed online and never cached", where)
