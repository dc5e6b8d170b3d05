"""``train``, ``evaluate`` and ``compare``: a model on its labels, a model measured, and the
teacher / scratch / distilled comparison of ``distillab run`` on your own models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn
from typing_extensions import Unpack

from distillab.api.arguments import TrainingArgs, spec_error, training_arguments, training_spec
from distillab.api.common import (
    DatasetLike,
    History,
    _bound,
    _cache,
    _check_module,
    _check_outputs,
    _engine_fit,
    _strategy,
    _teacher_keys,
    _teachers,
)
from distillab.api.text import (TEACHER_STUDENTS, TEXT_TASKS, as_text_model, image_cut_student, name_of, task_of,
                                teacher_student, text_data, tokenizer_of)
from distillab.data.user import LoaderData, user_data
from distillab.engine.callbacks import show_progress
from distillab.errors import SpecError
from distillab.experiment.job import Job, RunSettings, StrategyChoice
from distillab.runtime import resolve_device
from distillab.spec import OutputSpec
from distillab.strategies import STRATEGIES
from distillab.tasks import TASKS


def train(model: nn.Module, train_data: DatasetLike, val_data: DatasetLike = None, epochs: int = 10, *,
          seed: int = 0, label_smoothing: float = 0.0, run_dir: str | Path | None = None, resume: bool = False,
          callbacks: Sequence = (), progress: bool = True, val_size: float = 0.1,
          task: str = "image_classification", tokenizer=None, context_length: int | None = None,
          test_size: float = 0.05, limit: int | None = None, eval_limit: int | None = None,
          **training: Unpack[TrainingArgs]) -> History:
    """Train ``model`` on its labels alone (a teacher, or a baseline) with the same engine; it
    keeps the epoch best on validation, like ``Distiller.fit``. A language model
    (``task="language_modeling"``) trains on next-token CE over text, as ``Distiller.fit`` reads it."""
    _check_module(model, "model")
    task_ = task_of(task)
    training = training_spec(training, epochs=epochs, seeds=[seed])
    if task_.name == "text_embedding":
        raise SpecError("task: a text encoder has no labels to train on alone; distil it (Distiller)")
    if task_.name in TEXT_TASKS:
        if val_data is not None:
            raise SpecError("val_data: the validation text is the val_size part of each document of train_data; "
                            "leave val_data unset")
        model = as_text_model(model, tokenizer, "model", task_.name)
        data = text_data(task_.name, train_data, tokenizer_of([model], tokenizer), context_length, val_size,
                         test_size, limit, [model], eval_limit)
    else:
        data = user_data(train_data, val_data, None, seed, val_size)
    none = STRATEGIES["none"]
    strategy = none([], model, none.Params(label_smoothing=label_smoothing), in_shape=data.in_shape)
    return _engine_fit(strategy, data, training, seed, run_dir, resume, callbacks, progress, "train", task_)


def evaluate(model: nn.Module, data: DatasetLike, batch_size: int = 1024, device="cpu",
             task=TASKS["image_classification"]) -> dict[str, float]:
    """Every metric of any model on one split of user data."""
    _check_module(model, "model")
    split = LoaderData(data, data, data, seed=0)
    return task.evaluate(model, split, "test", batch_size, torch.device(device)).metrics


def compare(teacher, student, train_data: DatasetLike, test_data: DatasetLike = None, *, val_data=None,
            seeds: Sequence[int] = (0, 1, 2), epochs: int = 10, strategy="response", temperature=None, alpha=None,
            strategy_params=None, loss=None, out_dir: str | Path | None = None, name: str = "comparison",
            resume: bool = False, overwrite: bool = True, progress: bool = True, val_size: float = 0.1,
            cache: bool = True, cache_views: int | str = 4, plots: bool = True, latency_repeats: int = 50,
            task: str = "image_classification", tokenizer=None, student_args: dict | None = None,
            context_length: int | None = None, test_size: float = 0.05, limit: int | None = None,
            eval_limit: int | None = None,
            accept_weak_teacher: bool = False, discard_unfinished: bool = False, **training: Unpack[TrainingArgs]):
    """Teacher, scratch student and distilled student over ``seeds``, with the paired test:
    ``distillab run``'s experiment on your own models. Returns the Report; report.md, report.json
    and the plots are written to ``out_dir`` (default runs/<name>).

    ``student`` is a function returning a fresh student (each seed and role trains its own,
    scratch and distilled twins from the same initial weights), or a zoo model name.
    ``train_data`` is (inputs, targets) tensors, a Dataset or a DataLoader, with ``test_data``
    alike; or a registered dataset name (``"digits"``) or a spec's ``data`` section as a dict,
    whose own splits are used.

    Language models (``task="language_modeling"``) and text encoders (``"text_embedding"``):
    ``train_data`` is text, a list of documents or a corpus name, cut by position into train,
    validation and test parts of each document (``val_size``, ``test_size``; ``context_length``
    tokens per block or sentence; ``limit`` training tokens or sentences; ``eval_limit`` the
    validation and test tokens of a language model, each), tokenised by
    ``tokenizer`` (default: the teacher's own); ``test_data`` and ``val_data`` stay unset. An
    encoder's scratch twin is the student as initialised (there are no labels to train it on).
    ``student_args`` go to a zoo student (``student="gpt", student_args={"layers": 4, ...}``).

    Before training, a classifier teacher is measured on validation; one near chance stops the
    comparison unless ``accept_weak_teacher``. ``overwrite`` replaces a finished comparison in
    ``out_dir``; an unfinished one is continued with ``resume`` or discarded with ``discard_unfinished``.
    """
    from distillab.experiment.run import progress_bars, run_job
    from distillab.models.zoo import MODELS, build_model

    arguments = training_arguments(training)  # an unknown argument fails before anything is built
    task = task_of(task)
    teachers = _teachers(teacher)
    text = task.name in TEXT_TASKS
    if text:
        teachers = [as_text_model(t, tokenizer, f"teacher[{i}]" if len(teachers) > 1 else "teacher", task.name)
                    for i, t in enumerate(teachers)]
        tokenizer = tokenizer_of(teachers, tokenizer)
    strategy_cls, params, extra = _strategy(strategy, loss, temperature, alpha, strategy_params)
    if isinstance(student, str) and text and student in TEACHER_STUDENTS:
        student_name = student

        def build_student(data):
            return teacher_student(student_name, teachers[0], student_args or {}, data)
    elif student == "teacher_pruned" and task.name == "image_classification":
        from distillab.models.cut import cut_shape

        cut_shape(teachers[0], dict(student_args or {}), "student_args")  # refused before anything trains
        student_name = student

        def build_student(data):  # the cut does not depend on torch's seed: both twins start from it
            return image_cut_student(teachers[0], student_args or {}, data)
    elif isinstance(student, str):
        if student not in MODELS:
            raise SpecError(f"student: unknown zoo model {student!r}; pass a function returning your nn.Module")
        student_name = student

        def build_student(data):
            return build_model(student_name, data.in_shape, data.num_classes, student_args or {}, "student_args")
    elif isinstance(student, nn.Module) or not callable(student):
        raise SpecError("student: compare trains a fresh student for every seed and role; pass a function that "
                        "returns one (e.g. student=lambda: MyStudent()) or a zoo model name")
    else:
        if student_args:
            raise SpecError("student_args: they go to a zoo student; your function builds its own student")

        def build_student(data):
            model = _check_module(student(), "student()")
            return as_text_model(model, tokenizer, "student()", task.name) if text else model

        student_name = name_of(build_student(None))

    if text:
        if test_data is not None or val_data is not None:
            raise SpecError("test_data: the validation and test text are the val_size and test_size parts of each "
                            "document of train_data; leave test_data and val_data unset")
        splits = text_data(task.name, train_data, tokenizer, context_length, val_size, test_size, limit, teachers,
                           eval_limit)
        build_data = lambda seed: splits  # noqa: E731  (the split is by position: the same for every seed)
        data_record = {"dataset": splits.name if isinstance(train_data, (list, tuple)) else train_data,
                       "context_length": splits.context_length}
    elif isinstance(train_data, (str, dict)):  # a registered dataset, or a spec's data section
        from distillab.spec import DataSpec

        if test_data is not None or val_data is not None:
            raise SpecError("test_data: a registered dataset brings its own splits; leave test_data and val_data unset")
        try:
            data_spec = DataSpec.model_validate(
                {"dataset": train_data, "val_size": val_size} if isinstance(train_data, str) else train_data)
        except ValidationError as error:
            raise spec_error(error, "train_data", DataSpec) from None
        build_data = lambda seed: task.build(data_spec, seed)  # noqa: E731
        data_record = {"dataset": train_data}
    else:
        if test_data is None:
            raise SpecError("test_data: compare measures every model on a test split; pass test_data")
        build_data = lambda seed: user_data(train_data, val_data, test_data, seed, val_size)  # noqa: E731
        data_record = {"dataset": type(train_data).__name__}
    training = training_spec(arguments, epochs=epochs, seeds=list(seeds))
    strategy_name = strategy if isinstance(strategy, str) and loss is None else (
        "custom_loss" if loss is not None else strategy.__name__)
    settings = RunSettings(name, StrategyChoice(strategy_name, params.model_dump(mode="json")), training,
                        _cache(cache, cache_views), output=OutputSpec(plots=plots, tensorboard=False,
                                                                    latency_repeats=latency_repeats),
                        accept_weak_teacher=accept_weak_teacher)
    def load_teachers(first, resume=False, callbacks=None):
        device_ = resolve_device(training.device)
        _check_outputs(teachers, build_student(first).to(device_), first, device_, task.name)
        return [(t, key, {"source": f"Python object ({name_of(t)})"})
                for t, key in zip(teachers, _teacher_keys(teachers, first))]

    job_cls = strategy_cls if not extra else _bound(strategy_cls, extra)
    job = Job(settings=settings, task=task, strategy_cls=job_cls, params=params, build_data=build_data,
              build_student=build_student, load_teachers=load_teachers, student_name=student_name,
              teacher_names=[name_of(t) for t in teachers],
              record={**settings.model_dump(), "task": task.name, "data": data_record,
                      "teacher": [name_of(t) for t in teachers], "student": student_name})
    if progress:
        show_progress()
    return run_job(job, out_dir, resume=resume, overwrite=overwrite,
                   callbacks=progress_bars(job) if progress else None,
                   discard_unfinished=discard_unfinished)
