"""Every strategy on the same teacher/student pair, same data, same epochs, several seeds:
accuracy mean ± std, paired difference from scratch and from `response` with p-values,
seconds per epoch, and the extra parameters that exist only during training.

    .venv/bin/python benchmarks/strategy_table.py [--limit-train N] [--epochs E] [--seeds 0 1 2]
        -> benchmarks/results/strategy_table.{json,md}

Each seed's scratch student is trained once and shared by every comparison. Strategies run
with their default parameters (no tuning on test); `multi_teacher` gets the job's teacher
list, which is one teacher unless --spec names more. Resumable: finished runs are kept in
benchmarks/results/strategy_table/ and skipped.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from common import base_spec, comparison_parser
from distillab import data as data_module
from distillab.files import atomic_write_json, atomic_write_text
from distillab.experiment.phases import phase as _phase, trained_student as _trained_student
from distillab.experiment.report import environment
from distillab.data.cache import fill_teacher_caches as teacher_caches
from distillab.experiment.stats import paired_comparison, summarize
from distillab.experiment.teacher import get_teachers
from distillab.strategies import STRATEGIES

def main() -> None:
    parser = comparison_parser(__doc__, "strategy_table")
    # `adaptive` and `adaptive_v2` have their own benchmarks (adaptive_vs_static.py, adaptive_v2.py);
    # the language-model and embedding strategies do not apply to images.
    parser.add_argument("--strategies", nargs="+",
                        default=[name for name, cls in STRATEGIES.items()
                                 if name not in ("none", "adaptive", "adaptive_v2")
                                 and (cls.tasks is None or "image_classification" in cls.tasks)])
    args = parser.parse_args()

    base = base_spec(args)
    work = Path(args.out)
    bundles = {seed: data_module.build(base.data, seed) for seed in args.seeds}
    teachers = get_teachers(base, bundles[args.seeds[0]])
    caches = {seed: teacher_caches(base, bundle, teachers) for seed, bundle in bundles.items()}

    results: dict[str, list[dict]] = {"none": []}
    scratch_models = {}
    for seed in args.seeds:
        summary = _phase(base, bundles[seed], seed, "scratch", teachers, caches[seed], work / "scratch" / f"seed_{seed}",
                         True, None, None)
        scratch_models[seed] = _trained_student(base, bundles[seed], seed, summary, work / "scratch" / f"seed_{seed}")
        results["none"].append(summary)
    for name in args.strategies:
        spec = base.model_copy(update={"strategy": base.strategy.model_validate({"name": name, "params": {}})})
        results[name] = [
            _phase(spec, bundles[seed], seed, "distilled", teachers, caches[seed], work / name / f"seed_{seed}",
                   True, None, None, scratch=scratch_models[seed])
            for seed in args.seeds
        ]
        print(f"{name}: {[round(r['test_accuracy'], 4) for r in results[name]]}", flush=True)

    accuracy = {name: [r["test_accuracy"] for r in runs] for name, runs in results.items()}
    rows = []
    for name, runs in results.items():
        vs_scratch = paired_comparison(name, accuracy[name], "none", accuracy["none"])
        vs_response = paired_comparison(name, accuracy[name], "response", accuracy["response"]) \
            if "response" in accuracy else None
        rows.append({
            "strategy": name,
            "accuracy": summarize(accuracy[name]),
            "vs_scratch": vs_scratch,
            "vs_response": vs_response,
            "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in runs),
            "extra_training_params": runs[0]["extra_training_params"],
        })
    out = {"teacher": base.teachers[0].model, "student": base.student.model, "train_samples": len(bundles[args.seeds[0]].train),
           "epochs": args.epochs, "seeds": args.seeds, "rows": rows, "environment": environment()}

    def fmt(c):
        return "-" if c is None or c["a"] == c["b"] else (
            f"{c['mean_diff'] * 100:+.2f} (p={c['p_value']:.3g})" if c["p_value"] is not None else f"{c['mean_diff'] * 100:+.2f}")

    lines = [
        f"Teacher {out['teacher']}, student {out['student']}, {out['train_samples']} training samples, "
        f"{args.epochs} epochs, seeds {args.seeds}; test accuracy mean ± std; paired t-tests over seeds.",
        "",
        "| strategy | accuracy (%) | vs scratch (points) | vs response (points) | s/epoch | extra training params |",
        "|---|---|---|---|---:|---:|",
    ]
    for row in sorted(rows, key=lambda r: -r["accuracy"]["mean"]):
        acc = row["accuracy"]
        lines.append(f"| {row['strategy']} | {acc['mean'] * 100:.2f} ± {acc['std'] * 100:.2f} | {fmt(row['vs_scratch'])} "
                     f"| {fmt(row['vs_response'])} | {row['seconds_per_epoch']:.1f} | {row['extra_training_params']:,} |")
    atomic_write_json(work.with_suffix(".json"), out)
    atomic_write_text(work.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
