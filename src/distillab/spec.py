"""The job spec: one typed, validated, immutable description of a distillation job.

The CLI reads it from YAML (safe_load) or JSON, the Python API takes a dict or a
``JobSpec``, the service takes it as a JSON body; all go through ``parse_spec``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, Field, StrictBool, StrictInt, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from distillab.errors import SpecError, close_matches
from distillab.spec_auto import AutoSpec
from distillab.spec_base import Number, Strict, registered
from distillab.spec_data import MixtureEntry
from distillab.inputs import text_problem

MAX_SEEDS = 100  # one job; the service caps it lower (DISTILLAB_MAX_SEEDS)
MAX_MODEL_PARAMETERS = 1_000_000_000  # a model a spec may build; the service caps it lower
SEED_MAX = 2**32 - 1
MAX_SPEC_BYTES = 1_000_000  # numpy's seeds are 32-bit
TEXT_VOCABULARY_ESTIMATE = 50_000  # for counting a text student's parameters before the tokenizer is loaded


Seed = Annotated[StrictInt, Field(ge=0, le=SEED_MAX)]


class AugmentSpec(Strict):
    crop_padding: StrictInt = Field(0, ge=0, le=16, description="zero padding before a random crop")
    hflip: StrictBool = Field(False, description="random horizontal flip")
    mix: Literal["none", "mixup", "cutmix"] = Field(
        "none", description="mix each image with a partner; the teacher sees the mixed image (function matching)")
    mix_alpha: Number = Field(1.0, gt=0, le=100, description="mixing weight ~ Beta(mix_alpha, mix_alpha)")


class DataSpec(Strict):
    dataset: str = Field("fashion_mnist", description="a dataset or corpus; or a weighted list of corpora (a "
                                                       "mixture: [{dataset, path, weight}, ...])")
    mixture: list[MixtureEntry] | None = Field(None, description="the corpora of a mixture (written for you when "
                                                                  "dataset is a list)")
    path: Path | None = Field(None, description="folder or file; null = the dataset's default location")
    limit_train: StrictInt | None = Field(None, ge=1, description="use only the first N training samples")
    val_size: Number = Field(0.1, gt=0, lt=1, description="fraction of the training set held out for validation")
    augment: AugmentSpec = AugmentSpec()
    # text corpora (task language_modeling)
    context_length: StrictInt = Field(128, ge=2, le=65_536, description="tokens per training block (text)")
    test_size: Number = Field(0.05, gt=0, lt=1, description="the last fraction of each document held out for test (text)")
    limit_tokens: StrictInt | None = Field(None, ge=1, description="train on about this many tokens, evenly spaced (text)")
    limit_eval_tokens: StrictInt | None = Field(None, ge=1, description="the same for validation and test (text)")

    @model_validator(mode="before")
    @classmethod
    def _mixture_list(cls, data: Any) -> Any:
        """``dataset: [{dataset, weight}, ...]`` is a mixture: kept as ``dataset: mixture`` and ``mixture``."""
        if isinstance(data, dict) and isinstance(data.get("dataset"), list):
            if data.get("mixture") is not None:
                raise ValueError("give the corpora once: dataset as a list, or dataset: mixture with mixture")
            data = {**data, "dataset": "mixture", "mixture": data["dataset"]}
        return data

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from distillab.data import DATASETS
        from distillab.data.corpora import CORPORA

        return registered(name, {**DATASETS, **CORPORA, "mixture": None}, "dataset")

    @model_validator(mode="after")
    def _mixture_given(self) -> DataSpec:
        if (self.dataset == "mixture") != (self.mixture is not None):
            raise ValueError("dataset: mixture goes with mixture (a list of corpora), and mixture with it")
        if self.mixture is not None:
            if not self.mixture:
                raise ValueError("a mixture needs at least one corpus")
            if self.path is not None:
                raise ValueError("path: a mixture's paths go with its corpora (dataset[i].path)")
        return self

    @property
    def is_text(self) -> bool:
        from distillab.data.corpora import CORPORA

        return self.dataset in CORPORA or self.dataset == "mixture"

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.exists():
            raise ValueError(f"no such file or folder: {path}")
        if path is not None and not (path.is_file() or path.is_dir()):
            raise ValueError(f"{path} is not a regular file or folder")
        return path


class TrainingSpec(Strict):
    epochs: StrictInt = Field(10, ge=1, le=10_000)
    batch_size: StrictInt = Field(128, ge=1, le=65_536)
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, max_length=MAX_SEEDS)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: Number = Field(2e-3, gt=0, le=10)
    weight_decay: Number = Field(5e-4, ge=0, le=1)
    momentum: Number = Field(0.9, ge=0, lt=1, description="SGD only")
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: Number = Field(0.0, ge=0, description="linear warm-up, in epochs")
    step_size: StrictInt = Field(10, ge=1, description="epochs between decays (step schedule)")
    gamma: Number = Field(0.1, gt=0, le=1, description="decay factor (step schedule)")
    grad_clip: Number | None = Field(None, gt=0, description="clip the global gradient norm")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16 autocast for training and teacher inference; auto = bf16 where the hardware runs it "
                            "natively (CUDA, or a CPU with AVX512-BF16/AMX), else fp32")
    amp: StrictBool = Field(True, description="older switch: false makes precision auto mean fp32")
    channels_last: StrictBool = Field(True, description="channels-last memory format (faster convolutions on CPU)")
    eval_batch_size: StrictInt = Field(1024, ge=1, le=65_536)
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
        from distillab.tasks.language_modeling import LM_STUDENTS

        return registered(name, {**MODELS, **LM_STUDENTS}, "model")


class InputScaling(Strict):
    """A teacher's own input preparation: (raw * scale - mean) / std per channel, where raw is the
    dataset's stored value (0..255 for 8-bit images)."""

    scale: Number = Field(1.0, gt=0, description="multiplies the raw values first (1/255 maps 8-bit images to 0..1)")
    mean: list[Number] = Field(default_factory=lambda: [0.0], min_length=1, max_length=64)
    std: list[Number] = Field(default_factory=lambda: [1.0], min_length=1, max_length=64)

    @field_validator("std")
    @classmethod
    def _positive(cls, std: list[float]) -> list[float]:
        if any(value <= 0 for value in std):
            raise ValueError("every std must be > 0")
        return std


TeacherInputConvention = Literal["normalized", "raw"] | InputScaling


class TeacherSpec(Strict):
    model: str | None = Field(None, description="zoo name; needed for safetensors checkpoints and for training")
    model_args: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = Field(
        None, description="safetensors, TorchScript (.pt/.ts), ONNX or GGUF file, or a Hugging Face folder; "
                          "null = train it (or pretrained / hub)")
    format: Literal["auto", "safetensors", "torchscript", "onnx", "gguf", "hf"] = "auto"
    pretrained: str | None = Field(None, description="a language model installed by a Python package (distillab models)")
    hub: str | None = Field(None, max_length=200, description="a Hugging Face hub id, downloaded by transformers "
                                                              "(needs a network)")
    url: str | None = Field(None, max_length=500, description="a teacher served by `distillab serve-teacher` "
                                                              "(top-k probabilities only), http(s)://host:port")
    api_key_env: str = Field("DISTILLAB_TEACHER_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="the environment variable that holds the served teacher's API key")
    training: TrainingSpec | None = Field(None, description="how to train the teacher when checkpoint is null")
    input: TeacherInputConvention = Field(
        "normalized", description="what the teacher was trained on: normalized (the dataset's per-channel mean and "
                                  "std, as distillab trains teachers), raw (the stored values, e.g. 0..255 pixels), "
                                  "or {scale, mean, std}")

    @property
    def input_convention(self) -> str:
        """The input convention as one string (part of the teacher's cache key)."""
        if isinstance(self.input, str):
            return self.input
        return f"scale={self.input.scale!r},mean={self.input.mean},std={self.input.std}"

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str | None) -> str | None:
        from distillab.models.zoo import MODELS

        return None if name is None else registered(name, MODELS, "model")

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        if (info.context or {}).get("teacher_files") is False:  # a finished run's student needs no teacher
            return path
        if path is not None and not (path.is_file() or path.is_dir()):
            raise ValueError(f"no such file or folder: {path}")
        return path

    @field_validator("pretrained")
    @classmethod
    def _known_pretrained(cls, name: str | None) -> str | None:
        from distillab.models.hf import PRETRAINED

        return None if name is None else registered(name, PRETRAINED, "pretrained model")

    @field_validator("hub")
    @classmethod
    def _hub_id(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name):
            raise ValueError(f"{name!r} is not a hub id (owner/name)")
        return name

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", url):
            raise ValueError(f"{url!r} is not an http(s) URL")
        return url

    @model_validator(mode="after")
    def _complete(self) -> TeacherSpec:
        fmt = self.resolved_format
        sources = [key for key in ("checkpoint", "pretrained", "hub", "url") if getattr(self, key) is not None]
        if len(sources) > 1:
            raise ValueError(f"give one of checkpoint, pretrained, hub and url, not {' and '.join(sources)}")
        if not sources and self.model is None:
            raise ValueError("give a checkpoint, pretrained, hub or url, or a model to train")
        if self.checkpoint is not None and self.checkpoint.is_dir() and fmt != "hf":
            raise ValueError(f"checkpoint: {self.checkpoint} is a folder; only a Hugging Face folder (format hf) "
                             "may be one")
        if fmt == "safetensors" and self.model is None:
            raise ValueError("model: a safetensors checkpoint needs the zoo model it belongs to")
        if self.input != "normalized" and (self.checkpoint is None or self.is_language_model):
            raise ValueError("input: only a teacher given as an image-model checkpoint file may expect other inputs; "
                             "a teacher distillab trains, a served teacher and a language model take theirs as they are")
        return self

    @property
    def resolved_format(self) -> str | None:
        if self.checkpoint is None:
            return None
        if self.format != "auto":
            return self.format
        if self.checkpoint.is_dir():
            return "hf"
        suffix = self.checkpoint.suffix.lower()
        return {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pth": "torchscript",
                ".gguf": "gguf"}.get(suffix, "safetensors")

    @property
    def is_language_model(self) -> bool:
        return self.pretrained is not None or self.hub is not None or self.resolved_format in ("gguf", "hf")


class StrategySpec(Strict):
    name: str = "response"
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name", mode="before")
    @classmethod
    def _alias(cls, name):
        from distillab.strategies import STRATEGY_ALIASES

        return STRATEGY_ALIASES.get(name, name) if isinstance(name, str) else name

    @model_validator(mode="after")
    def _valid_params(self) -> StrategySpec:
        from distillab.strategies import STRATEGIES

        if self.name not in STRATEGIES:
            raise ValueError(f"name: unknown strategy {self.name!r}{close_matches(self.name, STRATEGIES)}")
        try:
            validated = STRATEGIES[self.name].Params.model_validate(self.params)
        except ValidationError as error:
            raise ValueError("; ".join(f"params.{msg}" for msg in error_messages(error, STRATEGIES[self.name].Params))) from None
        object.__setattr__(self, "params", validated.model_dump())
        return self


class CacheSpec(Strict):
    enabled: StrictBool = Field(True, description="cache teacher outputs on disk and reuse them")
    views: Annotated[StrictInt, Field(ge=1, le=1024)] | Literal["all"] = Field(
        4, description="augmented views cached per training sample; all = every distinct crop and flip")
    fp16: StrictBool = Field(False, description="store cached logits as float16 (half the space)")
    max_gb: Number = Field(16.0, gt=0, description="refuse a cache larger than this")
    dir: Path | None = Field(None, description="cache folder; null = $DISTILLAB_CACHE or ~/.cache/distillab")


class ConstraintsSpec(Strict):
    max_duration_s: Number | None = Field(None, gt=0, description="stop the job after this many seconds")
    min_accuracy: Number | None = Field(None, ge=0, le=1, description="distilled accuracy must reach this")
    max_accuracy_drop: Number | None = Field(None, ge=0, le=1, description="teacher minus distilled accuracy")


class OutputSpec(Strict):
    plots: StrictBool = True
    tensorboard: StrictBool = True
    latency_repeats: StrictInt = Field(50, ge=1, le=1000, description="interleaved timing rounds at batch 1")
    draft_prompts: StrictInt = Field(
        8, ge=0, le=256, description="language models: test prompts on which the teacher decodes with the student as "
                                     "its draft model (speculative decoding), timed against the teacher alone; 0: off")
    draft_tokens: StrictInt = Field(48, ge=1, le=1024, description="new tokens per draft-decoding prompt")
    draft_lookahead: StrictInt | None = Field(
        None, ge=1, le=64, description="tokens the draft proposes per decoding step; null: the one with the highest "
                                       "expected speed-up, from the draft's agreement with the teacher and its cost "
                                       "measured on validation prompts")


class JobSpec(Strict):
    name: str = Field("distillation", min_length=1, max_length=200)
    task: str = Field("image_classification", description="what a sample is and how it is measured (distillab tasks)")
    data: DataSpec = DataSpec()
    teacher: TeacherSpec | list[TeacherSpec]
    student: ModelSpec
    strategy: StrategySpec = StrategySpec()
    training: TrainingSpec = TrainingSpec()
    cache: CacheSpec = CacheSpec()
    constraints: ConstraintsSpec = ConstraintsSpec()
    output: OutputSpec = OutputSpec()
    auto: AutoSpec | None = Field(None, description="constraints, budget and space of distillab auto")
    accept_weak_teacher: StrictBool = Field(
        False, description="train even when the teacher scores near chance on validation, or better under another "
                           "teacher.input (the report records it)")

    @field_validator("teacher")
    @classmethod
    def _non_empty(cls, teacher):
        if isinstance(teacher, list) and not teacher:
            raise ValueError("give at least one teacher")
        return teacher

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        from distillab.tasks import TASKS

        return registered(name, TASKS, "task")

    @model_validator(mode="after")
    def _task_fits(self) -> JobSpec:
        from distillab.tasks.language_modeling import LM_STUDENTS

        text_task = self.task in ("language_modeling", "text_embedding")
        if self.student.model == "teacher_pruned" and self.task == "image_classification":
            from distillab.models.cut import check_cut_spec

            try:
                check_cut_spec(self)  # cut from a zoo resnet or cnn teacher
            except SpecError as problem:
                raise ValueError(str(problem)) from None
        elif self.student.model in LM_STUDENTS and not text_task:
            raise ValueError(f"student.model: {self.student.model} is a language-model student (task: language_modeling)")
        if text_task != self.data.is_text:
            kind = "a text corpus" if text_task else "an image or tensor dataset"
            raise ValueError(f"data.dataset: the task {self.task} needs {kind}, not {self.data.dataset!r}")
        for index, teacher in enumerate(self.teachers):
            where = "teacher" if not isinstance(self.teacher, list) else f"teacher.{index}"
            if text_task and not teacher.is_language_model:
                raise ValueError(f"{where}: a {self.task} teacher is a pretrained text model: give checkpoint (GGUF "
                                 "file or Hugging Face folder), pretrained or hub")
            if not text_task and teacher.is_language_model:
                raise ValueError(f"{where}: a pretrained text model teacher needs task: language_modeling or "
                                 "text_embedding")
        return self

    @field_validator("name")
    @classmethod
    def _printable_name(cls, name: str) -> str:
        problem = text_problem(name)
        if problem:
            raise ValueError(problem)
        return name

    @model_validator(mode="after")
    def _models_build(self) -> JobSpec:
        """Build every model of the spec on the meta device (nothing is allocated), so bad
        model_args and giant models fail here, not in the middle of a run."""
        try:
            counts = self.parameter_counts()
        except SpecError as problem:
            raise ValueError(str(problem)) from None
        for where, name, count in counts:
            if count > MAX_MODEL_PARAMETERS:
                raise ValueError(f"{where}.model_args: {name} would have {count:,} parameters, over the "
                                 f"limit of {MAX_MODEL_PARAMETERS:,}")
        return self

    def parameter_counts(self) -> list[tuple[str, str, int]]:
        """(spec key, zoo model, parameters) of the student and every zoo teacher, counted on the
        meta device for the data set's input shape (3x32x32 and 10 classes when the files decide it)."""
        from distillab.data import DATASETS
        from distillab.models.zoo import parameter_count_on_meta

        if self.data.is_text:  # the vocabulary comes from the teacher's tokenizer: estimate it
            in_shape, classes = (self.data.context_length,), TEXT_VOCABULARY_ESTIMATE
        else:
            info = DATASETS[self.data.dataset]
            in_shape, classes = info.in_shape or (3, 32, 32), info.num_classes or 10
        from distillab.tasks.language_modeling import LM_STUDENTS

        models = [] if self.student.model in LM_STUDENTS else [("student", self.student.model, self.student.model_args)]
        for index, teacher in enumerate(self.teachers):
            if teacher.model is not None and teacher.resolved_format in (None, "safetensors"):
                where = "teacher" if not isinstance(self.teacher, list) else f"teacher.{index}"
                models.append((where, teacher.model, teacher.model_args))
        return [(where, name, parameter_count_on_meta(name, in_shape, classes, args, where))
                for where, name, args in models]

    @property
    def teachers(self) -> list[TeacherSpec]:
        return self.teacher if isinstance(self.teacher, list) else [self.teacher]


_PATH_PREFIX = re.compile(r"^([A-Za-z_][\w.]*(?:\[\d+\])?(?:\.[\w]+)*): (.*)$", re.S)


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``X | list[X]``), if any."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _keys_at(root: type[BaseModel] | None, parents: list) -> list[str]:
    """The field names of the model at ``parents`` under ``root`` ([] when it is not a model)."""
    model = root
    for part in parents:
        if model is None or isinstance(part, int) or str(part).isdigit():
            continue
        field_info = model.model_fields.get(str(part))
        model = _model_in(field_info.annotation) if field_info is not None else None
    return list(model.model_fields) if model is not None else []


def error_items(error: ValidationError, root: type[BaseModel] | None = None) -> list[tuple[list, str, str]]:
    """(key path, problem, pydantic error type) for each error; a validator's own
    'sub.key: problem' message is split onto the path. An unknown key of ``root`` (default:
    JobSpec) gets the close matches among the known ones, and a required key that such a typo
    was meant to be is not reported missing as well."""
    import difflib

    root = JobSpec if root is None else root
    out = []
    items = error.errors(include_url=False)
    teacher_problems = [item for item in items if item["loc"][:1] == ("teacher",) and len(item["loc"]) > 2]
    for item in items:
        if item["type"] == "list_type" and item["loc"][:1] == ("teacher",) and teacher_problems:
            continue  # the list form of the teacher union: noise when the single teacher has a real problem
        loc = [part for part in item["loc"] if not str(part).startswith(("function-", "list[", "TeacherSpec"))]
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        match = _PATH_PREFIX.match(msg)
        if item["type"] == "value_error" and match:
            loc += match.group(1).split(".")
            msg = match.group(2)
        if item["type"] == "extra_forbidden" and loc:
            msg += close_matches(str(loc[-1]), _keys_at(root, loc[:-1]))
        out.append((loc, msg, item["type"]))
    meant = set()  # (parent path, key) that an unknown key was probably meant to be
    for loc, _, kind in out:
        if kind == "extra_forbidden" and loc:
            for key in difflib.get_close_matches(str(loc[-1]), _keys_at(root, loc[:-1]), n=1, cutoff=0.5):
                meant.add((tuple(map(str, loc[:-1])), key))
    return [(loc, msg, kind) for loc, msg, kind in out
            if not (kind == "missing" and loc and (tuple(map(str, loc[:-1])), str(loc[-1])) in meant)]


def error_messages(error: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    """'key.path: problem' for each error."""
    return [f"{'.'.join(str(part) for part in loc) or '(spec)'}: {msg}" for loc, msg, _ in error_items(error, root)]
