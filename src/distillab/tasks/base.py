"""The task interface: what a batch is, how a model is measured, what the teacher cache
stores. The engine knows nothing about pixels or tokens; it asks the task.

A batch is a dict of tensors: ``inputs`` (whatever the model takes), ``targets`` and, for
sequences, a boolean ``mask`` over the target positions. The data object of a split (a
``DataBundle`` from a registered reader, or a user's tensors, Dataset or DataLoader, see
``data.user``) yields those batches; the task turns a model's outputs on them into metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch


@dataclass
class Evaluation:
    """A model on one split: every metric, the task's primary one named, and the outputs
    (``logits`` (N, K), on the CPU, for tasks whose outputs are logits)."""

    metrics: dict[str, float]
    primary: str
    logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def value(self) -> float:
        return self.metrics[self.primary]

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]

    @property
    def loss(self) -> float:
        return self.metrics["loss"]


class Task:
    """One kind of problem. Subclasses set the class attributes and the methods below; a new
    task is one file and one line in ``tasks.TASKS``."""

    name: ClassVar[str]
    summary: ClassVar[str]
    metric: ClassVar[str]  # the primary metric: model selection on validation and the report's tables
    higher_is_better: ClassVar[bool] = True
    cache_kind: ClassVar[str] = "dense_logits"  # what the teacher-output cache stores
    cache_unit: ClassVar[str] = "views"  # what a cache fill's progress counts
    # False when the task has no labels to train a student without its teacher (embeddings):
    # the scratch twin is then the student as initialised, evaluated untrained.
    trains_scratch: ClassVar[bool] = True

    def build(self, data_spec, seed: int, spec=None):
        """The splits of a spec's ``data`` section for one seed (``spec``: the whole job spec)."""
        raise NotImplementedError

    def build_student(self, spec, data):
        """A fresh student of the spec (the caller seeds torch first)."""
        from distillab.models.zoo import build_model

        return build_model(spec.student.model, data.in_shape, data.num_classes, spec.student.model_args)

    def load_teachers(self, spec, data, resume: bool = False, callbacks=None) -> list[tuple] | None:
        """[(model, checksum, {"source": ...})] for the spec's teachers, for a task that loads its
        own (language models, encoders); None (the default): the experiment loads the teacher
        files, or trains the teachers the spec asks for."""
        return None

    def teacher_caches(self, settings, data, teachers, params, progress=None) -> list:
        """The teachers' cached outputs for ``data`` ([] when the cache is off or cannot serve)."""
        from distillab.data.cache import fill_teacher_caches

        return fill_teacher_caches(settings, data, teachers, progress)

    def model_facts(self, models: dict, data, repeats: int) -> dict[str, dict]:
        """Size and speed of each model (parameters, MB, MACs, latency), measured together."""
        from distillab.models.facts import facts_of

        return facts_of(models, data.in_shape, repeats)

    def evaluate(self, model, data, split: str, batch_size: int, device) -> Evaluation:
        """Every metric of ``model`` on ``data``'s ``split`` ("val" or "test"), in eval mode."""
        raise NotImplementedError

    def correct(self, student_outputs: torch.Tensor, batch: dict) -> tuple[int, int]:
        """(right, counted) for the running training metric of a step."""
        raise NotImplementedError

    def finish_run(self, job, data, teachers, phases: dict, folder, device) -> dict:
        """What a finished run adds to its report (and writes into its ``folder``) beyond the
        comparison: nothing by default."""
        return {}

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (None: nothing yet) on the primary metric."""
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best
