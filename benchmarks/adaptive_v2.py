"""Adaptive distillation v2 against static KD: does an input-conditioned student
(dynamic convolutions, `adaptive_v2`) beat static Hinton KD at about the same inference cost,
and does it beat a static student simply widened to the same parameter count?

The default job's patient regime (`configs/fashion_mnist_kd.yaml`: the shipped teacher, 5,000
images, 30 epochs, 8 cached views), 5 seeds, every row on the same teacher cache. Rows:
- static `response` KD, `cnn_small`;
- `adaptive_v2` at K = 2 and 4 (the last two 3x3 convolutions dynamic), and K = 4 on the last one only
  (half the batch-1 overhead);
- a static `cnn` widened (last stage) to adaptive_v2 K = 4's parameter count, with `response`;
- ablations at K = 4: no D (adv_weight 0), no routing balance, no channel gates, with the routing VAE.
Columns: test accuracy (mean ± std) with the paired t-test against static, parameters, MACs
per sample, latency at batch 1 and 256 (median, one model at a time), training s/epoch.

Target: adaptive_v2 >= static + 0.3 points over 5 seeds (p < 0.05), <= 1.1x its MACs, <= 1.3x
its batch-1 latency, and above the widened static student.

    .venv/bin/python benchmarks/adaptive_v2.py --threads 2
        # -> benchmarks/results/adaptive_v2.{json,md}; runs in benchmarks/results/adaptive_v2/
        # (resumable: a finished (row, seed) is read back)
    .venv/bin/python benchmarks/adaptive_v2.py --threads 2 --diagnose
        # -> benchmarks/results/adaptive_v2_diagnostics.{json,md}, from the finished runs: how each
        # row fits the teacher (final training KD term, best validation accuracy, mean over seeds)
        # and, per dynamic layer of seed 0's student on the test images, how the router mixes
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from distillab.files import atomic_write_json, atomic_write_text
from distillab.experiment.phases import phase as _phase
from distillab.experiment.report import environment
from distillab.data.cache import fill_teacher_caches as teacher_caches
from distillab.experiment.stats import paired_comparison
from distillab.experiment.teacher import get_teachers
from distillab.models.facts import interleaved_latency, macs_per_sample
from distillab.models.zoo import build_model, count_parameters
from distillab.spec_io import load_spec
from distillab import data as data_module

ROOT = Path(__file__).resolve().parents[1]
V2 = {"experts": 4}
ROWS = {
    "static response (cnn_small)": ("response", {}, None),
    "adaptive_v2 K=4": ("adaptive_v2", V2, None),
    "adaptive_v2 K=4, last two convs": ("adaptive_v2", {**V2, "layers": ["stages.2.1.0", "stages.2.2.0"]}, None),
    "adaptive_v2 K=2": ("adaptive_v2", {"experts": 2}, None),
    "adaptive_v2 K=8": ("adaptive_v2", {"experts": 8}, None),
    "static response, widened to K=4's parameters": ("response", {}, "widened"),
    "adaptive_v2 K=4, no D": ("adaptive_v2", {**V2, "adv_weight": 0.0}, None),
    "adaptive_v2 K=4, no routing balance": ("adaptive_v2", {**V2, "balance_weight": 0.0}, None),
    "adaptive_v2 K=4, no channel gates": ("adaptive_v2", {**V2, "gates": False}, None),
    "adaptive_v2 K=4, routing VAE": ("adaptive_v2", {**V2, "vae": True}, None),
}


def deployed(spec, bundle, seed, summary, folder):
    """The trained student of a phase: in memory, or (resumed) rebuilt through its strategy, since
    an adaptive_v2 student's layers differ from the plain architecture's."""
    if "student" in summary:
        return summary["student"]
    from distillab.experiment.job import as_job
    from distillab.models.loading import load_state_into

    job = as_job(spec)
    student = job.make_strategy([], job.student_for(seed, bundle), bundle).deployed_model()
    return load_state_into(student, folder / "student.safetensors", f"{folder} (resume)")


def folder_of(work: Path, name: str, seed: int) -> Path:
    return work / name.replace(" ", "_").replace(",", "").replace("'", "").replace("=", "") / f"seed_{seed}"


def diagnose(base, seeds, names, work: Path) -> None:
    """Fit and routing statistics of finished runs (no training, no timing)."""
    from distillab.adaptive.dynamic import dynamic_layers

    bundle = data_module.build(base.data, seeds[0])
    images = next(bundle.eval_batches("test", 2000))["inputs"]
    rows = []
    for name in names:
        strategy, params, student = ROWS[name]
        finals = [[json.loads(line) for line in (folder_of(work, name, seed) / "metrics.jsonl").read_text().splitlines()
                   if line.strip()][-1] for seed in seeds]
        results = [json.loads((folder_of(work, name, seed) / "result.json").read_text()) for seed in seeds]
        row = {"row": name, "train_kd_term": statistics.fmean(f["soft"] for f in finals),
               "best_val_accuracy": statistics.fmean(r["val_accuracy"] for r in results), "layers": []}
        if strategy == "adaptive_v2":
            spec = base.model_copy(update={"strategy": base.strategy.model_validate({"name": strategy,
                                                                                      "params": params})})
            model = deployed(spec, bundle, seeds[0], {}, folder_of(work, name, seeds[0])).eval()
            with torch.no_grad():
                model(images)
            for layer in dynamic_layers(model):
                mixing = layer.last_mixing
                kernels = layer.weight.detach().reshape(layer.experts, -1)
                row["layers"].append({
                    "experts": layer.experts,
                    "mean_largest_weight": float(mixing.max(-1).values.mean()),
                    "entropy_nats": float(-(mixing * mixing.clamp_min(1e-12).log()).sum(-1).mean()),
                    "uniform_entropy_nats": math.log(layer.experts),
                    "load": [round(v, 4) for v in mixing.mean(0).tolist()],
                    "kernel_spread": float(kernels.std(0).mean() / kernels.std()),  # 0: the K kernels are one
                })
        rows.append(row)
    atomic_write_json(work.with_name(work.name + "_diagnostics.json"), {"seeds": seeds, "test_images": len(images),
                                                                        "rows": rows})
    lines = [f"Seeds {seeds}: final-epoch training KD term and best validation accuracy (means); routing of seed "
             f"{seeds[0]}'s student on {len(images)} test images (kernel spread: std across the K kernels over the "
             "kernels' std).", "",
             "| row | training KD term | best val accuracy (%) | largest mixing weight | routing entropy (nats) "
             "| load per kernel | kernel spread |", "|---|---:|---:|---:|---:|---|---:|"]
    for row in rows:
        layer = row["layers"][-1] if row["layers"] else None
        routing = (f"{layer['mean_largest_weight']:.3f} | {layer['entropy_nats']:.3f} of "
                   f"{layer['uniform_entropy_nats']:.3f} | {', '.join(f'{v:.2f}' for v in layer['load'])} "
                   f"| {layer['kernel_spread']:.3f}") if layer else "- | - | - | -"
        lines.append(f"| {row['row']} | {row['train_kd_term']:.4f} | {100 * row['best_val_accuracy']:.2f} | {routing} |")
    lines += ["", "The routing columns describe the last dynamic layer. Command: "
                  "`.venv/bin/python benchmarks/adaptive_v2.py --threads 2 --diagnose`."]
    atomic_write_text(work.with_name(work.name + "_diagnostics.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def widened_stages(target_params: int, in_shape, classes: int) -> list[list[int]]:
    """cnn_small's stages with the last stage scaled until the parameter count is closest to
    ``target_params``."""
    best = None
    for step in range(100, 401, 5):
        factor = step / 100
        stages = [[16], [32, 32], [round(64 * factor), round(96 * factor)]]
        gap = abs(count_parameters(build_model("cnn", in_shape, classes, {"stages": stages})) - target_params)
        if best is None or gap < best[0]:
            best = (gap, stages)
    return best[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "adaptive_v2"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="spec override key=value (a smoke run: --set training.epochs=1)")
    parser.add_argument("--diagnose", action="store_true", help="only the diagnostics of the finished runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = load_spec(ROOT / "configs" / "fashion_mnist_kd.yaml",
                     [f"training.seeds={json.dumps(args.seeds)}", "output.tensorboard=false", *args.overrides])
    work = Path(args.out)
    if args.diagnose:
        return diagnose(base, args.seeds, args.rows, work)
    bundles = {seed: data_module.build(base.data, seed) for seed in args.seeds}
    first = bundles[args.seeds[0]]
    teachers = get_teachers(base, first)
    caches = {seed: teacher_caches(base, bundle, teachers) for seed, bundle in bundles.items()}
    dynamic = build_model("cnn_small", first.in_shape, first.num_classes)
    from distillab.adaptive.dynamic import make_dynamic

    make_dynamic(dynamic, experts=V2["experts"])
    wide = widened_stages(count_parameters(dynamic), first.in_shape, first.num_classes)

    results, models = {}, {}
    for name in args.rows:
        strategy, params, student = ROWS[name]
        update = {"strategy": base.strategy.model_validate({"name": strategy, "params": params})}
        if student == "widened":
            update["student"] = base.student.model_validate({"model": "cnn", "model_args": {"stages": wide}})
        spec = base.model_copy(update=update)
        results[name] = []
        for seed in args.seeds:
            folder = folder_of(work, name, seed)
            summary = _phase(spec, bundles[seed], seed, "distilled", teachers, caches[seed], folder, True, None, None)
            results[name].append(summary)
            if seed == args.seeds[0]:
                models[name] = deployed(spec, bundles[seed], seed, summary, folder).eval()
        print(json.dumps({"row": name, "test": [round(r["test_accuracy"], 4) for r in results[name]]}), flush=True)

    latency = {size: interleaved_latency(models, first.in_shape, size, repeats=30 if size == 1 else 10)
               for size in (1, 256)}
    static = "static response (cnn_small)"
    accuracy = {name: [r["test_accuracy"] for r in runs] for name, runs in results.items()}
    rows = []
    for name in results:
        model = models[name]
        rows.append({
            "row": name, "accuracy": accuracy[name],
            "vs_static": paired_comparison(name, accuracy[name], static, accuracy[static]) if name != static else None,
            "params": count_parameters(model), "macs": macs_per_sample(model, first.in_shape),
            "latency_ms_b1": latency[1][name]["median"], "latency_ms_b256": latency[256][name]["median"],
            "seconds_per_epoch": statistics.fmean(r["seconds_per_epoch"] for r in results[name]),
        })
    by_name = {row["row"]: row for row in rows}
    targets = {}
    if static in by_name and "adaptive_v2 K=4" in by_name:
        ref, v2 = by_name[static], by_name["adaptive_v2 K=4"]
        widened = by_name.get("static response, widened to K=4's parameters")
        targets = {
            "gain_points": 100 * v2["vs_static"]["mean_diff"], "p_value": v2["vs_static"]["p_value"],
            "macs_ratio": v2["macs"] / ref["macs"], "latency_ratio_b1": v2["latency_ms_b1"] / ref["latency_ms_b1"],
            "beats_widened": (statistics.fmean(v2["accuracy"]) > statistics.fmean(widened["accuracy"])
                              if widened else None),
        }
        targets["met"] = bool(targets["gain_points"] >= 0.3 and (targets["p_value"] or 1) < 0.05
                              and targets["macs_ratio"] <= 1.1 and targets["latency_ratio_b1"] <= 1.3
                              and targets["beats_widened"])
    out = {"spec": "configs/fashion_mnist_kd.yaml", "seeds": args.seeds, "widened_stages": wide, "rows": rows,
           "targets": targets, "environment": environment()}
    atomic_write_json(work.with_suffix(".json"), out)
    lines = [f"Shipped teacher, {len(first.train)} training images, {base.training.epochs} epochs, "
             f"{base.cache.views} cached views, seeds {args.seeds}; test accuracy; paired t-tests against static KD.",
             "", "| row | accuracy (%) | vs static (points, p) | params | MACs | latency b=1 (ms) | latency b=256 (ms) "
             "| s/epoch |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        acc = row["accuracy"]
        std = statistics.stdev(acc) if len(acc) > 1 else 0.0
        versus = row["vs_static"]
        cell = "-" if versus is None else (f"{100 * versus['mean_diff']:+.2f}, p = "
                                           f"{'n/a' if versus['p_value'] is None else format(versus['p_value'], '.3g')}")
        lines.append(f"| {row['row']} | {100 * statistics.fmean(acc):.2f} ± {100 * std:.2f} | {cell} "
                     f"| {row['params']:,} | {row['macs'] / 1e6:.2f} M | {row['latency_ms_b1']:.3f} "
                     f"| {row['latency_ms_b256']:.2f} | {row['seconds_per_epoch']:.1f} |")
    if targets:
        lines += ["", f"Target (K = 4 vs static): gain {targets['gain_points']:+.2f} points (>= +0.3, p < 0.05: "
                      f"p = {targets['p_value']}), MACs {targets['macs_ratio']:.3f}x (<= 1.1), batch-1 latency "
                      f"{targets['latency_ratio_b1']:.2f}x (<= 1.3), beats the widened static student: "
                      f"{targets['beats_widened']} -> {'met' if targets['met'] else 'missed'}."]
    lines += ["", "Command: `.venv/bin/python benchmarks/adaptive_v2.py --threads 2`."]
    atomic_write_text(work.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
