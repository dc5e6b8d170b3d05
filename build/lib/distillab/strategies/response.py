"""Response-based knowledge distillation (Hinton KD)."""

from __future__ import annotations

from pydantic import Field

from distillab import losses
from distillab.strategies.base import Params, StepOutput, Strategy


class ResponseParams(Params):
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) term; 1 - alpha weighs CE")


class Response(Strategy):
    """Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network".

    L = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

    ``alpha`` weighs the soft teacher term; ``1 - alpha`` weighs the hard-label term.
    With several teachers, t is the mean of their logits. A teacher that reveals only its
    top-k (``teacher.url``) is matched on those k classes and one tail bucket
    (``losses.topk_bucket_kl``).
    """

    summary = "Hinton KD: temperature-softened KL to the teacher plus hard-label CE"
    paper = "Hinton et al. 2015, arXiv:1503.02531"
    Params = ResponseParams
    tasks = None  # any logits: classes (B, K), or tokens (B, T, V) with a mask

    def loss(self, batch):
        teacher_logits = self.teacher_logits(batch).mean(0)  # (B, K), or (B, T, V) for a language model
        student_logits = self.student(batch["inputs"])  # (B, K)
        p = self.params
        top_k = min((t.top_k for t in self.teachers if getattr(t, "top_k", None)), default=None)
        if top_k is not None and top_k < teacher_logits.shape[-1]:
            soft = losses.topk_bucket_kl(student_logits, teacher_logits, top_k, p.temperature, mask=batch.get("mask"))
        else:
            soft = losses.soft_kl(student_logits, teacher_logits, p.temperature, mask=batch.get("mask"))
        hard = self.hard_loss(student_logits, batch)
        loss = p.alpha * soft + (1 - p.alpha) * hard
        return StepOutput(loss, student_logits, {"soft": soft.item(), "hard": hard.item()})
