"""The one exporter: ONNX / TorchScript / int8 with a parity check against the eager student,
refusing (exit 2, nothing written) when the check fails or the input is bad."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime
import pytest
import torch
from typer.testing import CliRunner

from conftest import finished_cnn_run
from distillab import run
from distillab.cli import app
from distillab.compress import ExportError, Tolerance, export_model, export_run, run_student
from distillab.compress.export import parity
from distillab.models.zoo import build_model

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished 2-seed run whose student is a CNN (conv, BN, pooling: what int8 has to handle)."""
    return finished_cnn_run(tmp_path_factory.mktemp("export_run"))


def _siblings(folder):
    return sorted(path.name for path in folder.parent.iterdir() if path.name.startswith(f".{folder.name}"))


def test_onnx_export_matches_the_eager_student_and_records_its_parity(finished_run, tmp_path):
    record = export_run(finished_run, tmp_path / "onnx", fmt="onnx", parity_samples=50)
    student = run_student(finished_run, record["seed"])
    assert record["parity"]["samples"] == 50
    assert record["parity"]["max_abs_logit_diff"] < 1e-4 and record["parity"]["argmax_agreement"] == 1.0
    assert json.loads((tmp_path / "onnx" / "export.json").read_text()) == record
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    images = next(student.data.eval_batches("test", 7))["inputs"]  # a batch size the export never saw
    with torch.no_grad():
        expected = student.model(images).numpy()
    np.testing.assert_allclose(session.run(None, {"input": images.numpy()})[0], expected, atol=1e-4)


def test_the_default_seed_is_the_best_on_validation(finished_run):
    report = json.loads((finished_run / "report.json").read_text())
    scores = {seed: json.loads((finished_run / f"seed_{seed}" / "distilled" / "result.json").read_text())
              ["val_accuracy"] for seed in report["seeds"]}
    assert run_student(finished_run).seed == max(scores, key=lambda seed: (scores[seed], -seed))


def test_torchscript_export_loads_and_predicts_the_same(finished_run, tmp_path):
    record = export_run(finished_run, tmp_path / "ts", fmt="torchscript", seed=0, parity_samples=40)
    assert record["file"] == "model.pt" and record["parity"]["argmax_agreement"] == 1.0
    loaded = torch.jit.load(str(tmp_path / "ts" / "model.pt"))
    student = run_student(finished_run, 0)
    images = next(student.data.eval_batches("test", 5))["inputs"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), student.model(images))


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic"])
def test_quantized_models_load_and_predict(finished_run, tmp_path, mode):
    record = export_run(finished_run, tmp_path / mode, quantize=mode, seed=0, calibration_samples=64,
                        tolerance=Tolerance(None, 0.5))
    path = tmp_path / mode / "model.onnx"
    session = onnxruntime.InferenceSession(str(path))
    operators = {node.op_type for node in __import__("onnx").load(str(path)).graph.node}
    assert ("QuantizeLinear" in operators) if mode == "int8" else ("DynamicQuantizeLinear" in operators
                                                                  or "MatMulInteger" in operators
                                                                  or "ConvInteger" in operators)
    student = run_student(finished_run, 0)
    images = next(student.data.eval_batches("test", 16))["inputs"]
    logits = session.run(None, {"input": images.numpy()})[0]
    assert logits.shape == (16, 3) and np.isfinite(logits).all()
    assert record["quantize"] == mode and record["parity"]["argmax_agreement"] >= 0.5
    if mode == "int8":  # the record says whether the weights were cut to 7 bits for this CPU
        from distillab.compress.quantize import int8_saturates

        assert record["quantization"]["reduce_range"] == int8_saturates()


def test_int8_weights_lose_a_bit_only_on_x86_cpus_without_vnni():
    from distillab.compress.quantize import int8_saturates

    assert int8_saturates("flags : fpu sse2 avx avx2 fma", "x86_64")  # AVX2 only: 16-bit sums saturate
    assert not int8_saturates("flags : avx2 avx512f avx512_vnni", "x86_64")
    assert not int8_saturates("flags : avx2 avx_vnni", "AMD64") and not int8_saturates("amx_int8 amx_tile", "x86_64")
    assert not int8_saturates("Features : fp asimd", "aarch64")  # not x86: no such instruction


def test_a_failed_parity_check_writes_nothing(finished_run, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(ExportError, match=r"parity check failed .*max \|delta logit\|"):
        export_run(finished_run, out, quantize="int8-dynamic", seed=0, tolerance=Tolerance(0.0, 0.0))
    assert not out.exists() and _siblings(out) == []
    result = runner.invoke(app, ["export", str(finished_run), "--out", str(out), "--quantize", "int8-dynamic",
                                 "--tolerance", "0"])
    assert result.exit_code == 2 and "parity check failed" in result.output and not out.exists()


def test_parity_measures_differences_and_agreement():
    reference = torch.nn.Linear(4, 3)
    flipped = lambda x: -reference(x)  # noqa: E731 - a candidate that disagrees on purpose
    inputs = [torch.randn(10, 4), torch.randn(6, 4)]
    same = parity(reference, reference, inputs)
    assert same == {"samples": 16, "max_abs_logit_diff": 0.0, "mean_abs_logit_diff": 0.0, "argmax_agreement": 1.0}
    with torch.no_grad():
        other = parity(reference, flipped, inputs)
        expected = max(float((2 * reference(batch)).abs().max()) for batch in inputs)
    assert other["max_abs_logit_diff"] == pytest.approx(expected, rel=1e-5) and other["argmax_agreement"] < 0.5


def test_export_model_needs_held_out_inputs_and_calibration(tmp_path):
    model = build_model("cnn_tiny", (1, 8, 8), 3)
    batch = [torch.randn(4, 1, 8, 8)]
    with pytest.raises(ExportError, match="calibration set is empty"):
        export_model(model, tmp_path / "a", quantize="int8", held_out=batch, calibration=[])
    with pytest.raises(ExportError, match="no held-out inputs"):
        export_model(model, tmp_path / "a", held_out=[])
    with pytest.raises(ExportError, match="use --format onnx"):
        export_model(model, tmp_path / "a", fmt="torchscript", quantize="int8-dynamic", held_out=batch)


def test_bad_export_requests_are_clear_errors(finished_run, tmp_path):
    cases = [
        (["--format", "tflite"], "unknown format"),
        (["--quantize", "int4"], "--quantize 'int4'"),
        (["--quantize", "int8", "--calibration-samples", "0"], "calibration set is empty"),
        (["--seed", "9"], "--seed 9"),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["export", str(finished_run), "--out", str(tmp_path / "x"), *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
        assert "Traceback" not in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no such run folder" in result.output
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["export", str(finished_run), "--out", str(taken)])
    assert result.exit_code == 2 and "not empty" in result.output and (taken / "keep.txt").read_text() == "mine"


def test_a_run_without_a_student_is_a_clear_error(finished_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    for seed in (0, 1):
        shutil.rmtree(copy / f"seed_{seed}" / "distilled")
    result = runner.invoke(app, ["export", str(copy), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no distilled student" in result.output


def test_a_language_model_run_exports_with_parity_per_position(tiny_lm, corpus, tmp_path):
    from conftest import text_spec

    run_dir = run(text_spec(corpus, tiny_lm, training={"epochs": 1, "seeds": [0]}), tmp_path / "lm").out_dir
    record = export_run(run_dir, tmp_path / "onnx")
    student = run_student(run_dir)
    blocks = next(student.data.eval_batches("test", 2))["inputs"]  # (2, T) token ids
    assert record["parity"]["samples"] == 8 * blocks.shape[1]  # 8 blocks, every position counted
    assert record["parity"]["argmax_agreement"] >= 0.999 and record["input_dtype"] == "int64"
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"))
    with torch.no_grad():
        expected = student.model(blocks[:, :5]).numpy()  # a shorter context than the export saw
    np.testing.assert_allclose(session.run(None, {"input": blocks[:, :5].numpy()})[0], expected, atol=1e-4)
    result = runner.invoke(app, ["package", str(run_dir), "--out", str(tmp_path / "pkg")])
    assert result.exit_code == 2 and "packages serve image classifiers" in result.output
