"""Token-level losses for language models, over a teacher's top-k log-probabilities.

Shapes: student logits (..., V), e.g. (B, T, V); the teacher's ``topk_ids`` and
``topk_logprobs`` (..., k) taken at temperature T, and its ``tail`` (...,) = log(1 - sum of
the top-k probabilities). A ``mask`` (...,) marks the counted tokens; "mean" divides by their
number, "sum" returns the sum so that a caller can divide by a global token count (the loss
of a batch split in parts then adds up to the loss of the whole, TRL #4719).

Three ways to treat what lies outside the k (``tail``):
- "bucket": both distributions reduced to k + 1 buckets (the k ids and everything else), and
  the divergence taken between those: a true divergence, a lower bound of the full one;
- "drop": the forward KL summed over the k ids only, the tail ignored (biased, not a KL);
- "renormalize": teacher and student renormalised inside the k ids and compared there; the
  student is never told to shrink its mass outside the k, which misleads: never the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillab.losses.base import _reduce
from distillab.losses.logits import generalized_jsd, reverse_kl, soft_kl, tvd

TAILS = ("bucket", "drop", "renormalize")
DIVERGENCES = ("forward_kl", "reverse_kl", "gjsd", "tvd")


def log1m_sumexp(log_values: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """log(1 - sum(exp(log_values))) over the last axis, stable; (..., k) -> (...,). The
    sum is clamped below 1 - eps, so a top-k holding (nearly) all the mass gives log(eps)."""
    total = torch.logsumexp(log_values.float(), dim=-1).clamp(max=-eps)  # log sum p < 0
    return torch.log(-torch.expm1(total))


def student_buckets(student_logits: torch.Tensor, topk_ids: torch.Tensor, temperature: float,
                    student_log_probs: torch.Tensor | None = None) -> torch.Tensor:
    """(..., k + 1): the student's log-probabilities at softmax(s / T) of the teacher's ids, and its tail.
    ``student_log_probs``: log_softmax(s / T) when the caller has it already (one pass over V, not two)."""
    log_p = (student_log_probs if student_log_probs is not None
             else F.log_softmax(student_logits.float() / temperature, dim=-1))  # (..., V)
    picked = log_p.gather(-1, topk_ids)  # (..., k)
    return torch.cat([picked, log1m_sumexp(picked).unsqueeze(-1)], dim=-1)


def topk_divergence(student_logits, topk_ids, topk_logprobs, tail, temperature: float = 1.0,
                    divergence: str = "forward_kl", beta: float = 0.5, mode: str = "bucket",
                    reduction: str = "mean", mask=None, student_log_probs=None):
    """A divergence between the teacher's top-k (with its tail) and the student, per token,
    times T^2 (TVD: not scaled). ``divergence``: forward_kl KL(P_t || P_s), reverse_kl
    KL(P_s || P_t), gjsd (generalized JSD(beta)) or tvd; ``mode``: bucket, drop or renormalize
    (drop takes the forward KL only)."""
    if mode not in TAILS:
        raise ValueError(f"mode must be one of {TAILS}, got {mode!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    student = student_buckets(student_logits, topk_ids, temperature, student_log_probs)  # (..., k + 1)
    teacher = torch.cat([topk_logprobs.float(), tail.float().unsqueeze(-1)], dim=-1)  # (..., k + 1)
    if mode == "drop":
        if divergence != "forward_kl":
            raise ValueError("mode 'drop' is a truncated forward KL; use mode 'bucket' for other divergences")
        per_token = (teacher[..., :-1].exp() * (teacher[..., :-1] - student[..., :-1])).sum(-1)
        return _reduce(per_token * temperature**2, reduction, mask)
    if mode == "renormalize":  # log-probabilities renormalised over the k ids (the tail column dropped)
        student, teacher = student[..., :-1], teacher[..., :-1]
    # The buckets are normalised log-probabilities, so they enter the logit losses as logits at T = 1.
    if divergence == "tvd":
        return tvd(student, teacher, 1.0, reduction, mask)
    scale = temperature**2
    if divergence == "forward_kl":
        return soft_kl(student, teacher, 1.0, reduction, mask) * scale
    if divergence == "reverse_kl":
        return reverse_kl(student, teacher, 1.0, reduction, mask) * scale
    return generalized_jsd(student, teacher, beta, 1.0, reduction, mask) * scale


def sampled_kl(student_logits, sampled_ids, sampled_logprobs, temperature: float = 1.0, reduction: str = "mean",
               mask=None, student_log_probs=None):
    """Random-sampling KD (Sparse Logit Sampling, Anshumann et al., ACL 2025): with k ids drawn
    from the teacher's softmax(t / T), (1/k) sum_i [log P_t(x_i) - log P_s(x_i)] is an unbiased
    estimate of KL(P_t || P_s) per token, and its gradient of the full one's; times T^2."""
    log_p = (student_log_probs if student_log_probs is not None
             else F.log_softmax(student_logits.float() / temperature, dim=-1))  # (..., V)
    per_token = (sampled_logprobs.float() - log_p.gather(-1, sampled_ids)).mean(-1)  # (...,)
    return _reduce(per_token * temperature**2, reduction, mask)


def dense_divergence(student_logits, teacher_logits, temperature: float = 1.0, divergence: str = "forward_kl",
                     beta: float = 0.5, reduction: str = "mean", mask=None):
    """The same divergences over the full vocabulary (an online teacher, no top-k)."""
    if divergence == "forward_kl":
        return soft_kl(student_logits, teacher_logits, temperature, reduction, mask)
    if divergence == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, temperature, reduction, mask)
    if divergence == "gjsd":
        return generalized_jsd(student_logits, teacher_logits, beta, temperature, reduction, mask)
    if divergence == "tvd":
        return tvd(student_logits, teacher_logits, temperature, reduction, mask)
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
