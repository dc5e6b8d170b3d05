"""Students cut from the teacher against students built fresh, at equal training tokens.

Austen, the SmolLM2-135M teacher (``configs/austen_smollm2_kd.yaml``: 100k training tokens in
blocks of 128, token-level KD from the top-32 + tail cache), the same tokens and steps for every
arm, paired over the seeds. Arms:

- ``width_cut``: ``teacher_pruned`` to about 40M parameters by width (Minitron importance), distilled;
- ``depth_cut``: ``teacher_pruned`` to the same size by depth, the layer ranking (block influence
  or perplexity) chosen on validation by the cut's zero-shot bits/char, distilled;
- ``random_init``: ``teacher_width`` of the width cut's exact shape from random weights, distilled,
  and its scratch twin (``random_init_scratch``);
- ``gpt``: the spec's own 15.7M GPT, distilled, for reference;
- the teacher itself.

Columns: test bits/char (mean ± std over seeds), the zero-shot value after the cut, parameters,
prefill and decode tokens/s at batch 1, and each student as the teacher's draft model
(speculative greedy decoding: speed-up, acceptance rate, identical output), twice: with
transformers' default lookahead (up to 20 draft tokens, cut short when the draft's confidence
falls under 0.4), and with the lookahead distillab chooses on validation prompts from the draft's
agreement with the teacher and its cost (``models.draft.choose_lookahead``). The KD weight alpha
is the one ``benchmarks/llm_kd.py`` chose on validation (its sweep's ``best.json``); nothing is
chosen on test.

    .venv/bin/python benchmarks/cut_from_teacher.py --threads 2
        # -> benchmarks/results/cut_from_teacher.{json,md}, per arm in benchmarks/results/cut_from_teacher/

Resumable: every (arm, seed) phase resumes from its folder, facts and draft timings from their
JSON files; ``--arms`` runs some arms only (the summary covers what has finished). Each distilled
student is timed as a draft right after it trains, while its weights are at hand (they are not
committed); the table shows the seed best on validation. That seed is timed with the chosen
lookahead too; where its weights are gone, the same phase (seed, data, settings) is trained again
in a scratch folder, and the retrained student's test bits/char is recorded beside the timing.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import torch

from common import target_lines

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "cut_from_teacher"
ARMS = ("width_cut", "depth_cut", "random_init", "gpt")
TARGET_BPC = -0.10  # the width cut at least 10 % below the random-init student of its shape
TARGET_SPEEDUP = 1.5


def settings(args) -> list[str]:
    alpha = json.loads((ROOT / "benchmarks/results/llm_kd/sweep/best.json").read_text())["params"]
    return [f"data.limit_tokens={args.limit_tokens}", f"data.limit_eval_tokens={args.limit_eval_tokens}",
            f"training.epochs={args.epochs}",
            f"training.seeds={json.dumps(args.seeds)}", "output.draft_prompts=0",
            *(f"{key}={value}" for key, value in alpha.items())]


def job_for(args, student: dict):
    from distillab.experiment.job import Job
    from distillab.spec_io import load_spec

    spec = load_spec(args.spec, settings(args))
    spec = spec.model_copy(update={"student": spec.student.model_copy(update=student)})
    return Job.from_spec(spec)


def read_or(path: Path, compute):
    from distillab.files import atomic_write_json

    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    atomic_write_json(path, value)
    return value


def depth_metric(args, data, out: Path) -> dict:
    """The depth cut's layer ranking with the lower zero-shot validation bits/char."""
    def measure():
        scores = {}
        for metric in ("block_influence", "perplexity"):
            job = job_for(args, {"model": "teacher_pruned",
                                 "model_args": {"params": args.params, "axis": "depth", "layer_metric": metric}})
            student = job.student_for(0, data)
            scores[metric] = job.task.evaluate(student, data, "val", 16, torch.device("cpu")).value
        return {"val_zero_shot": scores, "chosen": min(scores, key=scores.get)}
    return read_or(out / "depth_metric.json", measure)


def arm_student(arm: str, args, width_shape: dict | None, depth: dict | None) -> dict:
    if arm == "width_cut":
        return {"model": "teacher_pruned", "model_args": {"params": args.params, "axis": "width"}}
    if arm == "depth_cut":
        return {"model": "teacher_pruned", "model_args": {"params": args.params, "axis": "depth",
                                                          "layer_metric": depth["chosen"]}}
    if arm == "random_init":
        return {"model": "teacher_width", "model_args": {
            "hidden_size": width_shape["hidden_size"], "intermediate_size": width_shape["intermediate_size"],
            "heads": width_shape["heads"], "kv_heads": width_shape["kv_heads"], "layers": width_shape["layers"],
            "head_dim": 64}}
    return {}  # the spec's gpt


def run_arm(arm: str, args, out: Path, data, teachers, student: dict) -> dict:
    from distillab.experiment.phases import phase
    from distillab.models.draft import speculative_decoding
    from distillab.models.loading import load_state_into
    from distillab.tasks.lm_report import test_prompts

    job = job_for(args, student)
    folder = out / arm
    folder.mkdir(parents=True, exist_ok=True)
    caches = job.task.teacher_caches(job.settings, data, teachers, job.params)
    roles = ("distilled", "scratch") if arm == "random_init" else ("distilled",)
    results = {role: {} for role in roles}
    drafts = {}

    def draft(result: dict, phase_dir: Path, seed: int) -> dict:
        """The teacher's greedy decoding with this distilled student as its draft, against the teacher alone."""
        student_model = result.get("student")
        if student_model is None:  # a phase finished earlier: its weights from the folder
            student_model = load_state_into(job.student_for(seed, data), phase_dir / "student.safetensors",
                                            str(phase_dir))
        if not hasattr(student_model, "tokenizer"):
            return {"measured": False, "seed": seed, "why": "the gpt student is not a transformers model"}
        return {"measured": True, "seed": seed, **speculative_decoding(
            teachers[0][0], student_model.eval(), test_prompts(data, args.draft_prompts, 32), args.draft_tokens)}

    for seed in args.seeds:
        for role in roles:
            phase_dir = folder / f"seed_{seed}" / role
            result = phase(job, data, seed, role, teachers, caches if role == "distilled" else [], phase_dir, True,
                           None, None)
            results[role][seed] = {"val": result["val_accuracy"], "test": result["test_metrics"]["bits_per_character"]}
            if role == "distilled":  # timed as a draft while its weights are at hand (they are not committed)
                drafts[seed] = read_or(phase_dir / "draft.json", lambda: draft(result, phase_dir, seed))
    def chosen_draft(seed: int) -> dict:
        """The draft timing with the lookahead chosen on validation prompts."""
        phase_dir = folder / f"seed_{seed}" / "distilled"
        weights = phase_dir / "student.safetensors"
        with tempfile.TemporaryDirectory() as scratch:
            retrained = None
            student_model = job.student_for(seed, data)
            if not hasattr(student_model, "tokenizer"):
                return {"measured": False, "seed": seed, "why": "the gpt student is not a transformers model"}
            if weights.is_file():
                student_model = load_state_into(student_model, weights, str(phase_dir))
            else:  # the same phase again, in a scratch folder
                again = phase(job, data, seed, "distilled", teachers, caches, Path(scratch) / "distilled", True,
                              None, None)
                student_model = again["student"]
                retrained = {"test_bits_per_character": again["test_metrics"]["bits_per_character"],
                             "committed_test_bits_per_character": results["distilled"][seed]["test"]}
            measured = speculative_decoding(teachers[0][0], student_model.eval(),
                                            test_prompts(data, args.draft_prompts, 32), args.draft_tokens,
                                            choice_prompts=test_prompts(data, 4, 32, "val"))
        return {"measured": True, "seed": seed, **({"retrained": retrained} if retrained else {}), **measured}

    fresh = job.student_for(args.seeds[0], data)
    facts = read_or(folder / "facts.json", lambda: {
        **job.task.model_facts({arm: fresh}, data, 5)[arm],
        **({"cut": fresh.cut, "zero_shot": {split: job.task.evaluate(fresh, data, split, 16, torch.device("cpu")).value
                                            for split in ("val", "test")}} if getattr(fresh, "cut", None) else {})})
    best = min(args.seeds, key=lambda s: results["distilled"][s]["val"])  # chosen on validation
    chosen_path = folder / f"seed_{best}" / "distilled" / "draft_chosen.json"
    chosen = read_or(chosen_path, lambda: chosen_draft(best)) if arm in args.lookahead_arms or chosen_path.is_file() \
        else None
    return {"results": results, "facts": facts, "draft": drafts[best], "draft_chosen": chosen}


def summarize(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "austen_smollm2_kd.yaml"))
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",")], default=[0, 1, 2])
    parser.add_argument("--params", type=float, default=40e6, help="the cut students' parameter target")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--limit-tokens", type=int, default=100_000)
    parser.add_argument("--limit-eval-tokens", type=int, default=20_000, help="validation and test tokens")
    parser.add_argument("--draft-prompts", type=int, default=8)
    parser.add_argument("--draft-tokens", type=int, default=64)
    parser.add_argument("--lookahead-arms", nargs="*", default=list(ARMS), choices=ARMS,
                        help="arms whose best seed is also timed with the lookahead chosen on validation (a seed "
                             "whose weights are gone is trained again for it)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from distillab.experiment.stats import paired_comparison
    from distillab.experiment.teacher_check import cached_evaluation
    from distillab.files import atomic_write_json, atomic_write_text

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = job_for(args, {})
    data = base.build_data(args.seeds[0])
    teachers = base.load_teachers(data)
    teacher, key, _ = teachers[0]
    teacher_row = read_or(out / "teacher.json", lambda: {
        "test": cached_evaluation(base.task, teacher, key, data, "test", 16, torch.device("cpu"),
                                  base.settings.cache.dir).value,
        **base.task.model_facts({"teacher": teacher}, data, 5)["teacher"]})
    width_shape = job_for(args, arm_student("width_cut", args, None, None)).student_for(0, data).cut["shape"]
    depth = depth_metric(args, data, out) if "depth_cut" in args.arms else None
    arms = {arm: run_arm(arm, args, out, data, teachers, arm_student(arm, args, width_shape, depth))
            for arm in args.arms}
    rows = []
    for arm, facts in arms.items():
        for role, by_seed in facts["results"].items():
            name = arm if role == "distilled" else f"{arm}_scratch"
            rows.append({"arm": name, "test_bpc": summarize([by_seed[s]["test"] for s in args.seeds]),
                         "zero_shot_test_bpc": facts["facts"].get("zero_shot", {}).get("test"),
                         "params": facts["facts"]["params"],
                         "prefill_tokens_per_s": facts["facts"]["prefill_tokens_per_s"],
                         "decode_tokens_per_s": facts["facts"]["decode_tokens_per_s"],
                         "draft": facts["draft"] if role == "distilled" else None,
                         "draft_chosen": facts["draft_chosen"] if role == "distilled" else None,
                         "cut": facts["facts"].get("cut", {}).get("shape")})
    result = {"settings": {"epochs": args.epochs, "limit_tokens": args.limit_tokens, "seeds": args.seeds,
                           "threads": args.threads, "params_target": args.params, "depth_metric": depth,
                           "overrides": settings(args)},
              "teacher": teacher_row, "rows": rows}
    if "width_cut" in arms and "random_init" in arms:
        cut = [arms["width_cut"]["results"]["distilled"][s]["test"] for s in args.seeds]
        fresh = [arms["random_init"]["results"]["distilled"][s]["test"] for s in args.seeds]
        comparison = paired_comparison("width_cut", cut, "random_init", fresh, "bits_per_character", False)
        relative = statistics.fmean(cut) / statistics.fmean(fresh) - 1
        drafts = [row[key] for row in rows for key in ("draft", "draft_chosen")
                  if row[key] and row[key].get("measured")]
        fastest = max(drafts, key=lambda d: d["speedup"]) if drafts else None
        result["targets"] = {
            "bpc_vs_random_init": {"target": TARGET_BPC, "measured": relative, "met": relative <= TARGET_BPC},
            "p_value": {"target": 0.05, "measured": comparison["p_value"],
                        "met": comparison["p_value"] is not None and comparison["p_value"] < 0.05},
            "speculative_speedup": {"target": TARGET_SPEEDUP, "measured": fastest and fastest["speedup"],
                                    "met": bool(fastest) and fastest["speedup"] >= TARGET_SPEEDUP
                                    and fastest["identical_output"]},
            "identical_output": {"target": True, "measured": all(d["identical_output"] for d in drafts),
                                 "met": bool(drafts) and all(d["identical_output"] for d in drafts)},
        }
    atomic_write_json(out.with_suffix(".json"), result)
    lines = [f"Austen, SmolLM2-135M teacher, {args.limit_tokens:,} training tokens × {args.epochs} epochs for every "
             f"arm, seeds {args.seeds}, {args.threads} threads.", "",
             "| arm | test bits/char | zero-shot after the cut | params | prefill tok/s | decode tok/s | "
             "as draft, default lookahead: speed-up | acceptance | identical | chosen lookahead | speed-up | "
             "acceptance | identical |", "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|",
             f"| teacher | {teacher_row['test']:.4f} | | {teacher_row['params']:,} | "
             f"{teacher_row['prefill_tokens_per_s']:.0f} | {teacher_row['decode_tokens_per_s']:.1f} | | | | | | | |"]
    def timing(draft: dict | None) -> str:
        if not (draft or {}).get("measured"):
            return "| | |"
        return (f"{draft['speedup']:.2f}× | {100 * draft['acceptance_rate']:.1f} % | "
                f"{'yes' if draft['identical_output'] else 'NO'} |")

    for row in rows:
        chosen = row["draft_chosen"] or {}
        zero = row["zero_shot_test_bpc"]
        lines.append(
            f"| {row['arm']} | {row['test_bpc']['mean']:.4f} ± {row['test_bpc']['std']:.4f} | "
            f"{'' if zero is None else f'{zero:.3f}'} | {row['params']:,} | {row['prefill_tokens_per_s']:.0f} | "
            f"{row['decode_tokens_per_s']:.1f} | " + timing(row["draft"])
            + (f" {chosen['lookahead']} | " if chosen.get("measured") else " | ") + timing(chosen))
    choices = [(row["arm"], row["draft_chosen"]) for row in rows if (row["draft_chosen"] or {}).get("measured")]
    for arm, chosen in choices:
        choice = chosen["lookahead_choice"]
        lines += ["", f"{arm} (seed {chosen['seed']}): on {choice['chosen_on']} its top-1 matched the teacher's next "
                      f"token {100 * choice['agreement']:.1f} % of the time, at {choice['relative_cost']:.2f}× the "
                      f"teacher's cost per token: lookahead {chosen['lookahead']}, expected "
                      f"{choice['expected_speedup']:.2f}×, measured {chosen['speedup']:.2f}×."
                      + (f" (Its weights were retrained for this timing: "
                         f"{chosen['retrained']['test_bits_per_character']:.4f} test bits/char against "
                         f"{chosen['retrained']['committed_test_bits_per_character']:.4f} for this seed in the "
                         "table's run.)"
                         if chosen.get("retrained") else "")]
    lines += target_lines(result.get("targets", {}))
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
