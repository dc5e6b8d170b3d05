"""Where and in what precision models run: the device, and the numeric precision of training
and teacher inference: fp32, or bf16 autocast where the
hardware runs it natively (CUDA; on the CPU, AVX512-BF16 or AMX tiles, as torch reports).

Weights, optimizer state and evaluation stay fp32; autocast runs matmuls and convolutions in
bf16. On a CPU without native bf16, torch would emulate it, slower than fp32, so ``auto``
picks fp32 there and an explicit ``bf16`` is refused.
"""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
import torch.nn.functional as F

from distillab.errors import SpecError


def resolve_device(name: str) -> torch.device:
    """The torch device a spec's ``device`` names (``auto``: CUDA when there is one)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device: cuda was asked for but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX tiles)."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cpu_features() -> str:
    """What torch reports of this CPU, for error messages and benchmark notes."""
    return (f"capability {torch.backends.cpu.get_cpu_capability()}, "
            f"AVX512-BF16 {torch.cpu._is_avx512_bf16_supported()}, AMX {torch.cpu._is_amx_tile_supported()}")


@functools.lru_cache(maxsize=1)
def cpuinfo() -> str | None:
    """This machine's /proc/cpuinfo (its CPU's model name and flags), or None where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo), else what the platform says."""
    import platform

    for line in (cpuinfo() or "").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bf16_path() -> str | None:
    """Which CPU instructions run bf16 here: "AMX", "AVX512-BF16", or None (no native bf16).
    oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA) below AMX means AVX512-BF16 even on an AMX CPU."""
    import os

    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    amx = torch.cpu._is_amx_tile_supported() and (not cap or cap == "ALL" or "AMX" in cap)
    if amx:
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported() and (not cap or cap == "ALL" or "BF16" in cap or "AMX" in cap):
        return "AVX512-BF16"
    return None


def precision_record(training, device: torch.device) -> dict:
    """What a report keeps of the precision: asked for, actually used, and the hardware path."""
    requested = requested_precision(training)
    used = resolve_precision(requested, device)
    path = (torch.cuda.get_device_name(device) if device.type == "cuda" else bf16_path()) if used == "bf16" else None
    return {"requested": training.precision, "used": used, "bf16_path": path}


def requested_precision(training) -> str:
    """The spec's precision, with the older ``amp: false`` meaning fp32 under auto."""
    return "fp32" if training.precision == "auto" and not training.amp else training.precision


def resolve_precision(precision: str, device: torch.device, where: str = "training.precision") -> str:
    """"fp32" or "bf16" for ``precision`` ("auto", "fp32", "bf16") on ``device``."""
    native = device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16())
    if precision == "auto":
        return "bf16" if native else "fp32"
    if precision == "bf16" and not native:
        raise SpecError(f"{where}: bf16 needs a GPU or a CPU with native bf16 (AVX512-BF16 or AMX); this CPU has "
                        f"{cpu_features()}. Use fp32 or auto.")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context of a resolved precision (a no-op for fp32)."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def agreement(model: torch.nn.Module, inputs: torch.Tensor, device: torch.device, precision: str) -> dict:
    """How far ``precision`` moves a model's outputs from fp32 on ``inputs``: argmax agreement
    and the mean KL(fp32 || reduced) of the softmax, in nats."""
    reference = model(inputs.to(device)).float()
    with autocast(device, precision):
        reduced = model(inputs.to(device)).float()
    kl = F.kl_div(F.log_softmax(reduced, -1), F.log_softmax(reference, -1), log_target=True, reduction="batchmean")
    return {"precision": precision, "samples": len(inputs),
            "argmax_agreement": (reference.argmax(-1) == reduced.argmax(-1)).float().mean().item(),
            "kl_fp32_to_reduced": kl.item()}


def channels_last_fault(module: torch.nn.Module, device: torch.device) -> str | None:
    """The first trainable layer of ``module`` whose weight gradient this CPU's oneDNN kernels
    compute out of bounds in channels-last layout, or None where training channels-last is safe.

    On CPUs without AVX512 (oneDNN's ``jit_1x1:avx2``), the weight gradient of a strided 1x1
    convolution with fewer input channels per group than its block of 8, in channels-last
    layout, writes past its workspace (reported upstream as oneDNN#6035, open). Measured with
    torch 2.13 on one thread: 2 to 6 input channels abort the process within a few hundred steps;
    the report there also shows wrong weight gradients without a crash, and hangs, with several
    threads. A ResNet's projection shortcut on a narrow stage is such a layer."""
    import os

    if device.type != "cpu":
        return None
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512") and not (
        cap and cap != "ALL" and "AVX512" not in cap and "AMX" not in cap)
    if avx512:
        return None
    for name, layer in module.named_modules():
        # trainable parameters, not ``layer.weight``: reading a parametrized weight (spectral norm) computes it
        kernel, stride = getattr(layer, "kernel_size", None), getattr(layer, "stride", None)
        if kernel is None or stride is None or not any(p.requires_grad for p in layer.parameters()):
            continue
        kernel = tuple(kernel) if isinstance(kernel, (tuple, list)) else (kernel,)
        stride = tuple(stride) if isinstance(stride, (tuple, list)) else (stride,)
        per_group = getattr(layer, "in_channels", 8) // max(1, getattr(layer, "groups", 1))
        if len(kernel) == 2 and set(kernel) == {1} and any(s > 1 for s in stride) and per_group < 8:
            return (f"{name or type(layer).__name__} (1x1, stride {stride[0]}, {per_group} input channels)")
    return None
