"""The deployed adaptive model: G writes per-input weights and the student runs with them.

The student is any zoo module. It runs functionally (``torch.func.functional_call``) under
``torch.func.vmap`` over the batch, so every input gets its own weights without a Python
loop: vmap turns a convolution with per-sample weights into one grouped convolution. When G
only scales output channels (``modulate`` with rank 0), inference without gradients takes
an exact shortcut: an ordinary forward pass whose layer outputs are rescaled per input.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from distillab.adaptive.generator import WeightGenerator


class AdaptiveStudent(nn.Module):
    """``student`` (the base weights) plus ``generator``. Until ``activate()`` it is the plain
    student (the static-distillation phase trains it); afterwards every forward pass goes
    through G. Once active, the student's BatchNorm layers stay in eval mode (their
    statistics come from the static phase), which also keeps the vmapped forward pure."""

    def __init__(self, student: nn.Module, generator: WeightGenerator, finetune_base: bool = False):
        super().__init__()
        self.student = student
        self.generator = generator
        self.finetune_base = finetune_base
        self.register_buffer("active", torch.zeros((), dtype=torch.bool))

    @property
    def is_active(self) -> bool:
        return bool(self.active)

    def activate(self) -> None:
        """Switch to generated weights, with G restarted from the current base weights."""
        self.active.fill_(True)
        self.generator.reset_to(self.base_parameters())
        self.student.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.is_active:
            self.student.eval()
        return self

    def _load_from_state_dict(self, *args, **kwargs):  # a loaded active model keeps BatchNorm frozen
        super()._load_from_state_dict(*args, **kwargs)
        if self.is_active:
            self.student.eval()

    def base_parameters(self) -> dict[str, torch.Tensor]:
        """The shared student parameters; detached unless ``finetune_base``."""
        return {name: p if self.finetune_base else p.detach() for name, p in self.student.named_parameters()}

    def generate(self, inputs, sample: bool = False):
        """(weights {name: (B, *shape)}, mu, logvar) for a batch of inputs."""
        raw, mu, logvar = self.generator(inputs, sample=sample)
        return self.generator.weights(raw, self.base_parameters()), mu, logvar

    def run_student(self, inputs, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, K) logits: sample b runs the student with ``weights[name][b]`` for the
        generated parameters and the shared base for the rest."""
        shared = {name: p for name, p in self.base_parameters().items() if name not in weights}
        shared.update(dict(self.student.named_buffers()))

        def one(sample_weights, x):  # x (C, H, W) -> (K,)
            return functional_call(self.student, {**shared, **sample_weights}, (x.unsqueeze(0),)).squeeze(0)

        return vmap(one)(weights, inputs)

    def run_scaled(self, inputs, scales: dict[str, torch.Tensor]) -> torch.Tensor:
        """The same logits as ``run_student`` with weights W * (1 + s), computed without
        per-input weights: a convolution or linear map is linear in W, so
        layer(x; W * (1 + s)) = (layer(x; W) - b) * (1 + s) + b, a per-channel rescaling of
        an ordinary batched forward pass. Inference only (the base weights are not detached)."""

        def rescale(scale):
            def hook(module, args, out):
                shape = (out.shape[0], out.shape[1]) + (1,) * (out.dim() - 2)
                factor = (1 + scale).reshape(shape)
                if module.bias is None:
                    return out * factor
                bias = module.bias.reshape((1, -1) + (1,) * (out.dim() - 2))
                return (out - bias) * factor + bias
            return hook

        handles = [self.student.get_submodule(name).register_forward_hook(rescale(scale))
                   for name, scale in scales.items()]
        try:
            return self.student(inputs)
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, inputs):  # (B, C, H, W) -> (B, K)
        if not self.is_active:
            return self.student(inputs)
        raw, _, _ = self.generator(inputs)
        if self.generator.scales_only and not torch.is_grad_enabled():
            return self.run_scaled(inputs, self.generator.channel_scales(raw))
        return self.run_student(inputs, self.generator.weights(raw, self.base_parameters()))
