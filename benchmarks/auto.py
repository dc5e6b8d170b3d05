"""Does the search find a better student than the hand-picked default, within its constraints?

Fashion-MNIST, the shipped teacher, the default job's data regime (4,500 training images, 30
epochs, 8 cached views; `configs/fashion_mnist_kd.yaml`). The constraint is the default student's
own cost: latency at batch 1 on ONNX Runtime fp32 no higher than `cnn_small`'s, measured in this
run, and at most 100k parameters. Every search gets the same wall-clock budget. Rows:

- ``default``: the default job's distilled `cnn_small`, as configured today (over the seeds);
- ``auto``: `distillab auto` (multi-objective TPE with successive halving), its chosen student
  distilled and its scratch twin;
- ``random``: random search, same budget and constraints, no multi-fidelity;
- ``single_fidelity``: the same Optuna study with every trial at the full 30 epochs.

Each search's chosen student is retrained with the full schedule over the same seeds against its
scratch twin. The targets (written to ``auto.json`` under ``targets``): auto's distilled student at
least 0.8 points above the default's distilled `cnn_small` (paired over the seeds, p < 0.05),
within the latency constraint, and ahead of random search at the same budget (``ahead_of_random``;
``vs_baselines`` holds auto's paired comparison with each baseline row run).

    .venv/bin/python benchmarks/auto.py --budget-s 3600 --seeds 5   # -> benchmarks/results/auto.{json,md}

Resumable: every row resumes from its folder (the search from its study, the retraining from its
unfinished run); a finished row is read back, not rerun. Rows compare at equal wall-clock budgets,
so every row must run on the same kind of CPU: the bf16 path of each row (AMX, AVX512-BF16 or
none) is recorded, and a row is not started or resumed on another kind unless ``--any-cpu``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from common import target_lines
import yaml

ROOT = Path(__file__).resolve().parents[1]
ROWS = ("default", "auto", "random", "single_fidelity")
TARGET_GAIN = 0.008  # accuracy as a fraction: 0.8 points


def base_spec(seeds: list[int], overrides: list[str]) -> dict:
    from distillab.spec_io import apply_override, read_spec_file, resolve_spec_paths

    path = ROOT / "configs" / "fashion_mnist_kd.yaml"
    spec = resolve_spec_paths(read_spec_file(path), path.parent)
    spec["training"]["seeds"] = seeds
    spec.setdefault("output", {})["tensorboard"] = False
    for override in overrides:
        apply_override(spec, override)
    return spec


def default_latency(spec: dict) -> float:
    """``cnn_small``'s latency at batch 1 on ONNX Runtime fp32, measured as the search measures."""
    from distillab.autodistill.latency import measure
    from distillab.autodistill.space import Candidate
    from distillab.data import DATASETS

    info = DATASETS[spec["data"].get("dataset", "fashion_mnist")]
    return measure(Candidate("cnn_small", "{}"), info.in_shape, info.num_classes, "onnx", 1, repeats=200)


def run_default(spec: dict, out: Path) -> dict:
    from distillab.experiment.run import run

    report = run(spec, out, resume=(out.with_name(out.name + ".partial")).exists(), overwrite=False) \
        if not (out / "report.json").exists() else None
    return json.loads((out / "report.json").read_text()) if report is None else report.data


def run_search(row: str, spec: dict, out: Path, latency_ms: float, budget_s: float, seeds: list[int]) -> dict:
    from distillab.autodistill.search import search

    summary_path = out / "auto.json"
    if summary_path.is_file() and (out / "run" / "report.json").is_file():  # finished: read back, not rerun
        summary = json.loads(summary_path.read_text())
        if summary.get("final"):
            return summary

    spec = {**spec, "auto": {"constraints": {"max_latency_ms": latency_ms, "runtime": "onnx", "batch_size": 1,
                                             "max_params": 100_000},
                             "budget": {"wall_s": budget_s},
                             "space": {"epochs": [3, spec["training"]["epochs"]]}}}
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    options = {"auto": {}, "random": {"sampler": "random", "multi_fidelity": False},
               "single_fidelity": {"multi_fidelity": False}}[row]
    return search(spec_path, out, final_seeds=seeds, **options)


def cpu_of(folder: Path) -> str | None:
    """The bf16 path ("AMX", "AVX512-BF16" or "none") a row ran on: its record, or its report's."""
    if (folder / "machine.json").is_file():
        return json.loads((folder / "machine.json").read_text())["bf16_path"]
    for report in (folder / "report.json", folder / "run" / "report.json"):
        if report.is_file():
            return json.loads(report.read_text()).get("precision", {}).get("bf16_path") or "none"
    return None


def check_cpu(out: Path, rows: list[str], any_cpu: bool) -> str:
    """This machine's bf16 path, refused (exit 2) when rows already run used another one."""
    from distillab.runtime import bf16_path

    here = bf16_path() or "none"
    others = {row: cpu for row in ROWS if (cpu := cpu_of(out / row)) not in (None, here)}
    if others and not any_cpu:
        print(f"rows {', '.join(f'{row} ({cpu})' for row, cpu in others.items())} ran on another kind of "
                         f"CPU than this one ({here}): equal wall-clock budgets would not compare; run on that kind, "
                         f"or pass --any-cpu to compare anyway (the table then shows each row's CPU)", file=sys.stderr)
        raise SystemExit(2)
    for row in rows:
        record = out / row / "machine.json"
        if row != "default" and not record.is_file() and cpu_of(out / row) is None:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"bf16_path": here}) + "\n")
    return here


def trial_seconds(folder: Path) -> float:
    """The seconds the search's trials took, read from its study (every session of it together)."""
    import optuna

    study = optuna.load_study(study_name="auto", storage=f"sqlite:///{folder / 'study.db'}")
    return round(sum(t.user_attrs.get("seconds", 0.0) for t in study.trials
                     if t.state == optuna.trial.TrialState.COMPLETE), 1)


def per_seed(report: dict, role: str) -> dict[int, float]:
    """Test accuracy by seed of the report's model in ``role``."""
    model = next(m for m in report["models"] if m["role"] == role)
    return dict(zip(report["seeds"], model["accuracy"]["per_seed"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=3600.0, help="wall-clock budget of each search")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and ONNX Runtime threads for training and every latency measurement")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override the default spec (key.path=value), e.g. for a quick check")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "auto"))
    parser.add_argument("--any-cpu", action="store_true",
                        help="run or resume a row on another kind of CPU than the rows already run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from distillab.engine.callbacks import show_progress
    from distillab.experiment.stats import paired_comparison
    from distillab.files import atomic_write_json, atomic_write_text

    show_progress()  # the search rows' trials too, not only the default row's epochs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check_cpu(out, args.rows, args.any_cpu)
    seeds = list(range(args.seeds))
    spec = base_spec(seeds, args.overrides)
    latency_path = out / "default_latency.json"
    if latency_path.exists():
        latency_ms = json.loads(latency_path.read_text())["latency_ms"]
    else:
        latency_ms = default_latency(spec)
        atomic_write_json(latency_path, {"latency_ms": latency_ms, "model": "cnn_small", "runtime": "onnx",
                                         "batch_size": 1})
    rows, reports = {}, {}
    for row in args.rows:
        started = time.monotonic()
        if row == "default":
            reports[row] = run_default(spec, out / "default")
            rows[row] = {"student": "cnn_small", "latency_ms_measured": latency_ms}
        else:
            summary = run_search(row, spec, out / row, latency_ms, args.budget_s, seeds)
            reports[row] = json.loads((out / row / "run" / "report.json").read_text())
            rows[row] = {"student": summary["chosen"]["candidate"], "params": summary["chosen"]["params"],
                         "trials": summary["trials"], "epochs_trained": summary["epochs_trained"],
                         "trial_seconds": summary.get("trial_seconds") or trial_seconds(out / row),
                         "stopped": summary["stopped"],
                         "latency_ms_measured": summary["final"]["latency_ms_measured"],
                         "latency_model_error": summary["latency_model"]["error"]}
        rows[row].update(cpu=cpu_of(out / row),
                         distilled_mean=statistics.fmean(per_seed(reports[row], "distilled").values()),
                         scratch_mean=statistics.fmean(per_seed(reports[row], "scratch").values()),
                         verdict=reports[row]["verdict"], seconds=round(time.monotonic() - started, 1))
    result = {"budget_s": args.budget_s, "threads": args.threads, "seeds": seeds, "default_latency_ms": latency_ms,
              "rows": rows}
    if "default" in reports and "auto" in reports:
        base, chosen = per_seed(reports["default"], "distilled"), per_seed(reports["auto"], "distilled")
        common = sorted(set(base) & set(chosen))
        comparison = paired_comparison("auto", [chosen[s] for s in common], "default", [base[s] for s in common])
        gain = comparison["mean_diff"]
        result["targets"] = {
            "gain_over_default": {"target": TARGET_GAIN, "measured": gain, "met": gain >= TARGET_GAIN},
            "p_value": {"target": 0.05, "measured": comparison["p_value"],  # of a gain: a significant loss is not met
                        "met": comparison["p_value"] is not None and comparison["p_value"] < 0.05 and gain > 0},
            "latency": {"target": latency_ms, "measured": rows["auto"]["latency_ms_measured"],
                        "met": rows["auto"]["latency_ms_measured"] <= latency_ms},
        }
        # the same budget spent another way: random search, and the search without multi-fidelity
        result["vs_baselines"] = {}
        for row in ("random", "single_fidelity"):
            if row in reports:
                other = per_seed(reports[row], "distilled")
                shared = sorted(set(other) & set(chosen))
                result["vs_baselines"][row] = paired_comparison(
                    "auto", [chosen[s] for s in shared], row, [other[s] for s in shared])
        if "random" in result["vs_baselines"]:
            ahead = result["vs_baselines"]["random"]["mean_diff"]
            result["targets"]["ahead_of_random"] = {"target": 0.0, "measured": ahead, "met": ahead > 0}
    atomic_write_json(out.with_suffix(".json"), result)
    lines = ["| row | student | distilled (%) | scratch (%) | latency ms (ONNX, b=1) | trials | epochs trained | CPU |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row, facts in rows.items():
        student = facts["student"] if isinstance(facts["student"], str) else \
            f"{facts['student']['model']} {json.dumps(facts['student']['model_args'])}"
        lines.append(f"| {row} | {student} | {100 * facts['distilled_mean']:.2f} | {100 * facts['scratch_mean']:.2f} | "
                     f"{facts['latency_ms_measured']:.3f} | {facts.get('trials', '-')} | "
                     f"{facts.get('epochs_trained', '-')} | {facts.get('cpu') or '-'} |")
    for row, comparison in result.get("vs_baselines", {}).items():
        lines += ["", f"auto against {row} (distilled, paired over seeds): {100 * comparison['mean_diff']:+.2f} "
                      f"points, p = {'-' if comparison['p_value'] is None else format(comparison['p_value'], '.3g')}"]
    lines += target_lines(result.get("targets", {}))
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
