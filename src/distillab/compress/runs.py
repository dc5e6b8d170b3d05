"""A finished run's deployable student: which seed, the rebuilt model with its weights, the data
it was trained on (held-out inputs for parity, training inputs for calibration) and the facts a
deployment needs (input shape, normalisation, labels, metrics)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from distillab.compress.export import EXPORT_TASKS, ExportError, Tolerance, export_model
from distillab.data.batches import batches_of  # noqa: F401  (export, qat and benchmarks take it from here)
from distillab.strategies import STRATEGIES
from distillab.errors import DistillabError


@dataclass
class RunStudent:
    model: nn.Module
    seed: int
    data: object  # the seed's data bundle
    report: dict
    facts: dict  # what export.json and the package manifest keep


def read_report(run_dir: Path) -> dict:
    path = Path(run_dir) / "report.json"
    if not Path(run_dir).is_dir():
        raise ExportError(f"{run_dir}: no such run folder")
    if not path.exists():
        raise ExportError(f"{run_dir}: no report.json (not a finished run; a stopped run keeps its students "
                          "in RUN.partial until it is resumed)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{path}: not a readable report ({error})") from None


def best_seed(run_dir: Path, report: dict) -> int:
    """The seed whose distilled student scored best on validation (the task's primary metric):
    chosen without looking at test."""
    higher_is_better = (report.get("task") or {}).get("higher_is_better", True)
    scored = []
    for seed in report["seeds"]:
        path = Path(run_dir) / f"seed_{seed}" / "distilled" / "result.json"
        if path.exists():
            score = json.loads(path.read_text())["val_accuracy"]
            scored.append((score if higher_is_better else -score, -seed, seed))
    if not scored:
        raise ExportError(f"{run_dir}: the run has no distilled student (no seed_*/distilled/result.json)")
    return max(scored)[2]


def run_student(run_dir: Path | str, seed: int | None = None) -> RunStudent:
    """The distilled student of ``seed`` (default: the best on validation), rebuilt from the
    run's spec and loaded from its ``student.safetensors``."""
    from distillab.data import CLASS_NAMES
    from distillab.experiment.job import Job
    from distillab.models.loading import load_state_into
    from distillab.spec_io import parse_spec
    from distillab.tasks.language_modeling import weightless_teachers

    run_dir = Path(run_dir)
    report = read_report(run_dir)
    recorded = report.get("spec")
    if not isinstance(recorded, dict) or not isinstance(recorded.get("student"), dict):
        raise ExportError(f"{run_dir}: the run was made from Python objects, not a spec, so its student cannot "
                          "be rebuilt here; export the model object with distillab.compress.export_model")
    try:
        spec = parse_spec(recorded, teacher_files=False)  # the student is rebuilt without its teacher
    except DistillabError as error:
        raise ExportError(f"{run_dir}: its spec cannot be used here: {error}") from None
    if spec.task not in EXPORT_TASKS:
        raise ExportError(f"{run_dir}: a {spec.task} student outputs embeddings, not logits; export supports "
                          f"{', '.join(EXPORT_TASKS)}")
    strategy_cls = STRATEGIES[spec.strategy.name]
    if strategy_cls.student_export == "pipeline":
        raise ExportError(f"{run_dir}: an {spec.strategy.name} run's student is exported by its own pipeline "
                          "(distillab.compress.adaptive_export), not from the run folder")
    chosen = best_seed(run_dir, report) if seed is None else seed
    if chosen not in report["seeds"]:
        raise ExportError(f"--seed {chosen}: the run has seeds {report['seeds']}")
    weights = run_dir / f"seed_{chosen}" / "distilled" / "student.safetensors"
    if not weights.exists():
        raise ExportError(f"{run_dir}: seed {chosen} has no distilled student ({weights} is missing; multi-stage "
                          "strategies keep their students per stage)")
    job = Job.from_spec(spec)
    with weightless_teachers():  # the student's weights are the run's: a teacher's are not read
        data = job.build_data(chosen)
        model = job.build_student(data)
    if strategy_cls.student_export == "rebuilt":  # e.g. dynamic convolutions: the strategy rebuilds them
        model = job.make_strategy([], model, data).deployed_model()
    model = load_state_into(model, weights, "student").eval()
    distilled = next(m for m in report["models"] if m["role"] == "distilled")
    dataset = report["dataset"]
    facts = {
        "run": str(run_dir.resolve()), "seed": chosen, "task": spec.task, "model": spec.student.model,
        "model_args": spec.student.model_args, "strategy": spec.strategy.name,
        # a student made from the teacher (cut from it): the zoo model it is
        **({"architecture": model.architecture} if getattr(model, "architecture", None) else {}),
        "in_shape": list(data.in_shape), "num_classes": data.num_classes,
        "normalize": dataset.get("normalize") or _normalize_facts(data),
        "labels": list(CLASS_NAMES.get(dataset["name"], [str(i) for i in range(data.num_classes)]))
        if spec.task == "image_classification" else None,
        "val_metric": distilled.get("val_accuracy"), "test_metric": distilled.get("accuracy"),
    }
    return RunStudent(model, chosen, data, report, facts)


def _normalize_facts(data) -> dict | None:
    normalize = getattr(data, "normalize", None)
    if normalize is None:
        return None
    return {"mean": list(normalize.mean), "std": list(normalize.std), "scale": normalize.scale}


def export_run(run_dir: Path | str, out: Path | str, *, fmt: str = "onnx", quantize: str | None = None,
               seed: int | None = None, tolerance: Tolerance | None = None, parity_samples: int = 1000,
               calibration_samples: int = 512, overwrite: bool = False) -> dict:
    """Export a finished run's student (see :func:`export_model`): parity on the first
    ``parity_samples`` test inputs, int8 calibration on ``calibration_samples`` training inputs."""
    if calibration_samples < 0 or parity_samples < 1:
        raise ExportError("calibration samples must be >= 0 and parity samples >= 1")
    from distillab.files import check_output_folder

    check_output_folder(out, "export", overwrite=overwrite, inputs=[run_dir], error_cls=ExportError)
    student = run_student(run_dir, seed)
    batch_size = 128
    if student.facts["task"] == "language_modeling":
        # a block's logits are (T, V): 2 blocks of 256 tokens over a 49k vocabulary are 100 MB, so
        # a language model is checked on a few blocks (every position of each counts)
        batch_size, parity_samples, calibration_samples = 2, min(parity_samples, 8), min(calibration_samples, 8)
    calibration = batches_of(student.data, "train", calibration_samples, batch_size) if calibration_samples else []
    return export_model(student.model, out, fmt=fmt, quantize=quantize, tolerance=tolerance, overwrite=overwrite,
                        inputs=[run_dir],
                        held_out=batches_of(student.data, "test", parity_samples, batch_size),
                        calibration=calibration, facts=student.facts)
