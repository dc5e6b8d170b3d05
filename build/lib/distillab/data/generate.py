"""Sequence-level distillation data (Kim & Rush 2016; "automated dataset
generation"): the teacher continues prompts taken from the training text, each continuation
is scored by the teacher's own perplexity, the most fluent fraction is kept, and the result is
a JSONL corpus (one ``{"text": ...}`` document per line) that a job reads with
``data.dataset: text_folder``. The student then learns from what the teacher writes, not only
from its per-token distributions.

Prompts come from the training split only (never validation or test text), at evenly spaced
blocks; sampling uses a generator seeded by ``seed`` and the prompt's index, so the same
arguments give the same file. The file is written atomically with a ``.meta.json`` beside it
(teacher, prompts, settings, the perplexity threshold, counts and time).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from distillab.files import atomic_write_json, atomic_write_text
from distillab.errors import SpecError


@torch.no_grad()
def teacher_perplexity(teacher, prompt: torch.Tensor, continuation: torch.Tensor) -> float:
    """exp(mean NLL) of the continuation's tokens given the prompt, under the teacher."""
    ids = torch.cat([prompt, continuation]).unsqueeze(0)  # (1, P + G)
    logits = teacher(ids)[0, len(prompt) - 1 : -1].float()  # (G, V): the predictions of the continuation
    nll = torch.nn.functional.cross_entropy(logits, continuation)
    return math.exp(nll.item())


def generate_corpus(teacher, data, out: Path, *, prompts: int = 64, prompt_tokens: int = 32, new_tokens: int = 64,
                    temperature: float = 1.0, keep: float = 0.8, seed: int = 0, progress=None) -> dict:
    """Write ``out`` (JSONL) with the kept continuations; returns the meta written beside it.
    ``temperature`` 0 decodes greedily; ``keep`` is the fraction of lowest-perplexity
    continuations kept (1 keeps all)."""
    if not 0 < keep <= 1:
        raise SpecError(f"--keep: {keep} must be in (0, 1]")
    if prompt_tokens >= data.context_length:
        raise SpecError(f"--prompt-tokens: {prompt_tokens} must be shorter than the context ({data.context_length})")
    context = getattr(teacher, "context_length", None)
    if context is not None and prompt_tokens + new_tokens > context:
        raise SpecError(f"--new-tokens: {prompt_tokens} + {new_tokens} tokens exceed the teacher's context of {context}")
    blocks = data.train.tokens
    rows = torch.linspace(0, len(blocks) - 1, min(prompts, len(blocks))).round().long().unique()
    tokenizer = data.tokenizer
    started, records = time.perf_counter(), []
    teacher.eval()
    for done, row in enumerate(rows.tolist(), 1):
        prompt = blocks[row, :prompt_tokens]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + row)
        output = teacher.generate(prompt.unsqueeze(0), new_tokens, do_sample=temperature > 0,
                                  temperature=temperature or 1.0, generator=generator)[0]
        continuation = output[prompt_tokens:]
        records.append({"row": row, "prompt": tokenizer.decode(prompt), "text": tokenizer.decode(continuation),
                        "perplexity": teacher_perplexity(teacher, prompt, continuation)})
        if progress is not None:
            progress(done, len(rows))
    ranked = sorted(records, key=lambda r: r["perplexity"])
    kept = ranked[: max(1, round(len(ranked) * keep))]
    threshold = kept[-1]["perplexity"]
    kept.sort(key=lambda r: r["row"])  # the order of the source text
    lines = [json.dumps({"text": r["prompt"] + r["text"], "teacher_perplexity": round(r["perplexity"], 4)})
             for r in kept]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, "\n".join(lines) + "\n")
    meta = {"prompts": len(records), "kept": len(kept), "keep": keep, "perplexity_threshold": threshold,
            "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "temperature": temperature, "seed": seed,
            "source": data.source, "seconds": round(time.perf_counter() - started, 1),
            "median_perplexity": ranked[len(ranked) // 2]["perplexity"]}
    atomic_write_json(out.with_name(out.name + ".meta.json"), meta)
    return meta
