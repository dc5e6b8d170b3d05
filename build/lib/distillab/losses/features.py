"""Losses on features: FitNets hints, attention maps and probabilities, RKD relations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillab.losses.base import _reduce


def _pairwise_distances(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, D) -> (B, B) Euclidean distances, exactly 0 on the diagonal, finite gradients."""
    squared_norms = embeddings.pow(2).sum(-1)  # (B,)
    squared = squared_norms[:, None] + squared_norms[None, :] - 2 * embeddings @ embeddings.T  # (B, B)
    distances = squared.clamp_min(eps).sqrt()  # the clamp keeps sqrt's gradient finite at 0
    eye = torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    return distances.masked_fill(eye, 0.0)


def rkd_distance(student_emb, teacher_emb, reduction: str = "mean"):
    """RKD distance loss (Park et al. 2019, arXiv:1904.05068):
    smooth_l1(d_s(i, j) / mu_s, d_t(i, j) / mu_t), with d the pairwise Euclidean distance and
    mu its mean over the B(B-1) pairs i != j, so the loss ignores the embeddings' scale.

    student_emb (B, D_s), teacher_emb (B, D_t), B >= 2; the widths may differ.
    reduction="none" gives (B,): sample i's mean over j; "mean" is the mean over all B^2 pairs.
    """
    B = len(student_emb)
    off_diagonal_pairs = max(B * (B - 1), 1)

    def normalised(embeddings):  # (B, D) -> (B, B)
        distances = _pairwise_distances(embeddings.float())  # (B, B)
        return distances / (distances.sum() / off_diagonal_pairs).clamp_min(1e-12)

    per_pair = F.smooth_l1_loss(normalised(student_emb), normalised(teacher_emb), reduction="none")  # (B, B)
    return _reduce(per_pair.mean(-1), reduction)


def rkd_angle(student_emb, teacher_emb, reduction: str = "mean"):
    """RKD angle loss (Park et al. 2019, arXiv:1904.05068):
    smooth_l1(cos angle_s(j, i, k), cos angle_t(j, i, k)) over all triplets, where
    cos angle(j, i, k) = <e_j - e_i, e_k - e_i> / (|e_j - e_i| |e_k - e_i|) is the angle at vertex i.
    Invariant to scaling and translating either embedding.

    student_emb (B, D_s), teacher_emb (B, D_t), B >= 3; the widths may differ.
    reduction="none" gives (B,): the mean over the triplets with vertex i; "mean" over all B^3.
    """

    def cosines(embeddings):  # (B, D) -> (B, B, B), [i, j, k] = cos of the angle at vertex i
        differences = embeddings.float()[None, :, :] - embeddings.float()[:, None, :]  # (B, B, D): e_j - e_i
        directions = F.normalize(differences, p=2, dim=-1)  # (B, B, D), zero where j == i
        return directions @ directions.transpose(1, 2)  # (B, B, B)

    per_triplet = F.smooth_l1_loss(cosines(student_emb), cosines(teacher_emb), reduction="none")  # (B, B, B)
    return _reduce(per_triplet.flatten(1).mean(-1), reduction)


def hint_mse(student_feat, teacher_feat, reduction: str = "mean"):
    """FitNets hint loss (Romero et al. 2015, arXiv:1412.6550): mean_e (r(u)_e - v_e)^2 per sample,
    the squared error between the adapted student feature r(u) and the teacher feature v averaged
    over each sample's elements e (the paper's 1/2 ||r(u) - v||^2 up to a constant factor).

    student_feat, teacher_feat: (B, ...) of one shape, e.g. (B, C, H, W) or (B, D).
    Returns a scalar, or (B,) with reduction="none".
    """
    if student_feat.shape != teacher_feat.shape:
        raise ValueError(f"hint_mse: shapes differ, {tuple(student_feat.shape)} vs {tuple(teacher_feat.shape)}")
    squared = (student_feat.float() - teacher_feat.float()).pow(2)  # (B, ...)
    return _reduce(squared.reshape(len(squared), -1).mean(-1), reduction)


def attention_map(features, p: float = 2.0, size: tuple[int, int] | None = None):
    """Activation-based spatial attention (Zagoruyko & Komodakis 2017, arXiv:1612.03928):
    Q = vec(A) / ||vec(A)||_2 with A = mean_c |f_c|^p, the per-position activation energy.

    features: (B, C, H, W). ``size`` (h, w): adaptive-average-pool A to that size before
    normalising (used to compare maps of different resolutions).
    Returns (B, H*W), or (B, h*w); every row has unit L2 norm (an all-zero map stays zero).
    """
    energy = features.float().abs().pow(p).mean(1, keepdim=True)  # (B, 1, H, W)
    if size is not None and tuple(energy.shape[-2:]) != tuple(size):
        energy = F.adaptive_avg_pool2d(energy, size)  # (B, 1, h, w)
    return F.normalize(energy.flatten(1), dim=-1)  # (B, h*w)


def attention_transfer(student_feat, teacher_feat, p: float = 2.0, reduction: str = "mean"):
    """Attention-transfer loss (Zagoruyko & Komodakis 2017): ||Q_s - Q_t||_2^2 / (h*w) per sample,
    Q the normalised ``attention_map`` of each feature.

    Maps of different resolutions are first adaptive-average-pooled (as energy, before
    normalising) to the smaller height and the smaller width. The division by the number of
    positions h*w follows the authors' code (``(at(x) - at(y)).pow(2).mean()``), for which their
    beta = 1000 was tuned; without it the term would grow with the map size.
    Invariant to positive scaling of either feature; channel counts may differ.
    student_feat (B, C_s, H_s, W_s), teacher_feat (B, C_t, H_t, W_t).
    Returns a scalar, or (B,) with reduction="none".
    """
    size = (min(student_feat.shape[-2], teacher_feat.shape[-2]), min(student_feat.shape[-1], teacher_feat.shape[-1]))
    q_student = attention_map(student_feat, p, size)  # (B, h*w)
    q_teacher = attention_map(teacher_feat, p, size)  # (B, h*w)
    return _reduce((q_student - q_teacher).pow(2).mean(-1), reduction)


def attention_prob_kl(student_probs, teacher_probs, reduction: str = "mean", eps: float = 1e-12):
    """KL(a_t || a_s) between attention distributions (rows), as in MiniLM / TinyBERT: per sample,
    mean over heads h and queries i of sum_j a_t[h, i, j] * (log a_t[h, i, j] - log a_s[h, i, j]).

    student_probs (B, H_s, T, S), teacher_probs (B, H_t, T, S); each row (last dim) sums to 1.
    When H_s != H_t the student's heads are averaged into one distribution per row, which is
    compared with every teacher head. Returns a scalar, or (B,) with reduction="none".
    """
    if student_probs.dim() != 4 or teacher_probs.dim() != 4:
        raise ValueError("attention_prob_kl: expected (B, heads, T, S) attention probabilities")
    if student_probs.shape[0] != teacher_probs.shape[0] or student_probs.shape[-2:] != teacher_probs.shape[-2:]:
        raise ValueError(
            f"attention_prob_kl: shapes {tuple(student_probs.shape)} and {tuple(teacher_probs.shape)} "
            "differ in batch or sequence length"
        )
    student = student_probs.float()  # (B, H_s, T, S)
    teacher = teacher_probs.float()  # (B, H_t, T, S)
    if student.shape[1] != teacher.shape[1]:
        student = student.mean(1, keepdim=True)  # (B, 1, T, S), broadcast over the teacher's heads
    kl = (torch.special.xlogy(teacher, teacher) - teacher * student.clamp_min(eps).log()).sum(-1)  # (B, H_t, T)
    return _reduce(kl.flatten(1).mean(-1), reduction)
