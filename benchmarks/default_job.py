"""Which settings should `make run` use? Candidate versions of the default job (the shipped
ResNet-20 teacher -> cnn_small, Hinton KD), each run in full from an empty cache (so its time
counts the cache fill, as a first `make run` does), and chosen on the validation split only:

- a candidate qualifies when it finishes in under 10 minutes on this machine;
- among those, the one whose distilled student beats its scratch twin on validation with a
  paired p < 0.05 and the largest gain; if none does, the largest validation gain, and the
  README says that no significant gain fits in 10 minutes.

    .venv/bin/python benchmarks/default_job.py --threads 2
        # -> benchmarks/results/default_job/<candidate>/ (full runs) and default_job.{json,md}

A finished candidate is read back, not rerun. Test accuracies are reported beside, never used
to choose.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import distillab
from distillab.files import atomic_write_json, atomic_write_text
from distillab.experiment.stats import paired_comparison
from distillab.spec_io import load_spec

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 600
# (name, overrides of configs/fashion_mnist_kd.yaml): the regimes a 10-minute job can afford
CANDIDATES = [
    ("18k images, 5 epochs", ["data.limit_train=20000", "training.epochs=5", "cache.views=2"]),
    ("18k images, 12 epochs, 8 views", ["data.limit_train=20000", "training.epochs=12", "cache.views=8"]),
    ("4.5k images, 30 epochs, 8 views", ["data.limit_train=5000", "training.epochs=30", "cache.views=8"]),
    ("1.8k images, 40 epochs, 8 views", ["data.limit_train=2000", "training.epochs=40", "cache.views=8"]),
    # the same regimes with as many seeds as 10 minutes allow: the paired test's power, not the gain, was short
    ("1.8k images, 40 epochs, 8 views, 10 seeds", ["data.limit_train=2000", "training.epochs=40", "cache.views=8",
                                                   "training.seeds=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]"]),
    ("4.5k images, 30 epochs, 8 views, 6 seeds", ["data.limit_train=5000", "training.epochs=30", "cache.views=8",
                                                  "training.seeds=[0, 1, 2, 3, 4, 5]"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "fashion_mnist_kd.yaml"))
    parser.add_argument("--seeds", default="[0, 1, 2]")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "default_job"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    rows = []
    for name, overrides in CANDIDATES:
        folder = out / name.replace(" ", "_").replace(",", "").replace(".", "")
        if not (folder / "report.json").exists():
            with tempfile.TemporaryDirectory() as cache:  # an empty cache: the fill counts, as on a first run
                spec = load_spec(args.spec, [f"training.seeds={args.seeds}", *overrides, f"cache.dir={cache}",
                                             "output.tensorboard=false"])
                started = time.perf_counter()
                distillab.run(spec, folder, overwrite=True)
                atomic_write_json(folder / "wall.json", {"seconds": time.perf_counter() - started})
        report = json.loads((folder / "report.json").read_text())
        seconds = json.loads((folder / "wall.json").read_text())["seconds"]
        models = {m["role"]: m for m in report["models"]}
        val = paired_comparison("distilled", models["distilled"]["val_accuracy"]["per_seed"], "scratch",
                                models["scratch"]["val_accuracy"]["per_seed"])
        test = report["comparisons"][0]
        rows.append({"candidate": name, "overrides": overrides, "seconds": seconds, "fits": seconds < BUDGET_S,
                     "val_gain": val["mean_diff"], "val_p": val["p_value"], "test_gain": test["mean_diff"],
                     "test_p": test["p_value"], "scratch": models["scratch"]["accuracy"],
                     "distilled": models["distilled"]["accuracy"], "folder": str(folder.relative_to(ROOT))})
        print(json.dumps(rows[-1]), flush=True)
    fitting = [r for r in rows if r["fits"]]
    significant = [r for r in fitting if r["val_gain"] > 0 and r["val_p"] is not None and r["val_p"] < 0.05]
    chosen = max(significant or fitting or rows, key=lambda r: r["val_gain"])
    result = {"budget_seconds": BUDGET_S, "rows": rows, "chosen": chosen["candidate"],
              "significant_on_validation": bool(significant), "selected_on": "validation split"}
    atomic_write_json(out.with_suffix(".json"), result)
    lines = ["| candidate | run s (cache fill included) | val gain (points) | val p | test gain (points) | test p |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['candidate']}{' (chosen)' if r is chosen else ''} | {r['seconds']:.0f} | "
                     f"{r['val_gain'] * 100:+.2f} | {_p(r['val_p'])} | {r['test_gain'] * 100:+.2f} | {_p(r['test_p'])} |")
    lines += ["", f"Chosen on validation: {chosen['candidate']} "
                  f"({'a significant validation gain' if significant else 'no candidate has a significant gain'})."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def _p(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()
