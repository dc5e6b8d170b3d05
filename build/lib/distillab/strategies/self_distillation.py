"""Born-again networks: a student distils from an earlier generation of itself."""

from __future__ import annotations

from pydantic import Field

from distillab import losses
from distillab.strategies.base import Params, Stage, StepOutput, Strategy


class SelfParams(Params):
    generations: int = Field(2, ge=1, le=10, description="distillation generations after the scratch model")
    temperature: float = Field(1.0, gt=0, le=100, description="softmax temperature T")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the soft (previous generation) term")


class SelfDistillation(Strategy):
    """Born-Again Networks (Furlanello et al., ICML 2018, arXiv:1805.04770).

    Generation 0 is the student trained from scratch; generation k+1 has the same
    architecture and learns from generation k:

        L_{k+1} = alpha * T^2 * KL(softmax(s_k/T) || softmax(s_{k+1}/T)) + (1 - alpha) * CE(s_{k+1}, y)

    The job's teacher is not used. The report lists every generation.
    """

    summary = "born-again self-distillation: each generation of the student learns from the previous one"
    paper = "Furlanello et al. 2018, arXiv:1805.04770"
    Params = SelfParams
    supports_mix = False  # uses each sample's one true class

    @classmethod
    def stages(cls, params):
        return [Stage(f"generation_{k}", "scratch" if k == 1 else "previous") for k in range(1, params.generations + 1)]

    def loss(self, batch):
        teacher_logits = self.teacher_logits(batch).mean(0)  # (B, K): the previous generation
        student_logits = self.student(batch["inputs"])  # (B, K)
        p = self.params
        loss = losses.hinton_kd(student_logits, teacher_logits, batch["targets"], p.temperature, p.alpha)
        return StepOutput(loss, student_logits)
