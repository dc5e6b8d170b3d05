"""Bad input on the CLI: a clear message, exit code 2, no traceback, and no run folder."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from distillab.cli import app
from distillab.models.loading import save_model
from distillab.models.zoo import build_model
from conftest import tiny_spec

runner = CliRunner()


def write_spec(tmp_path, spec: dict):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def run_cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def assert_rejected(tmp_path, spec_path, *needles):
    out = tmp_path / "run"
    code, output = run_cli("run", spec_path, "--out", out)
    assert code == 2, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in output, output
    assert not out.exists() and not out.with_name("run.partial").exists()


def test_valid_spec_validates(tmp_path, blobs, tiny_teacher):
    code, output = run_cli("validate", write_spec(tmp_path, tiny_spec(blobs, tiny_teacher)))
    assert code == 0 and "valid" in output


def test_unknown_key(tmp_path, blobs, tiny_teacher):
    spec = write_spec(tmp_path, tiny_spec(blobs, tiny_teacher, training={"epochz": 1}))
    assert_rejected(tmp_path, spec, "training.epochz", "unknown key")
    assert run_cli("validate", spec)[0] == 2


def test_invalid_yaml(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("teacher: {model: cnn_tiny\n")
    assert_rejected(tmp_path, path, "not valid YAML")


@pytest.mark.parametrize("cut", [10, 300])
def test_truncated_checkpoint(tmp_path, blobs, tiny_teacher, cut):
    tiny_teacher.write_bytes(tiny_teacher.read_bytes()[:cut])
    assert_rejected(tmp_path, write_spec(tmp_path, tiny_spec(blobs, tiny_teacher)), "teacher.checkpoint", "safetensors")


def test_state_dict_that_does_not_fit_the_architecture(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, teacher={"model": "cnn_small"})
    assert_rejected(tmp_path, write_spec(tmp_path, spec), "does not fit the architecture")


def test_teacher_output_size_differs_from_the_classes(tmp_path, blobs):
    path = tmp_path / "five.safetensors"
    save_model(build_model("cnn_tiny", (1, 8, 8), 5), path)  # the data has 3 classes
    assert_rejected(tmp_path, write_spec(tmp_path, tiny_spec(blobs, path)), "5 classes", "3 classes")


def test_empty_dataset(tmp_path, tiny_teacher):
    empty = tmp_path / "empty.npz"
    np.savez(empty, x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, np.int64),
             x_test=np.zeros((0, 8, 8), np.uint8), y_test=np.zeros(0, np.int64))
    assert_rejected(tmp_path, write_spec(tmp_path, tiny_spec(empty, tiny_teacher)), "empty")


def test_nan_in_the_inputs(tmp_path, tiny_teacher):
    rng = np.random.default_rng(0)
    x = rng.random((40, 8, 8)).astype(np.float32)
    x[7, 2, 2] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x_train=x, y_train=rng.integers(0, 3, 40), x_test=x[:10] * 0, y_test=np.arange(10) % 3)
    assert_rejected(tmp_path, write_spec(tmp_path, tiny_spec(path, tiny_teacher)), "NaN", "7")


def test_missing_spec_file(tmp_path):
    code, output = run_cli("validate", tmp_path / "nope.yaml")
    assert code == 2 and "no such spec file" in output


def test_finished_run_is_not_overwritten(tmp_path, blobs, tiny_teacher):
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.json").write_text("{}")
    (out / "spec.json").write_text("{}")
    code, output = run_cli("run", write_spec(tmp_path, tiny_spec(blobs, tiny_teacher)), "--out", out)
    assert code == 2 and "already holds a finished run" in output
    assert (out / "report.json").read_text() == "{}"


def test_listing_commands(tmp_path):
    code, output = run_cli("strategies", "--json")
    rows = json.loads(output)
    assert code == 0 and {"none", "response", "selective"} <= {r["name"] for r in rows}
    response = next(r for r in rows if r["name"] == "response")
    assert response["params"]["temperature"]["default"] == 4.0 and response["paper"]
    assert run_cli("models")[0] == 0 and "cnn_small" in run_cli("models")[1]
    assert "fashion_mnist" in run_cli("datasets")[1]
    code, output = run_cli("tasks")
    assert code == 0 and "image_classification" in output and "metric: accuracy, higher is better" in output
    assert run_cli("report", tmp_path)[0] == 2




def test_unknown_layer_fails_before_training(tmp_path, blobs, tiny_teacher):
    strategy = {"name": "feature", "params": {"pairs": [["stages.9", "stages.2"]]}}
    spec = tiny_spec(blobs, tiny_teacher, student={"model": "cnn_tiny", "model_args": {}}, strategy=strategy)
    path = write_spec(tmp_path, spec)
    assert_rejected(tmp_path, path, "strategy.params.pairs[0]", "stages.9")
    code, output = run_cli("validate", path)
    assert code == 2 and "stages.9" in output
