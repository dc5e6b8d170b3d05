"""Does a student cut from the ResNet-20 teacher beat the same architecture from random weights,
and the default student, at the default student's latency?

The default job's regime (``configs/fashion_mnist_kd.yaml``: the shipped ResNet-20 teacher,
5,000 Fashion-MNIST training images, 8 cached views, Hinton KD at T = 4 and alpha = 0.9, 30
epochs, 6 seeds), three students, each distilled and against its scratch twin:

- ``cut``: ``teacher_pruned`` with ``--keep`` of the teacher's channels and ``--blocks`` blocks
  per stage (default half the channels, one block per stage: 19,810 parameters, whose ONNX
  latency at batch 1 is within about 10 % of the default student's); its scratch twin starts
  from the same cut and trains without the teacher;
- ``random_init``: the same architecture (a zoo ``resnet`` with the cut's widths) from random
  weights;
- ``cnn_small``: the default job's student, as ``make run`` trains it.

Every run is on the same seeds, so the comparisons are paired by seed. At the end the three
students' ONNX latency at batch 1 is measured together (interleaved). The runs are resumable:
run the same command again.

    .venv/bin/python benchmarks/cut_image.py --threads 1   # -> benchmarks/results/cut_image.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def arm_specs(spec_path: Path, keep: float, blocks: list[int], seeds: list[int], overrides=()) -> dict[str, dict]:
    """The spec of each arm: the default job with its student replaced."""
    from distillab.models.cut import cut_shape
    from distillab.models.zoo import meta_model
    from distillab.spec_io import load_spec

    base = load_spec(spec_path, [f"training.seeds={json.dumps(seeds)}", "output.tensorboard=false", *overrides])
    teacher = meta_model(base.teacher.model, (1, 28, 28), 10, base.teacher.model_args)
    name, shape = cut_shape(teacher, {"keep": keep, "blocks": blocks})
    record = base.model_dump(mode="json")
    out = {}
    for arm, student in (("cut", {"model": "teacher_pruned", "model_args": {"keep": keep, "blocks": blocks}}),
                         ("random_init", {"model": name, "model_args": shape}),
                         ("cnn_small", {"model": "cnn_small", "model_args": {}})):
        out[arm] = {**record, "name": f"cut_image_{arm}", "student": student}
    return out


def onnx_latencies(specs: dict[str, dict], rounds: int) -> dict[str, float]:
    """Each arm's median ONNX Runtime latency (fp32, batch 1) over ``rounds`` rounds, the arms
    in turn within each round (the search's latency protocol; weights do not matter)."""
    from distillab.autodistill.latency import measure
    from distillab.autodistill.space import Candidate

    candidates = {}
    for arm, spec in specs.items():
        student = spec["student"]
        if student["model"] == "teacher_pruned":  # timed as the zoo model it is
            candidates[arm] = Candidate("teacher_pruned", json.dumps(student["model_args"], sort_keys=True),
                                        architecture=json.dumps(list(specs["random_init"]["student"].values())))
        else:
            candidates[arm] = Candidate(student["model"], json.dumps(student["model_args"], sort_keys=True))
    times: dict[str, list[float]] = {arm: [] for arm in candidates}
    for _ in range(rounds):
        for arm, candidate in candidates.items():
            times[arm].append(measure(candidate, (1, 28, 28), 10, "onnx", 1))
    return {arm: statistics.median(values) for arm, values in times.items()}


def per_seed(report: dict, role: str) -> dict[int, float]:
    model = next(m for m in report["models"] if m["role"] == role)
    return {seed: value for seed, value in zip(report["seeds"], model["accuracy"]["per_seed"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(ROOT / "configs" / "fashion_mnist_kd.yaml"))
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--blocks", type=int, nargs=3, default=[1, 1, 1])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override the spec (key.path=value), e.g. for a quick check")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cut_image"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from distillab.experiment.run import run
    from distillab.experiment.stats import paired_comparison
    from distillab.files import atomic_write_json, atomic_write_text

    out = Path(args.out)
    specs = arm_specs(Path(args.spec), args.keep, args.blocks, args.seeds, args.overrides)
    reports = {}
    for arm, spec in specs.items():
        folder = out / arm
        if not (folder / "report.json").is_file():
            run(spec, folder, resume=folder.with_name(f"{arm}.partial").exists())
        reports[arm] = json.loads((folder / "report.json").read_text())
    scores = {arm: {role: per_seed(report, role) for role in ("distilled", "scratch")}
              for arm, report in reports.items()}
    seeds = args.seeds

    def compare(a: tuple[str, str], b: tuple[str, str]) -> dict:
        x = [scores[a[0]][a[1]][s] for s in seeds]
        y = [scores[b[0]][b[1]][s] for s in seeds]
        return paired_comparison(f"{a[0]} {a[1]}", x, f"{b[0]} {b[1]}", y)

    comparisons = {
        "cut: distilled vs scratch twin (same cut, no teacher)": compare(("cut", "distilled"), ("cut", "scratch")),
        "distilled: cut vs random init (same architecture)": compare(("cut", "distilled"),
                                                                     ("random_init", "distilled")),
        "distilled: cut vs cnn_small": compare(("cut", "distilled"), ("cnn_small", "distilled")),
        "the cut trained on labels alone vs cnn_small distilled": compare(("cut", "scratch"),
                                                                          ("cnn_small", "distilled")),
    }
    latency_path = out / "latency.json"
    if not latency_path.is_file():  # as the search measures its constraint, the three in turn
        atomic_write_json(latency_path, onnx_latencies(specs, rounds=7))
    latency = json.loads(latency_path.read_text())
    cut_facts = reports["cut"].get("student_cut", {})
    result = {
        "seeds": seeds, "threads": args.threads, "keep": args.keep, "blocks": args.blocks,
        "cut": {k: cut_facts.get(k) for k in ("architecture", "blocks_kept", "block_influence", "zero_shot",
                                              "params", "teacher_params")},
        "teacher_test_accuracy": per_seed(reports["cut"], "teacher")[seeds[0]],
        "arms": {arm: {role: {"per_seed": {str(s): v for s, v in values.items()},
                              "mean": statistics.fmean(values.values()),
                              "std": statistics.stdev(values.values()) if len(values) > 1 else 0.0}
                       for role, values in roles.items()}
                 | {"params": next(m for m in reports[arm]["models"] if m["role"] == "distilled")["params"],
                    "onnx_latency_ms_b1": latency[arm]}
                 for arm, roles in scores.items()},
        "comparisons": comparisons,
        "precision": reports["cut"].get("precision"),
    }
    atomic_write_json(out.with_suffix(".json"), result)
    lines = ["| student | params | ONNX ms (b=1) | distilled test acc. (%) | scratch twin (%) |",
             "|---|---:|---:|---:|---:|"]
    for arm, row in result["arms"].items():
        lines.append(f"| {arm} | {row['params']:,} | {row['onnx_latency_ms_b1']:.3f} | "
                     f"{100 * row['distilled']['mean']:.2f} ± {100 * row['distilled']['std']:.2f} | "
                     f"{100 * row['scratch']['mean']:.2f} ± {100 * row['scratch']['std']:.2f} |")
    lines += ["", f"Teacher: {100 * result['teacher_test_accuracy']:.2f} %. The cut before training: "
                  f"{100 * (cut_facts.get('zero_shot') or {}).get('test_accuracy', float('nan')):.2f} % on test "
                  f"(blocks kept {cut_facts.get('blocks_kept')}).", ""]
    for name, c in comparisons.items():
        p = "n/a" if c["p_value"] is None else f"{c['p_value']:.3g}"
        lines.append(f"- {name}: {100 * c['mean_diff']:+.2f} points (paired over {len(seeds)} seeds, p = {p})")
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
