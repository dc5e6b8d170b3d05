"""End to end: the real `distillab run` command on scikit-learn digits, then `report`,
and the Python API on a tiny dataset with resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import distillab
from conftest import tiny_spec

ROOT = Path(__file__).resolve().parents[2]
DISTILLAB = [sys.executable, "-m", "distillab.cli"]


def test_distillab_run_on_digits(tmp_path):
    out = tmp_path / "digits"
    env = {**os.environ, "DISTILLAB_CACHE": str(tmp_path / "cache")}
    command = DISTILLAB + [
        "run", str(ROOT / "configs" / "digits_kd.yaml"), "--out", str(out),
        "--set", "training.epochs=3", "--set", "training.seeds=[0, 1]", "--set", "teacher.training.epochs=6",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| teacher (resnet) | teacher |" in result.stdout

    report = json.loads((out / "report.json").read_text())
    roles = [m["role"] for m in report["models"]]
    assert roles == ["teacher", "scratch", "distilled"]
    for model in report["models"]:
        assert set(model) >= {"name", "role", "strategy", "accuracy", "params", "size_mb", "latency_ms", "macs"}
        assert len(model["accuracy"]["per_seed"]) == 2
        assert 0 <= model["accuracy"]["mean"] <= 1 and model["params"] > 0 and model["macs"] > 0
    teacher, scratch, distilled = report["models"]
    assert teacher["accuracy"]["mean"] > 0.8  # a ResNet on digits learns fast
    assert scratch["params"] == distilled["params"] < teacher["params"]
    # one network, one measurement: the two students share their latency, timed beside the teacher
    assert scratch["latency_ms"] == distilled["latency_ms"] and scratch["runtime"] == teacher["runtime"] == "torch"
    low, high = teacher["latency_iqr_ms"]
    assert low <= teacher["latency_ms"] <= high
    assert distilled["strategy"] == "response" and scratch["strategy"] == "none"
    comparison = report["comparisons"][0]
    assert (comparison["a"], comparison["b"]) == ("student_distilled", "student_scratch")
    expected_diff = distilled["accuracy"]["mean"] - scratch["accuracy"]["mean"]
    assert abs(comparison["mean_diff"] - expected_diff) < 1e-9
    assert {"torch", "python", "cpu_count", "torch_threads"} <= set(report["environment"])
    markdown = (out / "report.md").read_text()
    assert markdown.rstrip().endswith(report["verdict"])
    for plot in ("accuracy.png", "curves.png", "accuracy_vs_latency.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "digits.partial").exists()

    (out / "report.md").unlink()
    again = subprocess.run(DISTILLAB + ["report", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and (out / "report.md").read_text() == markdown


def test_python_api_resumes_an_interrupted_run(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": [0]})
    out = tmp_path / "api"
    first = distillab.run(spec, out)
    assert first.model("distilled")["accuracy"]["per_seed"]

    # an interrupted run: the partial folder holds the finished scratch phase only
    partial = tmp_path / "again.partial"
    (partial / "seed_0").mkdir(parents=True)
    os.rename(out / "seed_0" / "scratch", partial / "seed_0" / "scratch")
    os.rename(out / "spec.json", partial / "spec.json")  # a run writes its spec first
    resumed = distillab.run(spec, tmp_path / "again", resume=True)
    assert resumed.model("scratch")["accuracy"] == first.model("scratch")["accuracy"]
    assert resumed.model("distilled")["accuracy"] == first.model("distilled")["accuracy"]


def _export(tiny_teacher: Path, fmt: str, folder: Path) -> Path:
    """The tiny safetensors teacher as a traced TorchScript, scripted TorchScript or ONNX file."""
    import torch

    from distillab.models.loading import load_state_into
    from distillab.models.zoo import build_model

    model = load_state_into(build_model("cnn_tiny", (1, 8, 8), 3), tiny_teacher, "test").eval()
    example = torch.zeros(2, 1, 8, 8)
    if fmt == "onnx":
        path = folder / "teacher.onnx"
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    else:
        path = folder / f"teacher_{fmt}.pt"
        module = torch.jit.trace(model, example) if fmt == "traced" else torch.jit.script(model)
        module.save(str(path))
    return path


@pytest.mark.parametrize("fmt, runtime", [("traced", "torchscript"), ("scripted", "torchscript"),
                                          ("onnx", "onnxruntime")])
def test_a_run_with_a_foreign_teacher_file(tmp_path, blobs, tiny_teacher, fmt, runtime):
    """TorchScript and ONNX teachers run whole jobs (they used to fail in Strategy.__init__)."""
    path = _export(tiny_teacher, fmt, tmp_path)
    spec = tiny_spec(blobs, path, teacher={"model": None}, training={"epochs": 1, "seeds": [0]})
    report = distillab.run(spec, tmp_path / "out")
    teacher = report.model("teacher")
    assert teacher["runtime"] == runtime and teacher["model"] in ("torchscript", "onnx")
    reference = distillab.run(tiny_spec(blobs, tiny_teacher, training={"epochs": 1, "seeds": [0]}), tmp_path / "ref")
    # the same weights in another container teach the same student
    assert report.model("distilled")["accuracy"]["mean"] == pytest.approx(
        reference.model("distilled")["accuracy"]["mean"], abs=0.02)
