"""Loss properties: zero on identical inputs, the T^2 scaling, bounds, finite gradients,
reductions and shapes."""

import math

import pytest
import torch
import torch.nn.functional as F

from distillab import losses

DIVERGENCES = [losses.soft_kl, losses.reverse_kl, losses.jsd]


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_identical_inputs_give_zero(divergence, temperature, logits):
    s, _ = logits
    assert divergence(s, s.clone(), temperature).abs().item() < 1e-6


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_divergences_are_positive_for_different_inputs(divergence, logits):
    s, t = logits
    assert divergence(s, t, 2.0).item() > 1e-3


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("temperature", [0.5, 2.0, 8.0])
def test_t_squared_scaling(divergence, temperature, logits):
    """divergence(s, t, T) == T^2 * divergence(s/T, t/T, 1)."""
    s, t = logits
    scaled = divergence(s / temperature, t / temperature, 1.0) * temperature**2
    assert torch.allclose(divergence(s, t, temperature), scaled, rtol=1e-5)


def test_soft_kl_gradient_magnitude_is_independent_of_temperature_at_high_T(logits):
    """Hinton's reason for T^2: at high T the gradient tends to (s - t) / K for zero-mean logits."""
    s, t = logits
    s = (s - s.mean(-1, keepdim=True)).requires_grad_(True)
    t = t - t.mean(-1, keepdim=True)
    grads = []
    for temperature in (100.0, 400.0):
        (grad,) = torch.autograd.grad(losses.soft_kl(s, t, temperature, reduction="sum"), s)
        grads.append(grad)
    expected = (s.detach() - t) / s.shape[1]
    for grad in grads:
        assert torch.allclose(grad, expected, atol=0.05 * expected.abs().max().item())
    assert torch.allclose(grads[0], grads[1], atol=0.05 * expected.abs().max().item())


def test_soft_kl_matches_torch_kl_div(logits):
    s, t = logits
    reference = F.kl_div(F.log_softmax(s / 3, -1), F.log_softmax(t / 3, -1), log_target=True, reduction="batchmean")
    assert torch.allclose(losses.soft_kl(s, t, 3.0), reference * 9, rtol=1e-5)


def test_jsd_end_points():
    # disjoint one-hot distributions: JSD = ln 2; identical: 0
    s = torch.tensor([[100.0, -100.0]])
    t = torch.tensor([[-100.0, 100.0]])
    assert math.isclose(losses.jsd(s, t).item(), math.log(2), rel_tol=1e-4)
    assert losses.jsd(s, s).item() < 1e-6


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_finite_gradients_for_extreme_logits(divergence):
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, -3.0]])
    loss = divergence(s, t, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_reductions_and_shapes(divergence, logits):
    s, t = logits
    per_sample = divergence(s, t, 2.0, reduction="none")
    assert per_sample.shape == (16,)
    assert torch.allclose(divergence(s, t, 2.0, reduction="sum"), per_sample.sum())
    assert torch.allclose(divergence(s, t, 2.0, reduction="mean"), per_sample.mean())
    with pytest.raises(ValueError, match="reduction"):
        divergence(s, t, 2.0, reduction="batchmean")


def test_hinton_kd_end_points(logits):
    s, t = logits
    y = torch.arange(16) % 10
    assert torch.allclose(losses.hinton_kd(s, t, y, 4.0, alpha=0.0), F.cross_entropy(s, y))
    assert torch.allclose(losses.hinton_kd(s, t, y, 4.0, alpha=1.0), losses.soft_kl(s, t, 4.0))


def test_selective_kd_uses_soft_targets_only_where_the_teacher_is_right(logits):
    s, t = logits
    right = t.argmax(-1)
    wrong = (right + 1) % 10
    assert torch.allclose(losses.selective_kd(s, t, right, 4.0, 0.7), losses.hinton_kd(s, t, right, 4.0, 0.7))
    assert torch.allclose(losses.selective_kd(s, t, wrong, 4.0, 0.7), F.cross_entropy(s, wrong))
    mixed = torch.where(torch.arange(16) < 8, right, wrong)
    per_sample = losses.selective_kd(s, t, mixed, 4.0, 0.7, reduction="none")
    assert torch.allclose(per_sample[8:], F.cross_entropy(s[8:], wrong[8:], reduction="none"))


def test_mixed_cross_entropy_interpolates_the_two_labels():
    from distillab.losses import cross_entropy, mixed_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(6, 4)
    a, b = torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([3, 2, 1, 0, 1, 0])
    assert torch.allclose(mixed_cross_entropy(logits, a, b, torch.ones(6)), cross_entropy(logits, a))
    assert torch.allclose(mixed_cross_entropy(logits, a, b, torch.zeros(6)), cross_entropy(logits, b))
    lam = torch.full((6,), 0.3)
    expected = 0.3 * cross_entropy(logits, a) + 0.7 * cross_entropy(logits, b)
    assert torch.allclose(mixed_cross_entropy(logits, a, b, lam), expected)


@pytest.mark.parametrize("loss", [losses.soft_kl, losses.reverse_kl, losses.jsd])
def test_divergences_take_per_token_logits_and_a_mask(loss):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)  # (B, T, V)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.bool)
    flat = loss(s[mask], t[mask], 2.0)  # the counted tokens as a (N, V) batch
    assert torch.allclose(loss(s, t, 2.0, mask=mask), flat)  # mean over tokens, not over sequences
    assert torch.allclose(loss(s, t, 2.0, reduction="sum", mask=mask), loss(s[mask], t[mask], 2.0, reduction="sum"))
    assert (loss(s, t, 2.0, reduction="none", mask=mask)[~mask] == 0).all()
    assert torch.allclose(loss(s, t, 2.0), loss(s.reshape(10, 7), t.reshape(10, 7), 2.0))  # no mask: every token


def test_cross_entropy_takes_per_token_logits_and_a_mask():
    g = torch.Generator().manual_seed(1)
    s, y = torch.randn(3, 4, 6, generator=g), torch.randint(0, 6, (3, 4), generator=g)
    mask = torch.rand(3, 4, generator=g) > 0.4
    assert torch.allclose(losses.cross_entropy(s, y, mask=mask), F.cross_entropy(s[mask], y[mask]))


def test_generalized_jsd_end_points_are_the_forward_and_reverse_kl_and_its_middle_is_jsd():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 6, 9, generator=g), torch.randn(4, 6, 9, generator=g)  # (B, T, V)
    assert torch.allclose(losses.generalized_jsd(s, t, beta=0.0, temperature=2.0), losses.soft_kl(s, t, 2.0))
    assert torch.allclose(losses.generalized_jsd(s, t, beta=1.0, temperature=2.0), losses.reverse_kl(s, t, 2.0))
    assert torch.allclose(losses.generalized_jsd(s, t, beta=0.5), losses.jsd(s, t), atol=1e-6)
    assert losses.generalized_jsd(s, s, beta=0.3).item() < 1e-6
    # JSD(beta) is bounded by the binary entropy of beta: disjoint supports reach it
    far = torch.full((1, 3), -1e4)
    a, b = far.clone(), far.clone()
    a[0, 0], b[0, 1] = 0.0, 0.0
    beta = 0.3
    entropy = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
    assert math.isclose(losses.generalized_jsd(a, b, beta=beta).item(), entropy, rel_tol=1e-4)
    with pytest.raises(ValueError, match="beta must be in"):
        losses.generalized_jsd(s, t, beta=1.5)


def test_tvd_is_bounded_and_zero_for_identical_inputs():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    value = losses.tvd(s, t, reduction="none")
    assert ((value >= 0) & (value <= 1)).all() and losses.tvd(s, s).item() < 1e-7
    far = torch.tensor([[0.0, -1e4], [-1e4, 0.0]])
    assert math.isclose(losses.tvd(far[:1], far[1:]).item(), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("loss", [losses.soft_kl, losses.reverse_kl, losses.jsd, losses.tvd,
                                  lambda s, t, **k: losses.generalized_jsd(s, t, beta=0.2, **k)])
def test_token_mean_does_not_depend_on_how_the_batch_is_split(loss):
    """Normalised by the global count of real tokens: summing two halves' sums and dividing by
    the total count gives the whole batch's mean, however the padding falls."""
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(4, 8, 11, generator=g), torch.randn(4, 8, 11, generator=g)
    mask = torch.rand(4, 8, generator=g) > 0.5
    whole = loss(s, t, mask=mask)
    halves = sum(loss(s[i:i + 2], t[i:i + 2], reduction="sum", mask=mask[i:i + 2]) for i in (0, 2))
    assert torch.allclose(whole, halves / mask.sum(), atol=1e-6)
