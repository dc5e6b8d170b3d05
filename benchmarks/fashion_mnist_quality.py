"""Teacher vs scratch vs distilled student on all of Fashion-MNIST, 3 seeds, checked against
the targets: teacher >= 93.5 %, distilled student (<= 100k parameters) >= 92.5 % and at
least 0.4 points above its scratch twin on the mean.

    .venv/bin/python benchmarks/fashion_mnist_quality.py   # -> benchmarks/results/fashion_mnist_quality/

Resumable: rerun with --resume after an interruption.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import distillab
from distillab.engine.checkpoint import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"teacher_accuracy": 0.935, "student_accuracy": 0.925, "gain_over_scratch": 0.004, "student_params": 100_000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "fashion_mnist_quality.yaml"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fashion_mnist_quality"))
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()

    report = distillab.run(args.spec, args.out, resume=args.resume, overwrite=True)
    teacher, scratch, distilled = (report.model(role) for role in ("teacher", "scratch", "distilled"))
    gain = report.data["comparisons"][0]["mean_diff"]
    checks = {
        "teacher_accuracy": (teacher["accuracy"]["mean"], teacher["accuracy"]["mean"] >= TARGETS["teacher_accuracy"]),
        "student_params": (distilled["params"], distilled["params"] <= TARGETS["student_params"]),
        "student_accuracy": (distilled["accuracy"]["mean"], distilled["accuracy"]["mean"] >= TARGETS["student_accuracy"]),
        "gain_over_scratch": (gain, gain >= TARGETS["gain_over_scratch"]),
    }
    result = {name: {"target": TARGETS[name], "measured": value, "met": met} for name, (value, met) in checks.items()}
    atomic_write_json(Path(args.out) / "targets.json", result)
    print(json.dumps(result, indent=2))
    print(report.verdict)


if __name__ == "__main__":
    main()
