"""The Python face: distil your own ``nn.Module`` on your own data, no spec file needed.

    from distillab import Distiller, compare

    distiller = Distiller(teacher=my_teacher, student=my_student, strategy="response", temperature=4.0, alpha=0.9)
    history = distiller.fit(train_data, val_data=val_data, epochs=10)  # tensors, a Dataset or a DataLoader
    distiller.evaluate(test_data)                                        # {"accuracy": ..., "loss": ...}
    report = compare(teacher=my_teacher, student=lambda: MyStudent(), train_data=..., test_data=..., seeds=[0, 1, 2])

Language models take text: ``task="language_modeling"``, a teacher returning logits (B, T, V)
(a ``transformers`` causal LM is wrapped, given its tokenizer), and the documents as a list of
strings (split by position inside each, like a corpus) or a registered corpus name:

    distiller = Distiller(teacher=hf_lm, student=gpt, strategy="token_kd", task="language_modeling",
                          tokenizer=tokenizer, strategy_params={"top_k": 32})
    distiller.fit(documents, epochs=2, context_length=128)   # bits per character on validation
    compare(teacher=hf_lm, student=lambda: MyGPT(), train_data=documents, tokenizer=tokenizer,
            task="language_modeling", context_length=128)

Both build the same parts a spec does and hand them to the one engine (``engine.loop.fit``) and
the one experiment path (``experiment.run``): the loop, strategies, teacher-output cache,
checkpoints and resume, callbacks and the report are those of ``distillab run``.

Custom code is welcome here, and only here: ``strategy`` may be a ``Strategy`` subclass and
``loss`` a callable. A spec, and so the service, accepts registry names only.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from distillab.api_text import TEXT_TASKS, as_text_model, name_of, task_of, text_data, tokenizer_of
from distillab.data.user import LoaderData, user_data
from distillab.engine.callbacks import ProgressBar, show_progress
from distillab.runtime import resolve_device
from distillab.engine.loop import fit as engine_fit
from distillab.errors import DataError, SpecError
from distillab.experiment.job import Job, Settings, StrategyChoice
from distillab.models.identity import python_teacher_key, warn_uncached
from distillab.spec import CacheSpec, OutputSpec, TrainingSpec
from distillab.strategies import STRATEGIES, STRATEGY_ALIASES
from distillab.strategies.base import Params, StepOutput, Strategy
from distillab.tasks import TASKS

DatasetLike = object  # (inputs, targets) tensors, a torch Dataset, a DataLoader, or a registered dataset name


class CustomLoss(Strategy):
    """Your own loss: ``loss(student_logits, teacher_logits, targets) -> scalar tensor`` is the
    whole training objective (logits (B, K), the teachers' mean; targets (B,))."""

    summary = "a Python callable as the whole loss"
    paper = "-"
    tasks = None  # the callable decides what it understands

    def __init__(self, teachers, student, params, in_shape=None, loss_fn=None):
        super().__init__(teachers, student, params, in_shape)
        self.loss_fn = loss_fn

    def loss(self, batch):
        teacher_logits = self.teacher_logits(batch).mean(0)  # (B, K)
        student_logits = self.student(batch["inputs"])  # (B, K)
        value = self.loss_fn(student_logits, teacher_logits, batch["targets"])
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise SpecError(f"loss: the callable must return a scalar tensor, got "
                            f"{type(value).__name__}{tuple(value.shape) if isinstance(value, torch.Tensor) else ''}")
        return StepOutput(value, student_logits)


@dataclass
class History:
    """What ``fit`` did: one dict of metrics per epoch (``epochs``), the same as lists per metric
    (``history``, as in Keras), and the epoch whose student was kept (best on validation)."""

    epochs: list[dict]
    best_epoch: int
    best_val: float
    run_dir: Path | None = None
    history: dict[str, list[float]] = field(init=False)

    def __post_init__(self):
        keys = dict.fromkeys(k for epoch in self.epochs for k, v in epoch.items() if isinstance(v, (int, float)))
        # a strategy with phases logs different terms per phase: NaN where an epoch has none
        self.history = {key: [epoch.get(key, float("nan")) for epoch in self.epochs] for key in keys}


def _check_module(value, where: str) -> nn.Module:
    if not isinstance(value, nn.Module):
        hint = " (a class? pass an instance: MyModel())" if inspect.isclass(value) else ""
        raise SpecError(f"{where}: expected a torch.nn.Module, got {type(value).__name__}{hint}")
    return value


def _teachers(teacher) -> list[nn.Module]:
    if isinstance(teacher, (list, tuple)):
        if not teacher:
            raise SpecError("teacher: give at least one teacher")
        return [_check_module(t, f"teacher[{i}]") for i, t in enumerate(teacher)]
    return [_check_module(teacher, "teacher")]


def _device_of(module: nn.Module) -> torch.device | None:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor.device if tensor is not None else None


def _strategy(strategy, loss, temperature, alpha, strategy_params) -> tuple[type, Params, dict]:
    """(class, validated params, extra constructor arguments) from the user's choice."""
    params = dict(strategy_params or {})
    if loss is not None:
        if not callable(loss):
            raise SpecError(f"loss: expected a callable (student_logits, teacher_logits, targets) -> loss, "
                            f"got {type(loss).__name__}")
        if strategy not in ("response", None) or temperature is not None or alpha is not None:
            raise SpecError("loss: a custom loss is the whole objective; leave strategy, temperature and alpha unset")
        return CustomLoss, Params(), {"loss_fn": loss}
    if inspect.isclass(strategy) and issubclass(strategy, Strategy):
        cls, name = strategy, strategy.__name__
    elif isinstance(strategy, str):
        strategy = STRATEGY_ALIASES.get(strategy, strategy)
        if strategy not in STRATEGIES or strategy == "none":
            known = ", ".join(k for k in STRATEGIES if k != "none")
            raise SpecError(f"strategy: unknown strategy {strategy!r}; known: {known}, or a Strategy subclass")
        cls, name = STRATEGIES[strategy], strategy
    else:
        raise SpecError(f"strategy: expected a registry name or a Strategy subclass, got {type(strategy).__name__}")
    for key, value in (("temperature", temperature), ("alpha", alpha)):
        if value is not None:
            if key not in cls.Params.model_fields:
                raise SpecError(f"{key}: the {name} strategy has no {key} parameter "
                                f"(its parameters: {', '.join(cls.Params.model_fields) or 'none'})")
            params[key] = value
    try:
        return cls, cls.Params.model_validate(params), {}
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise SpecError(f"strategy_params.{where}: {first['msg']}") from None


def _training(**values) -> TrainingSpec:
    try:
        return TrainingSpec(**values)
    except ValidationError as error:
        first = error.errors()[0]
        raise SpecError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


def _check_outputs(teachers: list[nn.Module], student: nn.Module, data, device: torch.device,
                   task: str = "image_classification") -> None:
    """Teacher and student agree on the output size (one forward pass on two training inputs)."""
    inputs = data.example_inputs(2)
    sizes = []
    for where, model in [*((f"teacher[{i}]" if len(teachers) > 1 else "teacher", t) for i, t in enumerate(teachers)),
                         ("student", student)]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model(inputs.to(_device_of(model) or device))
        except Exception as error:  # the user's module failed on their own data: say where
            raise DataError(f"{where}: the forward pass on a training batch of shape {tuple(inputs.shape)} failed "
                            f"({type(error).__name__}: {error})") from None
        finally:
            model.train(was_training)
        if not isinstance(out, torch.Tensor):
            raise DataError(f"{where}: returned {type(out).__name__}; a model must return a tensor of logits")
        sizes.append((where, out.shape[-1]))
    (teacher_where, expected) = sizes[0]
    for where, size in sizes[1:]:
        if size != expected:
            what = ("give embeddings of the same size as" if task == "text_embedding"
                    else "predict the same classes (or tokens) as")
            raise DataError(f"{where}: outputs {size} values per sample but {teacher_where} outputs {expected}; "
                            f"a student must {what} its teacher")


def _teacher_keys(teachers: list[nn.Module], data) -> list[str | None]:
    """Each teacher object's cache key (class, state, outputs on a fixed probe batch); None for a
    teacher whose outputs cannot be reproduced, which is then never cached."""
    keys = []
    for index, teacher in enumerate(teachers):
        key = python_teacher_key(teacher, data)
        if key is None:
            warn_uncached("teacher" if len(teachers) == 1 else f"teacher[{index}]")
        keys.append(key)
    return keys


class Distiller:
    """Distil ``teacher`` (an nn.Module, or a list for multi-teacher strategies) into ``student``.

    ``strategy``: a registry name (``distillab strategies``) or a ``Strategy`` subclass;
    ``temperature`` and ``alpha`` go to strategies that have them (``alpha`` weighs the soft,
    teacher term); ``strategy_params`` holds the rest. ``loss`` replaces the strategy with a
    callable ``(student_logits, teacher_logits, targets) -> loss``.
    Training settings are those of a spec's ``training`` section.
    """

    def __init__(self, teacher, student, strategy="response", *, temperature: float | None = None,
                 alpha: float | None = None, strategy_params: dict | None = None, loss: Callable | None = None,
                 optimizer: str = "adamw", lr: float = 2e-3, weight_decay: float = 5e-4, batch_size: int = 128,
                 schedule: str = "cosine", device: str = "auto", precision: str = "auto", cache: bool = True,
                 cache_dir: str | Path | None = None, task: str = "image_classification", tokenizer=None):
        self.task = task_of(task)
        self.teachers = _teachers(teacher)
        self.student = _check_module(student, "student")
        self.tokenizer = None
        if self.task.name in TEXT_TASKS:
            self.teachers = [as_text_model(t, tokenizer, f"teacher[{i}]" if len(self.teachers) > 1 else "teacher",
                                           task) for i, t in enumerate(self.teachers)]
            self.tokenizer = tokenizer_of(self.teachers, tokenizer)
            self.student = as_text_model(self.student, self.tokenizer, "student", task)
        self.strategy_cls, self.params, self._extra = _strategy(strategy, loss, temperature, alpha, strategy_params)
        tasks = self.strategy_cls.tasks
        if tasks is not None and self.task.name not in tasks:
            raise SpecError(f"strategy: {self.strategy_cls.__name__} serves {', '.join(tasks)}, not {self.task.name}")
        self._training = dict(optimizer=optimizer, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                              schedule=schedule, device=device, precision=precision)
        _training(**self._training)  # bad settings fail here, naming the argument
        self.cache = CacheSpec(enabled=cache, dir=Path(cache_dir) if cache_dir else None)
        self.history: History | None = None
        self.data = None  # the splits of a text task's text, once fit() has read it
        self.deployed: nn.Module | None = None
        self._device = self._common_device(device)

    def _common_device(self, device: str) -> torch.device:
        """The training device; a teacher on another device than the student is an error."""
        student_device = _device_of(self.student)
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
        training = _training(**{**self._training, "device": self._device.type}, epochs=epochs, seeds=[seed])
        if self.task.name in TEXT_TASKS:
            if val_data is not None:
                raise SpecError("val_data: the validation text is the val_size part of each document of train_data; "
                                "leave val_data unset")
            data = text_data(self.task.name, train_data, self.tokenizer, context_length, val_size, test_size, limit,
                             self.teachers, eval_limit)
            self.data = data
        else:
            data = user_data(train_data, val_data, None, seed, val_size)
        _check_outputs(self.teachers, self.student, data, self._device, self.task.name)
        strategy = self._strategy(data)
        caches = []
        if self.cache.enabled and data.cacheable and self.strategy_cls.uses_teacher and self.strategy_cls.logits_only:
            keys = _teacher_keys(self.teachers, data)
            if all(key is not None for key in keys):
                settings = Settings("fit", StrategyChoice(self.strategy_cls.__name__, {}), training, self.cache)
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


def train(model: nn.Module, train_data: DatasetLike, val_data: DatasetLike = None, epochs: int = 10, *,
          seed: int = 0, optimizer: str = "adamw", lr: float = 2e-3, weight_decay: float = 5e-4,
          batch_size: int = 128, schedule: str = "cosine", device: str = "auto", precision: str = "auto",
          label_smoothing: float = 0.0, run_dir: str | Path | None = None, resume: bool = False,
          callbacks: Sequence = (), progress: bool = True, val_size: float = 0.1,
          task: str = "image_classification", tokenizer=None, context_length: int | None = None,
          test_size: float = 0.05, limit: int | None = None, eval_limit: int | None = None) -> History:
    """Train ``model`` on its labels alone (a teacher, or a baseline) with the same engine; it
    keeps the epoch best on validation, like ``Distiller.fit``. A language model
    (``task="language_modeling"``) trains on next-token CE over text, as ``Distiller.fit`` reads it."""
    _check_module(model, "model")
    task_ = task_of(task)
    training = _training(optimizer=optimizer, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                         schedule=schedule, device=device, precision=precision, epochs=epochs, seeds=[seed])
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


def _engine_fit(strategy, data, training, seed, run_dir, resume, callbacks, progress, description, task,
                caches=()) -> History:
    """The engine's fit in ``run_dir`` (a temporary folder, removed afterwards, when None)."""
    temporary = run_dir is None
    folder = Path(tempfile.mkdtemp(prefix=f"distillab-{description}-")) if temporary else Path(run_dir)
    if progress:
        show_progress()
    bars = [ProgressBar(description, training.epochs)] if progress else []
    try:
        result = engine_fit(strategy, data, training, seed, folder, caches=caches, resume=resume,
                            callbacks=[*bars, *callbacks], tensorboard=False, description=description, task=task)
    finally:
        if temporary:
            shutil.rmtree(folder, ignore_errors=True)
    return History(result.history, result.best_epoch, result.best_val_accuracy, None if temporary else folder)


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
            optimizer: str = "adamw", lr: float = 2e-3, weight_decay: float = 5e-4, batch_size: int = 128,
            schedule: str = "cosine", device: str = "auto", precision: str = "auto", cache: bool = True,
            cache_views: int | str = 4, plots: bool = True, latency_repeats: int = 50,
            task: str = "image_classification", tokenizer=None, student_args: dict | None = None,
            context_length: int | None = None, test_size: float = 0.05, limit: int | None = None,
            eval_limit: int | None = None,
            accept_weak_teacher: bool = False, discard_unfinished: bool = False):
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

    task = task_of(task)
    teachers = _teachers(teacher)
    text = task.name in TEXT_TASKS
    if text:
        teachers = [as_text_model(t, tokenizer, f"teacher[{i}]" if len(teachers) > 1 else "teacher", task.name)
                    for i, t in enumerate(teachers)]
        tokenizer = tokenizer_of(teachers, tokenizer)
    strategy_cls, params, extra = _strategy(strategy, loss, temperature, alpha, strategy_params)
    if isinstance(student, str):
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
            first = error.errors()[0]
            raise SpecError(f"train_data.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        build_data = lambda seed: task.build(data_spec, seed)  # noqa: E731
        data_record = {"dataset": train_data}
    else:
        if test_data is None:
            raise SpecError("test_data: compare measures every model on a test split; pass test_data")
        build_data = lambda seed: user_data(train_data, val_data, test_data, seed, val_size)  # noqa: E731
        data_record = {"dataset": type(train_data).__name__}
    training = _training(optimizer=optimizer, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                         schedule=schedule, device=device, precision=precision, epochs=epochs, seeds=list(seeds))
    strategy_name = strategy if isinstance(strategy, str) and loss is None else (
        "custom_loss" if loss is not None else strategy.__name__)
    settings = Settings(name, StrategyChoice(strategy_name, params.model_dump(mode="json")), training,
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


def _cache(enabled: bool, views) -> CacheSpec:
    try:
        return CacheSpec(enabled=enabled, views=views)
    except ValidationError as error:
        raise SpecError(f"cache_views: {error.errors()[0]['msg']}") from None


def _bound(cls: type, extra: dict) -> type:
    """``cls`` with constructor arguments bound (a custom loss function), still a Strategy class."""
    return type(cls.__name__, (cls,), {"__init__": lambda self, *a, **k: cls.__init__(self, *a, **{**extra, **k})})
