"""A small GAN critic shared by the adversarial strategies (``adversarial``, ``adaptive_v2``
and its pipeline), with its training step and the student's adversarial term."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from distillab import losses


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


def input_condition(inputs: torch.Tensor, dims: int) -> torch.Tensor | None:
    """(B, dims): the input average-pooled, the critic's optional condition; None if dims=0."""
    if not dims:
        return None
    flat = inputs.detach().float().flatten(1)
    return F.adaptive_avg_pool1d(flat[:, None], dims)[:, 0]


def join_condition(probs, condition):
    """The critic's input: (B, K) probabilities, with the (B, E) condition appended if any."""
    return probs if condition is None else torch.cat([probs, condition], 1)


def critic_step(critic, optimizer, teacher_logits, student_logits, condition, temperature: float, steps: int = 1,
                gradient_penalty: float = 0.0) -> dict[str, float]:
    """``steps`` updates of the critic: the teacher's softened distribution is "real", the
    student's "fake" (both detached), each joined with the input condition; with
    ``gradient_penalty`` > 0, plus that times R1 on the real inputs."""
    teacher_probs = F.softmax(teacher_logits.detach().float() / temperature, -1)  # (B, K)
    fake = join_condition(F.softmax(student_logits.detach().float() / temperature, -1), condition)
    count = len(teacher_probs)
    for _ in range(steps):
        real = teacher_probs.detach().requires_grad_(gradient_penalty > 0)
        scores = critic(torch.cat([join_condition(real, condition), fake]))  # (2B,): one forward, one power iteration
        real_scores, fake_scores = scores[:count], scores[count:]
        loss = losses.discriminator_bce(real_scores, fake_scores)
        if gradient_penalty > 0:
            loss = loss + gradient_penalty * losses.r1_penalty(real_scores, real)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return {"d_loss": loss.item(),
            "d_output_accuracy": ((real_scores > 0).float().mean() + (fake_scores < 0).float().mean()).item() / 2}


def critic_loss(critic, student_logits, condition, temperature: float) -> torch.Tensor:
    """-log D(p_s): what the student minimises; the critic gets no gradient from it."""
    critic.requires_grad_(False)
    try:
        probs = F.softmax(student_logits.float() / temperature, -1)
        return losses.generator_nonsaturating(critic(join_condition(probs, condition)))
    finally:
        critic.requires_grad_(True)
