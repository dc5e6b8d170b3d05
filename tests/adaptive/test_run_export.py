"""``adaptive`` through the one entry point, then ``distillab export --format adaptive``: the exported
pipeline runs without the teacher and predicts what the trained model predicted."""

import json

import pytest
import torch
from typer.testing import CliRunner

from distillab.compress.adaptive_export import load_run
from distillab.adaptive.pipeline import AdaptivePipeline
from distillab.cli import app
from distillab.data.readers import read_npz
from distillab.experiment.run import run
from conftest import tiny_spec

runner = CliRunner()


@pytest.fixture
def adaptive_run(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, strategy={"name": "adaptive", "params": {"mode": "full"}},
                     student={"model": "cnn_tiny", "model_args": {}}, training={"epochs": 2, "seeds": [0]})
    return run(spec, tmp_path / "run"), blobs


def test_run_reports_the_generator_in_the_deployed_model(adaptive_run):
    report, _ = adaptive_run
    scratch, distilled = report.model("scratch"), report.model("distilled")
    assert distilled["params"] > scratch["params"]  # G ships with the student
    assert distilled["extra_training_params"] > 0  # D exists only during training
    history = json.loads((report.out_dir / "report.json").read_text())["dataset"]
    assert history["in_shape"] == [1, 8, 8] and history["normalize"]["scale"] == pytest.approx(1 / 255)


def test_cli_export_runs_without_the_teacher_and_predicts_the_same(adaptive_run, tmp_path):
    report, blobs = adaptive_run
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(report.out_dir), "--format", "adaptive", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert not any("teacher" in p.name for p in out.iterdir())
    exported = AdaptivePipeline.load(out)
    trained, _ = load_run(report.out_dir)
    _, test = read_npz(blobs)
    images = torch.as_tensor(test.images)
    torch.testing.assert_close(exported.predict(images), trained.predict(images))
    accuracy = (exported.predict(images).argmax(-1) == torch.as_tensor(test.labels)).float().mean().item()
    assert accuracy == pytest.approx(report.model("distilled")["accuracy"]["mean"], abs=1e-6)


def test_export_of_a_non_adaptive_run_or_wrong_seed_is_a_clear_error(adaptive_run, tmp_path, blobs, tiny_teacher):
    report, _ = adaptive_run
    result = runner.invoke(app, ["export", str(report.out_dir), "--format", "adaptive", "--out", str(tmp_path / "x"),
                                 "--seed", "7"])
    assert result.exit_code == 2 and "--seed 7" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--format", "adaptive", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "not a finished run" in result.output
    other = run(tiny_spec(blobs, tiny_teacher, training={"epochs": 1, "seeds": [0]}), tmp_path / "response")
    result = runner.invoke(app, ["export", str(other.out_dir), "--format", "adaptive", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "'response'" in result.output
