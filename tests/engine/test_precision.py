"""Precision: bf16 autocast where the hardware runs it, fp32 elsewhere, and a clear error
when bf16 is asked of a CPU without it. The capability check is mocked; the math never is."""

import json

import pytest
import torch

from distillab import runtime as precision_module
from distillab.runtime import agreement, autocast, resolve_precision
from distillab.errors import SpecError
from distillab.models.zoo import build_model

CPU = torch.device("cpu")


def test_auto_picks_fp32_where_the_cpu_has_no_bf16(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("fp32", CPU) == "fp32"
    with pytest.raises(SpecError, match="training.precision: bf16 needs a GPU or a CPU with native bf16"):
        resolve_precision("bf16", CPU)


def test_auto_picks_bf16_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: True)
    assert resolve_precision("auto", CPU) == "bf16" and resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) == "fp32"


def test_bf16_and_fp32_give_the_same_predictions_within_tolerance():
    torch.manual_seed(0)
    model = build_model("cnn_small", (1, 28, 28), 10).eval()
    inputs = torch.randn(256, 1, 28, 28)
    with torch.no_grad():
        reference = model(inputs)
        with autocast(CPU, "bf16"):
            reduced = model(inputs).float()
    assert reduced.dtype == torch.float32 and not torch.equal(reduced, reference)  # bf16 really ran
    assert torch.allclose(reduced, reference, atol=0.05 * reference.abs().max().item())
    measured = agreement(model, inputs, CPU, "bf16")
    assert measured["argmax_agreement"] >= 0.97 and 0 <= measured["kl_fp32_to_reduced"] < 1e-3


def test_a_bf16_cache_fill_records_its_agreement_with_fp32(blobs, tmp_path):
    from distillab import data as data_module
    from distillab.data.cache import teacher_outputs
    from distillab.spec import DataSpec

    bundle = data_module.build(DataSpec(dataset="npz", path=blobs), 0)
    torch.manual_seed(0)
    teacher = build_model("cnn_tiny", (1, 8, 8), 3).eval()
    cache = teacher_outputs(teacher, "abc", bundle, views=1, fp16=True, cache_dir=tmp_path, precision="bf16")
    meta = json.loads((cache.folder / "meta.json").read_text())
    assert meta["precision"] == "bf16" and meta["agreement_with_fp32"]["argmax_agreement"] > 0.9
    fp32 = teacher_outputs(teacher, "abc", bundle, views=1, fp16=True, cache_dir=tmp_path, precision="fp32")
    assert fp32.folder != cache.folder  # the precision is part of the key


def test_the_cli_refuses_bf16_on_a_cpu_without_it(tmp_path, blobs, tiny_teacher, monkeypatch):
    from typer.testing import CliRunner

    from conftest import tiny_spec
    from distillab.cli import app

    monkeypatch.setattr(precision_module, "cpu_supports_bf16", lambda: False)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_spec(blobs, tiny_teacher, training={"precision": "bf16", "device": "cpu"})))
    for command in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "out")]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "training.precision: bf16" in result.output, result.output
    assert not (tmp_path / "out").exists()
