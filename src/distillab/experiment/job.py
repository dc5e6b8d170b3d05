"""What a run trains, however it was described: a ``JobSpec`` (zoo names, registered readers)
or a user's own modules and data from Python. From a ``Job`` on, both take one path
(``experiment.run``): the same phases, loop, cache and report."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from distillab.experiment.students import spec_student
from distillab.experiment.teacher import get_teachers
from distillab.models.zoo import build_model
from distillab.spec import CacheSpec, ConstraintsSpec, JobSpec, OutputSpec, TrainingSpec
from distillab.strategies import STRATEGIES
from distillab.tasks import TASKS, Task


@dataclass(frozen=True)
class StrategyChoice:
    name: str  # a registry name, or a Python-only strategy's class name
    params: dict


@dataclass
class RunSettings:
    """The parts of a spec that do not name models or data: how to train, cache and report.
    A ``JobSpec`` has the same attributes; the Python API builds one of these."""

    name: str
    strategy: StrategyChoice
    training: TrainingSpec
    cache: CacheSpec = field(default_factory=CacheSpec)
    constraints: ConstraintsSpec = field(default_factory=ConstraintsSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    accept_weak_teacher: bool = False

    def model_dump(self, mode: str = "json") -> dict:
        return {"name": self.name, "strategy": {"name": self.strategy.name, "params": self.strategy.params},
                **{key: getattr(self, key).model_dump(mode=mode)
                   for key in ("training", "cache", "constraints", "output")},
                "accept_weak_teacher": self.accept_weak_teacher}


@dataclass
class Job:
    settings: Any  # JobSpec or RunSettings
    task: Task
    strategy_cls: type
    params: BaseModel
    build_data: Callable[[int], Any]  # seed -> the data object of that seed's split
    build_student: Callable[[Any], nn.Module]  # data -> a fresh student (the caller seeds torch first)
    load_teachers: Callable[..., list]  # (first data, resume, callbacks) -> [(model, checksum, facts)]
    student_name: str
    teacher_names: list[str]
    record: dict  # what the report keeps as "spec"
    spec: JobSpec | None = None  # the spec it came from (None from Python)

    @property
    def strategy_name(self) -> str:
        return self.settings.strategy.name

    def student_for(self, seed: int, data) -> nn.Module:
        torch.manual_seed(seed)  # scratch and distilled students start from the same weights
        return self.build_student(data)

    def stage_model(self, stage, data, seed: int) -> nn.Module:
        """The model one stage of a multi-stage strategy trains: the job's student, or a zoo model."""
        if not stage.model:
            return self.student_for(seed, data)
        torch.manual_seed(seed)
        return build_model(stage.model, data.in_shape, data.num_classes, stage.model_args)

    def make_strategy(self, teachers: list, student: nn.Module, data):
        return self.strategy_cls(teachers, student, self.params, in_shape=data.in_shape)

    @classmethod
    def from_spec(cls, spec: JobSpec) -> Job:
        strategy_cls = STRATEGIES[spec.strategy.name]
        task = TASKS[spec.task]
        return cls(
            settings=spec, task=task, strategy_cls=strategy_cls,
            params=strategy_cls.Params.model_validate(spec.strategy.params),
            build_data=lambda seed: task.build(spec.data, seed, spec),
            build_student=lambda data: spec_student(spec, task, data),
            load_teachers=lambda first, resume=False, callbacks=None: spec_teachers(spec, task, first, resume,
                                                                                    callbacks),
            student_name=spec.student.model,
            teacher_names=[t.model or t.pretrained or t.hub or t.url
                           or (t.checkpoint.name if t.is_language_model else t.resolved_format) for t in spec.teachers],
            record=spec.model_dump(mode="json"), spec=spec,
        )


def as_job(job_or_spec) -> Job:
    """A Job, from a Job or a JobSpec (the benchmarks and the CLI hold specs)."""
    return job_or_spec if isinstance(job_or_spec, Job) else Job.from_spec(job_or_spec)


def spec_teachers(spec: JobSpec, task: Task, first, resume: bool = False, callbacks=None) -> list[tuple]:
    """[(model, checksum, facts)] for the spec's teachers: the task's own loading when it has one
    (language models, encoders), else the teacher files, or the teachers trained (once, cached)."""
    teachers = task.load_teachers(spec, first, resume, callbacks)
    if teachers is not None:
        return teachers
    return get_teachers(spec, first, resume=resume, callbacks=callbacks)
