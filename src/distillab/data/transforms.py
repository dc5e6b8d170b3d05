"""Batch transforms in torch: normalisation, random crop with padding, horizontal flip.

An augmentation is split in two: *parameters* drawn from a seeded generator
(``draw_augment_params``) and their *application* (``apply_augment``). The teacher-output
cache stores the parameters of each view, so the student is shown exactly the view
whose teacher outputs were cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0  # pixels of zero padding before a random crop back to (H, W)
    hflip: bool = False

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def describe(self) -> str:
        return f"crop_padding={self.crop_padding},hflip={self.hflip}"


def draw_augment_params(augment: Augment, n: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 3) int16: crop offset dy, crop offset dx (each in [0, 2 * padding]) and flip (0/1)."""
    p = augment.crop_padding
    offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator) if p else torch.full((n, 2), p)
    flips = torch.randint(0, 2, (n, 1), generator=generator) if augment.hflip else torch.zeros(n, 1, dtype=torch.long)
    return torch.cat([offsets, flips], dim=1).to(torch.int16)


def apply_augment(images: torch.Tensor, params: torch.Tensor, padding: int) -> torch.Tensor:
    """Apply per-sample crop offsets and flips. images (B, C, H, W), params (B, 3)."""
    B, C, H, W = images.shape
    params = params.long()
    if padding:
        padded = F.pad(images, (padding, padding, padding, padding))  # (B, C, H+2p, W+2p)
        rows = params[:, 0, None] + torch.arange(H)  # (B, H)
        cols = params[:, 1, None] + torch.arange(W)  # (B, W)
        batch = torch.arange(B)[:, None, None]
        # advanced indexing over (batch, row, col) gives (B, H, W, C); move C back
        images = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    flip = params[:, 2].bool()
    if flip.any():
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images.contiguous()


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float  # 1/255 for uint8 images, 1 for float images

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() * self.scale
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std

    def describe(self) -> str:
        return f"scale={self.scale:.6g},mean={[round(m, 6) for m in self.mean]},std={[round(s, 6) for s in self.std]}"


def fit_normalize(images: torch.Tensor) -> Normalize:
    """Per-channel mean and std of a (N, C, H, W) training set."""
    scale = 1 / 255 if images.dtype == torch.uint8 else 1.0
    x = images[:20000].float() * scale
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return Normalize(tuple(mean.tolist()), tuple(std.tolist()), scale)
