"""Pruning: the rebuilt CNN is dense, smaller and computes what the masked model computes;
magnitude pruning reaches its sparsity; ``distillab prune`` writes a run that exports."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from conftest import finished_cnn_run, tiny_spec
from distillab import run
from distillab.cli import app
from distillab.compress import export_run
from distillab.compress.prune import (PruneError, channel_targets, channels_to_keep, conv_blocks, cubic_schedule,
                                      magnitude_prune, make_permanent, masked, rebuild, sparsity)
from distillab.models.facts import macs_per_sample
from distillab.models.zoo import build_model, count_parameters

runner = CliRunner()


def _trained_looking_cnn(seed: int = 0):
    """cnn_small with non-trivial BN statistics and scales, as after training."""
    torch.manual_seed(seed)
    model = build_model("cnn_small", (1, 28, 28), 10)
    for _, _, bn in conv_blocks(model):
        bn.weight.data.uniform_(0.2, 1.5)
        bn.bias.data.normal_(0, 0.3)
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("importance", ["l1", "bn"])
def test_the_rebuilt_model_is_dense_smaller_and_equals_the_masked_model(importance):
    model = _trained_looking_cnn()
    channels = [conv.out_channels for _, conv, _ in conv_blocks(model)]
    stages = [stage for stage, _, _ in conv_blocks(model)]
    keep = channels_to_keep(model, channel_targets(channels, stages, 0.5), importance)
    pruned, args = rebuild(model, keep)
    assert args["stages"] == [[8], [16, 16], [32, 48]]
    assert [conv.out_channels for _, conv, _ in conv_blocks(pruned)] == [8, 16, 16, 32, 48]
    assert count_parameters(pruned) < count_parameters(model) / 3
    assert macs_per_sample(pruned, (1, 28, 28)) < macs_per_sample(model, (1, 28, 28)) / 2
    assert all(int((p == 0).sum()) == 0 for p in pruned.parameters() if p.dim() > 1)  # dense: nothing zeroed
    images = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(images), masked(model, keep).eval()(images), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(images), pruned(images), atol=1e-3)  # the removed channels did matter
    rebuilt = build_model("cnn", (1, 28, 28), 10, args)  # the zoo rebuilds it from its args
    rebuilt.load_state_dict(pruned.state_dict())


def test_importance_keeps_the_strongest_channels():
    model = _trained_looking_cnn()
    _, conv, bn = conv_blocks(model)[0]
    with torch.no_grad():
        conv.weight[3] *= 100  # the largest filter
        bn.weight.fill_(1.0)
        bn.weight[5] = 50.0  # the largest BN scale
    targets = [1] + [c.out_channels for _, c, _ in conv_blocks(model)][1:]
    assert channels_to_keep(model, targets, "l1")[0].tolist() == [3]
    assert channels_to_keep(model, targets, "bn")[0].tolist() == [5]
    assert channel_targets([16, 32], [0, 1], 0.5, prune_stages=[1]) == [16, 16]
    assert channel_targets([16, 32, 64, 96], [0, 1, 2, 2], 0.3, round_to=8) == [8, 24, 48, 64]
    assert channel_targets([4, 96], [0, 0], 0.9, round_to=8) == [4, 8]  # never more than there were
    with pytest.raises(PruneError, match="cannot keep 0"):
        channels_to_keep(model, [0] + targets[1:])
    with pytest.raises(PruneError, match="VGG-style CNNs"):
        conv_blocks(build_model("mlp", (1, 8, 8), 3))


def test_magnitude_pruning_reaches_its_sparsity_and_becomes_permanent():
    model = _trained_looking_cnn()
    for target in (cubic_schedule(1, 3, 0.8), cubic_schedule(3, 3, 0.8)):
        magnitude_prune(model, target)
        assert sparsity(model) == pytest.approx(target, abs=0.01)
    make_permanent(model)
    assert not any("weight_orig" in name for name, _ in model.named_parameters())
    assert sparsity(model) == pytest.approx(0.8, abs=0.01)
    assert cubic_schedule(0, 4, 0.5) == 0.0 and cubic_schedule(4, 4, 0.5) == 0.5
    assert cubic_schedule(1, 4, 0.5) > 0.5 / 4  # fast early


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    return finished_cnn_run(tmp_path_factory.mktemp("prune_run"), seeds=(0,))


def test_prune_writes_a_smaller_run_that_exports(cnn_run, tmp_path):
    result = runner.invoke(app, ["prune", str(cnn_run), "--out", str(tmp_path / "pruned"), "--steps", "2",
                                 "--epochs-per-step", "1", "--ratio", "0.5"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "pruned" / "prune.json").read_text())
    steps = record["history"]
    assert [s["step"] for s in steps] == [0, 1, 2] and steps[-1]["removed"] == 0.5
    assert steps[-1]["channels"] == [8, 16, 32] and steps[0]["channels"] == [16, 32, 64]
    assert steps[-1]["macs"] < steps[0]["macs"] / 2 and steps[-1]["params"] < steps[0]["params"]
    exported = export_run(tmp_path / "pruned", tmp_path / "onnx")
    assert exported["model"] == "cnn" and exported["model_args"]["stages"] == [[8], [16], [32]]
    assert exported["parity"]["argmax_agreement"] == 1.0


def test_magnitude_pruning_without_kd_keeps_the_architecture(cnn_run, tmp_path):
    result = runner.invoke(app, ["prune", str(cnn_run), "--out", str(tmp_path / "sparse"), "--method", "magnitude",
                                 "--no-kd", "--steps", "1", "--epochs-per-step", "1", "--ratio", "0.6"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "sparse" / "prune.json").read_text())
    assert record["kd"] is False and record["history"][-1]["sparsity"] == pytest.approx(0.6, abs=0.02)
    assert record["history"][-1]["macs"] == record["history"][0]["macs"]  # dense kernels: no fewer MACs
    report = json.loads((tmp_path / "sparse" / "report.json").read_text())
    assert report["spec"]["student"]["model"] == "cnn_tiny"


def test_bad_prune_requests_are_clear_errors(cnn_run, tmp_path, blobs, tiny_teacher):
    for extra, message in [(["--ratio", "1.5"], "--ratio 1.5"), (["--stage", "7"], "--stage [7]"),
                           (["--method", "lottery"], "--method 'lottery'"), (["--steps", "0"], "--steps")]:
        result = runner.invoke(app, ["prune", str(cnn_run), "--out", str(tmp_path / "x"), *extra])
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    mlp_run = run(tiny_spec(blobs, tiny_teacher, training={"epochs": 1, "seeds": [0]}), tmp_path / "mlp").out_dir
    result = runner.invoke(app, ["prune", str(mlp_run), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "use --method magnitude" in result.output
    assert not (tmp_path / "x").exists()
