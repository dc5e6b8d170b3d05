"""What the comparison benchmarks share: their arguments and the base spec they derive.

Imported by the scripts in this folder (run as ``.venv/bin/python benchmarks/NAME.py``,
which puts this folder on sys.path)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from distillab.spec import JobSpec
from distillab.spec_io import load_spec

ROOT = Path(__file__).resolve().parents[1]


def comparison_parser(doc: str, out_name: str, epochs: int = 5) -> argparse.ArgumentParser:
    """--spec, --limit-train, --epochs, --seeds, --out and --set; add the script's own after."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "fashion_mnist_kd.yaml"))
    parser.add_argument("--limit-train", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / out_name))
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="spec override key=value")
    return parser


def base_spec(args) -> JobSpec:
    """The spec every run of the benchmark starts from: the arguments applied as overrides."""
    # cache.views=2: the views these benchmarks were published with (the default job now uses 8)
    return load_spec(args.spec, [f"data.limit_train={args.limit_train}", f"training.epochs={args.epochs}",
                                 f"training.seeds={json.dumps(args.seeds)}", "cache.views=2",
                                 "output.tensorboard=false", *args.overrides])


def target_lines(targets: dict) -> list[str]:
    """Markdown lines of a result's ``targets`` ({name: {target, measured, met}})."""
    return [f"\n{name}: target {target['target']}, measured {target['measured']}, "
            f"{'met' if target['met'] else 'NOT met'}" for name, target in targets.items()]
