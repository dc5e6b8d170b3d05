"""The adaptive distiller's two objectives, shared by offline training (the ``adaptive``
strategy) and on-line calibration (``AdaptivePipeline``).

    L_D = sum over heads h of  BCE(D_h(real), 1) + BCE(D_h(fake), 0)   [+ gamma * R1 on the output head]
    L_G = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(s, y)          (CE only when labels exist)
        + adv_weight        * -log D_output(p_s, e(x))
        + weights_weight    * -log D_weights(stats(W(x)))
        + complexity_weight * -log D_complexity(complexity(W(x)))
        + kl_weight         * KL(q(z | x) || N(0, I))

The output head's "real" is the teacher's softened distribution, the weight heads' "real"
is the statically distilled reference student. A head whose weight is 0 is neither trained
nor used (the ablations switch heads off this way).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillab import losses
from distillab.models.critic import join_condition

CONDITION_DIMS = 64  # the optional input condition: the input average-pooled to at most this


@dataclass(frozen=True)
class Weights:
    temperature: float = 4.0
    alpha: float = 0.9
    adv_weight: float = 0.1
    weights_weight: float = 0.05
    complexity_weight: float = 0.05
    kl_weight: float = 1e-3
    gradient_penalty: float = 0.0
    d_steps: int = 1
    weight_rows: int = 8  # batch rows whose generated weights the weight heads score


def _rows(weights: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {name: w[:n] for name, w in weights.items()}


def discriminator_step(discriminator, optimizer, teacher_logits, student_logits, generated, condition,
                       cfg: Weights, rng: torch.Generator | None = None) -> dict[str, float]:
    """``cfg.d_steps`` Adam steps of D on detached inputs; returns D's loss and accuracy per head.
    ``rng`` draws the weight heads' subsamples (default: torch's global generator)."""
    T = cfg.temperature
    teacher_probs = F.softmax(teacher_logits.detach().float() / T, -1)
    student_probs = F.softmax(student_logits.detach().float() / T, -1)
    generated = {name: w.detach() for name, w in _rows(generated, cfg.weight_rows).items()}
    use_weight_heads = cfg.weights_weight > 0 or cfg.complexity_weight > 0
    logs: dict[str, float] = {}
    for _ in range(cfg.d_steps):
        B = len(teacher_probs)
        real = teacher_probs.requires_grad_(cfg.gradient_penalty > 0)
        scores = discriminator.output(torch.cat([join_condition(real, condition), join_condition(student_probs, condition)]))
        loss = losses.discriminator_bce(scores[:B], scores[B:])
        if cfg.gradient_penalty > 0:
            loss = loss + cfg.gradient_penalty * losses.r1_penalty(scores[:B], real)
        logs["d_output_accuracy"] = ((scores[:B] > 0).float().mean() + (scores[B:] < 0).float().mean()).item() / 2
        if use_weight_heads:
            n = next(iter(generated.values())).shape[0]
            fake_values, fake_complexity = discriminator.weight_features(generated, rng)
            real_values, real_complexity = discriminator.reference_features(n, rng)
            for head, real_x, fake_x, weight in (("weights", real_values, fake_values, cfg.weights_weight),
                                                 ("complexity", real_complexity, fake_complexity,
                                                  cfg.complexity_weight)):
                if weight <= 0:
                    continue
                critic = getattr(discriminator, head)
                head_scores = critic(torch.cat([real_x, fake_x]))
                loss = loss + losses.discriminator_bce(head_scores[:n], head_scores[n:])
                logs[f"d_{head}_accuracy"] = ((head_scores[:n] > 0).float().mean()
                                              + (head_scores[n:] < 0).float().mean()).item() / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        logs["d_loss"] = loss.item()
    return logs


def generator_loss(discriminator, teacher_logits, student_logits, generated, mu, logvar, condition,
                   cfg: Weights, targets: torch.Tensor | None = None,
                   rng: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """L_G and its parts. D's parameters get no gradient from it (they are frozen for the
    call); gradients flow to G through the student's logits and the generated weights."""
    T = cfg.temperature
    teacher_logits = teacher_logits.detach()
    kd = losses.soft_kl(student_logits, teacher_logits, T)
    alpha = cfg.alpha if targets is not None else 1.0
    loss = alpha * kd
    logs = {"kd": kd.item()}
    if targets is not None and alpha < 1:
        hard = losses.cross_entropy(student_logits, targets)
        loss = loss + (1 - alpha) * hard
        logs["hard"] = hard.item()
    vae_kl = losses.gaussian_kl(mu.float(), logvar.float())
    loss = loss + cfg.kl_weight * vae_kl
    logs["vae_kl"] = vae_kl.item()
    discriminator.requires_grad_(False)
    try:
        if cfg.adv_weight > 0:
            student_probs = F.softmax(student_logits.float() / T, -1)
            adv = losses.generator_nonsaturating(discriminator.output(join_condition(student_probs, condition)))
            loss = loss + cfg.adv_weight * adv
            logs["adv_output"] = adv.item()
        if cfg.weights_weight > 0 or cfg.complexity_weight > 0:
            values, complexity = discriminator.weight_features(_rows(generated, cfg.weight_rows), rng)
            for head, features, weight in (("weights", values, cfg.weights_weight),
                                           ("complexity", complexity, cfg.complexity_weight)):
                if weight > 0:
                    adv = losses.generator_nonsaturating(getattr(discriminator, head)(features))
                    loss = loss + weight * adv
                    logs[f"adv_{head}"] = adv.item()
    finally:
        discriminator.requires_grad_(True)
    return loss, logs
