"""The training arguments every Python entry point takes (``Distiller``, ``train``, ``compare``),
written once, and the one way a pydantic error becomes a ``SpecError`` that names the argument."""

from __future__ import annotations

from typing import TypedDict

from pydantic import BaseModel, ValidationError

from distillab.errors import SpecError, close_matches
from distillab.spec import TrainingSpec, error_items


class TrainingArgs(TypedDict, total=False):
    """Keyword arguments of ``Distiller``, ``train`` and ``compare``: a spec's ``training`` settings."""

    optimizer: str  # adamw | sgd
    lr: float
    weight_decay: float
    batch_size: int
    schedule: str  # cosine | step | constant
    device: str  # auto | cpu | cuda
    precision: str  # auto | fp32 | bf16


# the Python API's defaults (a spec's training section has its own)
TRAINING_DEFAULTS: TrainingArgs = {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 5e-4, "batch_size": 128,
                                   "schedule": "cosine", "device": "auto", "precision": "auto"}


def spec_error(error: ValidationError, where: str = "", root: type[BaseModel] | None = None) -> SpecError:
    """The first problem of ``error`` as a SpecError, named by its key path under ``where``."""
    loc, msg, _ = error_items(error, root)[0]
    path = ".".join(str(part) for part in loc)
    return SpecError(f"{where}{'.' if where and path else ''}{path}: {msg}")


def training_arguments(given: dict) -> TrainingArgs:
    """``given`` over the defaults; an unknown name is an error that lists the known ones."""
    unknown = sorted(set(given) - set(TRAINING_DEFAULTS))
    if unknown:
        raise SpecError(f"{unknown[0]}: not a training argument{close_matches(unknown[0], TRAINING_DEFAULTS)}")
    return {**TRAINING_DEFAULTS, **given}


def training_spec(arguments: dict, **more) -> TrainingSpec:
    """The ``TrainingSpec`` of the training arguments plus ``more`` (epochs, seeds, ...); a bad
    value fails here, naming the argument."""
    try:
        return TrainingSpec(**training_arguments(arguments), **more)
    except ValidationError as error:
        raise spec_error(error, root=TrainingSpec) from None
