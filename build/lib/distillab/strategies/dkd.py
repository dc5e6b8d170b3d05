"""Decoupled knowledge distillation (DKD)."""

from __future__ import annotations

from pydantic import Field

from distillab import losses
from distillab.strategies.base import Params, StepOutput, Strategy


class DKDParams(Params):
    alpha: float = Field(1.0, ge=0, le=100, description="weight of the target-class term TCKD")
    beta: float = Field(8.0, ge=0, le=100, description="weight of the non-target-class term NCKD")
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T")
    ce_weight: float = Field(1.0, ge=0, le=100, description="weight of the hard-label cross-entropy")
    warmup_epochs: int = Field(5, ge=0, le=1000, description="epochs over which the KD term ramps up (0: none)")


class DKD(Strategy):
    """Zhao, Cui, Song, Qiu & Liang (CVPR 2022), "Decoupled Knowledge Distillation".

    L = ce_weight * CE(s, y) + w(e) * (alpha * TCKD + beta * NCKD)
    TCKD = T^2 * KL(b_t || b_s),  b = [p_y, 1 - p_y] of softmax(logits / T)
    NCKD = T^2 * KL(q_t || q_s),  q = softmax(logits / T) renormalised over the classes != y
    w(e) = min((e + 1) / warmup_epochs, 1) for the 0-based epoch e, as in mdistiller (whose
    epochs count from 1); w = 1 when the batch has no ``epoch`` or warmup_epochs = 0.

    With several teachers, t is the mean of their logits. Needs only logits, so it can use
    the teacher-output cache.
    """

    summary = "Decoupled KD: separately weighted target-class and non-target-class KL terms"
    paper = "Zhao et al. 2022, arXiv:2203.08679"
    Params = DKDParams
    supports_mix = False  # uses each sample's one true class

    def warmup_factor(self, batch: dict) -> float:
        epoch = batch.get("epoch")
        if epoch is None or self.params.warmup_epochs == 0:
            return 1.0
        return min((int(epoch) + 1) / self.params.warmup_epochs, 1.0)

    def loss(self, batch):
        teacher_logits = self.teacher_logits(batch).mean(0)  # (B, K)
        student_logits = self.student(batch["inputs"])  # (B, K)
        targets = batch["targets"]  # (B,)
        p = self.params
        target_term = losses.tckd(student_logits, teacher_logits, targets, p.temperature)
        non_target_term = losses.nckd(student_logits, teacher_logits, targets, p.temperature)
        hard = losses.cross_entropy(student_logits, targets)
        warmup = self.warmup_factor(batch)
        loss = p.ce_weight * hard + warmup * (p.alpha * target_term + p.beta * non_target_term)
        logs = {"tckd": target_term.item(), "nckd": non_target_term.item(), "hard": hard.item(), "warmup": warmup}
        return StepOutput(loss, student_logits, logs)
