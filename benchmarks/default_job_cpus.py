"""Does the default job's verdict hold on another CPU? A power analysis over the per-seed spread
of the default job (`configs/fashion_mnist_kd.yaml`, what `make run` runs), measured on two bf16
paths of the CPU:

- ``amx``: this machine as it is (bf16 convolutions and matmuls on AMX tiles, where it has them);
- ``avx512_bf16``: the same machine with oneDNN capped at AVX512-BF16 (``ONEDNN_MAX_CPU_ISA=
  AVX512_CORE_BF16``), the instruction path of a CPU with AVX512-BF16 but no AMX. Its bf16
  kernels round differently, so the same seed trains to a different student, as on such a CPU.

Each CPU runs the job over fresh seeds (100, 101, ... -- not the seeds the regime was chosen on,
so the selection does not flatter the p-value), one process at a time, 2 threads each. Then, for
every seed count n, it estimates how often the job's paired t-test would come out p < 0.05, two
ways: from the noncentral t distribution at the measured mean and spread of the per-seed gain,
and by resampling n of the measured seeds. The seconds per seed say how many seeds fit in 10
minutes.

    .venv/bin/python benchmarks/default_job_cpus.py --seeds 12
        # -> benchmarks/results/default_job_cpus/<cpu>/ (full runs) and default_job_cpus.{json,md}

A finished CPU is read back, not rerun; an interrupted one resumes from its unfinished folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPUS = {"amx": None, "avx512_bf16": "AVX512_CORE_BF16"}  # name -> ONEDNN_MAX_CPU_ISA
BUDGET_S = 600
ALPHA = 0.05


def run_one(cpu: str, seeds: list[int], out: Path, spec_path: str, threads: int) -> None:
    """The child process: the default job on ``seeds``, in ``out`` (resumed when unfinished)."""
    import torch

    import distillab
    from distillab.files import atomic_write_json
    from distillab.runtime import bf16_path
    from distillab.spec_io import load_spec

    torch.set_num_threads(threads)
    spec = load_spec(spec_path, [f"training.seeds={seeds}", "output.tensorboard=false", "output.plots=false",
                                 f"cache.dir={out.parent / ('cache_' + cpu)}"])
    partial = out.with_name(out.name + ".partial")
    started = time.perf_counter()
    distillab.run(spec, out, resume=partial.exists())
    atomic_write_json(out / "wall.json", {"seconds": time.perf_counter() - started, "bf16_path": bf16_path(),
                                          "resumed": partial.exists()})


def per_seed(report: dict, split: str) -> tuple[list[float], list[float]]:
    models = {m["role"]: m for m in report["models"]}
    key = "accuracy" if split == "test" else "val_accuracy"
    return models["distilled"][key]["per_seed"], models["scratch"][key]["per_seed"]


def power(diffs: list[float], n: int, draws: int = 4000) -> dict:
    """How often a paired t-test over n seeds gives p < ALPHA with a positive gain: from the
    noncentral t at the measured effect size, and by resampling n of the measured gains."""
    from scipy import stats

    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    critical = stats.t.ppf(1 - ALPHA / 2, n - 1)
    analytic = float(stats.nct.sf(critical, n - 1, mean / sd * n ** 0.5)) if sd > 0 else float(mean > 0)
    rng = random.Random(0)
    hits = 0
    for _ in range(draws):
        sample = [rng.choice(diffs) for _ in range(n)]
        s = statistics.stdev(sample)
        if s > 0:
            t = statistics.fmean(sample) / (s / n ** 0.5)
            hits += t > critical
        else:
            hits += statistics.fmean(sample) > 0
    expected_t = mean / sd * n ** 0.5 if sd > 0 else float("inf")
    return {"n": n, "power_noncentral_t": analytic, "power_resampled": hits / draws,
            "p_at_expected_t": float(2 * stats.t.sf(expected_t, n - 1))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=12, help="seeds per CPU (100, 101, ...)")
    parser.add_argument("--cpus", nargs="+", default=list(CPUS), choices=list(CPUS))
    parser.add_argument("--spec", default=str(ROOT / "configs" / "fashion_mnist_kd.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "default_job_cpus"))
    parser.add_argument("--child", choices=list(CPUS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    seeds = list(range(100, 100 + args.seeds))
    if args.child:
        run_one(args.child, seeds, out / args.child, args.spec, args.threads)
        return

    from scipy import stats

    from distillab.files import atomic_write_json, atomic_write_text
    from distillab.experiment.stats import paired_comparison

    results = {}
    for cpu in args.cpus:
        folder = out / cpu
        if not (folder / "report.json").exists():
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            env.pop("ONEDNN_MAX_CPU_ISA", None)
            if CPUS[cpu]:
                env["ONEDNN_MAX_CPU_ISA"] = CPUS[cpu]
            print(f"{cpu}: running the default job over seeds {seeds[0]}..{seeds[-1]}", flush=True)
            subprocess.run([sys.executable, __file__, "--child", cpu, "--seeds", str(args.seeds), "--spec", args.spec,
                            "--threads", str(args.threads), "--out", str(out)], env=env, check=True)
        report = json.loads((folder / "report.json").read_text())
        wall = json.loads((folder / "wall.json").read_text())
        row = {"cpu": cpu, "bf16_path": report.get("precision", {}).get("bf16_path"), "seeds": report["seeds"],
               "seconds": wall["seconds"], "resumed": wall.get("resumed", False)}
        for split in ("val", "test"):
            a, b = per_seed(report, split)
            diffs = [x - y for x, y in zip(a, b)]
            comparison = paired_comparison("distilled", a, "scratch", b)
            row[split] = {"gains": diffs, "mean_gain": comparison["mean_diff"], "sd_gain": statistics.stdev(diffs),
                          "p_value": comparison["p_value"], "scratch_mean": statistics.fmean(b),
                          "distilled_mean": statistics.fmean(a),
                          "power": [power(diffs, n) for n in range(3, 2 * len(diffs) + 1)]}
        results[cpu] = row
        print(f"{cpu} ({row['bf16_path']}): test gain {row['test']['mean_gain'] * 100:+.2f} ± "
              f"{row['test']['sd_gain'] * 100:.2f} points over {len(seeds)} seeds, p = {row['test']['p_value']:.3g}",
              flush=True)

    # seconds per seed from the AMX run (the cache fill is shared by all seeds, so this overstates a little)
    per_seed_s = {cpu: r["seconds"] / len(r["seeds"]) for cpu, r in results.items()}
    worst = min(results.values(), key=lambda r: r["test"]["mean_gain"] / max(r["test"]["sd_gain"], 1e-9))
    pooled = [d for r in results.values() for d in r["test"]["gains"]]
    summary = {"cpus": results, "seconds_per_seed": per_seed_s, "budget_seconds": BUDGET_S,
               "pooled_test": {"mean_gain": statistics.fmean(pooled), "sd_gain": statistics.stdev(pooled),
                               "p_value": float(stats.ttest_1samp(pooled, 0).pvalue), "n": len(pooled)},
               "worst_cpu": worst["cpu"]}
    seeds_needed = next((p["n"] for p in worst["test"]["power"] if p["power_noncentral_t"] >= 0.9), None)
    summary["seeds_for_90pct_power_on_worst_cpu"] = seeds_needed
    atomic_write_json(out.with_suffix(".json"), summary)

    lines = ["| CPU (bf16 path) | seeds | scratch (%) | distilled (%) | gain per seed (points) | mean ± sd (points) | p "
             "| s per seed |", "|---|---:|---:|---:|---|---|---:|---:|"]
    for cpu, r in results.items():
        t = r["test"]
        lines.append(f"| {cpu} ({r['bf16_path']}) | {len(r['seeds'])} | {t['scratch_mean'] * 100:.2f} | "
                     f"{t['distilled_mean'] * 100:.2f} | {', '.join(f'{d * 100:+.2f}' for d in t['gains'])} | "
                     f"{t['mean_gain'] * 100:+.2f} ± {t['sd_gain'] * 100:.2f} | {t['p_value']:.3g} | "
                     f"{per_seed_s[cpu]:.0f} |")
    lines += ["", "Chance that the paired t-test over n seeds says p < 0.05 (noncentral t at the measured effect; "
                  "resampled seeds in brackets), test split:", "",
              "| n seeds | " + " | ".join(results) + " |", "|---:|" + "---:|" * len(results)]
    for i, n in enumerate(range(3, 2 * args.seeds + 1)):
        cells = [f"{r['test']['power'][i]['power_noncentral_t']:.2f} ({r['test']['power'][i]['power_resampled']:.2f})"
                 for r in results.values()]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    fits = int(BUDGET_S // max(per_seed_s.values()))
    lines += ["", f"Seeds for 90 % power on the weaker CPU ({worst['cpu']}): {seeds_needed or 'more than measured'}; "
                  f"seeds that fit in {BUDGET_S} s at the slower CPU's pace: about {fits}."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
