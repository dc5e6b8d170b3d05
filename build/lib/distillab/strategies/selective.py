"""Selective KD: soft targets only where the teacher is right."""

from __future__ import annotations

from distillab import losses
from distillab.strategies.base import StepOutput, Strategy
from distillab.strategies.response import ResponseParams


class Selective(Strategy):
    """Hinton KD restricted to samples the teacher classifies correctly.

    Per sample i:  L_i = alpha * T^2 * KL(softmax(t_i/T) || softmax(s_i/T)) + (1 - alpha) * CE(s_i, y_i)
                   if argmax t_i = y_i, else L_i = CE(s_i, y_i).   L = mean_i L_i
    """

    summary = "Hinton KD on samples the teacher gets right, plain CE on the rest"
    paper = "Hinton et al. 2015 arXiv:1503.02531 (loss); teacher-correctness selection is distillab's"
    Params = ResponseParams
    supports_mix = False  # uses each sample's one true class

    def loss(self, batch):
        teacher_logits = self.teacher_logits(batch).mean(0)  # (B, K)
        student_logits = self.student(batch["inputs"])  # (B, K)
        targets = batch["targets"]
        loss = losses.selective_kd(student_logits, teacher_logits, targets, self.params.temperature, self.params.alpha)
        kept = (teacher_logits.argmax(-1) == targets).float().mean().item()
        return StepOutput(loss, student_logits, {"teacher_correct_fraction": kept})
