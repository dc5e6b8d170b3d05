"""Loading teachers: a safetensors state dict plus a zoo name, a TorchScript file, or an
ONNX file run through onnxruntime as a black box (logits only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from distillab.files import atomic_write_bytes
from distillab.errors import CheckpointError
from distillab.models.zoo import build_model


def file_checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_checksum(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class OnnxTeacher(nn.Module):
    """A black-box teacher: an ONNX graph run by onnxruntime on the CPU. Logits only, no
    gradients and no intermediate features."""

    def __init__(self, path: Path, where: str = "teacher.checkpoint"):
        super().__init__()
        import onnxruntime

        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors for bad files
            raise CheckpointError(f"{where}: {path} is not a loadable ONNX model ({error})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        array = x.detach().float().cpu().contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: array})[:1]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(x.device)


def save_model(model: nn.Module, path: Path, metadata: dict | None = None) -> None:
    """Write a safetensors state dict (atomically), with string metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    atomic_write_bytes(path, save(state, metadata=meta))


def read_state(path: Path, where: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{where}: {path} is not a readable safetensors file ({error})") from None


def load_state_into(model: nn.Module, path: Path, where: str, state: dict | None = None) -> nn.Module:
    state = read_state(path, where) if state is None else state
    try:
        model.load_state_dict(state)
    except RuntimeError:
        raise CheckpointError(f"{where}: {path} does not fit the architecture: {_mismatch(model, state)}") from None
    return model


def _mismatch(model: nn.Module, state: dict) -> str:
    """One line: how a state dict differs from a model's (counts and the first example of each)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    parts = []
    if resized:
        key = resized[0]
        parts.append(f"{len(resized)} tensor(s) of another shape (first: {key} is {tuple(state[key].shape)} in the "
                     f"file, {expected[key]} in the model)")
    if missing:
        parts.append(f"{len(missing)} missing (first: {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {unexpected[0]})")
    return "; ".join(parts) or "the tensors do not load"


def _safetensors_teacher(spec, path: Path, in_shape, num_classes: int, where: str) -> nn.Module:
    """A zoo model (``spec.model``) with the file's weights."""
    state = read_state(path, where)
    classifier = state.get("classifier.weight")  # zoo models name their last layer "classifier"
    if classifier is not None and classifier.shape[0] != num_classes:
        raise CheckpointError(f"{where}: {path}: the model outputs {classifier.shape[0]} classes per sample "
                              f"but the dataset has {num_classes} classes")
    model = build_model(spec.model, in_shape, num_classes, spec.model_args)
    load_state_into(model, path, where, state)
    return model


def _torchscript_teacher(spec, path: Path, in_shape, num_classes: int, where: str) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as error:
        raise CheckpointError(f"{where}: {path} is not a loadable TorchScript file ({error})") from None


def _onnx_teacher(spec, path: Path, in_shape, num_classes: int, where: str) -> nn.Module:
    return OnnxTeacher(path, where)  # a black box: logits only


# classifier teacher files by format (language-model formats, gguf and hf, load in models.hf):
# a new format is one function and one line here
TEACHER_LOADERS = {
    "safetensors": _safetensors_teacher,
    "torchscript": _torchscript_teacher,
    "onnx": _onnx_teacher,
}


def load_teacher(spec, in_shape, num_classes: int, where: str = "teacher") -> tuple[nn.Module, str]:
    """(model in eval mode, checksum of the weights). ``spec`` is a TeacherSpec with a checkpoint."""
    path = spec.checkpoint
    if path is None:
        raise ValueError("load_teacher needs a TeacherSpec with a checkpoint; train the teacher first")
    fmt = spec.resolved_format
    if fmt not in TEACHER_LOADERS:
        raise CheckpointError(f"{where}.format: {fmt} files are language models; an image classifier teacher is "
                              f"one of: {', '.join(TEACHER_LOADERS)}")
    model = TEACHER_LOADERS[fmt](spec, path, in_shape, num_classes, f"{where}.checkpoint")
    model.eval()
    _check_finite(model, f"{where}.checkpoint: {path}")
    _check_output(model, in_shape, num_classes, f"{where}.checkpoint: {path}")
    return model, file_checksum(path)


def _check_finite(model: nn.Module, where: str) -> None:
    """Weights with NaN or infinity make every output NaN: refuse them by name."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{where}: weight {name} holds NaN or infinite values")


def _check_output(model: nn.Module, in_shape, num_classes: int, where: str) -> None:
    """Run a batch of two zero inputs: the teacher must give (2, num_classes) logits."""
    batch = (2, *in_shape)
    try:
        with torch.no_grad():
            out = model(torch.zeros(batch))
    except Exception as error:  # a foreign model may raise anything on a wrong input shape
        raise CheckpointError(
            f"{where}: the model fails on a batch of shape {batch} (it must accept any batch size): {error}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise CheckpointError(f"{where}: the model returns {type(out).__name__}, expected one tensor of logits")
    if out.dim() != 2 or out.shape[0] != batch[0]:
        raise CheckpointError(
            f"{where}: the model outputs shape {tuple(out.shape)} for a batch of shape {batch}; "
            f"expected ({batch[0]}, {num_classes}) logits"
        )
    if not torch.isfinite(out).all():
        raise CheckpointError(f"{where}: the model outputs NaN or infinite values for a batch of zeros")
    if out.shape[1] != num_classes:
        raise CheckpointError(
            f"{where}: the model outputs {out.shape[1]} classes per sample but the dataset has {num_classes} classes"
        )
