"""An ``adaptive_v2`` run exports through the one exporter: its dynamic convolutions are traced
in their unfolded form (im2col and a batched product), so the ONNX and TorchScript graphs take
any batch size and match the eager student; pruning and QAT refuse it by name."""

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from conftest import tiny_spec
from distillab.adaptive.dynamic import DynamicConv2d
from distillab.cli import app
from distillab.compress import run_student
from distillab.experiment.run import run

runner = CliRunner()


@pytest.fixture(scope="module")
def v2_run(tmp_path_factory):
    from conftest import blobs_teacher, make_blobs_npz

    folder = tmp_path_factory.mktemp("v2_run")
    blobs = make_blobs_npz(folder / "blobs.npz")
    blobs_teacher(folder / "teacher.safetensors")
    # on 8x8 inputs a router costs more than the default 1.1x MAC budget of a real student
    spec = tiny_spec(blobs, folder / "teacher.safetensors", student={"model": "cnn_tiny", "model_args": {}},
                     strategy={"name": "adaptive_v2", "params": {"experts": 3, "max_macs_ratio": 10}},
                     training={"epochs": 1, "seeds": [0]})
    return run(spec, folder / "run").out_dir


def test_the_run_student_is_rebuilt_with_its_dynamic_layers(v2_run):
    student = run_student(v2_run)
    assert any(isinstance(m, DynamicConv2d) for m in student.model.modules())


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_an_adaptive_v2_student_exports_for_any_batch_size(v2_run, tmp_path, fmt):
    out = tmp_path / fmt
    result = runner.invoke(app, ["export", str(v2_run), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    student = run_student(v2_run)
    images = next(student.data.eval_batches("test", 7))["inputs"]  # a batch size the export never saw
    with torch.no_grad():
        expected = student.model(images).numpy()
        single = student.model(images[:1]).numpy()  # the eager batch-1 path: a plain convolution
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out / "model.onnx"))
        got = session.run(None, {"input": images.numpy()})[0]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(out / "model.pt"))(images).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(single[0], expected[0], atol=1e-4)


@pytest.mark.parametrize("command", [["prune", "--ratio", "0.3"], ["qat"]])
def test_pruning_and_qat_refuse_an_adaptive_v2_run(v2_run, tmp_path, command):
    result = runner.invoke(app, [command[0], str(v2_run), "--out", str(tmp_path / "out"), *command[1:]])
    assert result.exit_code == 2 and "adaptive_v2" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_the_adaptive_format_exports_the_v2_pipeline_without_the_teacher(v2_run, tmp_path):
    from distillab.adaptive.pipeline import AdaptivePipeline

    out = tmp_path / "pipeline"
    result = runner.invoke(app, ["export", str(v2_run), "--format", "adaptive", "--out", str(out)])
    assert result.exit_code == 0, result.output
    pipeline = AdaptivePipeline.load(out)
    assert pipeline.dynamic and pipeline.teacher is None
    from distillab.data.readers import read_npz

    _, test = read_npz(v2_run.parent / "blobs.npz")
    raw = torch.as_tensor(test.images[:9])  # raw uint8 images: the pipeline normalises them
    student = run_student(v2_run)
    with torch.no_grad():
        expected = student.model(next(student.data.eval_batches("test", 9))["inputs"])
    torch.testing.assert_close(pipeline.predict(raw), expected, atol=1e-5, rtol=1e-5)
