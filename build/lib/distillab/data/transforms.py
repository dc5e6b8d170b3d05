"""Batch transforms in torch: normalisation, random crop with padding, horizontal flip.

An augmentation is split in two: *parameters* drawn from a seeded generator
(``draw_augment_params``) and their *application* (``apply_augment``). The teacher-output
cache stores the parameters of each view, so the student is shown exactly the view
whose teacher outputs were cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0  # pixels of zero padding before a random crop back to (H, W)
    hflip: bool = False
    mix: str = "none"  # "mixup" or "cutmix": each image is mixed with a partner image
    mix_alpha: float = 1.0  # the mixing weight lam ~ Beta(alpha, alpha)

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip or self.mixing

    @property
    def mixing(self) -> bool:
        return self.mix != "none"

    def describe(self) -> str:
        mix = f",mix={self.mix},mix_alpha={self.mix_alpha:g}" if self.mixing else ""
        return f"crop_padding={self.crop_padding},hflip={self.hflip}{mix}"


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


MIX_COLUMNS = 5  # lam, then the cutmix box y0, y1, x0, x1 (zeros for mixup)


def draw_mix_params(augment: Augment, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 5) float32 mixing of n images with their partners: the weight lam of the image
    itself (~ Beta(alpha, alpha)) and, for cutmix, the pasted box, with lam corrected to the
    share of pixels the image keeps (Yun et al. 2019)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    lam = rng.beta(augment.mix_alpha, augment.mix_alpha, n)
    out = np.zeros((n, MIX_COLUMNS), dtype=np.float32)
    out[:, 0] = lam
    if augment.mix == "cutmix":
        ratio = np.sqrt(1.0 - lam)
        cut_h, cut_w = (height * ratio).astype(int), (width * ratio).astype(int)
        cy, cx = rng.integers(0, height, n), rng.integers(0, width, n)
        y0, y1 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        x0, x1 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        out[:, 0] = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
        out[:, 1:] = np.stack([y0, y1, x0, x1], axis=1)
    return torch.from_numpy(out)


def apply_mix(images: torch.Tensor, partners: torch.Tensor, mix: torch.Tensor, kind: str) -> torch.Tensor:
    """Mix images (B, C, H, W) with their partners (B, C, H, W) by ``mix`` (B, 5): a weighted
    sum for mixup, the partner's box pasted in for cutmix. Returns float images on the raw scale."""
    images, partners = images.float(), partners.float()
    if kind == "mixup":
        lam = mix[:, 0].view(-1, 1, 1, 1)
        return lam * images + (1 - lam) * partners
    _, _, H, W = images.shape
    box = mix[:, 1:].long()  # (B, 4) y0, y1, x0, x1
    rows, cols = torch.arange(H).view(1, H, 1), torch.arange(W).view(1, 1, W)
    inside = ((rows >= box[:, 0, None, None]) & (rows < box[:, 1, None, None])
              & (cols >= box[:, 2, None, None]) & (cols < box[:, 3, None, None]))  # (B, H, W)
    return torch.where(inside[:, None], partners, images)


def augmented(augment: Augment, images: torch.Tensor, params: torch.Tensor, partners: torch.Tensor | None = None,
              partner_params: torch.Tensor | None = None, mix: torch.Tensor | None = None) -> torch.Tensor:
    """The training view of raw images (B, C, H, W): crop and flip by ``params`` (B, 3), then,
    when the augmentation mixes, mixed with the partner images cropped and flipped by theirs.
    The cache fill and the training loop both build views here, so they are the same view.
    Without augmentation the inputs pass unchanged (any shape: feature vectors stay flat)."""
    if not augment.enabled:
        return images
    out = apply_augment(images, params, augment.crop_padding)
    if augment.mixing:
        out = apply_mix(out, apply_augment(partners, partner_params, augment.crop_padding), mix, augment.mix)
    return out


@dataclass(frozen=True)
class Normalize:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float  # 1/255 for uint8 images, 1 for float images

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if not self.mean:  # identity (a user's tensors, used as given)
            return images.float() if images.is_floating_point() else images
        x = images.float() * self.scale
        shape = (1, -1, *([1] * (x.dim() - 2)))  # per channel (B, C, H, W), per feature (B, D)
        mean = torch.tensor(self.mean).view(shape)
        std = torch.tensor(self.std).view(shape)
        return (x - mean) / std

    def describe(self) -> str:
        if not self.mean:
            return "identity"
        return f"scale={self.scale:.6g},mean={[round(m, 6) for m in self.mean]},std={[round(s, 6) for s in self.std]}"


def fit_normalize(images: torch.Tensor) -> Normalize:
    """Per-channel mean and std of a (N, C, H, W) training set; per feature of (N, D) vectors."""
    scale = 1 / 255 if images.dtype == torch.uint8 else 1.0
    x = images[:20000].float() * scale
    dims = tuple(d for d in range(x.dim()) if d != 1)
    mean = x.mean(dim=dims)
    std = x.std(dim=dims).clamp_min(1e-6)
    return Normalize(tuple(mean.tolist()), tuple(std.tolist()), scale)
