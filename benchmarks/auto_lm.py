"""Does the search find a better language-model student than the hand-picked one, as fast to decode?

Austen, the SmolLM2-135M teacher, the language-model benchmark's data regime (about 100k training
tokens in blocks of 128, 8 epochs; ``configs/austen_smollm2_kd.yaml``). The hand-picked student
is that benchmark's distilled ``gpt`` (4 layers, width 256; alpha 0.8 chosen on validation;
``benchmarks/llm_kd.py``, its per-seed test bits/char read from
``benchmarks/results/llm_kd/comparison/report.json``). The constraint is its decode speed:
greedy decoding at batch 1 with the key/value cache at least as fast as the hand-picked
student's, timed here as the search times its probes (round-robin with the space's gpt probes).
The search gets ``--budget-s`` of wall clock (1.5 hours) over the default language-model space
(the zoo's gpt, the teacher's layers, its architecture narrower, cuts of it), then its chosen
student is distilled over the seeds against its scratch twin. At the end the hand-picked and the
chosen student are timed together (``head_to_head.json``). Targets: the chosen student's test
bits/char below the hand-picked student's, paired over the seeds (p < 0.05), and its decoding at
least as fast.

    .venv/bin/python benchmarks/auto_lm.py --threads 1   # -> benchmarks/results/auto_lm.{json,md}

Resumable: the search resumes from its study, the final run from its unfinished run; a finished
search is read back. The final run's finished phases (``search/run.partial/seed_*/*/result.json``,
committed) stand on another machine without their weights, so a later session trains only the
rest; each phase records the precision and bf16 path it trained with, and the result lists them.
The budget is wall-clock, so the search refuses to resume on another kind of CPU (its bf16 path)
unless ``--any-cpu``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

from common import target_lines

ROOT = Path(__file__).resolve().parents[1]
HAND_PICKED = ROOT / "benchmarks" / "results" / "llm_kd" / "comparison" / "report.json"


def base_spec(seeds: list[int], budget_s: float, min_tokens_per_s: float, overrides: list[str]) -> dict:
    from distillab.spec_io import apply_override, read_spec_file, resolve_spec_paths

    path = ROOT / "configs" / "austen_smollm2_kd.yaml"
    spec = resolve_spec_paths(read_spec_file(path), path.parent)
    spec["training"]["seeds"] = seeds
    spec["auto"] = {"constraints": {"min_decode_tokens_per_s": round(min_tokens_per_s, 2)},
                    "budget": {"wall_s": budget_s}}
    for override in overrides:
        apply_override(spec, override)
    return spec


def _space(spec: dict):
    """The corpus, the teacher and the language-model space of ``spec``."""
    from distillab.autodistill.lm_space import LMSpace
    from distillab.spec_io import parse_spec
    from distillab.tasks import TASKS

    parsed = parse_spec({**spec, "auto": None})
    task = TASKS["language_modeling"]
    data = task.build(parsed.data, 0, parsed)
    teacher = task.load_teachers(parsed, data)[0][0]
    return parsed, LMSpace(teacher, data.context_length, data.num_classes)


def hand_picked_speed(spec: dict, rounds: int) -> dict:
    """The hand-picked student's decode speed on this machine, timed as the search times its
    probes: round-robin with the gpt probes of the space (their speeds are recorded too)."""
    from distillab.autodistill.latency import probes_of
    from distillab.autodistill.lm_space import count_lm

    parsed, space = _space(spec)
    args = dict(parsed.student.model_args)
    candidate = count_lm("gpt", args, space.teacher, space.context, space.vocabulary)
    companions = [c for c in probes_of(space.candidates(["gpt"]), 5) if c.name != candidate.name]
    ms = space.measure_all([candidate, *companions], rounds)
    return {"student": {"model": "gpt", "model_args": args}, "params": candidate.params,
            "decode_ms_per_token": ms[candidate.name], "decode_tokens_per_s": 1000.0 / ms[candidate.name],
            "rounds": rounds, "timed_with": {name: ms[name] for name in ms if name != candidate.name}}


def head_to_head(spec: dict, chosen: dict, rounds: int) -> dict:
    """The hand-picked and the chosen student's decode ms per token, timed together."""
    from distillab.autodistill.lm_space import count_lm

    parsed, space = _space(spec)
    hand = count_lm("gpt", dict(parsed.student.model_args), space.teacher, space.context, space.vocabulary)
    pick = count_lm(chosen["model"], chosen["model_args"], space.teacher, space.context, space.vocabulary)
    if pick.name == hand.name:
        ms = space.measure_all([hand], rounds)
        return {"hand_picked": ms[hand.name], "chosen": ms[hand.name]}
    ms = space.measure_all([hand, pick], rounds)
    return {"hand_picked": ms[hand.name], "chosen": ms[pick.name]}


def check_cpu(out: Path, any_cpu: bool) -> str:
    from distillab.runtime import bf16_path

    here = bf16_path() or "none"
    record = out / "machine.json"
    if record.is_file():
        before = json.loads(record.read_text())["bf16_path"]
        if before != here and not any_cpu:
            print(f"{out} was searched on another kind of CPU ({before}) than this one ({here}): its wall-clock "
                  "budget and decode constraint mean another thing here; resume on that kind, or pass --any-cpu",
                  file=sys.stderr)
            raise SystemExit(2)
    else:
        out.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"bf16_path": here}) + "\n")
    return here


def scores(report: dict, role: str) -> dict[int, float]:
    model = next(m for m in report["models"] if m["role"] == role)
    return dict(zip(report["seeds"], model["score"]["per_seed"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget-s", type=float, default=5400.0, help="wall-clock budget of the search")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and every timing")
    parser.add_argument("--rounds", type=int, default=9, help="rounds of the decode timings")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override the spec (key.path=value), e.g. for a quick check")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "auto_lm"))
    parser.add_argument("--any-cpu", action="store_true", help="resume a search begun on another kind of CPU")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from distillab.autodistill.search import search
    from distillab.experiment.stats import paired_comparison
    from distillab.files import atomic_write_json, atomic_write_text

    out = Path(args.out)
    cpu = check_cpu(out, args.any_cpu)
    seeds = list(range(args.seeds))
    speed_path = out / "hand_picked_speed.json"
    if speed_path.is_file():
        speed = json.loads(speed_path.read_text())
    else:
        speed = hand_picked_speed(base_spec(seeds, args.budget_s, 1.0, args.overrides), args.rounds)
        atomic_write_json(speed_path, speed)
    spec = base_spec(seeds, args.budget_s, speed["decode_tokens_per_s"], args.overrides)
    search_dir = out / "search"
    search_dir.mkdir(parents=True, exist_ok=True)
    spec_path = search_dir / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    summary = search(spec_path, search_dir, final_seeds=seeds)
    report = json.loads((search_dir / "run" / "report.json").read_text())
    hand = scores(json.loads(HAND_PICKED.read_text()), "distilled")
    chosen, scratch = scores(report, "distilled"), scores(report, "scratch")
    common = sorted(set(hand) & set(chosen))
    comparison = paired_comparison("auto", [chosen[s] for s in common], "hand-picked", [hand[s] for s in common])
    relative = comparison["mean_diff"] / statistics.fmean(hand[s] for s in common)
    duel_path = out / "head_to_head.json"
    if not duel_path.is_file():
        atomic_write_json(duel_path, head_to_head(spec, summary["chosen"]["candidate"], args.rounds))
    duel = json.loads(duel_path.read_text())
    measured_ms = duel["chosen"]
    # how each phase of the final run trained (a run resumed across machines may mix them)
    trained_with = {f"seed {s} {role}": (json.loads(path.read_text()).get("precision") or {})
                    for s in seeds for role in ("scratch", "distilled")
                    for path in [search_dir / "run" / f"seed_{s}" / role / "result.json"] if path.is_file()}
    result = {
        "budget_s": args.budget_s, "threads": args.threads, "seeds": seeds, "cpu_bf16_path": cpu,
        "hand_picked": {**speed, "decode_tokens_per_s_head_to_head": 1000.0 / duel["hand_picked"],
                        "test_bits_per_character": {str(s): hand[s] for s in common},
                        "mean": statistics.fmean(hand[s] for s in common),
                        "source": str(HAND_PICKED.relative_to(ROOT))},
        "chosen": {"student": summary["chosen"]["candidate"], "params": summary["chosen"]["params"],
                   "val_bits_per_character": summary["chosen"]["val_score"],
                   "test_bits_per_character": {str(s): chosen[s] for s in common},
                   "mean": statistics.fmean(chosen[s] for s in common),
                   "scratch_mean": statistics.fmean(scratch[s] for s in common),
                   "decode_tokens_per_s": 1000.0 / measured_ms, "verdict": report["verdict"],
                   "search_check_decode_tokens_per_s": 1000.0 / summary["final"]["latency_ms_measured"]},
        "final_run_precision": trained_with,
        "search": {"candidates": summary["candidates"], "feasible_candidates": summary["feasible_candidates"],
                   "trials": summary["trials"], "epochs_trained": summary["epochs_trained"],
                   "trial_seconds": summary["trial_seconds"], "stopped": summary["stopped"],
                   "latency_model_error": summary["latency_model"]["error"]},
        "targets": {
            "bpc_vs_hand_picked": {"target": 0.0, "measured": relative, "met": relative < 0},
            "p_value": {"target": 0.05, "measured": comparison["p_value"],
                        "met": comparison["p_value"] is not None and comparison["p_value"] < 0.05 and relative < 0},
            # timed together with the hand-picked student: the chosen at least as fast
            "decode_speed": {"target": round(1000.0 / duel["hand_picked"], 2), "measured": 1000.0 / measured_ms,
                             "met": measured_ms <= duel["hand_picked"]},
        },
    }
    atomic_write_json(out.with_suffix(".json"), result)
    c = result["chosen"]
    lines = ["| student | test bits/char (mean over seeds) | scratch twin | decode tokens/s (b=1) | params |",
             "|---|---:|---:|---:|---:|",
             f"| hand-picked gpt {json.dumps(speed['student']['model_args'])} | {result['hand_picked']['mean']:.4f} | "
             f"- | {1000.0 / duel['hand_picked']:.1f} | {speed['params']:,} |",
             f"| chosen {c['student']['model']} {json.dumps(c['student']['model_args'])} | {c['mean']:.4f} | "
             f"{c['scratch_mean']:.4f} | {c['decode_tokens_per_s']:.1f} | {c['student']['params']:,} |",
             "", f"Search: {summary['trials']} trials ({summary['epochs_trained']} epochs, "
                 f"{summary['trial_seconds']:.0f} s of training) over {summary['feasible_candidates']} of "
                 f"{summary['candidates']} candidates that could meet the decode constraint; the search's CPU "
                 f"bf16 path: {json.loads((out / 'machine.json').read_text())['bf16_path']}, this machine's: {cpu}.",
             "", "Final run, how each phase trained: " + "; ".join(
                 f"{name}: {record.get('used', 'not recorded')} ({record.get('bf16_path') or 'no bf16 path'})"
                 for name, record in trained_with.items()) + "."]
    lines += target_lines(result["targets"])
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
