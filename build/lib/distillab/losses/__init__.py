"""Loss math as pure functions of tensors. Strategies wire them; nothing here reads config.

Shapes: logits are (B, K) for B samples and K classes; targets are (B,) int64.
``reduction`` is "mean" (over the batch), "sum" or "none" (per sample, shape (B,)).
The logit losses (soft_kl, reverse_kl, jsd, cross_entropy) also take (..., K) logits, e.g.
(B, T, V) per token, with an optional boolean ``mask`` (...,): "mean" is then over the counted
positions (normalised by token count), "none" zeroes the others.
"""

from distillab.losses.logits import (
    soft_kl,
    reverse_kl,
    jsd,
    generalized_jsd,
    tvd,
    cross_entropy,
    mixed_cross_entropy,
    hinton_kd,
    selective_kd,
    tckd,
    nckd,
    dkd,
    soft_kl_to_probs,
    ensemble_targets,
    performance_weights,
    confidence_weights,
    topk_bucket_kl,
)
from distillab.losses.features import (
    rkd_distance,
    rkd_angle,
    hint_mse,
    attention_map,
    attention_transfer,
    attention_prob_kl,
)
from distillab.losses.adversarial import (
    discriminator_bce,
    generator_nonsaturating,
    gaussian_kl,
    r1_penalty,
)
from distillab.losses.tokens import (
    dense_divergence,
    log1m_sumexp,
    sampled_kl,
    student_buckets,
    topk_divergence,
)

__all__ = [
    "dense_divergence",
    "log1m_sumexp",
    "sampled_kl",
    "student_buckets",
    "topk_divergence",
    "soft_kl",
    "reverse_kl",
    "jsd",
    "generalized_jsd",
    "tvd",
    "cross_entropy",
    "mixed_cross_entropy",
    "hinton_kd",
    "selective_kd",
    "tckd",
    "nckd",
    "dkd",
    "soft_kl_to_probs",
    "ensemble_targets",
    "performance_weights",
    "confidence_weights",
    "topk_bucket_kl",
    "rkd_distance",
    "rkd_angle",
    "hint_mse",
    "attention_map",
    "attention_transfer",
    "attention_prob_kl",
    "discriminator_bce",
    "generator_nonsaturating",
    "gaussian_kl",
    "r1_penalty",
]
