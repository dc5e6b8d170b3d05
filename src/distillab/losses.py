"""Loss math as pure functions of tensors. Strategies wire them; nothing here reads config.

Shapes: logits are (B, K) for B samples and K classes; targets are (B,) int64.
``reduction`` is "mean" (over the batch), "sum" or "none" (per sample, shape (B,)).
The logit losses (soft_kl, reverse_kl, jsd, cross_entropy) also take (..., K) logits, e.g.
(B, T, V) per token, with an optional boolean ``mask`` (...,): "mean" is then over the counted
positions (normalised by token count), "none" zeroes the others.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _reduce(per_sample: torch.Tensor, reduction: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    if mask is not None:
        keep = mask.to(per_sample.dtype)  # (...,) 1 where counted
        per_sample = per_sample * keep
        if reduction == "mean":
            return per_sample.sum() / keep.sum().clamp_min(1)
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    if reduction == "none":
        return per_sample
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


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
