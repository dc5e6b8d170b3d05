"""Seconds per epoch for student-only training, online KD (teacher forward every step) and
cached KD (teacher outputs read from the on-disk cache), in one process, on the same data.

    .venv/bin/python benchmarks/kd_overhead.py            # writes benchmarks/results/kd_overhead.{json,md}
    .venv/bin/python benchmarks/kd_overhead.py --emulated-bf16   # + bf16 rows on a CPU without native bf16
    .venv/bin/python benchmarks/kd_overhead.py --compile   # + rows with the student under torch.compile

The cache is filled before timing; its one-time cost is reported separately.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch

from distillab import data as data_module
from distillab.data.cache import teacher_outputs
from distillab.engine.checkpoint import atomic_write_json, atomic_write_text
from distillab.engine import precision as precision_module
from distillab.engine.loop import fit
from distillab.engine.precision import cpu_features, cpu_supports_bf16
from distillab.experiment.run import environment
from distillab.experiment.teacher import get_teachers
from distillab.models.zoo import build_model
from distillab.spec import load_spec
from distillab.strategies import STRATEGIES

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _native_bf16(pretend: bool):
    """Let the engine run bf16 on a CPU without native bf16 (the emulated row only)."""
    real = precision_module.cpu_supports_bf16
    if pretend:
        precision_module.cpu_supports_bf16 = lambda: True
    try:
        yield
    finally:
        precision_module.cpu_supports_bf16 = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "fashion_mnist_kd.yaml"))
    parser.add_argument("--limit-train", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per mode (median reported)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kd_overhead"))
    parser.add_argument("--emulated-bf16", action="store_true",
                        help="also time bf16 where the CPU has no native bf16 (torch emulates it), labelled so")
    parser.add_argument("--compile", action="store_true",
                        help="also time fp32 student-only and cached KD with torch.compile(student); the first "
                             "epoch (compilation) is reported apart from the median of the others")
    args = parser.parse_args()
    precisions = ["fp32"] + (["bf16"] if cpu_supports_bf16() else
                             ["bf16 (emulated)"] if args.emulated_bf16 else [])

    spec = load_spec(args.spec, [f"data.limit_train={args.limit_train}", f"training.epochs={args.epochs}",
                                 "training.seeds=[0]"])
    bundle = data_module.build(spec.data, 0)
    (teacher, checksum, _), = get_teachers(spec, bundle)
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        cache = teacher_outputs(teacher, checksum, bundle, views=spec.cache.views, fp16=False,
                                cache_dir=Path(scratch) / "cache")
        cache_seconds = time.perf_counter() - started
        modes = {
            "student only": ("none", []),
            "online KD": ("response", None),
            "cached KD": ("response", [cache]),
        }
        results = {}
        runs = [(precision, label, False) for precision in precisions for label in modes]
        if args.compile:
            runs += [("fp32", "student only", True), ("fp32", "cached KD", True)]
        for precision, label, compiled in runs:
            name, caches = modes[label]
            training = spec.training.model_copy(update={"precision": precision.split()[0],
                                                        "epochs": args.epochs + (1 if compiled else 0)})
            if precision.endswith("(emulated)") and label != "student only":
                continue  # emulated bf16 is ~9x slower than fp32 here: one row shows the cost
            torch.manual_seed(0)
            student = build_model(spec.student.model, bundle.in_shape, bundle.num_classes,
                                  spec.student.model_args)
            if compiled:
                student = torch.compile(student)
            cls = STRATEGIES[name]
            strategy = cls([teacher] if cls.uses_teacher else [], student, cls.Params.model_validate(
                spec.strategy.params if name != "none" else {}), in_shape=bundle.in_shape)
            with _native_bf16(precision.endswith("(emulated)")):
                run_dir = Path(scratch) / f"{label}-{precision}-{compiled}".replace(" ", "_")
                result = fit(strategy, bundle, training, 0, run_dir, caches=caches or (), tensorboard=False,
                             description=f"{label} {precision}")
            epoch_seconds = [h["epoch_seconds"] for h in result.history]
            key = f"{label} | {precision}" + (" compiled" if compiled else "")
            results[key] = {"mode": label, "precision": precision + (", torch.compile" if compiled else ""),
                            "seconds_per_epoch": statistics.median(epoch_seconds[1:] if compiled else epoch_seconds),
                            "all_epochs": epoch_seconds, "val_accuracy": result.history[-1]["val_accuracy"]}
            if compiled:
                results[key]["first_epoch_with_compilation"] = epoch_seconds[0]
            print(f"{key:>30}: {results[key]['seconds_per_epoch']:.2f} s/epoch", flush=True)
    base = results["student only | fp32"]["seconds_per_epoch"]
    for row in results.values():
        row["ratio_vs_student_only"] = row["seconds_per_epoch"] / base
    out = {
        "train_samples": len(bundle.train),
        "teacher": spec.teachers[0].model, "student": spec.student.model,
        "views": cache.views, "cache_fill_seconds": cache_seconds, "cpu": cpu_features(),
        "results": results, "environment": environment(),
    }
    lines = [
        f"Fashion-MNIST, {len(bundle.train)} training samples per epoch, teacher {spec.teachers[0].model} "
        f"{spec.teachers[0].model_args}, student {spec.student.model}, batch {spec.training.batch_size}; "
        f"median of {args.epochs} epochs; {out['environment']['cpu_count']} CPUs, torch {out['environment']['torch']}.",
        "",
        "| mode | precision | s/epoch | × student-only fp32 |",
        "|---|---|---:|---:|",
        *[f"| {r['mode']} | {r['precision']} | {r['seconds_per_epoch']:.2f} | {r['ratio_vs_student_only']:.2f} |"
          for r in results.values()],
        "",
        f"CPU: {cpu_features()}." + ("" if cpu_supports_bf16() else
                                      " No native bf16: `precision: auto` trains in fp32 here; an emulated row, "
                                      "when present, shows what forcing bf16 would cost."),
        "",
        f"Filling the cache ({cache.views} augmented views of {bundle.n_rows} samples) took "
        f"{cache_seconds:.1f} s once.",
        *[f"\n{r['mode']} under torch.compile: its first epoch, compilation included, took "
          f"{r['first_epoch_with_compilation']:.1f} s (the median above leaves it out)."
          for r in results.values() if "first_epoch_with_compilation" in r],
    ]
    atomic_write_json(Path(args.out + ".json"), out)
    atomic_write_text(Path(args.out + ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
