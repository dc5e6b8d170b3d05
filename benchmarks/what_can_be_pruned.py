"""Seed 003's question 3: "What can be pruned or simplified during distillation?" The distilled
cnn_small of the deploy benchmark's run (3 seeds) loses output channels, by L1 filter norm, on a
gradual (cubic) schedule with fine-tuning after each step, with the teacher's KD loss or with
labels only:

- overall: 25 %, 50 % and 75 % of the channels of every conv layer;
- per stage: 50 % of the channels of one stage only (stage 0: 16 channels; 1: 32+32; 2: 64+96).

    .venv/bin/python benchmarks/what_can_be_pruned.py --threads 2
        # -> benchmarks/results/what_can_be_pruned.{json,md,png}; each pruned run's prune.json in
        # benchmarks/results/what_can_be_pruned/ (resumable: a finished one is read back)

Accuracy is on the test split (the pruning settings are fixed in advance, nothing is chosen on
these numbers); KD vs labels-only is a paired t-test over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from deploy import base_run
from distillab.compress.prune_run import prune_run
from distillab.files import atomic_write_json, atomic_write_text
from distillab.experiment.stats import paired_comparison

ROOT = Path(__file__).resolve().parents[1]
# (name, share of channels removed, stages pruned: None = all)
SETTINGS = [("overall 25 %", 0.25, None), ("overall 50 %", 0.5, None), ("overall 75 %", 0.75, None),
            ("stage 0 at 50 %", 0.5, [0]), ("stage 1 at 50 %", 0.5, [1]), ("stage 2 at 50 %", 0.5, [2])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--epochs-per-step", type=int, default=2)
    parser.add_argument("--run", default=str(ROOT / "benchmarks" / "results" / "deploy" / "run"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "what_can_be_pruned"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = base_run(Path(args.run))
    seeds = json.loads((run_dir / "report.json").read_text())["seeds"]
    work = Path(args.out)
    results = {}
    for name, ratio, stages in SETTINGS:
        for kd in (True, False):
            for seed in seeds:
                folder = work / f"{name.replace(' ', '_').replace('%', 'pct')}_{'kd' if kd else 'labels'}_seed{seed}"
                if not (folder / "prune.json").exists():
                    prune_run(run_dir, folder, ratio=ratio, steps=args.steps, epochs_per_step=args.epochs_per_step,
                              kd=kd, stages=stages, seed=seed, overwrite=True)
                history = json.loads((folder / "prune.json").read_text())["history"]
                results.setdefault(name, {}).setdefault("kd" if kd else "labels", []).append(
                    {"seed": seed, "before": history[0], "after": history[-1]})
                print(json.dumps({"setting": name, "kd": kd, "seed": seed,
                                  "test_accuracy": history[-1]["test_accuracy"]}), flush=True)
    write(results, seeds, work, args)


def _mean_std(values):
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write(results: dict, seeds, work: Path, args) -> None:
    rows = []
    for name, ratio, stages in SETTINGS:
        kd, labels = results[name]["kd"], results[name]["labels"]
        with_kd = [r["after"]["test_accuracy"] for r in kd]
        without = [r["after"]["test_accuracy"] for r in labels]
        before = [r["before"]["test_accuracy"] for r in kd]
        rows.append({"setting": name, "ratio": ratio, "stages": stages,
                     "macs_before": kd[0]["before"]["macs"], "macs_after": kd[0]["after"]["macs"],
                     "params_before": kd[0]["before"]["params"], "params_after": kd[0]["after"]["params"],
                     "channels_after": kd[0]["after"]["channels"], "unpruned": before, "kd": with_kd, "labels": without,
                     "kd_vs_labels": paired_comparison("kd", with_kd, "labels", without),
                     "kd_vs_unpruned": paired_comparison("kd", with_kd, "unpruned", before)})
    result = {"seeds": seeds, "steps": args.steps, "epochs_per_step": args.epochs_per_step, "importance": "l1",
              "rows": rows}
    atomic_write_json(work.with_suffix(".json"), result)
    lines = ["| pruned | channels left | MACs | params | unpruned (%) | pruned, KD (%) | pruned, labels only (%) "
             "| KD − labels (points, p) |", "|---|---|---:|---:|---|---|---|---|"]
    for row in rows:
        cells = [f"{100 * m:.2f} ± {100 * s:.2f}"
                 for m, s in map(_mean_std, (row["unpruned"], row["kd"], row["labels"]))]
        gain = row["kd_vs_labels"]
        lines.append(f"| {row['setting']} | {row['channels_after']} | {row['macs_after'] / 1e6:.2f} M "
                     f"(of {row['macs_before'] / 1e6:.2f} M) | {row['params_after']:,} | {cells[0]} | {cells[1]} | "
                     f"{cells[2]} | {100 * gain['mean_diff']:+.2f}, p = {gain['p_value']:.3g} |")
    atomic_write_text(work.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, work.with_suffix(".png"))


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (overall, per_stage) = plt.subplots(1, 2, figsize=(10, 4))
    whole = [r for r in rows if r["stages"] is None]
    ratios = [0.0] + [100 * r["ratio"] for r in whole]
    unpruned = statistics.mean(whole[0]["unpruned"])
    for key, label, marker in (("kd", "fine-tuned with KD", "o"), ("labels", "fine-tuned on labels", "s")):
        means = [100 * unpruned] + [100 * statistics.mean(r[key]) for r in whole]
        spreads = [0.0] + [100 * _mean_std(r[key])[1] for r in whole]
        overall.errorbar(ratios, means, yerr=spreads, marker=marker, capsize=3, label=label)
    overall.set_xlabel("channels removed from every conv layer (%)")
    overall.set_ylabel("test accuracy (%)")
    overall.set_title("overall")
    overall.legend()
    stages = [r for r in rows if r["stages"] is not None]
    positions = range(len(stages))
    for offset, (key, label) in zip((-0.2, 0.2), (("kd", "KD"), ("labels", "labels only"))):
        per_stage.bar([p + offset for p in positions], [100 * statistics.mean(r[key]) for r in stages], 0.4,
                      yerr=[100 * _mean_std(r[key])[1] for r in stages], label=label, capsize=3)
    per_stage.axhline(100 * unpruned, color="gray", linestyle="--", label="unpruned")
    per_stage.set_xticks(list(positions), [r["setting"] for r in stages])
    low = min(100 * min(r["kd"] + r["labels"]) for r in stages)
    per_stage.set_ylim(low - 1, 100 * unpruned + 1)
    per_stage.set_title("50 % of one stage")
    per_stage.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
