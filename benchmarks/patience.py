"""Does a patient schedule make distillation beat training from scratch? The same job (the
shipped ResNet-20 teacher -> cnn_small, Hinton KD, cached consistent views) at several epoch
counts, scratch and distilled twins over the same seeds, with the paired test per row.

    .venv/bin/python benchmarks/patience.py --epochs 5 40 --seeds 0 1 2
        # -> benchmarks/results/patience/epochs_<N>/ (full runs) and patience.{json,md}

Resumable at two levels: a finished row is read back, not rerun; an unfinished one continues
with ``distillab run --resume`` semantics (finished phases of ``epochs_<N>.partial`` are kept
and committed, so a later session on a fresh clone skips them). Settings are not tuned here:
T and alpha are the job's defaults, chosen on nothing; tuning belongs on the validation split
(``distillab sweep``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import distillab
from distillab.files import atomic_write_json, atomic_write_text
from distillab.spec_io import load_spec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "fashion_mnist_kd.yaml"))
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 40])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--views", default="16", help="cached views per sample, or 'all'")
    parser.add_argument("--limit-train", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "patience"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    rows = []
    for epochs in args.epochs:
        overrides = [f"training.epochs={epochs}", f"training.seeds={json.dumps(args.seeds)}",
                     f"data.limit_train={args.limit_train}", f"cache.views={args.views}", "cache.fp16=true",
                     "output.tensorboard=false", f"name=patience_{epochs}"]
        spec = load_spec(args.spec, overrides)
        folder = out / f"epochs_{epochs}"
        if (folder / "report.json").exists():
            report = json.loads((folder / "report.json").read_text())
        else:
            partial = folder.with_name(folder.name + ".partial")
            report = distillab.run(spec, folder, resume=partial.exists()).data
        models = {m["role"]: m for m in report["models"]}
        comparison = report["comparisons"][0]
        rows.append({
            "epochs": epochs, "seeds": report["seeds"], "train": report["dataset"]["train"],
            "views": args.views, "teacher": models["teacher"]["accuracy"]["mean"],
            "scratch": models["scratch"]["accuracy"], "distilled": models["distilled"]["accuracy"],
            "mean_diff": comparison["mean_diff"], "p_value": comparison["p_value"],
            "seconds": report["seconds"], "command": f"python benchmarks/patience.py --epochs {epochs} "
                                                     f"--seeds {' '.join(map(str, args.seeds))} --views {args.views}",
        })
        print(f"epochs {epochs}: scratch {models['scratch']['accuracy']['mean']:.4f} distilled "
              f"{models['distilled']['accuracy']['mean']:.4f} diff {comparison['mean_diff'] * 100:+.2f} "
              f"p {comparison['p_value']}", flush=True)
    atomic_write_json(out / "patience.json", {"rows": rows})
    lines = ["| epochs | train images | views | scratch (%) | distilled (%) | distilled − scratch (points) "
             "| p | run s |", "|---:|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        p_value = "n/a" if r["p_value"] is None else f"{r['p_value']:.3g}"
        lines.append(f"| {r['epochs']} | {r['train']} | {r['views']} | {r['scratch']['mean'] * 100:.2f} ± "
                     f"{r['scratch']['std'] * 100:.2f} | {r['distilled']['mean'] * 100:.2f} ± "
                     f"{r['distilled']['std'] * 100:.2f} | {r['mean_diff'] * 100:+.2f} | {p_value} "
                     f"| {r['seconds']:.0f} |")
    lines.append("")
    lines.append(f"Teacher: {rows[0]['teacher'] * 100:.2f} %. Seeds {rows[0]['seeds']}; paired t-test over seeds.")
    atomic_write_text(out / "patience.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
