"""Plain supervised training: the teacher's own training and the scratch baseline."""

from __future__ import annotations

from pydantic import Field

from distillab.strategies.base import Params, StepOutput, Strategy


class NoneParams(Params):
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the cross-entropy")


class NoDistillation(Strategy):
    """Cross-entropy with the hard labels; the teacher is not used.

    L = CE(s, y)
    """

    summary = "plain supervised training (no teacher): the scratch baseline and teacher training"
    paper = "-"
    Params = NoneParams
    uses_teacher = False
    tasks = None

    def loss(self, batch):
        student_logits = self.student(batch["inputs"])  # (B, K)
        loss = self.hard_loss(student_logits, batch, label_smoothing=self.params.label_smoothing)
        return StepOutput(loss, student_logits)
