"""``GET /jobs/{id}/results``: everything computed from the run's own measurements
(report.json), the job's thresholds and the configured price."""

from __future__ import annotations

import math
from pathlib import Path

ARTIFACT_PATTERNS = ("report.json", "report.md", "*.png", "student.safetensors", "student.onnx", "student.json",
                     "student.int8.onnx", "quantized.json")


AUTO_ARTIFACTS = ("auto.json", "front.json", "front.md", "front.png", "trials.md", "latency_model.json")


def artifacts(folder: Path) -> dict[str, Path]:
    """name -> file of a job's downloadable artifacts. Requests name a key of this map; no
    request path is ever joined onto the file system."""
    out: dict[str, Path] = {}
    run, partial = folder / "run", folder / "run.partial"
    if run.is_dir():
        for pattern in ARTIFACT_PATTERNS:
            for path in sorted(run.glob(pattern)):
                out[path.name] = path
    elif (partial / "partial.json").is_file():
        out["partial.json"] = partial / "partial.json"
        for path in sorted(partial.glob("seed_*/*/student.safetensors")):
            seed, role = path.parent.parent.name, path.parent.name
            out[f"{seed}_{role}_student.safetensors"] = path
    for name in AUTO_ARTIFACTS:  # an automated search's outputs, beside its final run
        if (folder / name).is_file():
            out[name] = folder / name
    return out


def _teacher(report: dict) -> dict:
    """The teacher the student replaces: the most accurate one."""
    teachers = [m for m in report["models"] if m["role"] == "teacher"]
    return max(teachers, key=lambda m: m["accuracy"]["mean"])


def _ratio(a, b):
    return None if not b or a is None else a / b


def job_results(report: dict, options: dict, device_seconds: float, price: float, estimated_cost: float | None,
                urls: dict[str, str], quantized: dict | None = None) -> dict:
    models = {m["role"]: m for m in report["models"] if m["role"] != "teacher"}
    teacher, distilled, scratch = _teacher(report), models["distilled"], models["scratch"]
    comparison = report["comparisons"][0]
    accuracy = distilled["accuracy"]["mean"]

    performance = {
        "accuracy": accuracy,
        "accuracy_std": distilled["accuracy"]["std"],
        "seeds": len(report["seeds"]),
        "scratch_accuracy": scratch["accuracy"]["mean"],
        "teacher_accuracy": teacher["accuracy"]["mean"],
        "metric": (report.get("task") or {}).get("metric", "accuracy"),  # the task's primary metric
        "score": distilled.get("score", distilled["accuracy"])["mean"],
        "scratch_score": scratch.get("score", scratch["accuracy"])["mean"],
        "teacher_score": teacher.get("score", teacher["accuracy"])["mean"],
        "inference_speed_ms": distilled["latency_ms"],
        "latency_ms_batch256": distilled.get("latency_ms_batch256"),  # absent for language models
        "throughput_per_s": distilled.get("throughput_per_s"),
        "model_size_mb": distilled["size_mb"],
        "params": distilled["params"],
        "macs": distilled["macs"],
    }
    efficiency = {
        "speed_improvement": _ratio(teacher["latency_ms"], distilled["latency_ms"]),
        "throughput_improvement": _ratio(distilled.get("throughput_per_s"), teacher.get("throughput_per_s")),
        "size_reduction": 1 - distilled["size_mb"] / teacher["size_mb"] if teacher["size_mb"] else None,
        "params_reduction": 1 - distilled["params"] / teacher["params"] if teacher["params"] else None,
        "macs_reduction": (1 - distilled["macs"] / teacher["macs"]) if distilled["macs"] and teacher["macs"] else None,
    }
    quality = {
        "knowledge_retention": _ratio(accuracy, teacher["accuracy"]["mean"]),
        "scratch_retention": _ratio(scratch["accuracy"]["mean"], teacher["accuracy"]["mean"]),
        "distilled_vs_scratch": comparison,
        "verdict": report["verdict"],
    }

    checks = [dict(c) for c in report["constraints"]]
    efficiency_limits = options.get("efficiency_constraints") or {}
    if efficiency_limits.get("max_size_mb") is not None:
        checks.append({"name": "max_size_mb", "limit": efficiency_limits["max_size_mb"],
                       "value": distilled["size_mb"], "met": distilled["size_mb"] <= efficiency_limits["max_size_mb"]})
    if efficiency_limits.get("max_inference_time_ms") is not None:
        limit = efficiency_limits["max_inference_time_ms"]
        checks.append({"name": "max_inference_time_ms", "limit": limit, "value": distilled["latency_ms"],
                       "met": distilled["latency_ms"] <= limit})
    ready = all(c["met"] for c in checks)

    training_cost = device_seconds / 3600 * price
    volume = options.get("monthly_volume")
    saved_ms = teacher["latency_ms"] - distilled["latency_ms"]
    monthly_savings = roi = None
    if volume is not None:
        monthly_savings = saved_ms / 1000 / 3600 * volume * price
        roi = training_cost / monthly_savings if monthly_savings > 0 else None
    cost = {
        "price_per_device_hour": price,
        "device_hours": device_seconds / 3600,
        "total_training_cost": training_cost,
        "estimated_cost": estimated_cost,
        "latency_saved_ms_per_request": saved_ms,
        "monthly_volume": volume,
        "projected_monthly_savings": monthly_savings,
        "roi_months": roi,
        "basis": ("training: measured device time x price; savings: measured batch-1 latency difference "
                  "(teacher - student) x monthly_volume x price" if volume is not None else
                  "give usage_stats.monthly_volume with the job to project savings and ROI"),
    }
    return {
        "performance_metrics": performance,
        "efficiency_gains": efficiency,
        "quality_assessment": quality,
        "deployment_ready": ready,
        "deployment_checks": checks,
        "recommendations": recommendations(report, checks, efficiency, monthly_savings, volume, quantized),
        "cost_analysis": cost,
        "artifacts": urls,
        "model_download_url": urls.get("student.safetensors"),
    }


def recommendations(report: dict, checks: list[dict], efficiency: dict, monthly_savings, volume,
                    quantized: dict | None = None) -> list[str]:
    out = []
    comparison = report["comparisons"][0]
    failed = {c["name"]: c for c in checks if not c["met"]}
    if "max_accuracy_drop" in failed or "min_accuracy" in failed:
        which = "accuracy drop exceeds threshold" if "max_accuracy_drop" in failed else "accuracy below min_accuracy"
        out.append(f"{which}: try feature distillation or a larger student")
    if "max_size_mb" in failed or "max_inference_time_ms" in failed:
        out.append("the student misses its efficiency constraints: choose a smaller architecture or quantize it")
    p = comparison.get("p_value")
    diff = comparison.get("mean_diff")
    if p is None or (isinstance(p, float) and math.isnan(p)):
        out.append(f"only {len(report['seeds'])} seed(s): run at least 3 seeds to test whether distillation helped")
    elif p >= 0.05:
        out.append(f"distillation did not measurably beat training the student alone (p = {p:.2f}): "
                   "the teacher may not be worth its cost for this student")
    elif diff is not None and diff < 0:
        out.append(f"distillation hurt the student (p = {p:.3f}): lower alpha or the temperature, "
                   "or try another strategy")
    speed = efficiency.get("speed_improvement")
    if speed is not None and speed < 1.2:
        out.append(f"the student is only {speed:.2f}x faster than the teacher at batch 1: choose a smaller student")
    if volume is not None and monthly_savings is not None and monthly_savings <= 0:
        out.append("the student does not save inference time at batch 1, so it saves no serving cost")
    if quantized and "int8_bytes" in quantized:
        saved = 1 - quantized["int8_bytes"] / quantized["fp32_bytes"]
        change = 100 * (quantized["int8_accuracy"] - quantized["fp32_accuracy"])
        out.append(f"int8 (ONNX Runtime, static) cuts the size by {100 * saved:.0f} % "
                   f"({quantized['fp32_bytes'] / 1e3:.1f} -> {quantized['int8_bytes'] / 1e3:.1f} kB) at {change:+.2f} "
                   f"points of test accuracy ({quantized['test_samples']} images), measured on the export this job "
                   "ran (student.int8.onnx)")
    if not failed and not out:
        out.append("meets every threshold given and distillation measurably helped: ready to deploy")
    elif not failed:
        out.append("meets every threshold given")
    return out
