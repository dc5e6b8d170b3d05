"""Model facts: MACs against hand counts, parameter counts and sizes of zoo models, and
latency as a sane number (never a speed claim: design rule 12)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

from distillab.models.facts import (
    interleaved_latency,
    runtime_of,
    latency_ms,
    macs_per_sample,
    model_facts,
    parameter_count,
    serialized_size_mb,
)
from distillab.models.loading import OnnxTeacher
from distillab.models.zoo import build_model, count_parameters

IN_SHAPE = (1, 28, 28)

# torch 2.13 deprecates TorchScript and the legacy ONNX exporter; the tests still need both
# to make foreign teachers (the dynamo exporter needs onnxscript, which is not installed).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cnn_tiny", IN_SHAPE, 10)


def test_macs_of_a_linear_layer_are_in_times_out():
    assert macs_per_sample(nn.Linear(10, 5), (10,)) == 10 * 5


def test_macs_of_a_padded_conv_are_out_channels_times_kernel_times_pixels():
    conv = nn.Conv2d(1, 4, 3, padding=1)
    assert macs_per_sample(conv, (1, 8, 8)) == 4 * 9 * 64


@pytest.mark.parametrize(("name", "low", "high"), [("cnn_tiny", 20_000, 30_000), ("cnn_small", 30_000, 100_000)])
def test_zoo_parameter_counts(name, low, high):
    model = build_model(name, IN_SHAPE, 10)
    count = parameter_count(model)
    assert count == count_parameters(model)
    assert low <= count <= high


def test_zoo_models_have_positive_macs():
    tiny = macs_per_sample(build_model("cnn_tiny", IN_SHAPE, 10), IN_SHAPE)
    small = macs_per_sample(build_model("cnn_small", IN_SHAPE, 10), IN_SHAPE)
    assert 0 < tiny < small


def test_size_is_four_bytes_per_float32_parameter(tiny_cnn):
    # Buffers (BatchNorm statistics) and the JSON header add a little on top.
    expected = 4 * parameter_count(tiny_cnn) / 1e6
    assert serialized_size_mb(tiny_cnn) == pytest.approx(expected, rel=0.05)
    assert serialized_size_mb(tiny_cnn) > expected


def test_size_counts_tied_weights_once():
    shared = nn.Linear(8, 8, bias=False)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert serialized_size_mb(model) == pytest.approx(4 * 64 / 1e6, abs=1e-3)


def test_latency_is_positive_and_finite(tiny_cnn):
    value = latency_ms(tiny_cnn, IN_SHAPE, batch_size=2, repeats=3, warmup=1)
    assert math.isfinite(value) and value > 0


def test_model_facts_keys_and_throughput(tiny_cnn):
    facts = model_facts(tiny_cnn, IN_SHAPE, repeats=1)
    assert set(facts) == {"params", "size_mb", "macs", "runtime", "latency_ms", "latency_iqr_ms", "latency_ms_batch256",
                          "latency_iqr_ms_batch256", "throughput_per_s"}
    assert facts["runtime"] == "torch"
    low, high = facts["latency_iqr_ms"]
    assert low <= facts["latency_ms"] <= high
    assert facts["params"] == count_parameters(tiny_cnn)
    assert facts["macs"] == macs_per_sample(tiny_cnn, IN_SHAPE)
    assert facts["throughput_per_s"] == pytest.approx(256 / (facts["latency_ms_batch256"] / 1000))


def test_measuring_leaves_mode_and_global_seed_alone(tiny_cnn):
    tiny_cnn.train()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    macs_per_sample(tiny_cnn, IN_SHAPE)
    latency_ms(tiny_cnn, IN_SHAPE, batch_size=1, repeats=1, warmup=0)
    assert torch.equal(torch.rand(3), expected)
    assert tiny_cnn.training


def test_torchscript_model_has_the_same_facts(tiny_cnn):
    tiny_cnn.eval()
    traced = torch.jit.trace(tiny_cnn, torch.zeros(2, *IN_SHAPE))
    assert parameter_count(traced) == parameter_count(tiny_cnn)
    assert serialized_size_mb(traced) == pytest.approx(serialized_size_mb(tiny_cnn))
    assert macs_per_sample(traced, IN_SHAPE) == macs_per_sample(tiny_cnn, IN_SHAPE)


def test_onnx_teacher_counts_initializers_and_has_unknown_macs(tiny_cnn, tmp_path):
    tiny_cnn.eval()
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(
        tiny_cnn, (torch.zeros(2, *IN_SHAPE),), str(path), dynamo=False,
        input_names=["images"], dynamic_axes={"images": {0: "batch"}},
    )  # fmt: skip
    teacher = OnnxTeacher(path)
    # The exporter folds each BatchNorm into the conv before it, so a few weights vanish.
    assert 0.9 * count_parameters(tiny_cnn) <= parameter_count(teacher) <= count_parameters(tiny_cnn)
    assert serialized_size_mb(teacher) == path.stat().st_size / 1e6
    assert macs_per_sample(teacher, IN_SHAPE) is None
    assert latency_ms(teacher, IN_SHAPE, batch_size=2, repeats=1, warmup=0) > 0


class Logged(nn.Module):
    """Appends its name to a shared log at every call, and sleeps a fixed time: a model whose
    calls can be counted and whose latency has a known floor."""

    def __init__(self, name: str, log: list, seconds: float):
        super().__init__()
        self.name, self.log, self.seconds = name, log, seconds
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        import time

        self.log.append(self.name)
        time.sleep(self.seconds)
        return x.flatten(1)[:, :2] + self.weight


def test_interleaved_latency_times_every_model_in_each_round():
    log: list[str] = []
    models = {"fast": Logged("fast", log, 0.001), "slow": Logged("slow", log, 0.004)}
    result = interleaved_latency(models, IN_SHAPE, 1, repeats=6, warmup=2)
    assert set(result) == {"fast", "slow"}
    warmup, rounds = log[:4], log[4:]
    assert sorted(warmup) == ["fast", "fast", "slow", "slow"]
    assert len(rounds) == 12 and all(sorted(rounds[i:i + 2]) == ["fast", "slow"] for i in range(0, 12, 2))
    for name, floor in (("fast", 1.0), ("slow", 4.0)):  # sleep() never returns early
        assert result[name]["p25"] <= result[name]["median"] <= result[name]["p75"]
        assert result[name]["p25"] >= floor


def test_interleaved_latency_leaves_the_global_random_state_alone(tiny_cnn):
    random.seed(7)
    expected = random.random()
    random.seed(7)
    interleaved_latency({"a": tiny_cnn, "b": tiny_cnn}, IN_SHAPE, 1, repeats=3)
    assert random.random() == expected


def test_runtime_names_what_executes_the_model(tiny_cnn, tmp_path):
    assert runtime_of(tiny_cnn) == "torch"
    assert runtime_of(torch.jit.trace(tiny_cnn.eval(), torch.zeros(1, *IN_SHAPE))) == "torchscript"
