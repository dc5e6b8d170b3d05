"""What every loss shares: the reduction over samples or counted tokens."""

from __future__ import annotations

import torch


def _reduce(per_sample: torch.Tensor, reduction: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    if mask is not None:
        keep = mask.to(per_sample.dtype)  # (...,) 1 where counted
        per_sample = per_sample * keep
        if reduction == "mean":
            return per_sample.sum() / keep.sum().clamp_min(1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
