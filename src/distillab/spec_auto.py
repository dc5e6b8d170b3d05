"""The ``auto:`` section of a job spec: state the constraints and the budget, and distillab
searches the students, strategies and settings (``distillab auto``). Every key is optional; the
search space has a default per task that the user may narrow."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

RUNTIMES = ("torch", "onnx", "onnx-int8")  # where a student's latency is measured
# an image-classification search: the zoo families, and students cut from the teacher
FAMILIES = ("cnn", "resnet", "wrn", "mlp", "teacher_pruned")
# a language-model search: the zoo's gpt, some of the teacher's layers, the teacher's architecture
# narrower (fresh weights), and the teacher cut to its most important units (Minitron)
LM_FAMILIES = ("gpt", "teacher_layers", "teacher_width", "teacher_pruned")
SEARCH_TASKS = ("image_classification", "language_modeling")

Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AutoConstraints(_Strict):
    """What the chosen student must meet. Latency is measured on this machine with the report's
    protocol (median after warm-up) at ``batch_size``, on ``runtime``. A language model's speed is
    its greedy decoding at batch 1 with its key/value cache, on torch (``min_decode_tokens_per_s``,
    as the report's decode column measures it)."""

    max_latency_ms: Positive | None = None
    min_decode_tokens_per_s: Positive | None = Field(
        None, description="language models: the slowest greedy decoding allowed, tokens per second at batch 1")
    batch_size: Annotated[StrictInt, Field(ge=1, le=4096)] = 1
    runtime: Literal["torch", "onnx", "onnx-int8"] = "torch"
    max_params: Annotated[StrictInt, Field(ge=1)] | None = None
    max_size_mb: Positive | None = None
    max_macs: Annotated[StrictInt, Field(ge=1)] | None = None
    min_score: float | None = Field(None, description="the task's primary metric on validation (accuracy as a "
                                    "fraction); for a metric where lower is better (bits per character) the most "
                                    "it may be")
    max_drop: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = Field(
        None, description="most the score may fall behind the teacher's, on validation")

    @property
    def latency_limit_ms(self) -> float | None:
        """The latency limit in ms: per forward pass, or per decoded token (1000 / tokens per second)."""
        if self.min_decode_tokens_per_s is not None:
            return 1000.0 / self.min_decode_tokens_per_s
        return self.max_latency_ms

    @property
    def latency_name(self) -> str:
        return "min_decode_tokens_per_s" if self.min_decode_tokens_per_s is not None else "max_latency_ms"


class AutoBudget(_Strict):
    """The whole search's budget: wall-clock seconds on this machine, or device-hours; and an
    optional cap on trials. Without any, the search runs 20 trials."""

    wall_s: Positive | None = None
    device_hours: Positive | None = None
    max_trials: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = None


# each task's space where the spec leaves a key unset. A language model's teacher cache holds its
# top-k at one temperature, so its search keeps T at 1 (each other T would be another fill).
TASK_SPACES = {
    "image_classification": {"families": list(FAMILIES), "strategies": ["response", "dkd"], "dynamic": [False],
                             "temperature": (1.0, 8.0), "alpha": (0.1, 0.95), "epochs": (3, 30), "lr": (3e-4, 1e-2)},
    "language_modeling": {"families": list(LM_FAMILIES), "strategies": ["token_kd"], "dynamic": [False],
                          "temperature": (1.0, 1.0),
                          "alpha": (0.3, 0.95), "epochs": (2, 8), "lr": (5e-4, 5e-3)},
}
Fraction = Annotated[float, Field(ge=0, le=1)]


class AutoSpace(_Strict):
    """What the search may choose from; unset keys take the task's default (``TASK_SPACES``)."""

    families: list[Literal["cnn", "resnet", "wrn", "mlp", "gpt", "teacher_layers", "teacher_width",
                           "teacher_pruned"]] | None = Field(None, min_length=1)
    strategies: list[str] | None = Field(None, min_length=1)
    temperature: tuple[Positive, Positive] | None = None
    alpha: tuple[Fraction, Fraction] | None = None
    epochs: tuple[Annotated[StrictInt, Field(ge=1)], Annotated[StrictInt, Field(ge=1)]] | None = None
    lr: tuple[Positive, Positive] | None = None
    cache_views: list[Annotated[StrictInt, Field(ge=1, le=1024)]] | None = Field(
        None, min_length=1, description="cached augmented views per image to choose from (default: the spec's)")
    dynamic: list[bool] | None = Field(
        None, min_length=1, description="image students with their last spatial convolution dynamic (adaptive_v2): "
                                        "[false] (the default), [true], or [false, true] for the search to decide")

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
            if getattr(self, name) is None:
                continue
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: the range [{low}, {high}] runs backwards; write [low, high]")
        return self


    def for_task(self, task: str) -> AutoSpace:
        """This space with the task's defaults in the keys the spec left unset; a family of
        another task is refused, naming the task's own."""
        defaults = TASK_SPACES[task]
        own = set(defaults["families"])
        strangers = [family for family in self.families or () if family not in own]
        if strangers:
            from distillab.errors import SpecError

            raise SpecError(f"auto.space.families: {', '.join(strangers)} are not {task} students; this task "
                            f"searches {', '.join(defaults['families'])}")
        if task != "image_classification" and True in (self.dynamic or ()):
            from distillab.errors import SpecError

            raise SpecError(f"auto.space.dynamic: dynamic convolutions are for image classifiers; a {task} search "
                            "takes [false] or leaves it unset")
        return self.model_copy(update={key: value for key, value in defaults.items() if getattr(self, key) is None})


class AutoSpec(_Strict):
    constraints: AutoConstraints = AutoConstraints()
    budget: AutoBudget = AutoBudget()
    space: AutoSpace = AutoSpace()


def check_auto(spec) -> None:
    """What a search of this task cannot take, refused before anything loads (a SpecError): a
    task without a search, a constraint of another task's kind, a family of another task."""
    from distillab.errors import SpecError

    if spec.task not in SEARCH_TASKS:
        raise SpecError(f"task: automated search covers {' and '.join(SEARCH_TASKS)} students; a {spec.task} job "
                        "is distilled with distillab run")
    constraints = spec.auto.constraints
    if spec.task == "language_modeling":
        if constraints.max_latency_ms is not None:
            raise SpecError("auto.constraints.max_latency_ms: a language model's speed is its decoding; give "
                            "min_decode_tokens_per_s (greedy, batch 1, with the key/value cache) instead")
        if constraints.runtime != "torch" or constraints.batch_size != 1:
            raise SpecError(f"auto.constraints: a language model's decoding is measured on torch at batch 1, not "
                            f"{constraints.runtime} at batch {constraints.batch_size}")
    elif constraints.min_decode_tokens_per_s is not None:
        raise SpecError("auto.constraints.min_decode_tokens_per_s: goes with a language model; an image "
                        "classifier's speed is max_latency_ms")
    spec.auto.space.for_task(spec.task)  # a family of another task
    if True in (spec.auto.space.dynamic or ()):
        shape_keys = sorted({"experts", "layers", "gates", "vae"} & set(spec.strategy.params or {}))
        if spec.strategy.name == "adaptive_v2" and shape_keys:
            raise SpecError(f"auto.space.dynamic: dynamic students are counted and timed as adaptive_v2 makes them "
                            f"by default (the last spatial convolution, 4 experts); leave strategy.params "
                            f"{', '.join(shape_keys)} unset")
        if len(spec.teachers) > 1:
            raise SpecError("auto.space.dynamic: dynamic students learn from one teacher; with several, the search "
                            "chooses among them and their ensemble for static students only (leave dynamic unset)")
    if spec.task == "image_classification" and "teacher_pruned" in (spec.auto.space.families or ()):
        from distillab.models.cut import CUTTABLE, uncuttable

        problem = uncuttable(spec.teachers)
        if problem:
            raise SpecError(f"auto.space.families: teacher_pruned cuts one zoo {', '.join(CUTTABLE)} teacher that "
                            f"takes the dataset's normalised inputs ({problem}); leave the family out, or leave "
                            "families unset: the default space offers it when it can")
