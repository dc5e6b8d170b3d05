"""Which distilled students lose more than 0.5 points under post-training int8, and does
quantization-aware training with the KD loss win it back?

For each student group (3 seeds each), ONNX Runtime models measured on the whole test split:
- ONNX fp32;
- post-training static int8 (calibrated on 512 training images) and dynamic int8;
- control: the student fine-tuned for the same epochs with KD but no simulated rounding, then
  static int8 (so that QAT is not credited with what extra epochs do);
- QAT: fine-tuned with KD and int8 simulated (`distillab qat`), then static int8.
Latency at batch 1 and 256 is the median after warm-up. QAT and the control are compared with
static PTQ by a paired t-test over seeds.

Groups: the deploy benchmark's distilled cnn_small, its pruned student (35 % of channels, x8),
and what_can_be_pruned's 75 %-pruned students (KD), the narrowest nets here.

    .venv/bin/python benchmarks/qat.py --threads 2
        # -> benchmarks/results/qat.{json,md}; exported models in benchmarks/results/qat/
        # (not committed). Resumable: each finished (group, seed, row) is kept in rows.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from distillab.compress import export_run, run_student
from distillab.compress.export import Tolerance
from distillab.compress.finetune import Finetuning, write_derived_run
from distillab.compress.prune_run import prune_run
from distillab.compress.qat import qat_run
from distillab.files import atomic_write_json, atomic_write_text
from distillab.experiment.stats import paired_comparison

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).parent))
from deploy import accuracy, base_run, onnx, timed  # noqa: E402

# group -> where its seed's student is, and how that benchmark made it (remade when missing:
# these folders are not committed)
GROUPS = {
    "cnn_small": (lambda seed: RESULTS / "deploy" / "run", None),
    "pruned 35 %": (lambda seed: RESULTS / "deploy" / f"pruned_r0.35_s3_e3_x8_seed{seed}",
                    {"ratio": 0.35, "steps": 3, "epochs_per_step": 3, "round_to": 8}),  # deploy.py's
    "pruned 75 %": (lambda seed: RESULTS / "what_can_be_pruned" / f"overall_75_pct_kd_seed{seed}",
                    {"ratio": 0.75, "steps": 2, "epochs_per_step": 2}),  # what_can_be_pruned.py's
}


def student_run(group: str, seed: int) -> Path:
    where, pruning = GROUPS[group]
    base = base_run(RESULTS / "deploy" / "run")
    folder = where(seed)
    if pruning is not None and not (folder / "seed_{}".format(seed) / "distilled" / "student.safetensors").exists():
        prune_run(base, folder, kd=True, seed=seed, overwrite=True, **pruning)
    return folder


ROWS = ("ONNX fp32", "PTQ int8", "PTQ int8-dynamic", "fine-tuned + PTQ int8", "QAT + int8")
NO_CHECK = Tolerance(None, 0.0)  # measured here, not gated


def control_run(run_dir: Path, out: Path, seed: int, epochs: int) -> None:
    """The control: the same KD fine-tuning as QAT, without simulated rounding."""
    tuning = Finetuning.of_run(run_dir, seed, kd=True, epochs=epochs, lr=None, precision="fp32")
    before = tuning.measure(tuning.student.model)
    with tempfile.TemporaryDirectory(prefix="distillab-control-") as scratch:
        model = tuning.train(tuning.student.model, seed * 1000 + 7, Path(scratch), "control fine-tuning")
    after = tuning.measure(model)
    spec = tuning.spec
    write_derived_run(out, tuning, model, suffix="finetuned", record={"epochs": epochs, "before": before,
                                                                        "after": after},
                      record_name="finetune", before=before, after=after, verdict="control fine-tuning",
                      student_spec={"model": spec.student.model, "model_args": dict(spec.student.model_args)})


def row(group: str, seed: int, name: str, work: Path, args) -> dict:
    run_dir = student_run(group, seed)
    slug = f"{group.replace(' ', '').replace('%', 'pct')}_seed{seed}"
    source = run_dir
    if name == "fine-tuned + PTQ int8":
        source = work / f"finetuned_{slug}"
        if not (source / "report.json").exists():
            control_run(run_dir, source, seed, args.epochs)
    elif name == "QAT + int8":
        source = work / f"qat_{slug}"
        if not (source / "report.json").exists():
            qat_run(run_dir, source, epochs=args.epochs, kd=True, seed=seed, overwrite=True)
    quantize = {"ONNX fp32": None, "PTQ int8-dynamic": "int8-dynamic"}.get(name, "int8")
    folder = work / f"{name.replace(' ', '_').replace('+', 'plus')}_{slug}"
    record = export_run(source, folder, quantize=quantize, seed=seed, overwrite=True, tolerance=NO_CHECK)
    data = run_student(source, seed).data
    return {"accuracy": accuracy(onnx(folder / "model.onnx", args.threads), data), "bytes": record["bytes"],
            "parity_agreement": record["parity"]["argmax_agreement"], "model": str(folder.relative_to(ROOT))}


def time_rows(rows: dict, args) -> None:
    """Latency of every exported model; run alone (another torch process on the cores would
    distort it), after the accuracy rows."""
    images = None
    for key, value in rows.items():
        if "latency_ms_b1" in value:
            continue
        if images is None:
            images = next(run_student(student_run("cnn_small", 0), 0).data.eval_batches("test", 256))["inputs"]
        run = onnx(ROOT / value["model"] / "model.onnx", args.threads)
        value["latency_ms_b1"] = timed(run, images[:1], args.repeats * 10)
        value["latency_ms_b256"] = timed(run, images, args.repeats)
        print(f"{key}: {value['latency_ms_b1']:.3f} ms at batch 1", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of QAT and of the control")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--no-timing", action="store_true",
                        help="accuracy only (when another process shares the cores); a later run times the models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = RESULTS / "qat"
    work.mkdir(parents=True, exist_ok=True)
    saved = work / "rows.json"
    rows = json.loads(saved.read_text()) if saved.exists() else {}
    for group in args.groups:
        for seed in args.seeds:
            for name in ROWS:
                key = f"{group}|{seed}|{name}"
                if key not in rows:
                    rows[key] = row(group, seed, name, work, args)
                    atomic_write_json(saved, rows)
                    print(f"{key}: {100 * rows[key]['accuracy']:.2f} %", flush=True)
    if not args.no_timing:
        time_rows(rows, args)
        atomic_write_json(saved, rows)
    write_tables(rows, args)


def write_tables(rows: dict, args) -> None:
    table = {}
    lines = ["| student | model | test accuracy (%, 3 seeds) | vs ONNX fp32 (points) | vs PTQ int8 (points) "
             "| size (kB) | latency b=1 (ms) | latency b=256 (ms) |", "|---|---|---|---:|---:|---:|---:|---:|"]
    for group in args.groups:
        table[group] = {}
        per_row = {name: [rows[f"{group}|{seed}|{name}"] for seed in args.seeds] for name in ROWS}
        accuracy = {name: [r["accuracy"] for r in values] for name, values in per_row.items()}
        for name, values in per_row.items():
            acc = accuracy[name]
            against = {ref: paired_comparison(name, acc, ref, accuracy[ref]) if name != ref else None
                       for ref in ("ONNX fp32", "PTQ int8")}
            timed_values = [r for r in values if "latency_ms_b1" in r]
            latency = {key: statistics.median(r[key] for r in timed_values) if timed_values else None
                       for key in ("latency_ms_b1", "latency_ms_b256")}
            table[group][name] = {"accuracy": acc, **latency, "bytes": values[0]["bytes"], "vs": against}
            cells = []
            for ref in ("ONNX fp32", "PTQ int8"):
                c = against[ref]
                cells.append("-" if c is None else f"{100 * c['mean_diff']:+.2f} (p={_p(c)})")
            lines.append(f"| {group} | {name} | {100 * statistics.mean(acc):.2f} ± {100 * (statistics.stdev(acc) if len(acc) > 1 else 0.0):.2f} "
                         f"| {cells[0]} | {cells[1]} | {values[0]['bytes'] / 1000:.1f} "
                         f"| {_ms(latency['latency_ms_b1'], 3)} | {_ms(latency['latency_ms_b256'], 2)} |")
    lines.append("")
    for group in args.groups:
        loss = table[group]["PTQ int8"]["vs"]["ONNX fp32"]["mean_diff"]
        qat = table[group]["QAT + int8"]["vs"]["PTQ int8"]
        control = table[group]["fine-tuned + PTQ int8"]["vs"]["PTQ int8"]
        lines.append(f"- {group}: static PTQ int8 vs fp32 {100 * loss:+.2f} points ("
                     f"{'beyond' if -loss > 0.005 else 'within'} the 0.5-point loss at which QAT is called for); "
                     f"QAT + int8 vs PTQ int8 {100 * qat['mean_diff']:+.2f} points (p={_p(qat)}); "
                     f"the same fine-tuning without simulated int8, then PTQ: {100 * control['mean_diff']:+.2f} "
                     f"points (p={_p(control)}).")
    lines.append("")
    lines.append(f"Fine-tuning: {args.epochs} epochs with response KD from the run's teacher cache, fp32, lr = the "
                 "run's / 4. Command: `.venv/bin/python benchmarks/qat.py --threads 2`.")
    atomic_write_json(RESULTS / "qat.json", {"groups": table, "epochs": args.epochs, "seeds": args.seeds})
    atomic_write_text(RESULTS / "qat.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def _p(comparison: dict) -> str:
    return "n/a" if comparison["p_value"] is None else f"{comparison['p_value']:.3g}"


def _ms(value, digits: int) -> str:
    return "not timed" if value is None else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
