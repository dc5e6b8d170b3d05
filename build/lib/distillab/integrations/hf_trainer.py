"""Distil inside your own ``transformers.Trainer``: ``DistillationTrainer`` is a Trainer whose
loss mixes next-token cross-entropy with a divergence from a frozen teacher, using distillab's
loss functions (the same as the ``token_kd`` strategy).

    from distillab.integrations.hf_trainer import DistillationTrainer
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=training_args,
                                  train_dataset=dataset, data_collator=collator,
                                  temperature=1.0, alpha=0.5, divergence="forward_kl")
    trainer.train()

Batches are the usual causal-LM ones (``input_ids``, ``attention_mask``, ``labels`` with -100
where not counted). Both terms are sums over counted tokens divided by the number of counted
tokens in the whole optimizer step (``num_items_in_batch``, which Trainer passes under
gradient accumulation), so accumulating micro-batches gives the loss of the full batch
(TRL #4719). The teacher and student must share a tokenizer; a teacher whose embedding matrix
has padded rows is cut to the student's vocabulary (TRL #3028).
"""

from __future__ import annotations

import torch
from transformers import Trainer

from distillab import losses
from distillab.data.text_cache import topk_logprobs
from distillab.errors import SpecError

IGNORE = -100


class DistillationTrainer(Trainer):
    def __init__(self, *args, teacher_model, temperature: float = 1.0, alpha: float = 0.5,
                 divergence: str = "forward_kl", beta: float = 0.5, top_k: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if divergence not in losses.tokens.DIVERGENCES:
            raise SpecError(f"divergence: {divergence!r} is not one of {', '.join(losses.tokens.DIVERGENCES)}")
        if not 0 <= alpha <= 1 or temperature <= 0:
            raise SpecError("alpha must be in [0, 1] and temperature > 0")
        self.teacher = teacher_model.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.temperature, self.alpha, self.divergence, self.beta, self.top_k = temperature, alpha, divergence, beta, top_k

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        model_inputs = {key: value for key, value in inputs.items() if key != "labels"}
        outputs = model(**model_inputs)
        self.teacher.to(outputs.logits.device)
        with torch.no_grad():
            teacher_logits = self.teacher(**model_inputs).logits[:, :-1]  # (B, T-1, V_t)
        student_logits = outputs.logits[:, :-1]  # (B, T-1, V): position i predicts token i + 1
        vocab = student_logits.shape[-1]
        if teacher_logits.shape[-1] < vocab:
            raise SpecError(f"the teacher has {teacher_logits.shape[-1]} output rows, the student {vocab}: "
                            "they must share a tokenizer")
        teacher_logits = teacher_logits[..., :vocab]  # padded rows cut
        targets = labels[:, 1:]
        mask = targets != IGNORE  # (B, T-1)
        count = num_items_in_batch if num_items_in_batch is not None else mask.sum()
        safe_targets = targets.masked_fill(~mask, 0)
        hard = losses.cross_entropy(student_logits, safe_targets, reduction="sum", mask=mask)
        if self.top_k is None:
            soft = losses.dense_divergence(student_logits, teacher_logits, self.temperature, self.divergence,
                                           self.beta, reduction="sum", mask=mask)
        else:
            ids, values, tail = topk_logprobs(teacher_logits, self.top_k, self.temperature)
            soft = losses.topk_divergence(student_logits, ids, values, tail, self.temperature, self.divergence,
                                          self.beta, reduction="sum", mask=mask)
        count = torch.as_tensor(count, device=student_logits.device).clamp_min(1)
        loss = (self.alpha * soft + (1 - self.alpha) * hard) / count
        return (loss, outputs) if return_outputs else loss
