"""A per-machine latency model: a handful of probe networks from the search space are measured
on the target runtime (eager torch, ONNX Runtime fp32, or ONNX Runtime int8), and a least-squares
fit of latency against MACs and layer count predicts every other candidate's latency before it
trains. Its error is measured, leave-one-out on the probes, and reported with the search."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distillab.autodistill.space import Candidate
from distillab.models.facts import interleaved_latency
from distillab.models.zoo import build_model


def layer_count(model: nn.Module) -> int:
    """Convolutions and linear layers: each is at least one kernel launch on any runtime."""
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def _onnx_latency(model: nn.Module, example: torch.Tensor, int8: bool, repeats: int, warmup: int) -> float:
    import onnxruntime

    from distillab.compress.export import write_onnx
    from distillab.compress.quantize import quantize_onnx

    with tempfile.TemporaryDirectory(prefix="distillab-probe-") as scratch:
        path = Path(scratch) / "model.onnx"
        write_onnx(model.eval(), example, path)
        if int8:
            quantized = Path(scratch) / "model.int8.onnx"
            calibration = [torch.randn_like(example) for _ in range(4)]
            quantize_onnx(path, quantized, "int8", calibration)
            path = quantized
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        feed = {name: example.numpy()}
        for _ in range(warmup):
            session.run(None, feed)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def measure(candidate: Candidate, in_shape, num_classes: int, runtime: str, batch_size: int,
            repeats: int = 30, warmup: int = 5) -> float:
    """Median latency in ms of one forward pass of ``candidate`` (random weights: latency does
    not depend on their values) at ``batch_size`` on ``runtime``."""
    torch.manual_seed(0)
    model = build_model(candidate.model, tuple(in_shape), num_classes, candidate.args).eval()
    if runtime == "torch":
        return interleaved_latency({"m": model}, tuple(in_shape), batch_size, repeats, warmup)["m"]["median"]
    example = torch.randn(batch_size, *in_shape)
    return _onnx_latency(model, example, runtime == "onnx-int8", repeats, warmup)


def _features(macs: int, layers: int) -> list[float]:
    return [1.0, macs / 1e6, float(layers)]


@dataclass
class LatencyModel:
    """latency_ms ≈ c0 + c1 · MMACs + c2 · layers, fitted on measured probes of one runtime."""

    runtime: str
    batch_size: int
    coefficients: list[float]
    probes: list[dict]  # {"candidate", "macs", "layers", "measured_ms", "predicted_ms", "loo_predicted_ms"}
    machine: dict | None = None  # where the probes were measured (``this_machine``)

    def predict(self, macs: int, layers: int) -> float:
        return float(max(1e-3, np.dot(self.coefficients, _features(macs, layers))))

    @property
    def error(self) -> dict:
        """Relative error of the leave-one-out predictions against the measured latencies."""
        errors = [abs(p["loo_predicted_ms"] - p["measured_ms"]) / p["measured_ms"] for p in self.probes]
        return {"probes": len(errors), "median_relative_error": statistics.median(errors),
                "max_relative_error": max(errors)}

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "batch_size": self.batch_size, "coefficients": self.coefficients,
                "features": ["1", "MMACs", "layers"], "probes": self.probes, "error": self.error,
                "machine": self.machine}


def this_machine() -> dict:
    """What a latency model is true for: the CPU's model name, its bf16 path and torch's threads."""
    import platform

    from distillab.runtime import bf16_path

    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"cpu": cpu, "bf16_path": bf16_path() or "none", "threads": torch.get_num_threads()}


def fit(points: list[tuple[int, int, float]]) -> list[float]:
    """Least-squares coefficients of latency on (1, MMACs, layers); ``points`` are (macs, layers, ms)."""
    x = np.array([_features(macs, layers) for macs, layers, _ in points])
    y = np.array([ms for _, _, ms in points])
    coefficients, *_ = np.linalg.lstsq(x, y, rcond=None)
    return [float(c) for c in coefficients]


def probes_of(candidates: list[Candidate], count: int = 8) -> list[Candidate]:
    """``count`` candidates spread evenly over the space's MACs (by rank), smallest and largest included."""
    ranked = sorted(candidates, key=lambda c: (c.macs, c.params, c.name))
    if len(ranked) <= count:
        return ranked
    picks = sorted({round(i * (len(ranked) - 1) / (count - 1)) for i in range(count)})
    return [ranked[i] for i in picks]


def build_latency_model(candidates: list[Candidate], in_shape, num_classes: int, runtime: str, batch_size: int,
                        probes: int = 8, repeats: int = 30) -> LatencyModel:
    """Measure the probes on ``runtime`` and fit the model; each probe's leave-one-out prediction
    (fitted without it) gives the model's error on networks it has not seen."""
    chosen = probes_of(candidates, probes)
    rows = []
    for candidate in chosen:
        model = build_model(candidate.model, tuple(in_shape), num_classes, candidate.args)
        rows.append((candidate, candidate.macs, layer_count(model),
                     measure(candidate, in_shape, num_classes, runtime, batch_size, repeats)))
    points = [(macs, layers, ms) for _, macs, layers, ms in rows]
    coefficients = fit(points)
    records = []
    for i, (candidate, macs, layers, ms) in enumerate(rows):
        others = fit(points[:i] + points[i + 1:]) if len(points) > 3 else coefficients
        records.append({"candidate": candidate.name, "macs": macs, "layers": layers, "measured_ms": ms,
                        "predicted_ms": float(max(1e-3, np.dot(coefficients, _features(macs, layers)))),
                        "loo_predicted_ms": float(max(1e-3, np.dot(others, _features(macs, layers))))})
    return LatencyModel(runtime, batch_size, coefficients, records, this_machine())
