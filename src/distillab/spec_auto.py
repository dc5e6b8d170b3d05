"""The ``auto:`` section of a job spec: state the constraints and the budget, and distillab
searches the students, strategies and settings (``distillab auto``). Every key is optional; the
search space has a default per task that the user may narrow."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

RUNTIMES = ("torch", "onnx", "onnx-int8")  # where a student's latency is measured
FAMILIES = ("cnn", "resnet", "wrn", "mlp")  # the zoo families an image-classification search draws from

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoConstraints(_Strict):
    """What the chosen student must meet. Latency is measured on this machine with the report's
    protocol (median after warm-up) at ``batch_size``, on ``runtime``."""

    max_latency_ms: Positive | None = None
    batch_size: Annotated[StrictInt, Field(ge=1, le=4096)] = 1
    runtime: Literal["torch", "onnx", "onnx-int8"] = "torch"
    max_params: Annotated[StrictInt, Field(ge=1)] | None = None
    max_size_mb: Positive | None = None
    max_macs: Annotated[StrictInt, Field(ge=1)] | None = None
    min_score: float | None = Field(None, description="the task's primary metric on validation (accuracy as a fraction)")
    max_drop: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None, description="most the score may fall below the teacher's, on validation")


class AutoBudget(_Strict):
    """The whole search's budget: wall-clock seconds on this machine, or device-hours; and an
    optional cap on trials. Without any, the search runs 20 trials."""

    wall_s: Positive | None = None
    device_hours: Positive | None = None
    max_trials: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = None


class AutoSpace(_Strict):
    """What the search may choose from; unset keys take the task's default."""

    families: list[Literal["cnn", "resnet", "wrn", "mlp"]] | None = Field(None, min_length=1)
    strategies: list[str] | None = Field(None, min_length=1)
    temperature: tuple[Positive, Positive] = (1.0, 8.0)
    alpha: tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]] = (0.1, 0.95)
    epochs: tuple[Annotated[StrictInt, Field(ge=1)], Annotated[StrictInt, Field(ge=1)]] = (3, 30)
    lr: tuple[Positive, Positive] = (3e-4, 1e-2)
    cache_views: list[Annotated[StrictInt, Field(ge=1, le=1024)]] | None = Field(
        None, min_length=1, description="cached augmented views per image to choose from (default: the spec's)")

    @model_validator(mode="after")
    def _known_strategies(self) -> AutoSpace:
        from distillab.errors import close_matches
        from distillab.strategies import STRATEGIES

        for name in self.strategies or ():
            if name not in STRATEGIES:
                raise ValueError(f"strategies: unknown strategy {name!r}{close_matches(name, STRATEGIES)}")
        return self

    @model_validator(mode="after")
    def _ranges_ascend(self) -> AutoSpace:
        for name in ("temperature", "alpha", "epochs", "lr"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: the range [{low}, {high}] runs backwards; write [low, high]")
        return self


class AutoSpec(_Strict):
    constraints: AutoConstraints = AutoConstraints()
    budget: AutoBudget = AutoBudget()
    space: AutoSpace = AutoSpace()
