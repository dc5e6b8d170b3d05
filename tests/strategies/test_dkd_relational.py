"""DKD and RKD: loss properties (zero on identical inputs, linearity, a hand-computed TCKD,
invariances, finite gradients, reductions), DKD's warm-up, RKD's layer taps, and a short
end-to-end DKD run that lowers the loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from distillab import losses
from distillab.errors import SpecError
from distillab.models.zoo import build_model
from distillab.strategies import STRATEGIES
from distillab.strategies.dkd import DKD
from distillab.strategies.relational import Relational


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 10, generator=g) * 3, torch.randn(16, 10, generator=g) * 3
    return s, t, torch.arange(16) % 10


@pytest.fixture
def embeddings():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 5, generator=g), torch.randn(12, 7, generator=g)


# ---- DKD -------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_is_zero_for_identical_logits(logits, temperature):
    s, _, y = logits
    assert losses.dkd(s, s.clone(), y, 1.0, 8.0, temperature).abs().item() < 1e-6


def test_dkd_terms_are_positive_for_different_logits(logits):
    s, t, y = logits
    assert losses.tckd(s, t, y, 4.0).item() > 1e-4
    assert losses.nckd(s, t, y, 4.0).item() > 1e-4


def test_dkd_is_linear_in_alpha_and_beta(logits):
    s, t, y = logits
    a, b = 1.7, 6.0
    split = losses.dkd(s, t, y, a, 0.0, 4.0) + losses.dkd(s, t, y, 0.0, b, 4.0)
    assert torch.allclose(losses.dkd(s, t, y, a, b, 4.0), split, rtol=1e-5)


def test_tckd_matches_a_binary_kl_computed_by_hand():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[0.5, 1.5, 0.0]])
    y = torch.tensor([1])
    temperature = 2.0
    p_s = [math.exp(v / temperature) for v in (2.0, 0.0, -1.0)]
    p_t = [math.exp(v / temperature) for v in (0.5, 1.5, 0.0)]
    b_s = p_s[1] / sum(p_s)
    b_t = p_t[1] / sum(p_t)
    expected = temperature**2 * (b_t * math.log(b_t / b_s) + (1 - b_t) * math.log((1 - b_t) / (1 - b_s)))
    assert math.isclose(losses.dkd(s, t, y, 1.0, 0.0, temperature).item(), expected, rel_tol=1e-5)


def test_nckd_is_kl_over_the_non_target_classes():
    s = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    t = torch.tensor([[0.5, 1.5, 0.0, -2.0]])
    y = torch.tensor([1])
    keep = [0, 2, 3]
    expected = losses.soft_kl(s[:, keep], t[:, keep], 3.0)
    assert torch.allclose(losses.dkd(s, t, y, 0.0, 1.0, 3.0), expected, rtol=1e-5)


def test_dkd_recovers_classical_kd_with_beta_one_minus_teacher_target_probability(logits):
    """The paper's decomposition: KD = TCKD + (1 - p_t(target)) * NCKD."""
    s, t, y = logits
    temperature = 4.0
    p_target = F.softmax(t / temperature, -1).gather(1, y[:, None]).squeeze(1)  # (B,)
    decomposed = losses.dkd(s, t, y, 1.0, 1 - p_target, temperature, reduction="none")
    assert torch.allclose(decomposed, losses.soft_kl(s, t, temperature, reduction="none"), rtol=1e-4, atol=1e-6)


def test_dkd_finite_gradients_for_extreme_logits():
    s = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], requires_grad=True)
    t = torch.tensor([[-1e4, 1e4, 0.0], [1e4, -1e4, -3.0]])
    y = torch.tensor([0, 2])
    loss = losses.dkd(s, t, y, 1.0, 8.0, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_dkd_reductions_and_shapes(logits):
    s, t, y = logits
    per_sample = losses.dkd(s, t, y, 1.0, 8.0, 4.0, reduction="none")
    assert per_sample.shape == (16,)
    assert torch.allclose(losses.dkd(s, t, y, 1.0, 8.0, 4.0, reduction="sum"), per_sample.sum())
    assert torch.allclose(losses.dkd(s, t, y, 1.0, 8.0, 4.0), per_sample.mean())
    with pytest.raises(ValueError, match="reduction"):
        losses.dkd(s, t, y, 1.0, 8.0, 4.0, reduction="batchmean")


def tiny_pair(seed=0, classes=3):
    torch.manual_seed(seed)
    return build_model("cnn_tiny", (1, 8, 8), classes), build_model("cnn_tiny", (1, 8, 8), classes)


def tiny_batch(seed=0, n=8, classes=3):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randn(n, 1, 8, 8, generator=g), "targets": torch.randint(0, classes, (n,), generator=g),
            "index": torch.arange(n)}


def test_dkd_warmup_scales_only_the_kd_term():
    teacher, student = tiny_pair()
    strategy = DKD([teacher], student, DKD.Params(warmup_epochs=4)).eval()
    b = tiny_batch()
    with torch.no_grad():
        full = strategy.loss(b)  # no "epoch": fully warmed up
        kd = full.loss.item() - full.logs["hard"]
        for epoch, factor in [(0, 0.25), (1, 0.5), (3, 1.0), (10, 1.0)]:
            out = strategy.loss({**b, "epoch": epoch})
            assert out.logs["warmup"] == factor
            assert math.isclose(out.loss.item(), out.logs["hard"] + factor * kd, rel_tol=1e-5)
    no_warmup = DKD([teacher], student, DKD.Params(warmup_epochs=0)).eval()
    with torch.no_grad():
        assert math.isclose(no_warmup.loss({**b, "epoch": 0}).loss.item(), full.loss.item(), rel_tol=1e-6)


def test_dkd_training_lowers_the_loss():
    teacher, student = tiny_pair(seed=3)
    strategy = DKD([teacher], student, DKD.Params(warmup_epochs=0))
    optimizer = torch.optim.SGD(strategy.trainable_parameters(), lr=0.05, momentum=0.9)
    b = tiny_batch(seed=4, n=16)
    strategy.train()
    history = []
    for _ in range(30):
        out = strategy.loss(b)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append(out.loss.item())
    strategy.eval()
    with torch.no_grad():
        final = strategy.loss(b).loss.item()
    assert all(math.isfinite(v) for v in history)
    assert final < 0.7 * history[0], (history[0], final)


# ---- RKD -------------------------------------------------------------------------------

RKD_LOSSES = [losses.rkd_distance, losses.rkd_angle]


@pytest.mark.parametrize("rkd", RKD_LOSSES)
def test_rkd_is_zero_for_identical_embeddings(rkd, embeddings):
    e, _ = embeddings
    assert rkd(e, e.clone()).abs().item() < 1e-6


@pytest.mark.parametrize("rkd", RKD_LOSSES)
def test_rkd_is_positive_for_different_embeddings(rkd, embeddings):
    e, f = embeddings
    assert rkd(e, f).item() > 1e-4


@pytest.mark.parametrize("rkd", RKD_LOSSES)
@pytest.mark.parametrize("scale", [0.01, 3.0, 100.0])
def test_rkd_ignores_the_scale_of_the_teacher_embeddings(rkd, scale, embeddings):
    e, f = embeddings
    assert torch.allclose(rkd(e, f * scale), rkd(e, f), rtol=1e-4, atol=1e-6)
    assert rkd(e, e * scale).abs().item() < 1e-5


@pytest.mark.parametrize("rkd", RKD_LOSSES)
def test_rkd_ignores_a_translation(rkd, embeddings):
    e, f = embeddings
    assert torch.allclose(rkd(e, f + 5.0), rkd(e, f), rtol=1e-4, atol=1e-6)


def test_rkd_distance_matches_a_direct_computation(embeddings):
    e, f = embeddings
    d_s, d_t = torch.cdist(e, e), torch.cdist(f, f)
    n = len(e) * (len(e) - 1)
    expected = F.smooth_l1_loss(d_s / (d_s.sum() / n), d_t / (d_t.sum() / n))
    assert torch.allclose(losses.rkd_distance(e, f), expected, rtol=1e-4)


@pytest.mark.parametrize("rkd", RKD_LOSSES)
def test_rkd_finite_gradients_with_duplicate_embeddings(rkd, embeddings):
    e, f = embeddings
    e = torch.cat([e[:4], e[:4]]).requires_grad_(True)  # duplicates: zero distances off the diagonal
    loss = rkd(e, f[:8])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(e.grad).all() and e.grad.abs().sum() > 0


@pytest.mark.parametrize("rkd", RKD_LOSSES)
def test_rkd_reductions_and_shapes(rkd, embeddings):
    e, f = embeddings
    per_sample = rkd(e, f, reduction="none")
    assert per_sample.shape == (12,)
    assert torch.allclose(rkd(e, f, reduction="sum"), per_sample.sum())
    assert torch.allclose(rkd(e, f), per_sample.mean())
    with pytest.raises(ValueError, match="reduction"):
        rkd(e, f, reduction="batchmean")


def test_relational_taps_named_layers_and_averages_teachers():
    teacher, student = tiny_pair()
    other_teacher, _ = tiny_pair(seed=1)
    params = Relational.Params(student_layer="pool", teacher_layer="stages.2", kd_weight=0.5)
    strategy = Relational([teacher, other_teacher], student, params).train()
    out = strategy.loss(tiny_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.student_logits.shape == (8, 3)
    assert {"distance", "angle", "hard", "soft"} <= set(out.logs)
    assert all(p.grad is None for p in teacher.parameters())
    assert student.classifier.weight.grad is not None


def test_relational_rejects_an_unknown_layer_by_parameter_name():
    teacher, student = tiny_pair()
    with pytest.raises(SpecError, match="strategy.params.student_layer"):
        Relational([teacher], student, Relational.Params(student_layer="no_such_layer"))


def test_both_strategies_are_registered():
    assert STRATEGIES["dkd"] is DKD and STRATEGIES["relational"] is Relational
    assert DKD.logits_only and not Relational.logits_only
