"""Do the README's published numbers reproduce? Re-runs one seed of each published comparison
from the spec saved in its report and says whether the new test accuracies land within the
published spread.

    .venv/bin/python benchmarks/check_readme.py                  # every check
    .venv/bin/python benchmarks/check_readme.py --only make_run  # one of them
        # -> benchmarks/results/check_readme.{json,md}

A re-run of one seed is compared two ways: with the same seed's published value (a run on the
same machine and torch build should land very close), and with the published mean ± std over
seeds, where "within" means |new - mean| <= max(std, 0.1 points) (a std of one seed is 0).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import distillab
from distillab.engine.checkpoint import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHECKS = {  # name -> the published report it re-runs (one seed of it)
    "make_run": RESULTS / "make_run" / "report.json",
    "fashion_mnist_quality": RESULTS / "fashion_mnist_quality" / "report.json",
    "patience_5": RESULTS / "patience" / "epochs_5" / "report.json",
}
FLOOR = 0.001  # 0.1 points: the smallest spread a one-seed comparison is held to


def check(name: str, report_path: Path, seed_index: int) -> list[dict]:
    published = json.loads(report_path.read_text())
    seed = published["seeds"][seed_index]
    spec = {**published["spec"], "training": {**published["spec"]["training"], "seeds": [seed]},
            "output": {**published["spec"]["output"], "plots": False, "tensorboard": False}}
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        report = distillab.run(spec, Path(scratch) / "run").data
    rows = []
    for role in ("scratch", "distilled"):
        old = next(m for m in published["models"] if m["role"] == role)["accuracy"]
        new = next(m for m in report["models"] if m["role"] == role)["accuracy"]["mean"]
        same_seed = old["per_seed"][seed_index]
        rows.append({
            "check": name, "role": role, "seed": seed, "new": new, "published_seed": same_seed,
            "published_mean": old["mean"], "published_std": old["std"],
            "diff_vs_seed": new - same_seed,
            "within_spread": abs(new - old["mean"]) <= max(old["std"], FLOOR),
            "seconds": round(time.time() - started, 1), "source": str(report_path.relative_to(ROOT)),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="checks to run (default: all published)")
    parser.add_argument("--seed-index", type=int, default=0, help="which of the published seeds to re-run")
    parser.add_argument("--out", default=str(RESULTS / "check_readme"))
    args = parser.parse_args()
    os.chdir(ROOT)  # specs name the shipped teacher by a path relative to the repository

    rows = []
    for name in args.only or sorted(CHECKS):
        path = CHECKS[name]
        if not path.exists():
            print(f"{name}: no published report at {path.relative_to(ROOT)}; skipped", flush=True)
            continue
        rows += check(name, path, args.seed_index)
        for row in rows[-2:]:
            print(f"{name} {row['role']}: new {row['new']:.4f} vs seed {row['published_seed']:.4f} "
                  f"(mean {row['published_mean']:.4f} ± {row['published_std']:.4f}) -> "
                  f"{'within' if row['within_spread'] else 'OUTSIDE'}", flush=True)
    atomic_write_json(Path(args.out + ".json"), {"rows": rows})
    lines = ["| published result | role | seed | re-run (%) | same seed published (%) | published mean ± std (%) "
             "| within the spread |", "|---|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['role']} | {r['seed']} | {r['new'] * 100:.2f} | "
                     f"{r['published_seed'] * 100:.2f} | {r['published_mean'] * 100:.2f} ± "
                     f"{r['published_std'] * 100:.2f} | {'yes' if r['within_spread'] else 'NO'} |")
    atomic_write_text(Path(args.out + ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
