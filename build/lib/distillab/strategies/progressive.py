"""Progressive distillation: an easy-to-hard curriculum, or a teacher-assistant chain."""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from distillab import losses
from distillab.tasks.image_classification import predict
from distillab.errors import DataError
from distillab.strategies.base import Params, Stage, StepOutput, Strategy

log = logging.getLogger("distillab")


class ProgressiveParams(Params):
    mode: Literal["curriculum", "assistant"] = Field("curriculum", description="curriculum or teacher-assistant chain")
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft (teacher) term")
    stage_epochs: list[float] = Field([0.2, 0.4, 0.4], min_length=1, description="share of training per stage")
    stage_data: list[float] = Field([1 / 3, 2 / 3, 1.0], min_length=1, description="easiest share of data per stage")
    assistant_model: str = Field("cnn", description="assistant architecture (assistant mode)")
    assistant_args: dict[str, Any] = Field(
        {"stages": [[32], [64, 64], [128]]}, description="assistant model_args (assistant mode)"
    )

    @model_validator(mode="after")
    def _stages_match(self):
        if len(self.stage_epochs) != len(self.stage_data):
            raise ValueError("stage_data: needs one entry per stage_epochs entry")
        if abs(sum(self.stage_epochs) - 1) > 1e-6:
            raise ValueError(f"stage_epochs: shares must sum to 1, got {sum(self.stage_epochs):.3f}")
        if any(not 0 < f <= 1 for f in self.stage_data) or self.stage_data[-1] != 1.0:
            raise ValueError("stage_data: shares must be in (0, 1] and the last stage must use all data (1.0)")
        return self


class Progressive(Strategy):
    """Curriculum KD (Bengio et al. 2009, curriculum learning) and teacher-assistant KD
    (Mirzadeh et al., AAAI 2020, arXiv:1902.03393). The loss is Hinton KD in both modes:

        L = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)

    curriculum: training samples are ranked by the teacher's confidence in the true label,
    p_t(y | x); stage k (a share ``stage_epochs[k]`` of the epochs) draws only from the
    easiest ``stage_data[k]`` share, so every epoch has the same number of steps.
    assistant: teacher -> assistant (``assistant_model``) -> student, two KD stages.
    """

    summary = "progressive KD: easy-to-hard curriculum by teacher confidence, or a teacher-assistant chain"
    paper = "Bengio et al. 2009 (curriculum); Mirzadeh et al. 2020 arXiv:1902.03393 (teacher assistant)"
    Params = ProgressiveParams
    supports_mix = False  # uses each sample's one true class

    def __init__(self, teachers, student, params, in_shape=None):
        super().__init__(teachers, student, params, in_shape)
        self.difficulty_order: torch.Tensor | None = None  # rows of the training split, easiest first

    @classmethod
    def stages(cls, params):
        if params.mode != "assistant":
            return None
        return [Stage("assistant", "spec", params.assistant_model, params.assistant_args), Stage("student", "previous")]

    def prepare(self, bundle) -> None:
        if self.params.mode != "curriculum":
            return
        if not getattr(bundle, "cacheable", False):
            raise DataError("strategy.params.mode: curriculum orders the training rows by difficulty, which needs "
                            "tensors or a registered dataset, not a DataLoader or Dataset")
        device = next(self.teachers[0].parameters(), torch.zeros(0)).device
        probs = torch.stack([
            predict(teacher, bundle.train.images, bundle.normalize, 1024, device).softmax(-1) for teacher in self.teachers
        ]).mean(0)  # (N, K)
        confidence = probs.gather(1, bundle.train.labels[:, None]).squeeze(1)  # (N,) p_t(y | x)
        self.difficulty_order = confidence.argsort(descending=True)
        log.info("curriculum: teacher confidence in the true label, easiest %.3f, median %.3f, hardest %.3f",
                 confidence.max().item(), confidence.median().item(), confidence.min().item())

    def stage_of(self, epoch: int, epochs: int) -> int:
        progress = epoch / epochs
        boundary = 0.0
        for stage, share in enumerate(self.params.stage_epochs):
            boundary += share
            if progress < boundary - 1e-9:
                return stage
        return len(self.params.stage_epochs) - 1

    def sample_order(self, epoch, epochs, generator):
        if self.difficulty_order is None:
            return None
        n = len(self.difficulty_order)
        pool = self.difficulty_order[: max(1, round(self.params.stage_data[self.stage_of(epoch, epochs)] * n))]
        # the pool, shuffled, repeated to n samples: the same number of steps every epoch
        picks = torch.cat([pool[torch.randperm(len(pool), generator=generator)] for _ in range(-(-n // len(pool)))])
        return picks[:n]

    def loss(self, batch):
        teacher_logits = self.teacher_logits(batch).mean(0)  # (B, K)
        student_logits = self.student(batch["inputs"])  # (B, K)
        p = self.params
        loss = losses.hinton_kd(student_logits, teacher_logits, batch["targets"], p.temperature, p.alpha)
        return StepOutput(loss, student_logits)
