"""What the Python entry points share: argument checks, the strategy a name or class gives, the
teacher checks, and the one call into the engine."""

from __future__ import annotations

import inspect
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import ValidationError
from torch import nn

from distillab.api.arguments import spec_error
from distillab.engine.callbacks import ProgressBar, show_progress
from distillab.engine.loop import fit as engine_fit
from distillab.errors import DataError, SpecError
from distillab.models.identity import python_teacher_key, warn_uncached
from distillab.spec import CacheSpec, error_items
from distillab.strategies import STRATEGIES, STRATEGY_ALIASES
from distillab.strategies.base import Params, StepOutput, Strategy

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
        raise spec_error(error, "strategy_params", cls.Params) from None


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
    return History(result.history, result.best_epoch, result.best_val_score, None if temporary else folder)


def _cache(enabled: bool, views) -> CacheSpec:
    try:
        return CacheSpec(enabled=enabled, views=views)
    except ValidationError as error:
        raise SpecError(f"cache_views: {error_items(error, CacheSpec)[0][1]}") from None


def _bound(cls: type, extra: dict) -> type:
    """``cls`` with constructor arguments bound (a custom loss function), still a Strategy class."""
    return type(cls.__name__, (cls,), {"__init__": lambda self, *a, **k: cls.__init__(self, *a, **{**extra, **k})})
