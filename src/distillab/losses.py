"""Loss math as pure functions of tensors. Strategies wire them; nothing here reads config.

Shapes: logits are (B, K) for B samples and K classes; targets are (B,) int64.
``reduction`` is "mean" (over the batch), "sum" or "none" (per sample, shape (B,)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _reduce(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def soft_kl(student_logits, teacher_logits, temperature: float = 1.0, reduction: str = "mean"):
    """Hinton et al. (2015): T^2 * KL(softmax(t/T) || softmax(s/T)), per sample summed over K.

    The T^2 factor keeps the gradient magnitude of the soft term independent of T.
    student_logits, teacher_logits: (B, K). Returns a scalar, or (B,) with reduction="none".
    """
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # (B,)
    return _reduce(kl * temperature**2, reduction)


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0, reduction: str = "mean"):
    """T^2 * KL(softmax(s/T) || softmax(t/T)): mode-seeking, as used for generative students."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=-1)  # (B, K)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    kl = (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(-1)  # (B,)
    return _reduce(kl * temperature**2, reduction)


def jsd(student_logits, teacher_logits, temperature: float = 1.0, reduction: str = "mean"):
    """Jensen-Shannon divergence between softmax(s/T) and softmax(t/T), in nats, times T^2.

    Bounded by T^2 * ln 2, reached when the two distributions have disjoint support.
    """
    p_student = F.softmax(student_logits / temperature, dim=-1)  # (B, K)
    p_teacher = F.softmax(teacher_logits / temperature, dim=-1)  # (B, K)
    log_mix = ((p_student + p_teacher) / 2).clamp_min(1e-12).log()  # (B, K)
    kl_s = (p_student * (p_student.clamp_min(1e-12).log() - log_mix)).sum(-1)
    kl_t = (p_teacher * (p_teacher.clamp_min(1e-12).log() - log_mix)).sum(-1)
    return _reduce((kl_s + kl_t) / 2 * temperature**2, reduction)


def cross_entropy(student_logits, targets, reduction: str = "mean", label_smoothing: float = 0.0):
    """Cross-entropy with hard labels. student_logits (B, K), targets (B,)."""
    per_sample = F.cross_entropy(student_logits, targets, reduction="none", label_smoothing=label_smoothing)
    return _reduce(per_sample, reduction)


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
