"""The multi-head discriminator D of the adaptive distiller.

Three heads, each a spectral-norm MLP critic trained with the GAN loss (score > 0 means
"real"):

- ``output``: teacher vs. student output distributions, softmax(logits / T), optionally
  joined with a pooled input as the condition;
- ``weights``: how reasonable generated weights look, from per-layer statistics of their
  values (log mean |w|, log std, soft sparsity, excess kurtosis, log quantiles of |w|),
  where "real" is the reference student's weights (the statically distilled base);
- ``complexity``: per-layer log Frobenius norm and effective rank (Roy & Vetterli 2007,
  exp of the entropy of the normalised singular values) of the weight matrices, again
  against the reference.

A single weight tensor is one point, so the real side is made a distribution the same way
as the fake side: each sample's statistics come from a random subset of the weights
(``weight_samples`` values for the value statistics, half the input columns for the
complexity features).
"""

from __future__ import annotations

import torch
from torch import nn

from distillab.models.critic import Critic

WEIGHT_STATS = 6
COMPLEXITY_STATS = 2
EPS = 1e-8


def weight_statistics(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B, 6) differentiable statistics of (B, N) weight values; ``scale`` (a scalar, the
    reference mean |w|) makes them unit-free. Computed in fp32: under bf16 autocast the
    generated weights arrive in bf16, which ``quantile`` refuses and which is too coarse here."""
    values = values.float()
    magnitude = values.abs()
    mean_abs = magnitude.mean(1)
    std = values.std(1)
    sparsity = torch.sigmoid((0.1 * scale - magnitude) / (0.02 * scale)).mean(1)  # share with |w| < 0.1 * scale
    standardized = (values - values.mean(1, keepdim=True)) / (std[:, None] + EPS)
    kurtosis = (standardized.pow(4).mean(1) - 3).clamp(-10, 10) / 10
    quantiles = torch.quantile(magnitude, torch.tensor([0.5, 0.9], device=values.device), dim=1).T  # (B, 2)
    return torch.cat([
        torch.stack([torch.log(mean_abs / scale + EPS), torch.log(std / scale + EPS), sparsity, kurtosis], 1),
        torch.log(quantiles / scale + EPS),
    ], 1)


def singular_values(matrices: torch.Tensor) -> torch.Tensor:
    """(B, min(O, I)) singular values of (B, O, I) matrices, from the eigenvalues of the
    smaller Gram matrix (several times faster than an SVD on the CPU). In fp32 even under
    bf16 autocast: ``eigvalsh`` has no bf16 kernel."""
    matrices = matrices.float()
    with torch.autocast(matrices.device.type, enabled=False):
        gram = matrices @ matrices.transpose(1, 2) if matrices.shape[1] <= matrices.shape[2] \
            else matrices.transpose(1, 2) @ matrices
        return torch.linalg.eigvalsh(gram).clamp_min(0).add(EPS).sqrt()


def complexity_statistics(matrices: torch.Tensor, fro_scale: torch.Tensor, rank_scale: torch.Tensor) -> torch.Tensor:
    """(B, 2): log Frobenius norm and effective rank of (B, O, I) matrices, relative to the
    reference's."""
    fro = matrices.flatten(1).norm(dim=1)
    singular = singular_values(matrices)  # (B, min(O, I))
    share = singular / (singular.sum(1, keepdim=True) + EPS)
    effective_rank = torch.exp(-(share * torch.log(share + EPS)).sum(1))
    return torch.stack([torch.log(fro / fro_scale + EPS), effective_rank / rank_scale], 1)


def _as_matrix(weight: torch.Tensor) -> torch.Tensor:  # (B, O, ...) -> (B, O, I)
    return weight.reshape(weight.shape[0], weight.shape[1], -1)


class MultiHeadDiscriminator(nn.Module):
    """D with ``output``, ``weights`` and ``complexity`` heads; ``reference`` holds the
    base student's weights for the parameters G writes."""

    def __init__(self, num_classes: int, condition_dims: int, reference: dict[str, torch.Tensor],
                 hidden: int = 128, weight_samples: int = 1024):
        super().__init__()
        self.params = list(reference)
        self.weight_samples = weight_samples
        self.output = Critic(num_classes + condition_dims, hidden)
        self.weights = Critic(WEIGHT_STATS * len(self.params), max(16, hidden // 2))
        self.complexity = Critic(COMPLEXITY_STATS * len(self.params), max(16, hidden // 2))
        for index, name in enumerate(self.params):
            self.register_buffer(f"reference_{index}", reference[name].detach().clone())
        self._scales()

    def set_reference(self, reference: dict[str, torch.Tensor]) -> None:
        for index, name in enumerate(self.params):
            getattr(self, f"reference_{index}").copy_(reference[name].detach())
        self._scales()

    def _scales(self):
        self._scale = {}
        with torch.no_grad():
            for index, name in enumerate(self.params):
                weight = getattr(self, f"reference_{index}")
                matrix = _as_matrix(weight.unsqueeze(0))
                half = matrix[:, :, : max(1, matrix.shape[2] // 2)]
                singular = singular_values(half)
                share = singular / singular.sum(1, keepdim=True)
                rank = torch.exp(-(share * torch.log(share + EPS)).sum(1))[0]
                self._scale[name] = (weight.abs().mean() + EPS, half.flatten(1).norm(dim=1)[0] + EPS, rank)

    def _apply(self, fn, *args, **kwargs):  # keep the cached scales on the module's device
        out = super()._apply(fn, *args, **kwargs)
        self._scales()
        return out

    def _load_from_state_dict(self, *args, **kwargs):  # also when a parent module loads a state dict
        super()._load_from_state_dict(*args, **kwargs)
        self._scales()

    def reference(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"reference_{index}") for index, name in enumerate(self.params)}

    def weight_features(self, weights: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        """(value statistics (B, 6L), complexity statistics (B, 2L)) of per-sample weights
        {name: (B, *shape)}, each from a random subset of the weights."""
        value_stats, complexity_stats = [], []
        for name in self.params:
            weight = weights[name]
            B, device = weight.shape[0], weight.device
            flat = weight.reshape(B, -1)
            k = min(self.weight_samples, flat.shape[1])
            rows = torch.randint(0, flat.shape[1], (B, k), generator=generator).to(device)
            mean_abs, fro, rank = self._scale[name]
            value_stats.append(weight_statistics(flat.gather(1, rows), mean_abs))
            matrix = _as_matrix(weight)  # (B, O, I)
            half = max(1, matrix.shape[2] // 2)
            columns = torch.rand(B, matrix.shape[2], generator=generator).argsort(1)[:, :half].to(device)
            subset = matrix.gather(2, columns[:, None, :].expand(B, matrix.shape[1], half))
            complexity_stats.append(complexity_statistics(subset, fro, rank))
        return torch.cat(value_stats, 1), torch.cat(complexity_stats, 1)

    def reference_features(self, batch_size: int, generator: torch.Generator | None = None):
        """The "real" side of the weight heads: the reference weights, subsampled as above."""
        reference = {name: w.unsqueeze(0).expand(batch_size, *w.shape) for name, w in self.reference().items()}
        return self.weight_features(reference, generator)
