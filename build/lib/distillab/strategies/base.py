"""The Strategy interface. The base freezes the teachers and collects the trainable
parameters; that is all it does (design rule 6). A strategy computes one training loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from distillab import losses


class Params(BaseModel):
    """Base of every strategy's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar
    student_logits: torch.Tensor  # (B, K), for running accuracy
    logs: dict[str, float] = field(default_factory=dict)  # extra scalars for the metrics log
    scored: bool = True  # False: the logits are not of this batch's inputs (the student's own samples)


@dataclass(frozen=True)
class Stage:
    """One training stage of a multi-stage strategy (teacher-assistant chain, born-again).

    ``teacher``: "spec" (the job's teachers), "previous" (the student of the stage
    before) or "scratch" (this seed's scratch-trained student). ``model`` None means the
    job's student architecture.
    """

    name: str
    teacher: str
    model: str | None = None
    model_args: dict | None = None


class Strategy(nn.Module):
    """One distillation method. Subclasses set the class attributes and ``loss``.

    ``batch`` is a dict with ``inputs`` (B, C, H, W), ``targets`` (B,), ``index`` (B,), the
    0-based ``epoch`` and the total ``epochs`` (python ints), and, when the teacher-output
    cache is in use, ``teacher_logits`` (n_teachers, B, K).
    """

    summary: ClassVar[str]
    paper: ClassVar[str]
    Params: ClassVar[type[BaseModel]] = Params
    uses_teacher: ClassVar[bool] = True
    # True when the loss needs only the teachers' logits, so cached outputs can replace
    # the teacher forward pass. Strategies that read intermediate features set False.
    logits_only: ClassVar[bool] = True
    # False when the loss needs each sample's one true class (DKD's target split, selective's
    # teacher-is-right test), which a mixed image (mixup / cutmix) does not have.
    supports_mix: ClassVar[bool] = True
    # The tasks whose outputs the loss understands (None: logits of any shape, with a mask).
    tasks: ClassVar[tuple[str, ...] | None] = ("image_classification",)
    # How export and packaging rebuild a run's student: "weights" (the spec's student with the
    # saved weights), "rebuilt" (deployed_model() of the strategy rebuilds it first), or "pipeline"
    # (the strategy exports through its own pipeline, not from the run folder).
    student_export: ClassVar[str] = "weights"
    # False when pruning and quantization-aware training cannot fine-tune the student.
    compressible: ClassVar[bool] = True

    def __init__(self, teachers: list[nn.Module], student: nn.Module, params: BaseModel, in_shape=None):
        """``in_shape`` (C, H, W) lets a strategy size its adapters with a dummy forward pass."""
        super().__init__()
        self.in_shape = tuple(in_shape) if in_shape is not None else None
        self.teachers = nn.ModuleList(teachers)
        for teacher in self.teachers:
            teacher.eval()
            for parameter in teacher.parameters():  # not requires_grad_(): ScriptModules lack it
                parameter.requires_grad_(False)
        self.student = student
        self.params = params

    def train(self, mode: bool = True):
        super().train(mode)
        self.teachers.eval()  # teachers stay in eval mode, whatever the caller asks
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        teacher_ids = {id(p) for p in self.teachers.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in teacher_ids]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teachers.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teachers.")]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit the strategy: missing {missing}, unexpected {unexpected}")

    def hard_loss(self, student_logits: torch.Tensor, batch: dict, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy with the labels, mixed by ``mix_lam`` when the batch holds mixed images."""
        if "mix_lam" in batch:
            return losses.mixed_cross_entropy(student_logits, batch["targets"], batch["mix_targets"],
                                              batch["mix_lam"], label_smoothing=label_smoothing)
        return losses.cross_entropy(student_logits, batch["targets"], label_smoothing=label_smoothing,
                                    mask=batch.get("mask"))

    def teacher_logits(self, batch: dict) -> torch.Tensor:
        """(n_teachers, B, K): from the cache when the batch carries it, else computed online."""
        if "teacher_logits" in batch:
            return batch["teacher_logits"]
        with torch.no_grad():
            return torch.stack([teacher(batch["inputs"]).float() for teacher in self.teachers])

    def student_classes(self) -> int:
        """The student's number of outputs, from one forward pass on zeros of ``in_shape``
        in eval mode (no BatchNorm statistics are touched)."""
        was_training = self.student.training
        self.student.eval()
        device = next(self.student.parameters(), torch.empty(0)).device
        with torch.no_grad():
            num_classes = self.student(torch.zeros(2, *self.in_shape, device=device)).shape[-1]
        self.student.train(was_training)
        return num_classes

    def extra_parameter_count(self) -> int:
        """Parameters that exist only during training (adapters, discriminators)."""
        student_ids = {id(p) for p in self.student.parameters()}
        return sum(p.numel() for p in self.trainable_parameters() if id(p) not in student_ids)

    def prepare(self, bundle) -> None:
        """Called by the engine once before training, with the data (e.g. to weigh teachers
        by validation accuracy). Does nothing by default."""

    @classmethod
    def stages(cls, params: BaseModel) -> list[Stage] | None:
        """A multi-stage strategy lists its stages; the experiment trains them in order,
        each with this strategy's loss. None (the default): one stage."""
        return None

    def sample_order(self, epoch: int, epochs: int, generator: torch.Generator) -> torch.Tensor | None:
        """Rows of the training split to visit this epoch, in order (a curriculum); None,
        the default, lets the engine shuffle. Keep the length equal to the training set so
        every epoch has the same number of steps."""
        return None

    def selectable(self, epoch: int, epochs: int) -> bool:
        """Whether the model after this 0-based epoch may be selected on validation. True by
        default; a strategy whose early epochs train something else (adaptive's static
        phase) excludes them."""
        return True

    def deployed_model(self) -> nn.Module:
        """The module that serves predictions after training: the student, by default."""
        return self.student

    def loss(self, batch: dict) -> StepOutput:
        raise NotImplementedError


class OwnDiscriminator:
    """Mixin for a strategy whose discriminator (``self.discriminator``) takes its own Adam steps
    (``self.d_optimizer``) inside ``loss``: the engine's optimizer never sees D, D counts as a
    training-only parameter, and D's Adam moments are saved with the strategy's state, so a
    resumed run continues them. Put it before ``Strategy`` in the bases."""

    def attach_discriminator(self, discriminator: nn.Module, lr: float) -> None:
        self.discriminator = discriminator
        self.d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.999))

    def trainable_parameters(self) -> list[nn.Parameter]:
        d_ids = {id(p) for p in self.discriminator.parameters()}
        return [p for p in super().trainable_parameters() if id(p) not in d_ids]

    def extra_parameter_count(self) -> int:
        return super().extra_parameter_count() + sum(p.numel() for p in self.discriminator.parameters())

    def get_extra_state(self):
        return {"d_optimizer": self.d_optimizer.state_dict()}

    def set_extra_state(self, state):
        self.d_optimizer.load_state_dict(state["d_optimizer"])
