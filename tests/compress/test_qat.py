"""Quantization-aware training: int8 is simulated where ONNX Runtime quantizes, the stripped
model keeps weights on the int8 grid, and ``distillab qat`` writes a run that exports to int8."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from conftest import finished_cnn_run
from distillab.cli import app
from distillab.compress import export_run
from distillab.compress.qat import ActivationFakeQuant, QATError, calibrate_ranges, prepare_qat, qat_run, strip_qat
from distillab.models.zoo import build_model

runner = CliRunner()


def _on_int8_grid(weight: torch.Tensor) -> bool:
    per_channel = weight.abs().flatten(1).amax(dim=1).clamp(min=1e-12) / 127.0
    steps = weight / per_channel.view(-1, *[1] * (weight.dim() - 1))
    return torch.allclose(steps, steps.round(), atol=1e-3)


def test_prepared_layers_round_weights_and_inputs_and_strip_keeps_the_grid():
    torch.manual_seed(0)
    model = build_model("cnn_small", (1, 28, 28), 10)
    images = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        reference = model.eval()(images)
    originals = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert not any(_on_int8_grid(w) for w in originals.values())  # float weights are off the grid
    prepare_qat(model)
    calibrate_ranges(model, [images])  # the ranges follow the batches seen
    with torch.no_grad():
        simulated = model(images)
    assert not torch.equal(simulated, reference)  # rounding changes the outputs ...
    assert (simulated.argmax(1) == reference.argmax(1)).float().mean() > 0.8  # ... but only a little
    strip_qat(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert not hasattr(module, "input_quant")
            assert _on_int8_grid(module.weight.detach())
            assert torch.allclose(module.weight, originals[name], atol=originals[name].abs().max().item() / 127)
    assert all(not isinstance(m, ActivationFakeQuant) for m in model.modules())
    assert not any("parametrizations" in key for key in model.state_dict())  # loads as the plain architecture
    build_model("cnn_small", (1, 28, 28), 10).load_state_dict(model.state_dict())


def test_activation_rounding_uses_the_tracked_range():
    quant = ActivationFakeQuant(momentum=0.5)
    quant.train()
    quant(torch.tensor([0.0, 2.55]))
    quant(torch.tensor([0.0, 5.10]))
    assert quant.high.item() == pytest.approx(3.825)  # moving average of the batch maxima
    quant.eval()
    values = quant(torch.tensor([1.0, 100.0]))
    step = 3.825 / 255
    assert values[0].item() == pytest.approx(round(1.0 / step) * step, abs=1e-6)  # on the 255-step grid
    assert values[1].item() == pytest.approx(3.825, abs=step)  # clipped to the range


def test_a_model_without_conv_or_linear_is_refused():
    with pytest.raises(QATError, match="no Conv2d or Linear"):
        prepare_qat(nn.Sequential(nn.ReLU()))


def test_qat_writes_a_run_that_exports_to_int8(tmp_path):
    run_dir = finished_cnn_run(tmp_path, seeds=(0,), epochs=2)
    record = qat_run(run_dir, tmp_path / "qat", epochs=1)
    assert record["kd"] and record["epochs"] == 1
    assert set(record["simulated_int8_after"]) == {"val_accuracy", "test_accuracy"}
    report = json.loads((tmp_path / "qat" / "report.json").read_text())
    assert [m["role"] for m in report["models"]][-2:] == ["source", "distilled"]
    assert report["qat"]["after"]["test_accuracy"] == report["models"][-1]["accuracy"]["mean"]
    exported = export_run(tmp_path / "qat", tmp_path / "int8", quantize="int8", calibration_samples=64)
    assert exported["parity"]["argmax_agreement"] >= 0.97
    assert (tmp_path / "int8" / "model.onnx").exists()


def test_qat_cli_errors_exit_2(tmp_path):
    result = runner.invoke(app, ["qat", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such run folder" in result.output
    result = runner.invoke(app, ["qat", str(tmp_path), "--out", str(tmp_path / "o"), "--epochs", "0"])
    assert result.exit_code == 2 and "--epochs 0" in result.output
