"""The generator G of the adaptive distiller: a VAE whose decoder writes student weights.

The encoder maps an input to a diagonal Gaussian over a small latent (mu, log-variance,
reparameterisation); the decoder maps the latent to the weights of chosen student layers,
so the latent is a compressed code of the student's weights for that input.

Two modes, because writing every weight per input is expensive:

- ``full``: the decoder writes the complete weight (and bias) of each chosen layer. Meant
  for small layers; the default is the student's last ``Linear`` (970 numbers for
  ``cnn_small`` on ten classes). Its output bias starts at the base student's weights, so G
  starts from the static student and learns per-input departures from it.
- ``modulate``: every chosen layer keeps a shared base weight (from a statically distilled
  student) and the decoder writes a per-input, per-output-channel scale ``s`` and, with
  ``rank`` > 0, low-rank factors ``U`` (O, r) and ``V`` (I, r):

      W(x) = W_base * (1 + s(x))  +  std(W_base) / sqrt(r) * U(x) V(x)^T   (reshaped to W's shape)

  The default chooses every ``Conv2d`` and ``Linear`` layer. The decoder's last layer
  starts at zero (``s = 0``, ``U = 0``), so the untrained G reproduces the base student.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from distillab.errors import SpecError, close_matches

MODES = ("modulate", "full")
GENERATED_TYPES = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Slot:
    """One block of the decoder's output: which parameter, what it means, where it sits."""

    param: str  # student parameter name, e.g. "classifier.weight"
    kind: str  # "full", "scale", "u" or "v"
    start: int
    shape: tuple[int, ...]  # per-sample shape of this block

    @property
    def end(self) -> int:
        return self.start + math.prod(self.shape)


def generatable_layers(student: nn.Module) -> list[str]:
    """Module paths of the student's layers that G can write (Conv2d and Linear)."""
    return [name for name, module in student.named_modules() if isinstance(module, GENERATED_TYPES)]


def choose_layers(student: nn.Module, mode: str, layers: list[str] | None, where: str) -> list[str]:
    """The layers G writes: the given ones (checked), or the mode's default."""
    available = generatable_layers(student)
    if not available:
        raise SpecError(f"{where}: the student has no Conv2d or Linear layer for the generator to write")
    if not layers:
        if mode == "full":
            linear = [name for name in available if isinstance(student.get_submodule(name), nn.Linear)]
            return [(linear or available)[-1]]
        return available
    if len(set(layers)) != len(layers):
        raise SpecError(f"{where}: a layer is named twice: {layers}")
    for index, name in enumerate(layers):
        if name not in available:
            raise SpecError(f"{where}.{index}: {name!r} is not a Conv2d or Linear layer of the student"
                            f"{close_matches(name, available)}")
    return list(layers)


class WeightGenerator(nn.Module):
    """G: input (B, C, H, W) -> per-input weights for the chosen student layers."""

    def __init__(self, student: nn.Module, in_shape, mode: str = "modulate", layers: list[str] | None = None,
                 latent_dims: int = 16, hidden: int = 64, rank: int = 0, encoder_channels=(16, 32)):
        super().__init__()
        if mode not in MODES:
            raise SpecError(f"adaptive mode must be one of {MODES}, got {mode!r}")
        if mode == "full" and rank:
            raise SpecError("strategy.params.rank: low-rank updates exist only in modulate mode (full mode writes "
                            "whole weights); set rank: 0")
        self.mode, self.rank, self.latent_dims = mode, rank, latent_dims
        self.layers = choose_layers(student, mode, layers, "strategy.params.layers")
        self.slots = self._layout(student)
        self.out_features = self.slots[-1].end

        c_in = in_shape[0]
        blocks: list[nn.Module] = []
        for channels in encoder_channels:
            blocks += [nn.Conv2d(c_in, channels, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c_in = channels
        self.encoder = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.to_latent = nn.Linear(c_in, 2 * latent_dims)  # -> (mu, logvar)
        self.decoder = nn.Sequential(nn.Linear(latent_dims, hidden), nn.ReLU(inplace=True),
                                     nn.Linear(hidden, self.out_features))
        nn.init.zeros_(self.decoder[-1].weight)
        self.reset_to(dict(student.named_parameters()))

    def _layout(self, student: nn.Module) -> list[Slot]:
        slots, start = [], 0

        def add(param, kind, shape):
            nonlocal start
            slots.append(Slot(param, kind, start, tuple(shape)))
            start = slots[-1].end

        for name in self.layers:
            module = student.get_submodule(name)
            weight = module.weight  # (O, I, kh, kw) or (O, I)
            if self.mode == "full":
                add(f"{name}.weight", "full", weight.shape)
                if module.bias is not None:
                    add(f"{name}.bias", "full", module.bias.shape)
            else:
                add(f"{name}.weight", "scale", (weight.shape[0],))
                if self.rank:
                    add(f"{name}.weight", "u", (weight.shape[0], self.rank))
                    add(f"{name}.weight", "v", (weight[0].numel(), self.rank))
        return slots

    @torch.no_grad()
    def reset_to(self, base: dict[str, torch.Tensor]) -> None:
        """Start from the base student: in ``full`` mode the decoder's output bias becomes the
        base weights; in ``modulate`` mode it is zero, except V, which gets a random start
        so that U receives gradients."""
        bias = self.decoder[-1].bias
        for slot in self.slots:
            block = bias[slot.start:slot.end]
            if slot.kind == "full":
                block.copy_(base[slot.param].detach().flatten())
            elif slot.kind == "v":
                block.copy_(torch.randn(block.shape) / math.sqrt(slot.shape[0]))
            else:
                block.zero_()

    def encode(self, inputs):  # (B, C, H, W) -> mu, logvar (B, Z)
        mu, logvar = self.to_latent(self.encoder(inputs)).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    def forward(self, inputs, sample: bool = False):
        """(decoder output (B, out_features), mu, logvar). ``sample`` draws z = mu + sigma * eps
        (training); otherwise z = mu, so inference is deterministic."""
        mu, logvar = self.encode(inputs)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return self.decoder(z), mu, logvar

    def weights(self, raw: torch.Tensor, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-input parameters {name: (B, *shape)} for the chosen layers, from the decoder
        output ``raw`` (B, out_features) and the base student's parameters."""
        B = raw.shape[0]
        blocks: dict[str, dict[str, torch.Tensor]] = {}
        for slot in self.slots:
            blocks.setdefault(slot.param, {})[slot.kind] = raw[:, slot.start:slot.end].reshape(B, *slot.shape)
        out = {}
        for param, parts in blocks.items():
            if "full" in parts:
                out[param] = parts["full"]
                continue
            weight = base[param]  # (O, ...)
            scale = (1 + parts["scale"]).reshape(B, weight.shape[0], *[1] * (weight.dim() - 1))
            generated = weight.unsqueeze(0) * scale  # (B, O, ...)
            if "u" in parts:
                delta = torch.bmm(parts["u"], parts["v"].transpose(1, 2))  # (B, O, I)
                spread = weight.detach().std() / math.sqrt(self.rank)
                generated = generated + spread * delta.reshape(B, *weight.shape)
            out[param] = generated
        return out

    @property
    def scales_only(self) -> bool:
        """True when every generated weight is a base weight scaled per output channel."""
        return self.mode == "modulate" and self.rank == 0

    def channel_scales(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        """{module path: s (B, O)} of a ``scales_only`` generator's output."""
        return {slot.param.rsplit(".", 1)[0]: raw[:, slot.start:slot.end] for slot in self.slots}

    def describe(self) -> dict:
        return {"mode": self.mode, "layers": self.layers, "latent_dims": self.latent_dims, "rank": self.rank,
                "hidden": self.decoder[0].out_features, "out_features": self.out_features,
                "encoder_channels": [m.out_channels for m in self.encoder if isinstance(m, nn.Conv2d)]}
