"""A per-machine latency model: a handful of probe networks from the search space are measured
on the target runtime (eager torch, ONNX Runtime fp32, or ONNX Runtime int8), and a least-squares
fit of latency against MACs and layer count predicts every other candidate's latency before it
trains. Its error is measured, leave-one-out on the probes, and reported with the search.

A language model's latency is the time per token of greedy decoding at batch 1 (``kind``
"decode"): fitted on MACs per token and decoder blocks, with its own intercept and cost per
block for transformers models, whose per-step overhead is not the zoo's."""

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
    model = candidate.build(in_shape, num_classes).eval()
    if runtime == "torch":
        return interleaved_latency({"m": model}, tuple(in_shape), batch_size, repeats, warmup)["m"]["median"]
    example = torch.randn(batch_size, *in_shape)
    return _onnx_latency(model, example, runtime == "onnx-int8", repeats, warmup)


FEATURES = {"forward": ["1", "MMACs", "layers"], "forward_dynamic": ["1", "MMACs", "layers", "dynamic"],
            "decode": ["1", "transformers", "MMACs per token", "blocks", "transformers x blocks"]}


def features(candidate: Candidate, kind: str = "forward") -> list[float]:
    """What the latency model multiplies its coefficients with (``FEATURES[kind]``)."""
    if kind == "decode":
        hf = 1.0 if candidate.group == "transformers" else 0.0
        return [1.0, hf, candidate.token_macs / 1e6, float(candidate.layers), hf * candidate.layers]
    if kind == "forward_dynamic":  # a dynamic convolution's router and kernel mixing cost more than their MACs
        return [1.0, candidate.macs / 1e6, float(candidate.layers), float(candidate.dynamic)]
    return [1.0, candidate.macs / 1e6, float(candidate.layers)]


@dataclass
class LatencyModel:
    """latency_ms ≈ coefficients · features(candidate), fitted on measured probes of one runtime:
    c0 + c1 · MMACs + c2 · layers for a forward pass; per decoded token for a language model."""

    runtime: str
    batch_size: int
    coefficients: list[float]
    probes: list[dict]  # {"candidate", "features", "measured_ms", "predicted_ms", "loo_predicted_ms"}
    machine: dict | None = None  # where the probes were measured (``this_machine``)
    kind: str = "forward"  # or "decode": ms per generated token

    def predict(self, candidate: Candidate) -> float:
        return float(max(1e-3, np.dot(self.coefficients, features(candidate, self.kind))))

    @property
    def error(self) -> dict:
        """Relative error of the leave-one-out predictions against the measured latencies."""
        errors = [abs(p["loo_predicted_ms"] - p["measured_ms"]) / p["measured_ms"] for p in self.probes]
        return {"probes": len(errors), "median_relative_error": statistics.median(errors),
                "max_relative_error": max(errors)}

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "batch_size": self.batch_size, "kind": self.kind,
                "coefficients": self.coefficients, "features": FEATURES[self.kind], "probes": self.probes,
                "error": self.error, "machine": self.machine}

    @classmethod
    def read(cls, record: dict) -> LatencyModel:
        """The model as ``as_dict`` wrote it (a search resumed predicts as the first run did)."""
        return cls(**{key: value for key, value in record.items()
                      if key in ("runtime", "batch_size", "coefficients", "probes", "machine", "kind")})


def this_machine() -> dict:
    """What a latency model is true for: the CPU's model name, its bf16 path and torch's threads."""
    from distillab.runtime import bf16_path, cpu_name

    return {"cpu": cpu_name(), "bf16_path": bf16_path() or "none", "threads": torch.get_num_threads()}


def fit(points: list[tuple[list[float], float]]) -> list[float]:
    """Non-negative least-squares coefficients of latency on the features; ``points`` are
    (features, ms). No cost per MAC, layer or block is below zero (a plain least-squares fit of
    noisy, correlated timings can say so, and then predicts a deep, narrow network at next to
    nothing). A feature no probe has (no transformers probe) gets coefficient 0."""
    from scipy.optimize import nnls

    x = np.array([row for row, _ in points])
    y = np.array([ms for _, ms in points])
    return [float(c) for c in nnls(x, y)[0]]


def probes_of(candidates: list[Candidate], count: int = 8) -> list[Candidate]:
    """``count`` candidates spread evenly over the space's MACs (by rank), smallest and largest included."""
    ranked = sorted(candidates, key=lambda c: (c.macs, c.params, c.name))
    if len(ranked) <= count:
        return ranked
    picks = sorted({round(i * (len(ranked) - 1) / (count - 1)) for i in range(count)})
    return [ranked[i] for i in picks]


def build_latency_model(candidates: list[Candidate], in_shape, num_classes: int, runtime: str, batch_size: int,
                        probes: int = 8, repeats: int = 30) -> LatencyModel:
    """Measure the probes on ``runtime`` and fit the model (``fit_probes``); with dynamic students
    in the space, a few of them are probes too, and the model has a term for being dynamic.
    Every family gets probes of its own (its smallest and largest): a family whose cost per layer
    differs from the rest (a cut of a ResNet teacher: many layers, few MACs) is otherwise predicted
    from the others' and can be judged several times too fast."""
    dynamic = [c for c in candidates if c.dynamic]
    static = [c for c in candidates if not c.dynamic]
    chosen = probes_of(static, probes)
    for family in sorted({c.model for c in static} - {c.model for c in chosen}):
        chosen += probes_of([c for c in static if c.model == family], 2)
    chosen += probes_of(dynamic, max(3, probes // 2) if static else probes)
    return fit_probes(chosen, lambda c: measure(c, in_shape, num_classes, runtime, batch_size, repeats),
                      runtime, batch_size, "forward_dynamic" if dynamic else "forward")


def fit_probes(chosen: list[Candidate], measure_ms, runtime: str, batch_size: int, kind: str) -> LatencyModel:
    """Measure each probe (``measure_ms(candidate)``, in ms) and fit; each probe's leave-one-out
    prediction (fitted without it) gives the model's error on networks it has not seen."""
    rows = [(candidate, features(candidate, kind), measure_ms(candidate)) for candidate in chosen]
    points = [(row, ms) for _, row, ms in rows]
    coefficients = fit(points)
    records = []
    for i, (candidate, row, ms) in enumerate(rows):
        others = fit(points[:i] + points[i + 1:]) if len(points) > 1 else coefficients
        records.append({"candidate": candidate.name, "macs": candidate.macs, "layers": candidate.layers,
                        "features": row, "measured_ms": ms,
                        "predicted_ms": float(max(1e-3, np.dot(coefficients, row))),
                        "loo_predicted_ms": float(max(1e-3, np.dot(others, row)))})
    return LatencyModel(runtime, batch_size, coefficients, records, this_machine(), kind)
