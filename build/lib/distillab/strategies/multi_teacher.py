"""Multi-teacher KD: the student matches a weighted ensemble of several teachers."""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from distillab import losses
from distillab.errors import SpecError
from distillab.strategies.base import Params, StepOutput, Strategy

log = logging.getLogger("distillab")


class MultiTeacherParams(Params):
    weighting: Literal["fixed", "performance", "confidence"] = Field(
        "performance",
        description="fixed: the given weights; performance: by validation accuracy; confidence: per sample, "
        "by each teacher's max probability",
    )
    weights: list[float] | None = Field(
        None, description="fixed mode: one weight >= 0 per teacher, normalised to sum 1; null = equal weights"
    )
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (ensemble) term; 1 - alpha weighs CE")

    @field_validator("weights")
    @classmethod
    def _non_negative(cls, weights):
        if weights is not None:
            if any(w < 0 for w in weights):
                raise ValueError("must all be >= 0")
            if not sum(weights) > 0:
                raise ValueError("must not all be 0")
        return weights

    @model_validator(mode="after")
    def _weights_only_when_fixed(self):
        if self.weights is not None and self.weighting != "fixed":
            raise ValueError(f"weights: only used with weighting 'fixed' (weighting is {self.weighting!r})")
        return self


class MultiTeacher(Strategy):
    """Hinton KD towards a weighted ensemble of N teachers (possibly different architectures).
    Distilling an ensemble's averaged softened outputs follows Hinton et al. (2015) and You et
    al. (2017), "Learning from Multiple Teacher Networks" (KDD, output-layer term only); the
    teacher weighting schemes are ours (performance weighting by validation accuracy):

        p_ens(x) = sum_i w_i(x) softmax(t_i(x)/T),   sum_i w_i(x) = 1
        L = alpha * T^2 * KL(p_ens || softmax(s/T)) + (1 - alpha) * CE(s, y)

    Weights: fixed (given, normalised); performance (w_i = acc_i / sum_j acc_j on the
    validation split, computed once in ``prepare``); confidence (per sample,
    w_i(x) = c_i(x) / sum_j c_j(x) with c_i(x) the teacher's max probability at T = 1).
    """

    summary = "KD towards a weighted average of several teachers' softened probabilities"
    paper = "Hinton et al. 2015 arXiv:1503.02531; You et al. 2017 KDD doi:10.1145/3097983.3098135"
    Params = MultiTeacherParams

    def __init__(self, teachers, student, params, in_shape=None):
        super().__init__(teachers, student, params, in_shape)
        n = len(self.teachers)
        if n == 0:
            raise SpecError("teacher: multi_teacher needs at least one teacher")
        if params.weights is not None and len(params.weights) != n:
            raise SpecError(
                f"strategy.params.weights: got {len(params.weights)} weights for {n} teacher(s); give one per teacher"
            )
        weights = torch.tensor(params.weights, dtype=torch.float32) if params.weights else torch.ones(n)
        # A buffer, so the weights travel with .to(device) and are saved in checkpoints.
        self.register_buffer("teacher_weights", weights / weights.sum())  # (N,)

    @torch.no_grad()
    def prepare(self, bundle) -> None:
        if self.params.weighting != "performance":
            return
        accuracies = []
        for teacher in self.teachers:
            device = next(teacher.parameters(), torch.empty(0)).device
            right = counted = 0
            for batch in bundle.eval_batches("val", 512):
                logits = teacher(batch["inputs"].to(device)).float().cpu()  # (B, K) or (B, T, K)
                keep = batch["mask"].bool() if "mask" in batch else torch.ones_like(batch["targets"], dtype=torch.bool)
                right += int(((logits.argmax(-1) == batch["targets"]) & keep).sum())
                counted += int(keep.sum())
            accuracies.append(torch.tensor(right / max(1, counted)))
        accuracies = torch.stack(accuracies)  # (N,)
        self.teacher_weights.copy_(losses.performance_weights(accuracies))
        log.info(
            "multi_teacher: validation accuracies %s -> teacher weights %s",
            [round(a, 4) for a in accuracies.tolist()], [round(w, 4) for w in self.teacher_weights.tolist()],
        )

    def loss(self, batch):
        teacher_logits = self.teacher_logits(batch)  # (N, B, K)
        student_logits = self.student(batch["inputs"])  # (B, K)
        p = self.params
        if p.weighting == "confidence":
            # Confidence is the teacher's own certainty (T = 1); T only softens the target.
            weights = losses.confidence_weights(teacher_logits, temperature=1.0)  # (N, B)
        else:
            weights = self.teacher_weights  # (N,)
        target = losses.ensemble_targets(teacher_logits, weights, p.temperature)  # (B, K)
        soft = losses.soft_kl_to_probs(student_logits, target, p.temperature)
        hard = self.hard_loss(student_logits, batch)
        loss = p.alpha * soft + (1 - p.alpha) * hard
        per_teacher = weights if weights.dim() == 1 else weights.mean(1)  # (N,)
        logs = {"soft": soft.item(), "hard": hard.item()}
        logs.update({f"teacher_weight_{i}": w for i, w in enumerate(per_teacher.tolist())})
        return StepOutput(loss, student_logits, logs)
