"""Losses on logits (B, K) or (..., K) with a mask: the KL family, cross-entropy, DKD, ensembles."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distillab.losses.base import _reduce


def soft_kl(student_logits, teacher_logits, temperature: float = 1.0, reduction: str = "mean", mask=None):
    """Hinton et al. (2015): T^2 * KL(softmax(t/T) || softmax(s/T)), per sample summed over K.

    The T^2 factor keeps the gradient magnitude of the soft term independent of T.
    student_logits, teacher_logits: (B, K). Returns a scalar, or (B,) with reduction="none".
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, K), fp32 under autocast
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, K)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # (B,)
    return _reduce(kl * temperature**2, reduction, mask)


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0, reduction: str = "mean", mask=None):
    """T^2 * KL(softmax(s/T) || softmax(t/T)): mode-seeking, as used for generative students."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, K), fp32 under autocast
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, K)
    kl = (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(-1)  # (B,)
    return _reduce(kl * temperature**2, reduction, mask)


def jsd(student_logits, teacher_logits, temperature: float = 1.0, reduction: str = "mean", mask=None):
    """Jensen-Shannon divergence between softmax(s/T) and softmax(t/T), in nats, times T^2.

    Bounded by T^2 * ln 2, reached when the two distributions have disjoint support.
    """
    p_student = F.softmax(student_logits.float() / temperature, dim=-1)  # (B, K), fp32 under autocast
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)  # (B, K)
    log_mix = ((p_student + p_teacher) / 2).clamp_min(1e-12).log()  # (B, K)
    kl_s = (p_student * (p_student.clamp_min(1e-12).log() - log_mix)).sum(-1)
    kl_t = (p_teacher * (p_teacher.clamp_min(1e-12).log() - log_mix)).sum(-1)
    return _reduce((kl_s + kl_t) / 2 * temperature**2, reduction, mask)


def generalized_jsd(student_logits, teacher_logits, beta: float = 0.5, temperature: float = 1.0,
                    reduction: str = "mean", mask=None):
    """Generalized JSD(beta) of GKD (Agarwal et al. 2024, arXiv:2306.13649), as TRL computes it:
    beta * KL(P_t || M) + (1 - beta) * KL(P_s || M), M = beta * P_t + (1 - beta) * P_s, times T^2.

    beta = 0 is the forward KL, KL(P_t || P_s) (``soft_kl``), and beta = 1 the reverse KL,
    KL(P_s || P_t) (``reverse_kl``): at those end points the mixture formula itself would be 0.
    beta = 0.5 is ``jsd``. Logits (..., K); returns a scalar, or (...,) with reduction="none".
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta == 0.0:
        return soft_kl(student_logits, teacher_logits, temperature, reduction, mask)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature, reduction, mask)
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (..., K)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (..., K)
    log_mix = torch.logsumexp(torch.stack([log_p_teacher + math.log(beta),
                                           log_p_student + math.log(1 - beta)]), dim=0)  # (..., K) log M
    kl_teacher = (log_p_teacher.exp() * (log_p_teacher - log_mix)).sum(-1)  # (...,)
    kl_student = (log_p_student.exp() * (log_p_student - log_mix)).sum(-1)  # (...,)
    return _reduce((beta * kl_teacher + (1 - beta) * kl_student) * temperature**2, reduction, mask)


def tvd(student_logits, teacher_logits, temperature: float = 1.0, reduction: str = "mean", mask=None):
    """Total variation distance 0.5 * sum_k |softmax(s/T)_k - softmax(t/T)_k|, in [0, 1] (no T^2:
    it is bounded, and its gradient does not shrink as 1/T^2). Logits (..., K)."""
    p_student = F.softmax(student_logits.float() / temperature, dim=-1)  # (..., K)
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)  # (..., K)
    return _reduce(0.5 * (p_student - p_teacher).abs().sum(-1), reduction, mask)


def cross_entropy(student_logits, targets, reduction: str = "mean", label_smoothing: float = 0.0, mask=None):
    """Cross-entropy with hard labels. student_logits (..., K), targets (...,)."""
    per_sample = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), targets.reshape(-1),
                                 reduction="none", label_smoothing=label_smoothing).view(targets.shape)  # (...,)
    return _reduce(per_sample, reduction, mask)


def mixed_cross_entropy(student_logits, targets, mix_targets, mix_lam, reduction: str = "mean",
                        label_smoothing: float = 0.0):
    """Cross-entropy of mixed images (mixup / cutmix; Zhang et al. 2018, Yun et al. 2019):
    lam * CE(s, y_a) + (1 - lam) * CE(s, y_b) per sample. mix_targets (B,), mix_lam (B,)."""
    own = cross_entropy(student_logits, targets, "none", label_smoothing)  # (B,)
    partner = cross_entropy(student_logits, mix_targets, "none", label_smoothing)  # (B,)
    return _reduce(mix_lam * own + (1 - mix_lam) * partner, reduction)


def hinton_kd(student_logits, teacher_logits, targets, temperature: float, alpha: float, reduction: str = "mean"):
    """alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)."""
    soft = soft_kl(student_logits, teacher_logits, temperature, reduction="none")  # (B,)
    hard = cross_entropy(student_logits, targets, reduction="none")  # (B,)
    return _reduce(alpha * soft + (1 - alpha) * hard, reduction)


def selective_kd(student_logits, teacher_logits, targets, temperature: float, alpha: float, reduction: str = "mean"):
    """Hinton KD on samples the teacher classifies correctly; plain CE on the others.

    Per sample: correct -> alpha * T^2 * KL + (1 - alpha) * CE;  wrong -> CE.
    """
    teacher_correct = teacher_logits.argmax(-1) == targets  # (B,)
    kd = hinton_kd(student_logits, teacher_logits, targets, temperature, alpha, reduction="none")  # (B,)
    hard = cross_entropy(student_logits, targets, reduction="none")  # (B,)
    return _reduce(torch.where(teacher_correct, kd, hard), reduction)


def tckd(student_logits, teacher_logits, targets, temperature: float = 1.0, reduction: str = "mean"):
    """Target-class KD (Zhao et al. 2022): T^2 * KL(b_t || b_s) between the binary
    distributions b = [p_target, 1 - p_target] of softmax(logits / T).

    Computed in log space, so extreme logits give finite values and gradients.
    student_logits, teacher_logits: (B, K), K >= 2; targets: (B,). Returns a scalar, or (B,).
    """
    target_mask = F.one_hot(targets, student_logits.shape[-1]).bool()  # (B, K)

    def binary_log_probs(logits):  # (B, K) -> (B, 2): [log p_target, log(1 - p_target)]
        log_p = F.log_softmax(logits / temperature, dim=-1)  # (B, K)
        log_target = log_p.masked_fill(~target_mask, 0.0).sum(-1)  # (B,)
        log_other = log_p.masked_fill(target_mask, float("-inf")).logsumexp(-1)  # (B,)
        return torch.stack([log_target, log_other], dim=-1)

    log_b_student = binary_log_probs(student_logits)  # (B, 2)
    log_b_teacher = binary_log_probs(teacher_logits)  # (B, 2)
    kl = (log_b_teacher.exp() * (log_b_teacher - log_b_student)).sum(-1)  # (B,)
    return _reduce(kl * temperature**2, reduction)


def nckd(student_logits, teacher_logits, targets, temperature: float = 1.0, reduction: str = "mean"):
    """Non-target-class KD (Zhao et al. 2022): T^2 * KL(q_t || q_s), where q = softmax(logits / T)
    renormalised over the K - 1 non-target classes (zero for K = 2).

    student_logits, teacher_logits: (B, K), K >= 2; targets: (B,). Returns a scalar, or (B,).
    """
    target_mask = F.one_hot(targets, student_logits.shape[-1]).bool()  # (B, K)

    def non_target_log_probs(logits):  # (B, K), the target entry set to 0 so it adds nothing below
        masked = (logits / temperature).masked_fill(target_mask, float("-inf"))  # (B, K)
        return F.log_softmax(masked, dim=-1).masked_fill(target_mask, 0.0)  # (B, K)

    log_q_student = non_target_log_probs(student_logits)  # (B, K)
    log_q_teacher = non_target_log_probs(teacher_logits)  # (B, K)
    q_teacher = log_q_teacher.exp().masked_fill(target_mask, 0.0)  # (B, K)
    kl = (q_teacher * (log_q_teacher - log_q_student)).sum(-1)  # (B,)
    return _reduce(kl * temperature**2, reduction)


def dkd(student_logits, teacher_logits, targets, alpha: float, beta: float, temperature: float,
        reduction: str = "mean"):
    """Decoupled KD (Zhao et al. 2022, arXiv:2203.08679): alpha * TCKD + beta * NCKD, both T^2-scaled.

    With alpha = 1 and beta = 1 - p_target(teacher) per sample this is the classical KD of
    ``soft_kl``. student_logits, teacher_logits: (B, K), K >= 2; targets: (B,).
    Returns a scalar, or (B,) with reduction="none".
    """
    target_term = tckd(student_logits, teacher_logits, targets, temperature, reduction="none")  # (B,)
    non_target_term = nckd(student_logits, teacher_logits, targets, temperature, reduction="none")  # (B,)
    return _reduce(alpha * target_term + beta * non_target_term, reduction)


def soft_kl_to_probs(student_logits, target_probs, temperature: float = 1.0, reduction: str = "mean"):
    """T^2 * KL(p || softmax(s/T)) for a given target distribution p, per sample summed over K.

    For targets that are not one teacher's softmax, such as an ensemble's averaged
    probabilities. student_logits (B, K); target_probs (B, K) with rows summing to 1; classes
    with p = 0 contribute 0. Returns a scalar, or (B,) with reduction="none".
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    kl = (torch.xlogy(target_probs, target_probs) - target_probs * log_p_student).sum(-1)  # (B,)
    return _reduce(kl * temperature**2, reduction)


def ensemble_targets(teacher_logits, weights, temperature: float = 1.0):
    """Weighted average of the teachers' probabilities: p = sum_i w_i softmax(t_i / T).

    Probabilities are averaged, not logits, so each teacher's distribution keeps its shape.
    teacher_logits (N, B, K); weights (N,) per teacher or (N, B) per teacher and sample,
    non-negative and summing to 1 over N (not renormalised here). Returns (B, K) probabilities.
    """
    probs = F.softmax(teacher_logits.float() / temperature, dim=-1)  # (N, B, K)
    weights = weights.to(probs)
    weights = weights[:, None, None] if weights.dim() == 1 else weights[:, :, None]  # (N, 1|B, 1)
    return (weights * probs).sum(0)  # (B, K)


def performance_weights(accuracies):
    """w_i = acc_i / sum_j acc_j: teachers weighed by (validation) accuracy.

    accuracies (N,) in [0, 1]. Returns (N,) summing to 1; uniform when every accuracy is 0.
    """
    accuracies = accuracies.float().clamp_min(0)  # (N,)
    total = accuracies.sum()
    if total <= 0:
        return torch.full_like(accuracies, 1 / len(accuracies))
    return accuracies / total


def confidence_weights(teacher_logits, temperature: float = 1.0):
    """Per-sample weights w_i(x) = c_i(x) / sum_j c_j(x), c_i(x) = max_k softmax(t_i(x) / T)_k.

    Normalising keeps the weights proportional to confidence; a softmax over c (which lies in
    [1/K, 1]) could separate two teachers by at most a factor e. teacher_logits (N, B, K).
    Returns (N, B), non-negative, each column summing to 1.
    """
    confidence = F.softmax(teacher_logits.float() / temperature, dim=-1).amax(-1)  # (N, B), >= 1/K > 0
    return confidence / confidence.sum(0, keepdim=True)  # (N, B)


def topk_bucket_kl(student_logits, teacher_logits, k: int, temperature: float = 1.0, reduction: str = "mean",
                   mask=None):
    """T^2 * KL between the teacher's k most likely classes plus one tail bucket (the rest of its
    mass) and the student's probabilities of the same k classes plus its own tail, both at
    softmax(z / T). For a teacher that reveals only its top-k (a served teacher): what lies
    outside the k enters as one number, never as a per-class target. (B, K) or (B, T, V) -> scalar."""
    from distillab.losses.tokens import log1m_sumexp, topk_divergence

    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    top = teacher.topk(k, dim=-1)
    return topk_divergence(student_logits, top.indices, top.values, log1m_sumexp(top.values), temperature,
                           "forward_kl", mode="bucket", reduction=reduction, mask=mask)
