"""Size and speed of language models on the CPU at batch 1: prefill tokens per second (one
forward pass over a full context), decode tokens per second (greedy generation, one token
per step with the model's key/value cache), and the peak memory of that generation.

Peak memory is the process's resident-set high-water mark (``VmHWM``, Linux) during the
generation, after resetting it (``/proc/self/clear_refs``), minus the resident set before:
the memory a generation adds on top of weights already loaded, plus the weights' own bytes.
Where the kernel does not offer the reset, it is None.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import torch

from distillab.models.facts import BYTES_PER_MB, parameter_count, runtime_of, serialized_size_mb

PROMPT_TOKENS = 16
NEW_TOKENS = 32


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _weight_bytes(model) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


@torch.no_grad()
def lm_facts(models: dict, context_length: int, vocabulary: int, repeats: int = 5) -> dict[str, dict]:
    """Per model: params, size_mb, runtime, prefill_tokens_per_s and latency_ms (one batch-1
    forward over ``context_length`` tokens), decode_tokens_per_s, peak_memory_mb. Models are
    timed round-robin in a shuffled order, so load changes hit them alike."""
    rounds = max(2, min(repeats, 5))
    generator = torch.Generator().manual_seed(0)
    context = torch.randint(0, vocabulary, (1, context_length), generator=generator)
    prompt_tokens = min(PROMPT_TOKENS, context_length // 2)
    prompt = context[:, :prompt_tokens]
    new_tokens = min(NEW_TOKENS, context_length - prompt_tokens)
    prefill: dict[str, list[float]] = {name: [] for name in models}
    decode: dict[str, list[float]] = {name: [] for name in models}
    modes = {name: model.training for name, model in models.items()}
    for model in models.values():
        model.eval()
        model(context[:, :8])  # warm-up
    order = list(models)
    shuffle = random.Random(0)
    try:
        for _ in range(rounds):
            shuffle.shuffle(order)
            for name in order:
                start = time.perf_counter()
                models[name](context)
                prefill[name].append(time.perf_counter() - start)
                start = time.perf_counter()
                models[name].generate(prompt, new_tokens)
                decode[name].append(time.perf_counter() - start)
        peaks = {name: _peak_mb(model, prompt, new_tokens) for name, model in models.items()}
    finally:
        for name, model in models.items():
            model.train(modes[name])
    out = {}
    for name, model in models.items():
        prefill_s, decode_s = statistics.median(prefill[name]), statistics.median(decode[name])
        out[name] = {
            "params": parameter_count(model),
            "size_mb": serialized_size_mb(model),
            "macs": None,
            "runtime": runtime_of(model),
            "latency_ms": prefill_s * 1000.0,  # one batch-1 forward over a full context
            "prefill_tokens_per_s": context_length / prefill_s,
            "decode_tokens_per_s": new_tokens / decode_s,
            "peak_memory_mb": peaks[name],
        }
    return out


def _peak_mb(model, prompt, new_tokens: int) -> float | None:
    before = _status_kb("VmRSS")
    if before is None or not _reset_peak():
        return None
    model.generate(prompt, new_tokens)
    peak = _status_kb("VmHWM")
    return (max(0, peak - before) * 1024 + _weight_bytes(model)) / BYTES_PER_MB
