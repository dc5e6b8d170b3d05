"""The body of ``POST /jobs`` and its conversion to a validated ``JobSpec``.

Two shapes are accepted:

* the documented job shape: ``name``, ``description``, ``teacher_model_ids`` (ids from the model
  registry), ``student_specification``, ``strategy`` (+ ``strategy_params``),
  ``dataset_config``, ``training``, ``constraints`` (``budget_constraints``,
  ``quality_thresholds``) and ``usage_stats``;
* ``{"spec": <JobSpec as JSON>}``, exactly what ``distillab run`` reads from YAML, with
  optional ``teacher_model_ids``, ``constraints``, ``usage_stats`` and ``description``.

Either way the result is parsed by ``JobSpec``; errors come back as 422 with the path of
the field in the request body. File paths are refused: teachers come from the registry,
data sets from the server's registry of installed data sets.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distillab.inputs import check_values
from distillab.spec import JobSpec, error_items


class Forbid(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class EfficiencyConstraints(Forbid):
    max_size_mb: float | None = Field(None, gt=0, description="the distilled student's serialized size")
    max_inference_time_ms: float | None = Field(None, gt=0, description="its measured latency at batch 1")


class TargetPerformance(Forbid):
    accuracy: float | None = Field(None, gt=0, le=1, description="validation accuracy the student must reach")
    inference_speed_ms: float | None = Field(None, gt=0, description="latency at batch 1 on ONNX Runtime")


class StudentSpecification(Forbid):
    type: Literal["image_classifier"] = Field("image_classifier", description="see GET /model-types")
    architecture: str | None = Field(None, description="a zoo model name (GET /model-types); without it, the "
                                                       "job searches the student that meets the constraints")
    model_args: dict[str, Any] = Field(default_factory=dict)
    parameter_count: int | None = Field(None, ge=1, description="most parameters the searched student may have")
    target_performance: TargetPerformance = TargetPerformance()
    efficiency_constraints: EfficiencyConstraints = EfficiencyConstraints()


class DatasetConfig(Forbid):
    dataset: str = Field("fashion_mnist", description="an installed data set (GET /model-types lists them)")
    sample_count: int | None = Field(None, ge=1, description="use only the first N training samples")
    val_size: float = Field(0.1, gt=0, lt=1)
    augment: dict[str, Any] | None = None


class BudgetConstraints(Forbid):
    max_cost_usd: float | None = Field(None, gt=0, description="device-hours x the configured price")
    max_duration_hours: float | None = Field(None, gt=0, description="device time, summed over attempts")


class QualityThresholds(Forbid):
    min_accuracy: float | None = Field(None, ge=0, le=1, description="distilled test accuracy (mean over seeds)")
    max_performance_drop: float | None = Field(None, ge=0, le=1, description="teacher minus distilled accuracy")


class Constraints(Forbid):
    budget_constraints: BudgetConstraints = BudgetConstraints()
    quality_thresholds: QualityThresholds = QualityThresholds()


class UsageStats(Forbid):
    monthly_volume: int = Field(ge=0, description="requests per month the student will serve (for ROI)")


class JobCreate(Forbid):
    spec: dict[str, Any] | None = Field(None, description="a complete JobSpec, as `distillab run` reads it")
    name: str | None = Field(None, min_length=1, max_length=200)
    description: str = Field("", max_length=4000)
    teacher_model_ids: list[str] | None = Field(None, min_length=1, max_length=8)
    student_specification: StudentSpecification | None = None
    strategy: str | None = Field(None, description="a strategy name (GET /strategies)")
    strategy_params: dict[str, Any] = Field(default_factory=dict)
    dataset_config: DatasetConfig | None = None
    training: dict[str, Any] | None = Field(None, description="JobSpec.training: epochs, batch_size, seeds, lr ...")
    constraints: Constraints = Constraints()
    usage_stats: UsageStats | None = None


class BodyError(Exception):
    """A 4xx (422 unless told) with FastAPI-shaped ``detail``: [{loc, msg, type}]."""

    def __init__(self, errors: list[dict], status: int = 422, headers: dict | None = None):
        super().__init__(errors)
        self.errors, self.status, self.headers = errors, status, headers


def error(loc: list, msg: str, kind: str = "value_error") -> dict:
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


SEED_FIELDS = ("name", "student_specification", "strategy", "dataset_config", "training")
# where each JobSpec key came from in a body of the documented job shape
SEED_LOCATIONS = {
    ("data", "dataset"): ["dataset_config", "dataset"],
    ("data", "limit_train"): ["dataset_config", "sample_count"],
    ("data", "val_size"): ["dataset_config", "val_size"],
    ("data", "augment"): ["dataset_config", "augment"],
    ("student", "model"): ["student_specification", "architecture"],
    ("auto", "constraints", "max_params"): ["student_specification", "parameter_count"],
    ("auto", "constraints", "min_score"): ["student_specification", "target_performance", "accuracy"],
    ("auto", "constraints", "max_latency_ms"): ["student_specification", "target_performance", "inference_speed_ms"],
    ("auto", "constraints", "max_size_mb"): ["student_specification", "efficiency_constraints", "max_size_mb"],
    ("auto", "budget", "wall_s"): ["constraints", "budget_constraints", "max_duration_hours"],
    ("student", "model_args"): ["student_specification", "model_args"],
    ("strategy", "name"): ["strategy"],
    ("strategy", "params"): ["strategy_params"],
    ("strategy",): ["strategy"],
    ("training",): ["training"],
    ("name",): ["name"],
    ("teacher",): ["teacher_model_ids"],
    ("constraints", "min_accuracy"): ["constraints", "quality_thresholds", "min_accuracy"],
    ("constraints", "max_accuracy_drop"): ["constraints", "quality_thresholds", "max_performance_drop"],
}


def _seed_location(loc: list) -> list:
    for length in range(len(loc), 0, -1):
        key = tuple(loc[:length])
        if key in SEED_LOCATIONS:
            return SEED_LOCATIONS[key] + list(loc[length:])
    return ["spec", *loc]


def spec_errors(problem: ValidationError, seed_shaped: bool) -> list[dict]:
    return [error(_seed_location(loc) if seed_shaped else ["spec", *loc], msg, kind)
            for loc, msg, kind in error_items(problem)]


PATH_KEYS = (("data", "path"), ("cache", "dir"))


def refuse_paths(spec: dict) -> list[dict]:
    """File paths in a spec body never reach the file system: name them as errors."""
    problems = []
    for section, key in PATH_KEYS:
        if isinstance(spec.get(section), dict) and spec[section].get(key) is not None:
            problems.append(error(["spec", section, key], "file paths are not accepted by the service"))
    teachers = spec.get("teacher")
    for index, teacher in enumerate(teachers if isinstance(teachers, list) else [teachers]):
        base = ["spec", "teacher", index] if isinstance(teachers, list) else ["spec", "teacher"]
        if isinstance(teacher, dict) and teacher.get("checkpoint") is not None:
            problems.append(error([*base, "checkpoint"], "file paths are not accepted by the service: upload the "
                                                         "teacher (POST /models) and pass its id in teacher_model_ids"))
        if isinstance(teacher, dict) and teacher.get("hub") is not None:
            problems.append(error([*base, "hub"], "the service does not download models: use a pretrained model "
                                                  "it has installed (GET /model-types) or upload the teacher"))
        if isinstance(teacher, dict) and teacher.get("url") is not None:
            problems.append(error([*base, "url"], "the service does not call other servers: upload the teacher "
                                                  "(POST /models) or run the job with the CLI"))
    student = spec.get("student")
    if isinstance(student, dict) and isinstance(student.get("model_args"), dict) and "path" in student["model_args"]:
        problems.append(error(["spec", "student", "model_args", "path"], "file paths are not accepted by the service"))
    return problems


def build_spec(body: JobCreate, teachers: list[dict] | None) -> dict:
    """The JobSpec dict of a request; ``teachers`` are TeacherSpec dicts resolved from
    ``teacher_model_ids`` (None when the body gave none)."""
    problems: list[dict] = []
    if body.spec is not None:
        given = [name for name in SEED_FIELDS if getattr(body, name) is not None]
        problems += [error([name], "give either spec or the job-shape fields (name, teacher_model_ids, ...), not both") for name in given]
        problems += refuse_paths(body.spec)
        spec = dict(body.spec)
        if teachers is not None:
            spec["teacher"] = teachers if len(teachers) > 1 else teachers[0]
    else:
        if body.student_specification is None:
            problems.append(error(["student_specification"], "Field required", "missing"))
        if teachers is None:
            problems.append(error(["teacher_model_ids"], "Field required: upload teachers with POST /models",
                                  "missing"))
        if problems:
            raise BodyError(problems)
        data = body.dataset_config or DatasetConfig()
        student = body.student_specification
        spec = {
            "name": body.name or "distillation",
            "data": {"dataset": data.dataset, "limit_train": data.sample_count, "val_size": data.val_size,
                     **({"augment": data.augment} if data.augment is not None else {})},
            "teacher": teachers if len(teachers) > 1 else teachers[0],
            "strategy": {"name": body.strategy or "response", "params": body.strategy_params},
            "output": {"tensorboard": False},
        }
        if student.architecture is not None:
            spec["student"] = {"model": student.architecture, "model_args": student.model_args}
        else:
            if student.model_args:
                problems.append(error(["student_specification", "model_args"], "model_args go with an architecture; "
                                      "without one the job searches the student"))
            spec["auto"] = auto_section(body)
            spec["student"] = {"model": "cnn_small"}  # a placeholder the search replaces (and estimates by)
        if body.training is not None:
            spec["training"] = body.training
    quality = body.constraints.quality_thresholds
    constraints = dict(spec.get("constraints") or {})
    if quality.min_accuracy is not None:
        constraints["min_accuracy"] = quality.min_accuracy
    if quality.max_performance_drop is not None:
        constraints["max_accuracy_drop"] = quality.max_performance_drop
    if constraints:
        spec["constraints"] = constraints
    if problems:
        raise BodyError(problems)
    return spec


SEARCH_SHARE = 0.6  # of a job's max_duration_hours, for its search (the chosen student's final run: the rest)


def auto_section(body: JobCreate) -> dict:
    """The spec's ``auto`` section of a body that names no architecture: its parameter count,
    target accuracy and latency, size and duration budget become the search's constraints
    (latency on ONNX Runtime at batch 1, what a package serves)."""
    student = body.student_specification
    target, efficiency = student.target_performance, student.efficiency_constraints
    latencies = [v for v in (target.inference_speed_ms, efficiency.max_inference_time_ms) if v is not None]
    constraints = {"runtime": "onnx", "batch_size": 1, "max_params": student.parameter_count,
                   "max_size_mb": efficiency.max_size_mb, "min_score": target.accuracy,
                   "max_latency_ms": min(latencies) if latencies else None}
    hours = body.constraints.budget_constraints.max_duration_hours  # the search gets 60 %, the final run the rest
    return {"constraints": {k: v for k, v in constraints.items() if v is not None},
            "budget": {"wall_s": hours * 3600 * SEARCH_SHARE} if hours is not None else {}}


def check_body(body: BaseModel) -> None:
    """Refuse what no database or model may receive, anywhere in the body: NUL and other
    control characters, lone surrogates, NaN or infinity, nesting past the spec limit."""
    problems = check_values(body.model_dump(exclude_none=True))
    if problems:
        raise BodyError([error(list(loc), message) for loc, message in problems])


def check_limits(spec: JobSpec, seed_shaped: bool, settings) -> None:
    """The service's caps on one job: seeds, and the parameters of every model it builds
    (counted on the meta device). A 422 names the limit and its setting."""
    problems = []
    where = (lambda *loc: _seed_location(list(loc))) if seed_shaped else (lambda *loc: ["spec", *loc])
    if len(spec.training.seeds) > settings.max_seeds:
        problems.append(error(where("training", "seeds"), f"{len(spec.training.seeds)} seeds; this service runs at "
                                                          f"most {settings.max_seeds} per job (DISTILLAB_MAX_SEEDS)"))
    for key, name, count in spec.parameter_counts():
        if count > settings.max_model_parameters:
            problems.append(error(where(*key.split("."), "model_args"),
                                  f"{name} has {count:,} parameters; this service builds at most "
                                  f"{settings.max_model_parameters:,} (DISTILLAB_MAX_MODEL_PARAMETERS)"))
    if problems:
        raise BodyError(problems)


def validate_spec(spec: dict, seed_shaped: bool) -> JobSpec:
    try:
        validated = JobSpec.model_validate(spec)
    except ValidationError as problem:
        raise BodyError(spec_errors(problem, seed_shaped)) from None
    if validated.auto is not None:
        from distillab.errors import SpecError
        from distillab.spec_auto import check_auto

        try:
            check_auto(validated)
        except SpecError as problem:
            raise BodyError([error(["spec", "auto"], str(problem))]) from None
    if validated.student.model == "teacher_pruned":
        _check_cut(validated)
    return validated


def _check_cut(spec: JobSpec) -> None:
    """A cut the teacher cannot make is refused at submission: checked against the teacher's
    config, without its weights (the calibration text is checked when the job runs)."""
    from distillab.errors import DistillabError
    from distillab.models.lm_prune import check_llama_family
    from distillab.tasks.language_modeling import load_lm_teacher, weightless_teachers
    from distillab.tasks.lm_students import cut_shape

    try:
        with weightless_teachers():
            skeleton = load_lm_teacher(spec.teachers[0], spec.cache.dir)
        check_llama_family(skeleton.model, "teacher")
        cut_shape(skeleton.model.config, dict(spec.student.model_args))
    except DistillabError as problem:
        raise BodyError([error(["spec", "student", "model_args"], str(problem))]) from None


def options_of(body: JobCreate, teacher_model_ids: list[str] | None) -> dict:
    """What the job row keeps besides the spec: budgets, thresholds, volume, teacher ids."""
    efficiency = body.student_specification.efficiency_constraints if body.student_specification else None
    return {
        "budget": body.constraints.budget_constraints.model_dump(),
        "quality_thresholds": body.constraints.quality_thresholds.model_dump(),
        "efficiency_constraints": efficiency.model_dump() if efficiency else {},
        "monthly_volume": body.usage_stats.monthly_volume if body.usage_stats else None,
        "teacher_model_ids": teacher_model_ids or [],
    }
