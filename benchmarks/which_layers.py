"""Layer ablation for feature (FitNets) distillation: which
teacher/student layer pairs help most? Runs `feature` on each single default pair and on
all pairs together, against the shared scratch twins.

    .venv/bin/python benchmarks/which_layers.py [--limit-train N] [--epochs E] [--seeds 0 1 2]
        -> benchmarks/results/which_layers.{json,md}
"""

from __future__ import annotations

from pathlib import Path

from common import base_spec, comparison_parser
from distillab import data as data_module
from distillab.files import atomic_write_json, atomic_write_text
from distillab.experiment.phases import phase as _phase
from distillab.experiment.report import environment
from distillab.experiment.stats import paired_comparison, summarize
from distillab.experiment.teacher import get_teachers
from distillab.models.taps import stage_outputs
from distillab.models.zoo import build_model

def main() -> None:
    args = comparison_parser(__doc__, "which_layers").parse_args()

    base = base_spec(args)
    work = Path(args.out)
    bundles = {seed: data_module.build(base.data, seed) for seed in args.seeds}
    bundle = bundles[args.seeds[0]]
    teachers = get_teachers(base, bundle)
    student = build_model(base.student.model, bundle.in_shape, bundle.num_classes, base.student.model_args)
    student_layers = [name for name, _ in stage_outputs(student, bundle.in_shape)]
    teacher_layers = [name for name, _ in stage_outputs(teachers[0][0], bundle.in_shape)]
    count = min(len(student_layers), len(teacher_layers))
    pairs = list(zip(student_layers[-count:], teacher_layers[-count:]))
    if not pairs:
        raise SystemExit(f"which_layers: {base.student.model} and {base.teachers[0].model} have no stage outputs to "
                         "pair (feature distillation needs convolutional stages); choose a CNN student with --set")
    configs = {f"{s} <- {t}": [[s, t]] for s, t in pairs}
    configs["all pairs"] = [list(p) for p in pairs]

    scratch = [_phase(base, bundles[seed], seed, "scratch", teachers, [], work / "scratch" / f"seed_{seed}",
                      True, None, None)["test_accuracy"] for seed in args.seeds]
    rows = []
    for label, chosen in configs.items():
        spec = base.model_copy(update={"strategy": base.strategy.model_validate(
            {"name": "feature", "params": {"pairs": chosen}})})
        folder = work / label.replace(" <- ", "__").replace(" ", "_")
        accuracy = [_phase(spec, bundles[seed], seed, "distilled", teachers, [], folder / f"seed_{seed}",
                           True, None, None)["test_accuracy"] for seed in args.seeds]
        rows.append({"pairs": label, "accuracy": summarize(accuracy),
                     "vs_scratch": paired_comparison(label, accuracy, "scratch", scratch)})
        print(label, accuracy, flush=True)
    out = {"scratch": summarize(scratch), "rows": rows, "epochs": args.epochs, "seeds": args.seeds,
           "environment": environment()}
    lines = [f"feature distillation, {base.student.model} <- {base.teachers[0].model}, {args.epochs} epochs, "
             f"seeds {args.seeds}; scratch {out['scratch']['mean'] * 100:.2f} ± {out['scratch']['std'] * 100:.2f} %",
             "", "| student <- teacher layers | accuracy (%) | vs scratch (points, p) |", "|---|---|---|"]
    for row in rows:
        c = row["vs_scratch"]
        p = f"{c['p_value']:.3g}" if c["p_value"] is not None else "n/a"
        lines.append(f"| {row['pairs']} | {row['accuracy']['mean'] * 100:.2f} ± {row['accuracy']['std'] * 100:.2f} "
                     f"| {c['mean_diff'] * 100:+.2f} (p={p}) |")
    atomic_write_json(work.with_suffix(".json"), out)
    atomic_write_text(work.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
