"""A student as the teacher's draft model: speculative (assisted) greedy decoding with
transformers' ``generate(assistant_model=...)``, measured against the teacher decoding alone.

How many tokens the draft proposes per step (the lookahead ``k``) decides whether a draft pays,
so it is chosen on *validation* prompts before anything is timed on test: the teacher decodes them
greedily, the draft reads the teacher's output once (teacher-forced) to give ``p``, the share of
the teacher's next tokens that the draft's top-1 matches, and both models decode alone to give
``c``, the draft's cost per token relative to the teacher's. The expected speed-up of lookahead
``k`` is then (1 - p^(k+1)) / ((1 - p) (1 + k c)) (Leviathan et al., 2023, with the teacher's
verification pass costed as one decoding step), and the ``k`` in 1..8 that maximises it is used.
A fixed ``lookahead`` skips the choice.

On test prompts, at batch 1, the teacher alone and the teacher with its draft generate the same
number of new tokens greedily (end-of-text does not stop them early), timed alternately so that
load changes hit both alike. Reported: tokens per second of each, the speed-up, whether every
output is identical, and the acceptance rate -- draft tokens the teacher accepted over draft
tokens proposed, counted from the forward passes of both models (each teacher pass in assisted
decoding yields the accepted draft tokens plus one of its own).
"""

from __future__ import annotations

import time

import torch

from distillab.errors import SpecError

MAX_LOOKAHEAD = 8


def same_vocabulary(teacher, draft) -> bool:
    return teacher.tokenizer.get_vocab() == draft.tokenizer.get_vocab()


class _Calls:
    def __init__(self, module):
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1


def expected_speedup(agreement: float, cost: float, lookahead: int) -> float:
    """Expected speed-up of speculative decoding: draft top-1 agreement ``agreement`` per token,
    draft cost per token ``cost`` (relative to the teacher's), ``lookahead`` proposed tokens."""
    p = min(max(agreement, 0.0), 1.0)
    tokens = lookahead + 1 if p >= 1.0 else (1 - p ** (lookahead + 1)) / (1 - p)
    return tokens / (1 + lookahead * cost)


def _check(teacher, draft, where: str) -> None:
    if not same_vocabulary(teacher, draft):
        raise SpecError(f"{where}: a draft model must share the teacher's tokenizer (it has {len(draft.tokenizer)} "
                        f"tokens, the teacher {len(teacher.tokenizer)}, or the same count mapped differently)")
    if not hasattr(draft.model, "generate"):
        raise SpecError(f"{where}: the draft is not a transformers model")


def _greedy(model, ids: torch.Tensor, new_tokens: int, pad: int, assistant=None) -> tuple[torch.Tensor, float]:
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                    top_p=None, top_k=None, pad_token_id=pad)
    extra = {"assistant_model": assistant} if assistant is not None else {}
    started = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings, **extra)
    return out[0, ids.shape[1]:], time.perf_counter() - started


def _on_one_device(teacher, draft, prompts: torch.Tensor):
    """(teacher model, draft model, prompts, pad id): both models in eval mode on the teacher's device."""
    teacher_model, draft_model = teacher.model.eval(), draft.model.eval()
    device = next(teacher_model.parameters()).device
    draft_model.to(device)
    pad = teacher.tokenizer.pad_token_id if teacher.tokenizer.pad_token_id is not None else 0
    return teacher_model, draft_model, prompts.to(device), pad


@torch.no_grad()
def choose_lookahead(teacher, draft, prompts: torch.Tensor, new_tokens: int, where: str = "student") -> dict:
    """The draft's agreement ``p`` and relative cost ``c`` on ``prompts`` (validation), and the
    lookahead that maximises the expected speed-up."""
    _check(teacher, draft, where)
    teacher_model, draft_model, prompts, pad = _on_one_device(teacher, draft, prompts)
    warm = prompts[:1, : min(8, prompts.shape[1])]
    _greedy(teacher_model, warm, 2, pad)
    _greedy(draft_model, warm, 2, pad)
    agree = total = 0
    seconds = {"teacher": 0.0, "draft": 0.0}
    for prompt in prompts:
        ids = prompt[None]
        generated, spent = _greedy(teacher_model, ids, new_tokens, pad)
        seconds["teacher"] += spent
        seconds["draft"] += _greedy(draft_model, ids, new_tokens, pad)[1]
        sequence = torch.cat([ids[0], generated])[None]
        logits = draft_model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits[0]
        guesses = logits[ids.shape[1] - 1: -1].argmax(-1)  # the draft's next token before each generated one
        agree += int((guesses == generated).sum())
        total += len(generated)
    p, c = agree / total, seconds["draft"] / seconds["teacher"]
    expected = {k: expected_speedup(p, c, k) for k in range(1, MAX_LOOKAHEAD + 1)}
    best = max(expected, key=expected.get)
    return {"lookahead": best, "agreement": p, "relative_cost": c, "expected_speedup": expected[best],
            "chosen_on": f"{len(prompts)} validation prompts × {new_tokens} new tokens"}


@torch.no_grad()
def speculative_decoding(teacher, draft, prompts: torch.Tensor, new_tokens: int, where: str = "student",
                         lookahead: int | None = None, choice_prompts: torch.Tensor | None = None) -> dict:
    """Greedy decoding of ``prompts`` (P, T0) by the teacher alone and with ``draft`` (both ``CausalLM``),
    the draft proposing ``lookahead`` tokens per step -- chosen on ``choice_prompts`` when None
    (``choice_prompts`` None too: transformers' own default, a confidence-limited lookahead)."""
    _check(teacher, draft, where)
    choice = None
    if lookahead is None and choice_prompts is not None:
        choice = choose_lookahead(teacher, draft, choice_prompts, new_tokens, where)
        lookahead = choice["lookahead"]
    teacher_model, draft_model, prompts, pad = _on_one_device(teacher, draft, prompts)
    config = draft_model.generation_config
    saved = {key: getattr(config, key, None) for key in
             ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")}
    if lookahead is not None:  # exactly ``lookahead`` proposals per step, not cut short by the draft's confidence
        config.num_assistant_tokens, config.num_assistant_tokens_schedule = lookahead, "constant"
        config.assistant_confidence_threshold = 0.0
    try:
        measured = _timed(teacher_model, draft_model, prompts, new_tokens, pad)
    finally:
        for key, value in saved.items():
            setattr(config, key, value)
    return {**measured, "lookahead": lookahead if lookahead is not None else "transformers default",
            **({"lookahead_choice": choice} if choice else {})}


def _timed(teacher_model, draft_model, prompts: torch.Tensor, new_tokens: int, pad: int) -> dict:
    warm = prompts[:1, : min(8, prompts.shape[1])]
    _greedy(teacher_model, warm, new_tokens, pad)
    _greedy(teacher_model, warm, new_tokens, pad, draft_model)
    seconds = {"teacher": 0.0, "assisted": 0.0}
    identical = generated = teacher_passes = draft_passes = 0
    for index, prompt in enumerate(prompts):
        ids = prompt[None]
        order = (False, True) if index % 2 == 0 else (True, False)
        outputs = {}
        for assisted in order:
            if assisted:
                teacher_calls, draft_calls = _Calls(teacher_model), _Calls(draft_model)
                try:
                    outputs[assisted], spent = _greedy(teacher_model, ids, new_tokens, pad, draft_model)
                finally:
                    teacher_calls.handle.remove()
                    draft_calls.handle.remove()
                teacher_passes += teacher_calls.count
                draft_passes += draft_calls.count
                generated += len(outputs[assisted])
            else:
                outputs[assisted], spent = _greedy(teacher_model, ids, new_tokens, pad)
            seconds["assisted" if assisted else "teacher"] += spent
        identical += int(torch.equal(outputs[False], outputs[True]))
    tokens = len(prompts) * new_tokens
    accepted = max(0, generated - teacher_passes)
    return {
        "prompts": len(prompts), "prompt_tokens": int(prompts.shape[1]), "new_tokens": new_tokens,
        "teacher_tokens_per_s": tokens / seconds["teacher"],
        "assisted_tokens_per_s": tokens / seconds["assisted"],
        "speedup": seconds["teacher"] / seconds["assisted"],
        "acceptance_rate": accepted / draft_passes if draft_passes else 0.0,
        "teacher_passes_per_token": teacher_passes / max(1, generated),
        "identical_output": identical == len(prompts), "identical_prompts": identical,
        "threads": torch.get_num_threads(),
    }
