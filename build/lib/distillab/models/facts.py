"""Facts about a model: parameters, serialised size, multiply-accumulates and latency.

Works for zoo models and TorchScript teachers; for an ``OnnxTeacher`` (a black box run by
onnxruntime) the counts come from the ONNX file and MACs are unknown (None).
Measuring never changes the model: its train/eval mode is restored afterwards and no
global random state is consumed.
"""

from __future__ import annotations

import contextlib
import math
import random
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from distillab.models.loading import OnnxTeacher
from distillab.models.remote import RemoteTeacher

BYTES_PER_MB = 1_000_000  # decimal megabytes, as file sizes are usually quoted (not MiB)
THROUGHPUT_BATCH = 256


def parameter_count(model: nn.Module) -> int:
    """Trainable-shaped weights: parameters of a torch module (shared ones once); for an ONNX
    teacher, the elements of its floating-point initializers (BatchNorm may have been folded
    into the convolutions by the exporter, so this can differ from the torch count)."""
    if isinstance(model, RemoteTeacher):
        return 0  # a black box behind HTTP: nothing about it is known here
    if isinstance(model, OnnxTeacher):
        return sum(math.prod(init.dims) for init in _onnx_float_initializers(Path(model.path)))
    return sum(p.numel() for p in model.parameters())


def serialized_size_mb(model: nn.Module) -> float:
    """Size in MB (10**6 bytes) of the state dict written as safetensors, buffers included;
    for an ONNX teacher, the size of its file."""
    if isinstance(model, OnnxTeacher):
        return Path(model.path).stat().st_size / BYTES_PER_MB
    return len(save(_unshared_state(model))) / BYTES_PER_MB


def macs_per_sample(model: nn.Module, in_shape) -> int | None:
    """Multiply-accumulates of one forward pass on a batch of one, in eval mode: the FLOPs
    that ``torch.utils.flop_counter`` counts (matmuls and convolutions; 2 per MAC), halved.
    Elementwise ops, norms and pooling are not counted. None when the model runs outside
    torch (an ONNX teacher) and cannot be counted."""
    if isinstance(model, (OnnxTeacher, RemoteTeacher)):
        return None
    x = _example_input(model, in_shape, batch_size=1)  # token ids for a text model
    counter = FlopCounterMode(display=False)
    with _eval_mode(model), torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def latency_ms(model: nn.Module, in_shape, batch_size: int, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time in milliseconds of one forward pass over a batch of ``batch_size``,
    in eval mode under no_grad, after ``warmup`` untimed passes (one model of
    ``interleaved_latency``)."""
    return interleaved_latency({"model": model}, in_shape, batch_size, repeats, warmup)["model"]["median"]


def runtime_of(model: nn.Module) -> str:
    """What executes the model: "onnxruntime", "torchscript" or "torch" (eager)."""
    if isinstance(model, OnnxTeacher):
        return "onnxruntime"
    if isinstance(model, RemoteTeacher):
        return "http (top-k)"
    return "torchscript" if isinstance(model, torch.jit.ScriptModule) else "torch"


def interleaved_latency(models: dict[str, nn.Module], in_shape, batch_size: int, repeats: int = 50,
                        warmup: int = 3) -> dict[str, dict]:
    """Latency of several models measured round-robin: each round times one forward pass of
    every model, in a shuffled order, so drift in the machine's load (another process, CPU
    frequency) hits all of them alike. Per model: median and quartiles in milliseconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    inputs = {name: _example_input(model, in_shape, batch_size) for name, model in models.items()}
    cuda = any(x.device.type == "cuda" for x in inputs.values())
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    shuffle = random.Random(0)  # private: measuring never moves the global random state
    with contextlib.ExitStack() as stack, torch.no_grad():
        for model in models.values():
            stack.enter_context(_eval_mode(model))
        for name in order:
            for _ in range(warmup):
                models[name](inputs[name])
        sync()
        for _ in range(repeats):
            shuffle.shuffle(order)
            for name in order:
                start = time.perf_counter()
                models[name](inputs[name])
                sync()  # CUDA launches are asynchronous: wait for the work, not the launch
                times[name].append((time.perf_counter() - start) * 1000.0)
    out = {}
    for name, values in times.items():
        q1, median, q3 = statistics.quantiles(values, n=4) if len(values) > 1 else (values[0],) * 3
        out[name] = {"median": statistics.median(values), "p25": q1, "p75": q3}
    return out


def facts_of(models: dict[str, nn.Module], in_shape, repeats: int = 50) -> dict[str, dict]:
    """model_facts for several models, their latencies measured interleaved (batch 1 with
    ``repeats`` rounds, batch 256 with a fifth of them, at least 3)."""
    single = interleaved_latency(models, in_shape, 1, repeats)
    batch = interleaved_latency(models, in_shape, THROUGHPUT_BATCH, max(3, repeats // 5))
    out = {}
    for name, model in models.items():
        batch_ms = batch[name]["median"]
        out[name] = {
            "params": parameter_count(model),
            "size_mb": serialized_size_mb(model),
            "macs": macs_per_sample(model, in_shape),
            "runtime": runtime_of(model),
            "latency_ms": single[name]["median"],
            "latency_iqr_ms": [single[name]["p25"], single[name]["p75"]],
            "latency_ms_batch256": batch_ms,
            "latency_iqr_ms_batch256": [batch[name]["p25"], batch[name]["p75"]],
            "throughput_per_s": THROUGHPUT_BATCH / (batch_ms / 1000.0) if batch_ms > 0 else math.inf,
        }
    return out


def model_facts(model: nn.Module, in_shape, repeats: int = 20) -> dict:
    """params, size_mb, macs (per sample, None if unknown), runtime, latency_ms (batch of 1)
    with its quartiles, latency_ms_batch256 (per batch of 256) and throughput_per_s."""
    return facts_of({"model": model}, in_shape, repeats)["model"]


def relative_spread(facts: dict) -> float | None:
    """Interquartile range of the batch-1 latency over its median (None when not measured)."""
    low, high = facts.get("latency_iqr_ms") or (None, None)
    if low is None or not facts.get("latency_ms"):
        return None
    return (high - low) / facts["latency_ms"]


@contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _example_input(model: nn.Module, in_shape, batch_size: int) -> torch.Tensor:
    """Random input on the model's device and floating dtype, from a private generator so
    measuring does not move the global seed stream."""
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
    generator = torch.Generator().manual_seed(0)
    if len(tuple(in_shape)) == 1 and hasattr(model, "vocab_size"):  # a text model: token ids (B, T)
        return torch.randint(1, model.vocab_size, (batch_size, *in_shape), generator=generator).to(device)
    x = torch.randn(batch_size, *in_shape, generator=generator)  # (B, C, H, W)
    return x.to(device=device, dtype=dtype)


def _unshared_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU, as safetensors accepts it: tied tensors kept once, and a
    private copy of any other tensor whose storage overlaps one already taken."""
    state: dict[str, torch.Tensor] = {}
    seen: dict[int, tuple] = {}  # storage pointer -> (data pointer, shape, stride) first kept
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        key = (tensor.data_ptr(), tuple(tensor.shape), tensor.stride())
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen and tensor.numel() > 0:
            if seen[storage] == key:
                continue  # the same tensor under a second name (tied weights)
            tensor = tensor.clone()
        else:
            seen[storage] = key
        state[name] = tensor.cpu().contiguous()
    return state


def _onnx_float_initializers(path: Path):
    import onnx

    # Initializers only; external data is not needed because ``dims`` is in the graph itself.
    graph = onnx.load(str(path), load_external_data=False).graph
    floating = {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    }
    return [init for init in graph.initializer if init.data_type in floating]
