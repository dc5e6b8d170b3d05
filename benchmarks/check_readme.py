"""Do the README's published results reproduce? Re-runs each published comparison from the spec
saved in its report, over the same seeds, and compares what the README states: the verdict
(distillation helped, or did not measurably help, at p < 0.05) and the mean difference between
the distilled student and its scratch twin.

    .venv/bin/python benchmarks/check_readme.py                  # every check, all published seeds
    .venv/bin/python benchmarks/check_readme.py --only make_run  # one of them
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 .venv/bin/python benchmarks/check_readme.py --only make_run \\
        --out benchmarks/results/check_readme_avx512_bf16    # as on a CPU without AMX
        # -> benchmarks/results/check_readme.{json,md}

A check passes when the verdict is the same and the new mean difference lies inside the published
one's 95 % confidence interval (t over the published per-seed differences). The per-seed
accuracies are listed beside, for a run on the same CPU, where the same seed should give the same
accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import distillab
from distillab.files import atomic_write_json, atomic_write_text
from distillab.runtime import bf16_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHECKS = {  # name -> the published report it re-runs
    "make_run": RESULTS / "make_run" / "report.json",
    "fashion_mnist_quality": RESULTS / "fashion_mnist_quality" / "report.json",
    "patience_5": RESULTS / "patience" / "epochs_5" / "report.json",
}
ALPHA = 0.05


def verdict(comparison: dict) -> str:
    """'helped', 'hurt' or 'no measurable difference', as the report's verdict reads it."""
    p = comparison.get("p_value")
    if p is None or p >= ALPHA:
        return "no measurable difference"
    better = comparison["mean_diff"] > 0 if comparison.get("higher_is_better", True) else comparison["mean_diff"] < 0
    return "helped" if better else "hurt"


def interval(per_seed_a: list[float], per_seed_b: list[float]) -> tuple[float, float]:
    """95 % confidence interval of the mean paired difference a - b (t distribution)."""
    from scipy import stats

    diffs = [x - y for x, y in zip(per_seed_a, per_seed_b)]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, mean
    half = stats.t.ppf(1 - ALPHA / 2, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return mean - half, mean + half


def check(name: str, report_path: Path, seeds: int | None) -> dict:
    published = json.loads(report_path.read_text())
    chosen = published["seeds"][:seeds] if seeds else published["seeds"]
    spec = {**published["spec"], "training": {**published["spec"]["training"], "seeds": chosen},
            "output": {**published["spec"]["output"], "plots": False, "tensorboard": False}}
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        report = distillab.run(spec, Path(scratch) / "run").data
    old_models = {m["role"]: m["accuracy"]["per_seed"] for m in published["models"]}
    new_models = {m["role"]: m["accuracy"]["per_seed"] for m in report["models"]}
    index = [published["seeds"].index(s) for s in chosen]
    old_a, old_b = [old_models["distilled"][i] for i in index], [old_models["scratch"][i] for i in index]
    low, high = interval(old_models["distilled"], old_models["scratch"])
    old_comparison = published["comparisons"][0]
    new_comparison = report["comparisons"][0]
    new_diff = new_comparison["mean_diff"]
    row = {
        "check": name, "source": str(report_path.relative_to(ROOT)), "seeds": chosen,
        "bf16_path": report.get("precision", {}).get("bf16_path") or bf16_path(),
        "published_verdict": verdict(old_comparison), "new_verdict": verdict(new_comparison),
        "published_mean_diff": old_comparison["mean_diff"], "published_ci": [low, high],
        "published_p": old_comparison["p_value"], "new_mean_diff": new_diff, "new_p": new_comparison["p_value"],
        "same_verdict": verdict(old_comparison) == verdict(new_comparison),
        "diff_within_ci": low <= new_diff <= high,
        "same_seed_max_gap": max(abs(a - b) for role in ("scratch", "distilled")
                                 for a, b in zip(new_models[role], [old_models[role][i] for i in index])),
        "new_per_seed": new_models, "published_per_seed": {"distilled": old_a, "scratch": old_b},
        "seconds": round(time.time() - started, 1),
    }
    row["passes"] = row["same_verdict"] and row["diff_within_ci"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(CHECKS), help="checks to run (default: all published)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="re-run only the first N published seeds (default: all of them; the verdict needs them)")
    parser.add_argument("--out", default=str(RESULTS / "check_readme"))
    args = parser.parse_args()
    os.chdir(ROOT)

    rows = []
    for name in args.only or sorted(CHECKS):
        path = CHECKS[name]
        if not path.exists():
            print(f"{name}: no published report at {path.relative_to(ROOT)}; skipped", flush=True)
            continue
        rows.append(check(name, path, args.seeds))
        r = rows[-1]
        print(f"{name} ({r['bf16_path']}): {r['new_verdict']}, {r['new_mean_diff'] * 100:+.2f} points "
              f"(p = {_p(r['new_p'])}) vs published {r['published_verdict']}, {r['published_mean_diff'] * 100:+.2f} "
              f"[{r['published_ci'][0] * 100:+.2f}, {r['published_ci'][1] * 100:+.2f}] -> "
              f"{'PASS' if r['passes'] else 'FAIL'}", flush=True)
    atomic_write_json(Path(args.out + ".json"), {"rows": rows})
    lines = ["| published result | bf16 path | seeds | verdict (published → re-run) | mean gain, points (published "
             "[95 % CI] → re-run) | p (published → re-run) | largest same-seed gap (points) | passes |",
             "|---|---|---:|---|---|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r['source']} | {r['bf16_path']} | {len(r['seeds'])} | {r['published_verdict']} → "
                     f"{r['new_verdict']} | {r['published_mean_diff'] * 100:+.2f} [{r['published_ci'][0] * 100:+.2f}, "
                     f"{r['published_ci'][1] * 100:+.2f}] → {r['new_mean_diff'] * 100:+.2f} | {_p(r['published_p'])} → "
                     f"{_p(r['new_p'])} | {r['same_seed_max_gap'] * 100:.2f} | {'yes' if r['passes'] else 'NO'} |")
    atomic_write_text(Path(args.out + ".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def _p(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


if __name__ == "__main__":
    main()
