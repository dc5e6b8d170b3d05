"""Input-conditioned convolutions for adaptive distillation v2: a per-input mixture
of K stored kernels, in the family of CondConv (Yang et al. 2019) and Dynamic Convolution
(Chen et al. 2020).

A ``DynamicConv2d`` replaces one ``Conv2d`` of the student. A cheap router (global average
pool, a small MLP) reads the layer's input and gives each input a softmax over the K experts
at temperature T; the input's kernel is the mixture of the K stored kernels (and biases), so
the mixing weights are a K-number code of that input's weights. Optional per-output-channel
gates (1 + tanh of a second head of the same router, in (0, 2)) scale the activations. The mixture is computed once per
input and applied as one grouped convolution, so the extra cost is parameters (K kernels) and
a few MACs for the router and the mixing, not a second convolution.

T is annealed from about 30 to 1 over the first tenth of training (near-uniform mixing first,
so every expert gets gradient: the "calibration phase"), and is fixed at inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from distillab.errors import SpecError, close_matches


GROUPED_CHUNK = 32  # inputs per grouped convolution (see DynamicConv2d.forward)


def temperature_at(step: int, total_steps: int, start: float = 30.0, end: float = 1.0,
                   fraction: float = 0.1) -> float:
    """Linear from ``start`` to ``end`` over the first ``fraction`` of ``total_steps``, then
    ``end`` (Chen et al. 2020 anneal 30 -> 1 over the first epochs)."""
    ramp = max(1, round(fraction * total_steps))
    if step >= ramp:
        return end
    return start + (end - start) * step / ramp


class DynamicConv2d(nn.Module):
    """``conv`` made input-conditioned: K experts initialised at ``conv``'s kernel (plus a
    little noise, so that they can diverge), a router and optional channel gates."""

    def __init__(self, conv: nn.Conv2d, experts: int = 4, hidden: int | None = None, gates: bool = True,
                 temperature: float = 30.0, noise: float = 0.01, variational: bool = False):
        super().__init__()
        if experts < 1:
            raise SpecError(f"strategy.params.experts: K must be at least 1, got {experts}")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise SpecError("a dynamic convolution needs numeric zero padding")
        self.experts, self.stride, self.padding, self.kernel_size = experts, conv.stride, conv.padding, conv.kernel_size
        self.dilation, self.groups = conv.dilation, conv.groups
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        weight = conv.weight.detach()
        spread = noise * weight.std().clamp(min=1e-8)
        # (K * O, I/g, kh, kw): the K kernels stacked on the output axis, a 4-D tensor like any
        # convolution weight (so that channels_last and the optimisers treat it as one)
        self.weight = nn.Parameter((weight.unsqueeze(0).repeat(experts, 1, 1, 1, 1)
                                    + spread * torch.randn(experts, *weight.shape)).flatten(0, 1))
        self.bias = (nn.Parameter(conv.bias.detach().unsqueeze(0).repeat(experts, 1))
                     if conv.bias is not None else None)  # (K, O)
        hidden = hidden or max(4, conv.in_channels // 4)
        # the router (G for this layer): global average pool, Linear-ReLU, then one Linear whose
        # outputs are the K routing logits (2K with the VAE: mean and log-variance), then the O
        # gate pre-activations: one matrix product for both heads (batch-1 latency is op count)
        self.router = nn.Linear(conv.in_channels, hidden)
        self.variational = variational  # routing logits drawn from N(mu, sigma^2) in training, with a KL
        self.routing_outputs = 2 * experts if variational else experts
        self.gates = gates
        self.head = nn.Linear(hidden, self.routing_outputs + (conv.out_channels if gates else 0))
        if gates:  # gate = 1 + tanh(z) in (0, 2), exactly 1 at z = 0: the layer starts as the static one
            nn.init.zeros_(self.head.weight[self.routing_outputs:])
            nn.init.zeros_(self.head.bias[self.routing_outputs:])
        self.last_kl: torch.Tensor | None = None  # KL(q(logits | x) || N(0, I)) of the last training pass
        self.last_mixing: torch.Tensor | None = None  # the last pass's mixing weights (B, K), for the regularisers
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mixing weights (B, K), gate pre-activations z (B, O) or None; the gates are 1 + tanh(z))
        for a batch of inputs."""
        # F.linear on the parameters: a module call per Linear costs more than its arithmetic at batch 1
        hidden = F.linear(x.mean((2, 3)), self.router.weight, self.router.bias).relu_()  # (B, hidden)
        heads = F.linear(hidden, self.head.weight, self.head.bias)  # (B, K or 2K [+ O])
        if self.gates:
            logits, gates = heads.split([self.routing_outputs, self.out_channels], dim=1)
        else:
            logits, gates = heads, None
        if self.variational:
            mu, logvar = logits.chunk(2, dim=-1)
            logvar = logvar.clamp(-10, 10)
            self.last_kl = 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(-1).mean()
            logits = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        mixing = torch.softmax(logits / self.temperature, dim=-1)
        self.last_mixing = mixing
        return mixing, gates

    @staticmethod
    def gated(out: torch.Tensor, gates: torch.Tensor | None) -> torch.Tensor:
        """out * (1 + tanh(z)) per output channel, as out + out * tanh(z) (one fused op)."""
        return out if gates is None else torch.addcmul(out, out, torch.tanh(gates).view(*gates.shape, 1, 1))

    def mixed(self, mixing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-input kernels (B, O, I/g, kh, kw) and biases (B, O)."""
        # one (B, K) x (K, O*I/g*kh*kw) matrix product over the flattened experts (an einsum
        # over the 5-D view permutes and copies: twice the batch-1 cost)
        weight = (mixing @ self.weight.reshape(self.experts, -1)).reshape(mixing.shape[0], self.out_channels,
                                                                          *self.weight.shape[1:])
        bias = mixing @ self.bias if self.bias is not None else None
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, I, H, W) -> (B, O, H', W')
        if torch.jit.is_tracing():  # ONNX / TorchScript: a graph for any batch size
            return self.forward_unfolded(x)
        mixing, gates = self.route(x)
        batch = x.shape[0]
        if batch == 1:  # an ordinary convolution with this input's kernel
            weight = (mixing @ self.weight.reshape(self.experts, -1)).reshape(self.out_channels, *self.weight.shape[1:])
            bias = (mixing @ self.bias).view(-1) if self.bias is not None else None
            out = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
            return self.gated(out, gates)
        # one grouped convolution per chunk of inputs, sample b with its own kernel: the mixed
        # kernels of a chunk stay in cache, and CPU grouped convolutions slow down past some 64
        # groups (at batch 256 one call over the whole batch takes 3x as long as four of 64)
        outs = []
        for start in range(0, batch, GROUPED_CHUNK):
            xs, ms = x[start : start + GROUPED_CHUNK], mixing[start : start + GROUPED_CHUNK]
            count = xs.shape[0]
            weight, bias = self.mixed(ms)
            out = F.conv2d(xs.reshape(1, count * self.in_channels, *xs.shape[2:]),
                           weight.reshape(count * self.out_channels, *weight.shape[2:]),
                           bias.reshape(-1) if bias is not None else None, self.stride, self.padding, self.dilation,
                           groups=count * self.groups)
            outs.append(out.reshape(count, self.out_channels, *out.shape[2:]))
        return self.gated(outs[0] if len(outs) == 1 else torch.cat(outs), gates)

    def forward_unfolded(self, x: torch.Tensor) -> torch.Tensor:
        """The same output as patches times per-input kernels: ``unfold`` (im2col) and one batched
        matrix product, the same MACs as the convolution. The grouped convolution's group count is
        the batch size, which a traced graph (ONNX, TorchScript) would fix at export; this form
        leaves the batch free, and is what those exports record."""
        mixing, gates = self.route(x)
        weight, bias = self.mixed(mixing)  # (B, O, I/g, kh, kw)
        if self.groups != 1:
            raise SpecError("a dynamic convolution with groups > 1 does not export")
        kh, kw = self.kernel_size
        cols = F.unfold(x, (kh, kw), self.dilation, self.padding, self.stride)  # (B, I*kh*kw, L)
        out = torch.bmm(weight.flatten(2), cols)  # (B, O, L)
        height = (x.shape[2] + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        width = (x.shape[3] + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        out = out.reshape(x.shape[0], self.out_channels, height, width)
        if bias is not None:
            out = out + bias[:, :, None, None]
        return self.gated(out, gates)

    def forward_per_sample(self, x: torch.Tensor) -> torch.Tensor:
        """The same output through ``vmap`` over samples, each an ordinary convolution with
        its own kernel: the reference the grouped path is tested against."""
        mixing, gates = self.route(x)
        weight, bias = self.mixed(mixing)

        def one(w, b, sample):
            return F.conv2d(sample.unsqueeze(0), w, b, self.stride, self.padding, self.dilation, self.groups)[0]

        out = vmap(one)(weight, bias if bias is not None else torch.zeros(x.shape[0], self.out_channels), x)
        return self.gated(out, gates)

    def __getstate__(self):
        # the last pass's mixing and KL belong to its autograd graph: a copy (deepcopy, pickle)
        # starts without them
        return {**super().__getstate__(), "last_mixing": None, "last_kl": None}

    def set_temperature(self, value: float) -> None:
        self.temperature.fill_(value)

    def extra_parameters(self) -> int:
        """Parameters beyond the static convolution's."""
        static = self.weight.numel() // self.experts + (self.bias[0].numel() if self.bias is not None else 0)
        return sum(p.numel() for p in self.parameters()) - static


def dynamic_candidates(student: nn.Module) -> list[str]:
    """Module paths of the student's Conv2d layers with a spatial kernel (what DynamicConv
    replaces; 1x1 and depthwise layers gain little)."""
    return [name for name, module in student.named_modules()
            if isinstance(module, nn.Conv2d) and module.kernel_size != (1, 1) and module.groups == 1]


def make_dynamic(student: nn.Module, layers: list[str] | None = None, experts: int = 4, gates: bool = True,
                 where: str = "strategy.params.layers", variational: bool = False) -> list[str]:
    """Replace the named Conv2d layers of ``student`` (in place; default: its last spatial
    convolution, which beat the last two on validation in ``benchmarks/adaptive_v2.py``) by
    ``DynamicConv2d``; returns their names."""
    candidates = dynamic_candidates(student)
    if not candidates:
        raise SpecError(f"{where}: the student has no spatial Conv2d layer to make dynamic")
    chosen = list(layers) if layers else candidates[-1:]
    for index, name in enumerate(chosen):
        if name not in candidates:
            module = dict(student.named_modules()).get(name)
            kind = f"a {type(module).__name__}" if module is not None else "not a layer"
            raise SpecError(f"{where}.{index}: {name!r} is {kind}, not a spatial Conv2d the student has"
                            f"{close_matches(name, candidates)}")
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = student.get_submodule(parent_name) if parent_name else student
        setattr(parent, child, DynamicConv2d(student.get_submodule(name), experts=experts, gates=gates,
                                             variational=variational))
    return chosen


def dynamic_layers(model: nn.Module) -> list[DynamicConv2d]:
    return [m for m in model.modules() if isinstance(m, DynamicConv2d)]

