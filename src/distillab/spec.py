"""The job spec: one typed, validated, immutable description of a distillation job.

The CLI reads it from YAML (safe_load) or JSON, the Python API takes a dict or a
``JobSpec``, the service takes it as a JSON body; all go through ``parse_spec``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from distillab.errors import SpecError, close_matches


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AugmentSpec(Strict):
    crop_padding: int = Field(0, ge=0, le=16, description="zero padding before a random crop")
    hflip: bool = Field(False, description="random horizontal flip")


class DataSpec(Strict):
    dataset: str = "fashion_mnist"
    path: Path | None = Field(None, description="folder or file; null = the dataset's default location")
    limit_train: int | None = Field(None, ge=1, description="use only the first N training samples")
    val_size: float = Field(0.1, gt=0, lt=1, description="fraction of the training set held out for validation")
    augment: AugmentSpec = AugmentSpec()

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from distillab.data import DATASETS

        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}{close_matches(name, DATASETS)}")
        return name

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.exists():
            raise ValueError(f"no such file or folder: {path}")
        return path


class TrainingSpec(Strict):
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(128, ge=1, le=65_536)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(2e-3, gt=0, le=10)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up, in epochs")
    step_size: int = Field(10, ge=1, description="epochs between decays (step schedule)")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor (step schedule)")
    grad_clip: float | None = Field(None, gt=0, description="clip the global gradient norm")
    amp: bool = Field(True, description="mixed precision when CUDA is present")
    channels_last: bool = Field(True, description="channels-last memory format (faster convolutions on CPU)")
    eval_batch_size: int = Field(1024, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct")
        return seeds

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainingSpec:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be smaller than epochs ({self.epochs})")
        return self


class ModelSpec(Strict):
    model: str
    model_args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from distillab.models.zoo import MODELS

        if name not in MODELS:
            raise ValueError(f"unknown model {name!r}{close_matches(name, MODELS)}")
        return name


class TeacherSpec(Strict):
    model: str | None = Field(None, description="zoo name; needed for safetensors checkpoints and for training")
    model_args: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = Field(None, description="safetensors, TorchScript (.pt/.ts) or ONNX file; null = train it")
    format: Literal["auto", "safetensors", "torchscript", "onnx"] = "auto"
    training: TrainingSpec | None = Field(None, description="how to train the teacher when checkpoint is null")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str | None) -> str | None:
        return None if name is None else ModelSpec._known_model(name)

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    @model_validator(mode="after")
    def _complete(self) -> TeacherSpec:
        fmt = self.resolved_format
        if self.checkpoint is None and self.model is None:
            raise ValueError("give a checkpoint, or a model to train")
        if fmt == "safetensors" and self.model is None:
            raise ValueError("model: a safetensors checkpoint needs the zoo model it belongs to")
        return self

    @property
    def resolved_format(self) -> str | None:
        if self.checkpoint is None:
            return None
        if self.format != "auto":
            return self.format
        suffix = self.checkpoint.suffix.lower()
        return {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pth": "torchscript"}.get(
            suffix, "safetensors"
        )


class StrategySpec(Strict):
    name: str = "response"
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_params(self) -> StrategySpec:
        from distillab.strategies import STRATEGIES

        if self.name not in STRATEGIES:
            raise ValueError(f"name: unknown strategy {self.name!r}{close_matches(self.name, STRATEGIES)}")
        try:
            validated = STRATEGIES[self.name].Params.model_validate(self.params)
        except ValidationError as error:
            raise ValueError("; ".join(f"params.{msg}" for msg in _messages(error))) from None
        object.__setattr__(self, "params", validated.model_dump())
        return self


class CacheSpec(Strict):
    enabled: bool = Field(True, description="cache teacher outputs on disk and reuse them")
    views: int = Field(4, ge=1, le=64, description="augmented views cached per training sample")
    fp16: bool = Field(False, description="store cached logits as float16")
    dir: Path | None = Field(None, description="cache folder; null = $DISTILLAB_CACHE or ~/.cache/distillab")


class ConstraintsSpec(Strict):
    max_duration_s: float | None = Field(None, gt=0, description="stop the job after this many seconds")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="distilled accuracy must reach this")
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="teacher minus distilled accuracy")


class OutputSpec(Strict):
    plots: bool = True
    tensorboard: bool = True
    latency_repeats: int = Field(20, ge=1, le=1000)


class JobSpec(Strict):
    name: str = Field("distillation", min_length=1, max_length=200)
    data: DataSpec = DataSpec()
    teacher: TeacherSpec | list[TeacherSpec]
    student: ModelSpec
    strategy: StrategySpec = StrategySpec()
    training: TrainingSpec = TrainingSpec()
    cache: CacheSpec = CacheSpec()
    constraints: ConstraintsSpec = ConstraintsSpec()
    output: OutputSpec = OutputSpec()

    @field_validator("teacher")
    @classmethod
    def _non_empty(cls, teacher):
        if isinstance(teacher, list) and not teacher:
            raise ValueError("give at least one teacher")
        return teacher

    @property
    def teachers(self) -> list[TeacherSpec]:
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]


_PATH_PREFIX = re.compile(r"^([A-Za-z_][\w.]*(?:\[\d+\])?(?:\.[\w]+)*): (.*)$", re.S)


def error_items(error: ValidationError) -> list[tuple[list, str, str]]:
    """(key path, problem, pydantic error type) for each error; a validator's own
    'sub.key: problem' message is split onto the path."""
    out = []
    for item in error.errors(include_url=False):
        loc = [part for part in item["loc"] if not str(part).startswith(("function-", "list[", "TeacherSpec"))]
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        match = _PATH_PREFIX.match(msg)
        if item["type"] == "value_error" and match:
            loc += match.group(1).split(".")
            msg = match.group(2)
        out.append((loc, msg, item["type"]))
    return out


def _messages(error: ValidationError) -> list[str]:
    """'key.path: problem' for each error."""
    return [f"{'.'.join(str(part) for part in loc) or '(spec)'}: {msg}" for loc, msg, _ in error_items(error)]


def parse_spec(data: dict | JobSpec) -> JobSpec:
    """Validate a dict into a JobSpec; a SpecError lists every problem with its key path."""
    if isinstance(data, JobSpec):
        return data
    if not isinstance(data, dict):
        raise SpecError(f"(spec): expected a mapping of keys, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as error:
        raise SpecError("invalid spec:\n  " + "\n  ".join(_messages(error))) from None


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``key.path=value`` in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise SpecError(f"--set {assignment!r}: expected key.path=value")
    key, raw = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise SpecError(f"--set {key}: value is not valid YAML ({error})") from None
    parts = key.strip().split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise SpecError(f"--set {key}: {'.'.join(parts[: depth + 1])} is not a mapping")
        node = child
    node[parts[-1]] = value


def read_spec_file(path: Path) -> dict:
    if not path.is_file():
        raise SpecError(f"{path}: no such spec file")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SpecError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of keys at the top level")
    return data


def load_spec(path: Path | str, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    data = read_spec_file(Path(path))
    for assignment in overrides:
        apply_override(data, assignment)
    return parse_spec(data)
