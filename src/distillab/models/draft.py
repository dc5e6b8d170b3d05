"""A student as the teacher's draft model: speculative (assisted) greedy decoding with
transformers' ``generate(assistant_model=...)``, measured against the teacher decoding alone.

Per prompt, at batch 1, the teacher alone and the teacher with its draft generate the same
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


def same_vocabulary(teacher, draft) -> bool:
    return teacher.tokenizer.get_vocab() == draft.tokenizer.get_vocab()


class _Calls:
    def __init__(self, module):
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.count += 1


@torch.no_grad()
def speculative_decoding(teacher, draft, prompts: torch.Tensor, new_tokens: int, where: str = "student") -> dict:
    """Greedy decoding of ``prompts`` (P, T0) by the teacher alone and with ``draft`` (both ``CausalLM``)."""
    if not same_vocabulary(teacher, draft):
        raise SpecError(f"{where}: a draft model must share the teacher's tokenizer (it has {len(draft.tokenizer)} "
                        f"tokens, the teacher {len(teacher.tokenizer)}, or the same count mapped differently)")
    if not hasattr(draft.model, "generate"):
        raise SpecError(f"{where}: the draft is not a transformers model")
    pad = teacher.tokenizer.pad_token_id if teacher.tokenizer.pad_token_id is not None else 0
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, temperature=None,
                    top_p=None, top_k=None, pad_token_id=pad)
    teacher_model, draft_model = teacher.model.eval(), draft.model.eval()
    device = next(teacher_model.parameters()).device
    draft_model.to(device)
    prompts = prompts.to(device)

    def decode(ids, assisted: bool):
        extra = {"assistant_model": draft_model} if assisted else {}
        started = time.perf_counter()
        out = teacher_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **settings, **extra)
        return out[0, ids.shape[1]:], time.perf_counter() - started

    warm = prompts[:1, : min(8, prompts.shape[1])]
    decode(warm, False)
    decode(warm, True)
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
                    outputs[assisted], spent = decode(ids, True)
                finally:
                    teacher_calls.handle.remove()
                    draft_calls.handle.remove()
                teacher_passes += teacher_calls.count
                draft_passes += draft_calls.count
                generated += len(outputs[assisted])
            else:
                outputs[assisted], spent = decode(ids, False)
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
