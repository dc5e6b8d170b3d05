"""A teacher fed the inputs it was trained on.

The student and the cache see the dataset's normalised inputs, ``(raw * scale - mean) / std``
with the training set's statistics. A teacher trained elsewhere may expect the raw values, or
its own normalisation: ``TeacherInputs`` undoes the student's normalisation and applies the
teacher's, inside the teacher, so every path that runs the teacher (the cache fill, online
strategies, evaluation) feeds it the same thing.
"""

from __future__ import annotations

import torch
from torch import nn


def _column(values, like: torch.Tensor) -> torch.Tensor:
    """Per-channel ``values`` shaped to broadcast over ``like`` (B, C, ...): (1, C, 1, ...)."""
    tensor = torch.tensor(list(values) or [0.0], dtype=torch.float32, device=like.device)
    if len(tensor) == 1:
        tensor = tensor.expand(like.shape[1])
    return tensor.view(1, -1, *([1] * (like.dim() - 2)))


class TeacherInputs(nn.Module):
    """``teacher`` applied to normalised inputs (B, C, H, W) converted to its own convention:
    ``"raw"`` (stored values) or ``(scale, mean, std)`` (per channel, on the stored values)."""

    def __init__(self, teacher: nn.Module, normalize, convention):
        super().__init__()
        self.teacher = teacher
        self.convention = convention
        self.normalize = normalize

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        if not self.normalize.mean:  # identity: the data is used as stored
            return x
        return (x * _column(self.normalize.std, x) + _column(self.normalize.mean, x)) / self.normalize.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self._raw(x)
        if self.convention == "raw":
            return self.teacher(raw)
        scale, mean, std = self.convention
        return self.teacher((raw * scale - _column(mean, raw)) / _column(std, raw))


def with_input_convention(teacher: nn.Module, normalize, teacher_input) -> nn.Module:
    """``teacher`` unchanged for "normalized", else wrapped to receive its own convention."""
    if teacher_input == "normalized":
        return teacher
    if isinstance(teacher_input, str):
        return TeacherInputs(teacher, normalize, teacher_input).eval()
    return TeacherInputs(teacher, normalize, (teacher_input.scale, teacher_input.mean, teacher_input.std)).eval()
