"""``Distiller``: distil your own teacher into your own student, Keras-style (fit, evaluate)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from typing_extensions import Unpack

from distillab.api.arguments import TrainingArgs, training_arguments, training_spec
from distillab.api.common import (
    DatasetLike,
    History,
    _check_module,
    _check_outputs,
    _device_of,
    _engine_fit,
    _strategy,
    _teacher_keys,
    _teachers,
)
from distillab.api.functions import evaluate
from distillab.api.text import (TEACHER_STUDENTS, TEXT_TASKS, as_text_model, image_cut_student, task_of,
                                teacher_student, text_data, tokenizer_of)
from distillab.data.user import user_data
from distillab.errors import SpecError
from distillab.experiment.job import RunSettings, StrategyChoice
from distillab.runtime import resolve_device
from distillab.spec import CacheSpec
from distillab.strategies.base import Strategy


class Distiller:
    """Distil ``teacher`` (an nn.Module, or a list for multi-teacher strategies) into ``student``.

    ``strategy``: a registry name (``distillab strategies``) or a ``Strategy`` subclass;
    ``temperature`` and ``alpha`` go to strategies that have them (``alpha`` weighs the soft,
    teacher term); ``strategy_params`` holds the rest. ``loss`` replaces the strategy with a
    callable ``(student_logits, teacher_logits, targets) -> loss``.
    The training arguments (``TrainingArgs``: optimizer, lr, weight_decay, batch_size, schedule,
    device, precision) are those of a spec's ``training`` section.

    An image student can be cut from a zoo ResNet or CNN teacher: ``student="teacher_pruned"`` with
    ``student_args`` such as ``{"keep": 0.5, "blocks": [1, 1, 1]}`` (made when ``fit`` has the data).
    A language-model student can be made from a transformers teacher: ``student="teacher_pruned"``
    (cut to its most important parts, scored on the training text when ``fit`` reads it),
    ``"teacher_layers"`` or ``"teacher_width"``, with ``student_args`` as a spec's ``model_args``.
    """

    def __init__(self, teacher, student, strategy="response", *, temperature: float | None = None,
                 alpha: float | None = None, strategy_params: dict | None = None, loss: Callable | None = None,
                 cache: bool = True, cache_dir: str | Path | None = None, task: str = "image_classification",
                 tokenizer=None, student_args: dict | None = None, **training: Unpack[TrainingArgs]):
        self.task = task_of(task)
        self.teachers = _teachers(teacher)
        self._cut = None  # (name, args) of a student cut from the teacher, made when fit() has the text
        self.tokenizer = None
        if isinstance(student, str) and self.task.name == "language_modeling" and student in TEACHER_STUDENTS:
            self._cut = (student, dict(student_args or {}))
        elif student == "teacher_pruned" and self.task.name == "image_classification":
            from distillab.models.cut import cut_shape

            cut_shape(self.teachers[0], dict(student_args or {}), "student_args")  # refused now, not in fit()
            self._cut = (student, dict(student_args or {}))
        elif student_args:
            raise SpecError("student_args: they go with a student made from the teacher (student=\"teacher_pruned\", "
                            "\"teacher_layers\" or \"teacher_width\"); your module is already built")
        self.student = None if self._cut else _check_module(student, "student")
        if self.task.name in TEXT_TASKS:
            self.teachers = [as_text_model(t, tokenizer, f"teacher[{i}]" if len(self.teachers) > 1 else "teacher",
                                           task) for i, t in enumerate(self.teachers)]
            self.tokenizer = tokenizer_of(self.teachers, tokenizer)
            if self._cut and self._cut[0] != "teacher_pruned":  # needs no text: made now
                self.student = teacher_student(self._cut[0], self.teachers[0], self._cut[1], None)
            elif self.student is not None:
                self.student = as_text_model(self.student, self.tokenizer, "student", task)
        self.strategy_cls, self.params, self._extra = _strategy(strategy, loss, temperature, alpha, strategy_params)
        tasks = self.strategy_cls.tasks
        if tasks is not None and self.task.name not in tasks:
            raise SpecError(f"strategy: {self.strategy_cls.__name__} serves {', '.join(tasks)}, not {self.task.name}")
        self._training = training_arguments(training)
        training_spec(self._training)  # bad settings fail here, naming the argument
        self.cache = CacheSpec(enabled=cache, dir=Path(cache_dir) if cache_dir else None)
        self.history: History | None = None
        self.data = None  # the splits of a text task's text, once fit() has read it
        self.deployed: nn.Module | None = None
        self._device = self._common_device(self._training["device"])

    def _common_device(self, device: str) -> torch.device:
        """The training device; a teacher on another device than the student is an error."""
        student_device = _device_of(self.student) if self.student is not None else None
        for index, teacher in enumerate(self.teachers):
            teacher_device = _device_of(teacher)
            where = "teacher" if len(self.teachers) == 1 else f"teacher[{index}]"
            if teacher_device is not None and student_device is not None and teacher_device != student_device:
                raise SpecError(f"{where}: its weights are on {teacher_device} but the student's are on "
                                f"{student_device}; move both to one device (e.g. teacher.to('{student_device}'))")
        if device == "auto" and student_device is not None:
            return student_device
        return resolve_device(device)

    def _strategy(self, data) -> Strategy:
        teachers = self.teachers if self.strategy_cls.uses_teacher else []
        try:
            return self.strategy_cls(teachers, self.student, self.params, in_shape=data.in_shape, **self._extra)
        except SpecError as error:  # e.g. a layer name that does not exist: name the argument as given here
            message = str(error)
            for prefix in ("strategy.params.", "strategy "):
                if message.startswith(prefix):
                    message = ("strategy_params." if prefix.endswith(".") else "strategy: ") + message[len(prefix):]
            raise SpecError(message) from None

    def fit(self, train_data: DatasetLike, val_data: DatasetLike = None, epochs: int = 10, *, seed: int = 0,
            run_dir: str | Path | None = None, resume: bool = False, callbacks: Sequence = (),
            progress: bool = True, val_size: float = 0.1, context_length: int | None = None, test_size: float = 0.05,
            limit: int | None = None, eval_limit: int | None = None) -> History:
        """Train the student; keep the epoch best on validation (``val_data``, or ``val_size`` of
        ``train_data`` held out by ``seed``). ``run_dir`` keeps the epoch checkpoints, so
        ``resume=True`` continues an interrupted fit; without it they go to a temporary folder.

        Language models and text encoders: ``train_data`` is text (documents or a corpus name),
        cut by position into train, validation (``val_size``) and test (``test_size``) parts of
        each document, in blocks (or sentences) of at most ``context_length`` tokens (default
        128, or the teacher's context when shorter); ``limit`` trains on that many tokens (or
        sentences), and ``eval_limit`` evaluates a language model on that many validation tokens."""
        if self.strategy_cls.stages(self.params):
            raise SpecError(f"strategy: {self.strategy_cls.__name__} trains several models in stages; use compare(), "
                            "which builds each one")
        training = training_spec({**self._training, "device": self._device.type}, epochs=epochs, seeds=[seed])
        if self.task.name in TEXT_TASKS:
            if val_data is not None:
                raise SpecError("val_data: the validation text is the val_size part of each document of train_data; "
                                "leave val_data unset")
            data = text_data(self.task.name, train_data, self.tokenizer, context_length, val_size, test_size, limit,
                             self.teachers, eval_limit)
            self.data = data
            if self.student is None:  # cut from the teacher, scored on this text's training part
                self.student = teacher_student(self._cut[0], self.teachers[0], self._cut[1], data)
        else:
            data = user_data(train_data, val_data, None, seed, val_size)
            if self.student is None:  # cut from the teacher, on these training inputs
                self.student = image_cut_student(self.teachers[0], self._cut[1], data).to(self._device)
        _check_outputs(self.teachers, self.student, data, self._device, self.task.name)
        strategy = self._strategy(data)
        caches = []
        if self.cache.enabled and data.cacheable and self.strategy_cls.uses_teacher and self.strategy_cls.logits_only:
            keys = _teacher_keys(self.teachers, data)
            if all(key is not None for key in keys):
                settings = RunSettings("fit", StrategyChoice(self.strategy_cls.__name__, {}), training, self.cache)
                caches = self.task.teacher_caches(settings, data, [(t, key, {}) for t, key in zip(self.teachers, keys)],
                                                  self.params)
        self.history = _engine_fit(strategy, data, training, seed, run_dir, resume, callbacks, progress, "fit",
                                   self.task, caches)
        self.deployed = strategy.deployed_model()  # what serves predictions: the student (adaptive: G + student)
        return self.history

    def evaluate(self, data: DatasetLike = None, batch_size: int = 1024) -> dict[str, float]:
        """Every metric of the student on ``data`` (tensors, a Dataset or a DataLoader); for a
        text task, on the test part of the text ``fit`` read (bits per character, Spearman, ...)."""
        if self.task.name in TEXT_TASKS:
            if data is not None:
                raise SpecError("data: a text model is evaluated on the test part of the text given to fit(); "
                                "call evaluate() without data")
            if self.data is None:
                raise SpecError("evaluate: call fit() first; it reads the text and holds out its test part")
            return self.task.evaluate(self.student, self.data, "test", batch_size, self._device).metrics
        if data is None:
            raise SpecError("data: give the data to evaluate on")
        return evaluate(self.student, data, batch_size, self._device, self.task)
