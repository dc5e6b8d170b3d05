"""Token-level losses over a teacher's top-k with a tail bucket: properties, not numbers."""

import pytest
import torch

from distillab import losses
from distillab.data.text_cache import topk_logprobs

V, K = 50, 8


def logits(seed, shape=(3, 5, V), scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "gjsd", "tvd"])
@pytest.mark.parametrize("mode", ["bucket", "renormalize"])
def test_zero_when_the_student_is_the_teacher(divergence, mode):
    teacher = logits(0)
    ids, values, tail = topk_logprobs(teacher, K, 2.0)
    loss = losses.topk_divergence(teacher, ids, values, tail, 2.0, divergence, 0.5, mode)
    assert loss.abs().item() < 1e-5


def test_bucket_kl_is_a_lower_bound_of_the_full_kl_and_meets_it_at_k_equal_v():
    student, teacher = logits(1), logits(2)
    full = losses.soft_kl(student, teacher, 1.0)
    previous = -1.0
    for k in (1, 4, 16, V):
        ids, values, tail = topk_logprobs(teacher, k, 1.0)
        bucket = losses.topk_divergence(student, ids, values, tail, 1.0).item()
        assert bucket <= full.item() + 1e-5  # the data-processing inequality
        assert bucket >= previous - 1e-5  # finer buckets never lose information
        previous = bucket
    assert previous == pytest.approx(full.item(), rel=1e-3, abs=1e-4)


def test_gjsd_end_points_are_forward_and_reverse_kl_on_the_buckets():
    student, teacher = logits(3), logits(4)
    ids, values, tail = topk_logprobs(teacher, K, 1.0)
    args = (student, ids, values, tail, 1.0)
    forward = losses.topk_divergence(*args, "forward_kl")
    reverse = losses.topk_divergence(*args, "reverse_kl")
    assert losses.topk_divergence(*args, "gjsd", 0.0) == pytest.approx(forward.item(), rel=1e-6)
    assert losses.topk_divergence(*args, "gjsd", 1.0) == pytest.approx(reverse.item(), rel=1e-6)
    middle = losses.topk_divergence(*args, "gjsd", 0.5).item()
    assert 0 < middle < max(forward.item(), reverse.item())


def test_masked_tokens_do_not_count():
    student, teacher = logits(5), logits(6)
    ids, values, tail = topk_logprobs(teacher, K, 1.0)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 2:] = False
    before = losses.topk_divergence(student, ids, values, tail, mask=mask)
    changed = student.clone()
    changed[1, 2:] = torch.randn(3, V) * 10  # only masked positions change
    after = losses.topk_divergence(changed, ids, values, tail, mask=mask)
    assert torch.allclose(before, after)
    ce = losses.cross_entropy(student, torch.zeros(3, 5, dtype=torch.long), mask=mask)
    assert torch.allclose(ce, losses.cross_entropy(changed, torch.zeros(3, 5, dtype=torch.long), mask=mask))


def test_normalised_by_the_global_token_count_whatever_the_split():
    student, teacher = logits(7, (4, 6, V)), logits(8, (4, 6, V))
    ids, values, tail = topk_logprobs(teacher, K, 1.0)
    mask = torch.rand(4, 6, generator=torch.Generator().manual_seed(9)) > 0.3
    whole = losses.topk_divergence(student, ids, values, tail, mask=mask)
    parts = sum(losses.topk_divergence(student[rows], ids[rows], values[rows], tail[rows], reduction="sum",
                                       mask=mask[rows]) for rows in (slice(0, 1), slice(1, 4)))
    assert torch.allclose(whole, parts / mask.sum())


def test_renormalised_top_k_misses_mass_outside_the_k_while_the_bucket_sees_it():
    teacher = logits(10)
    ids, values, tail = topk_logprobs(teacher, K, 1.0)
    # a student with the teacher's ratios inside the k, but most of its mass elsewhere
    student = torch.full_like(teacher, 0.0)
    student.scatter_(-1, ids, values + 0.0)
    student = student.scatter(-1, ids, values - 5.0)  # top-k far below the rest
    renormalised = losses.topk_divergence(student, ids, values, tail, mode="renormalize")
    bucket = losses.topk_divergence(student, ids, values, tail, mode="bucket")
    assert renormalised.item() < 1e-5
    assert bucket.item() > 0.5


def test_drop_is_a_forward_kl_only_and_temperature_scales_by_t_squared():
    student, teacher = logits(11), logits(12)
    ids, values, tail = topk_logprobs(teacher, K, 1.0)
    with pytest.raises(ValueError, match="drop"):
        losses.topk_divergence(student, ids, values, tail, divergence="reverse_kl", mode="drop")
    ids2, values2, tail2 = topk_logprobs(teacher, K, 2.0)
    raw = losses.topk_divergence(student, ids2, values2, tail2, 2.0) / 4.0
    bucketed_student = losses.student_buckets(student, ids2, 2.0)
    teacher_buckets = torch.cat([values2, tail2.unsqueeze(-1)], -1)
    manual = (teacher_buckets.exp() * (teacher_buckets - bucketed_student)).sum(-1).mean()
    assert torch.allclose(raw, manual, atol=1e-6)


def test_log1m_sumexp_and_finite_gradients():
    values = torch.log(torch.tensor([[0.2, 0.3], [0.5, 0.4999999]]))
    out = losses.log1m_sumexp(values)
    assert out[0].exp().item() == pytest.approx(0.5, rel=1e-5)
    assert torch.isfinite(out).all()  # a top-k holding all the mass is clamped, not -inf
    student = logits(13).requires_grad_()
    ids, values, tail = topk_logprobs(logits(14), K, 1.0)
    for divergence in ("forward_kl", "reverse_kl", "gjsd", "tvd"):
        loss = losses.topk_divergence(student, ids, values, tail, divergence=divergence)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_kd_is_alpha_times_the_divergence_plus_the_rest_times_ce(temperature):
    from distillab.models.zoo import build_model
    from distillab.strategies import STRATEGIES

    torch.manual_seed(0)
    teacher, student = (build_model("gpt", (6,), V, {"layers": 1, "dim": 16, "heads": 2}) for _ in range(2))
    cls = STRATEGIES["token_kd"]
    strategy = cls([teacher], student, cls.Params(top_k=K, alpha=0.3, temperature=temperature), in_shape=(6,))
    tokens = torch.randint(0, V, (4, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2, 3:] = False
    with torch.no_grad():
        ids, values, tail = topk_logprobs(teacher(tokens[:, :-1]), K, temperature)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask, "teacher_topk_ids": ids[None],
             "teacher_topk_logprobs": values[None], "teacher_tail": tail[None]}
    out = strategy.loss(batch)
    logits = student(tokens[:, :-1])
    expected = (0.3 * losses.topk_divergence(logits, ids, values, tail, temperature, mask=mask)
                + 0.7 * losses.cross_entropy(logits, tokens[:, 1:], mask=mask))
    assert torch.allclose(out.loss, expected, atol=1e-5)


def test_sampled_kl_is_an_unbiased_estimate_of_the_forward_kl_and_its_gradient():
    from distillab.data.text_cache import sampled_logprobs

    torch.manual_seed(0)
    teacher, student = torch.randn(1, 3, 8) * 2, torch.randn(1, 3, 8, requires_grad=True)
    exact = losses.dense_divergence(student, teacher, 2.0, "forward_kl")
    exact_grad, = torch.autograd.grad(exact, student)
    ids, values, tail = sampled_logprobs(teacher, 200_000, 2.0, torch.Generator().manual_seed(1))
    estimate = losses.sampled_kl(student, ids, values, 2.0)
    estimate_grad, = torch.autograd.grad(estimate, student)
    assert estimate.item() == pytest.approx(exact.item(), rel=0.02)
    assert torch.allclose(estimate_grad, exact_grad, atol=5e-3)
    assert (tail.exp() < 1e-6).all()  # 200k draws of 8 tokens: every token drawn, no teacher mass left outside
    few = sampled_logprobs(teacher, 2, 2.0, torch.Generator().manual_seed(1))[2]
    assert (few.exp() > 0.01).all()  # two draws leave the other tokens' mass in the tail
    assert losses.sampled_kl(teacher, ids[..., :50], values[..., :50], 2.0).item() == pytest.approx(0.0, abs=1e-5)


def test_sampled_selection_takes_the_forward_kl_only():
    from pydantic import ValidationError

    from distillab.strategies.token_kd import TokenKDParams

    with pytest.raises(ValidationError, match="selection: sampled estimates the forward KL"):
        TokenKDParams(selection="sampled", divergence="reverse_kl")
    with pytest.raises(ValidationError, match="selection: sampled"):
        TokenKDParams(selection="sampled", top_k=None)
