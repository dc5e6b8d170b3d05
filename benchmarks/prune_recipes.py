"""Which pruning recipe halves the distilled cnn_small's MACs for the least accuracy? Chosen on
validation, reported on test.

Each recipe prunes the deploy benchmark's 3 distilled students (channels, L1 importance, gradual
cubic schedule) and fine-tunes between steps. The recipes vary what the what_can_be_pruned
benchmark pointed at: which stages are pruned (the first stage is cheap and sensitive), the KD
settings of the fine-tuning (the run's T = 4, alpha = 0.9, the quality sweep's T = 2, alpha = 0.5,
or labels only) and how long it runs. The recipe with the best mean validation accuracy among
those with at least 2x fewer MACs is chosen; `benchmarks/deploy.py --prune-recipe NAME` deploys it.

    .venv/bin/python benchmarks/prune_recipes.py --threads 2
        # -> benchmarks/results/prune_recipes.{json,md}; pruned runs in
        # benchmarks/results/deploy/recipes/ (not committed). Resumable per recipe and seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

from distillab.compress.prune_run import prune_run
from distillab.files import atomic_write_json, atomic_write_text
from distillab.experiment.stats import paired_comparison

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).parent))
from deploy import base_run  # noqa: E402

# name -> prune_run settings (the deploy benchmark's first recipe is the first row)
RECIPES = {
    "all stages 35 % x8, KD T4 a0.9, 3x3": dict(ratio=0.35, round_to=8, steps=3, epochs_per_step=3),
    "stages 1-2 35 %, KD T4 a0.9, 3x3": dict(ratio=0.35, stages=[1, 2], steps=3, epochs_per_step=3),
    "stages 1-2 35 %, KD T2 a0.5, 3x3": dict(ratio=0.35, stages=[1, 2], steps=3, epochs_per_step=3,
                                             temperature=2.0, alpha=0.5),
    "stages 1-2 35 %, labels, 3x3": dict(ratio=0.35, stages=[1, 2], steps=3, epochs_per_step=3, kd=False),
    "stages 1-2 35 %, KD T2 a0.5, 3x6": dict(ratio=0.35, stages=[1, 2], steps=3, epochs_per_step=6,
                                             temperature=2.0, alpha=0.5),
    "stages 1-2 40 % x8, KD T2 a0.5, 3x6": dict(ratio=0.4, round_to=8, stages=[1, 2], steps=3, epochs_per_step=6,
                                                temperature=2.0, alpha=0.5),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = base_run(RESULTS / "deploy" / "run")
    seeds = json.loads((run_dir / "report.json").read_text())["seeds"]
    results = {}
    for name in args.recipes:
        for seed in seeds:
            folder = RESULTS / "deploy" / "recipes" / f"{slug(name)}_seed{seed}"
            if not (folder / "prune.json").exists():
                prune_run(run_dir, folder, seed=seed, overwrite=True, **{"kd": True, **RECIPES[name]})
            history = json.loads((folder / "prune.json").read_text())["history"]
            results.setdefault(name, []).append({"seed": seed, "before": history[0], "after": history[-1]})
            print(json.dumps({"recipe": name, "seed": seed, "val": history[-1]["val_accuracy"]}), flush=True)
    write(results, args)


def write(results: dict, args) -> None:
    rows, lines = {}, ["| recipe | channels left | MACs (fewer) | val accuracy (%) | test accuracy (%) "
                       "| test vs unpruned (points, p) |", "|---|---|---:|---|---|---|"]
    for name, runs in results.items():
        val = [r["after"]["val_accuracy"] for r in runs]
        test = [r["after"]["test_accuracy"] for r in runs]
        before = [r["before"]["test_accuracy"] for r in runs]
        fewer = runs[0]["before"]["macs"] / runs[0]["after"]["macs"]
        versus = paired_comparison("pruned", test, "unpruned", before)
        rows[name] = {"settings": RECIPES[name], "channels": runs[0]["after"]["channels"], "macs_fewer": fewer,
                      "val": val, "test": test, "unpruned_test": before, "vs_unpruned": versus}
        p = "n/a" if versus["p_value"] is None else f"{versus['p_value']:.3g}"
        lines.append(f"| {name} | {runs[0]['after']['channels']} | {runs[0]['after']['macs'] / 1e6:.2f} M "
                     f"({fewer:.2f}x) | {_ms(val)} | {_ms(test)} | {100 * versus['mean_diff']:+.2f}, p = {p} |")
    eligible = [name for name, row in rows.items() if row["macs_fewer"] >= 2.0]
    chosen = max(eligible, key=lambda name: statistics.mean(rows[name]["val"])) if eligible else None
    lines.append("")
    if chosen:
        loss = -100 * rows[chosen]["vs_unpruned"]["mean_diff"]
        lines.append(f"Chosen on validation among recipes with at least 2x fewer MACs: **{chosen}** "
                     f"({rows[chosen]['macs_fewer']:.2f}x fewer MACs, test {loss:+.2f} points below the unpruned "
                     f"student; target: within 0.5 points: {'met' if loss <= 0.5 else 'missed'}).")
    lines.append("")
    lines.append("Command: `.venv/bin/python benchmarks/prune_recipes.py --threads 2` (3 seeds; the unpruned "
                 "students are the deploy benchmark's run).")
    atomic_write_json(RESULTS / "prune_recipes.json", {"recipes": rows, "chosen": chosen})
    atomic_write_text(RESULTS / "prune_recipes.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def _ms(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


if __name__ == "__main__":
    main()
