"""A small GAN critic shared by the adversarial strategies."""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class Critic(nn.Module):
    """MLP with spectral norm on every linear layer (Miyato et al. 2018); a score > 0
    means "real". (B, in_features) -> (B,)."""

    def __init__(self, in_features: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            spectral_norm(nn.Linear(in_features, hidden)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(hidden, hidden)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Linear(hidden, 1)),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)
