"""``distillab export RUN_DIR --format adaptive --out DIR``: G and the student of a finished
``adaptive`` run (or an ``adaptive_v2`` run's student with its dynamic convolutions, whose
routers are G), for deployment without the teacher."""

from __future__ import annotations

import json
from pathlib import Path

from distillab.adaptive.dynamic import make_dynamic
from distillab.adaptive.generator import WeightGenerator
from distillab.adaptive.pipeline import AdaptivePipeline
from distillab.adaptive.student import AdaptiveStudent
from distillab.data.transforms import Normalize
from distillab.errors import DistillabError
from distillab.models.loading import load_state_into
from distillab.models.zoo import build_model


def load_run(run_dir: Path | str, seed: int | None = None) -> tuple[AdaptivePipeline, dict]:
    """(feed-forward pipeline, report.json) of seed ``seed`` (default: the first) of a run."""
    run_dir = Path(run_dir)
    report_path = run_dir / "report.json"
    if not report_path.is_file():
        raise DistillabError(f"{run_dir}: not a finished run (no report.json)")
    report = json.loads(report_path.read_text())
    strategy = report["strategy"]["name"]
    if strategy not in ("adaptive", "adaptive_v2"):
        raise DistillabError(f"{run_dir}: the run's strategy is {strategy!r}; only 'adaptive' and 'adaptive_v2' runs "
                             "export a generator")
    seeds = report["seeds"]
    seed = seeds[0] if seed is None else seed
    if seed not in seeds:
        raise DistillabError(f"--seed {seed}: the run has seeds {seeds}")
    dataset = report["dataset"]
    if "in_shape" not in dataset:
        raise DistillabError(f"{report_path}: written by an older distillab without dataset.in_shape; re-run it")
    student_spec = report["spec"]["student"]
    student = build_model(student_spec["model"], dataset["in_shape"], dataset["num_classes"],
                          student_spec.get("model_args"))
    if strategy == "adaptive_v2":
        from distillab.strategies.adaptive_v2 import AdaptiveV2Params

        p = AdaptiveV2Params.model_validate(report["strategy"]["params"])
        make_dynamic(student, p.layers, p.experts, p.gates, variational=p.vae)
        model = student
    else:
        from distillab.strategies.adaptive import AdaptiveParams  # the strategy registry imports this package

        params = AdaptiveParams.model_validate({**report["strategy"]["params"], "base_checkpoint": None})
        generator = WeightGenerator(student, dataset["in_shape"], params.mode, params.layers, params.latent_dims,
                                    params.hidden, params.rank)
        model = AdaptiveStudent(student, generator)
    weights = run_dir / f"seed_{seed}" / "distilled" / "student.safetensors"
    load_state_into(model, weights, f"{run_dir} seed {seed}")
    norm = dataset["normalize"]
    pipeline = AdaptivePipeline(model, normalize=Normalize(tuple(norm["mean"]), tuple(norm["std"]), norm["scale"]))
    return pipeline, report


def export_run(run_dir: Path | str, out_dir: Path | str, seed: int | None = None) -> Path:
    pipeline, report = load_run(run_dir, seed)
    student_spec = report["spec"]["student"]
    return pipeline.save(out_dir, student_model=student_spec["model"], student_args=student_spec.get("model_args"),
                         in_shape=report["dataset"]["in_shape"], num_classes=report["dataset"]["num_classes"],
                         source=str(Path(run_dir).resolve()))
