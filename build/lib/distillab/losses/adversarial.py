"""Losses of the adversarial strategies: discriminator, generator, Gaussian KL, R1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillab.losses.base import _reduce


def discriminator_bce(real_scores, fake_scores, reduction: str = "mean"):
    """Standard GAN discriminator loss -log D(real) - log(1 - D(fake)), D = sigmoid(score).

    real_scores, fake_scores: (B,) raw scores (logits of "real"). Per sample the two terms
    are summed. Returns a scalar, or (B,) with reduction="none".
    """
    return _reduce(F.softplus(-real_scores) + F.softplus(fake_scores), reduction)


def generator_nonsaturating(fake_scores, reduction: str = "mean"):
    """Non-saturating generator loss -log D(fake) = softplus(-score) (Goodfellow et al. 2014).

    fake_scores: (B,) raw discriminator scores of generated samples. Returns a scalar or (B,).
    """
    return _reduce(F.softplus(-fake_scores), reduction)


def gaussian_kl(mu, logvar, reduction: str = "mean"):
    """KL(N(mu, exp(logvar)) || N(0, I)) of a diagonal Gaussian, summed over the latent.

    mu, logvar: (B, Z). Per sample 1/2 * sum(mu^2 + exp(logvar) - logvar - 1) (Kingma &
    Welling 2014). Returns a scalar, or (B,) with reduction="none".
    """
    return _reduce(0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1), reduction)


def r1_penalty(real_scores, real_inputs, reduction: str = "mean"):
    """R1 gradient penalty (Mescheder et al. 2018): 1/2 * ||d score / d x||^2 on real samples.

    real_inputs (B, D) must require grad and real_scores (B,) be computed from them. The graph
    is kept (create_graph) so the penalty itself can be backpropagated. Returns a scalar or (B,).
    """
    (grad,) = torch.autograd.grad(real_scores.sum(), real_inputs, create_graph=True)  # (B, D)
    return _reduce(0.5 * grad.flatten(1).pow(2).sum(-1), reduction)
