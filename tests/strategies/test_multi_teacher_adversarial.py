"""Multi-teacher and adversarial KD: the loss math by its properties, teacher weighting by
known accuracies and confidences, and the discriminator's separate training."""

import io

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from distillab import losses
from distillab.data.user import tensor_bundle
from distillab.errors import SpecError
from distillab.models.zoo import build_model
from distillab.spec_io import parse_spec
from distillab.strategies.adversarial import Adversarial
from distillab.strategies.multi_teacher import MultiTeacher
from conftest import tiny_spec

K = 3


def batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randn(n, 1, 8, 8, generator=g), "targets": torch.randint(0, K, (n,), generator=g),
            "index": torch.arange(n), "epoch": 0, "epochs": 1}


# --- teachers with known behaviour -------------------------------------------------------------
# Each input carries its label in pixel (0, 0) and a "trust" flag in pixel (0, 1), so a teacher's
# validation accuracy is fixed by construction.


class LookupTeacher(nn.Module):
    """Predicts the true label when ``rule`` says so, else the next class. Has one parameter so
    that freezing and gradients can be checked."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.scale = nn.Parameter(torch.tensor(5.0))

    def forward(self, x):  # (B, 1, 8, 8) -> (B, K)
        label = x[:, 0, 0, 0].round().long().clamp(0, K - 1)  # (B,)
        right = self.rule(x)  # (B,) bool
        predicted = torch.where(right, label, (label + 1) % K)
        return F.one_hot(predicted, K).float() * self.scale


def lookup_bundle(n=600):
    """A validation split (more than one 512 batch) where the trust flag is set on half the rows."""
    labels = torch.arange(n) % K
    images = torch.zeros(n, 1, 8, 8)
    images[:, 0, 0, 0] = labels.float()
    images[:, 0, 0, 1] = (torch.arange(n) % 2 == 0).float()  # exactly half
    images[:, 0, 0, 2] = (torch.arange(n) % 4 == 0).float()  # exactly a quarter
    return tensor_bundle((images, labels), (images, labels), None, seed=0)  # validation = these rows


def oracle():
    return LookupTeacher(lambda x: torch.ones(len(x), dtype=torch.bool))  # accuracy 1


def half_right():
    return LookupTeacher(lambda x: x[:, 0, 0, 1] > 0.5)  # accuracy 0.5


def quarter_right():
    return LookupTeacher(lambda x: x[:, 0, 0, 2] > 0.5)  # accuracy 0.25


def multi_teacher(teachers, **params):
    torch.manual_seed(0)
    student = build_model("cnn_tiny", (1, 8, 8), K)
    return MultiTeacher(teachers, student, MultiTeacher.Params(**params), in_shape=(1, 8, 8))


# --- loss math ---------------------------------------------------------------------------------


def test_ensemble_of_one_teacher_is_its_softened_softmax():
    teacher_logits = torch.randn(1, 5, K)
    target = losses.ensemble_targets(teacher_logits, torch.ones(1), temperature=4.0)
    assert torch.allclose(target, F.softmax(teacher_logits[0] / 4.0, dim=-1))


def test_ensemble_averages_probabilities_and_rows_sum_to_one():
    teacher_logits = torch.randn(3, 5, K)
    weights = torch.tensor([0.5, 0.3, 0.2])
    expected = sum(w * F.softmax(t / 2.0, dim=-1) for w, t in zip(weights, teacher_logits))
    assert torch.allclose(losses.ensemble_targets(teacher_logits, weights, 2.0), expected)
    per_sample = losses.confidence_weights(teacher_logits)  # (N, B)
    assert torch.allclose(losses.ensemble_targets(teacher_logits, per_sample, 2.0).sum(-1), torch.ones(5))


def test_kl_to_probs_matches_soft_kl_and_is_zero_for_identical_inputs():
    student, teacher = torch.randn(6, K, requires_grad=True), torch.randn(6, K)
    target = F.softmax(teacher / 3.0, dim=-1)
    value = losses.soft_kl_to_probs(student, target, 3.0)
    assert torch.allclose(value, losses.soft_kl(student, teacher, 3.0))
    value.backward()
    assert torch.isfinite(student.grad).all()
    assert losses.soft_kl_to_probs(teacher, target, 3.0).abs() < 1e-6
    one_hot = F.one_hot(torch.arange(6) % K, K).float()  # zeros in the target stay finite
    assert torch.isfinite(losses.soft_kl_to_probs(student, one_hot, 1.0))


def test_performance_weights_are_proportional_to_accuracy():
    weights = losses.performance_weights(torch.tensor([0.9, 0.6, 0.3]))
    assert torch.allclose(weights, torch.tensor([0.5, 1 / 3, 1 / 6]))
    assert torch.allclose(losses.performance_weights(torch.zeros(4)), torch.full((4,), 0.25))


def test_confidence_weights_sum_to_one_and_favour_the_confident_teacher():
    confident = torch.tensor([[8.0, 0.0, 0.0], [0.0, 0.0, 9.0]])  # (B=2, K)
    unsure = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.2, 0.0]])
    weights = losses.confidence_weights(torch.stack([unsure, confident]))  # (N=2, B=2)
    assert torch.allclose(weights.sum(0), torch.ones(2))
    assert (weights[1] > weights[0]).all()
    same = losses.confidence_weights(torch.stack([confident, confident]))
    assert torch.allclose(same, torch.full((2, 2), 0.5))


def test_gan_losses_known_values():
    zero, log2 = torch.zeros(4), torch.log(torch.tensor(2.0))
    assert torch.allclose(losses.discriminator_bce(zero, zero), 2 * log2)  # D(x) = 1/2 everywhere
    assert torch.allclose(losses.generator_nonsaturating(zero), log2)
    assert losses.discriminator_bce(torch.full((4,), 30.0), torch.full((4,), -30.0)) < 1e-6  # perfect D
    w = torch.tensor([1.0, -2.0, 2.0])  # a linear critic: grad = w, penalty = ||w||^2 / 2
    x = torch.randn(5, 3, requires_grad=True)
    assert torch.allclose(losses.r1_penalty(x @ w, x), torch.tensor(4.5))


# --- multi_teacher -----------------------------------------------------------------------------


def test_performance_weights_follow_validation_accuracy():
    strategy = multi_teacher([half_right(), oracle(), quarter_right()])
    assert torch.allclose(strategy.teacher_weights, torch.full((3,), 1 / 3))  # before prepare: equal
    strategy.prepare(lookup_bundle())
    weights = strategy.teacher_weights
    assert torch.allclose(weights, torch.tensor([0.5, 1.0, 0.25]) / 1.75)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[1] > weights[0] > weights[2]
    assert torch.equal(strategy.trainable_state_dict()["teacher_weights"], weights)  # checkpointed
    out = strategy.loss(batch())
    assert out.logs["teacher_weight_1"] == pytest.approx(1 / 1.75)


def test_confidence_weighting_favours_the_confident_teacher():
    strategy = multi_teacher([LookupTeacher(lambda x: torch.ones(len(x), dtype=torch.bool)), oracle()],
                             weighting="confidence")
    strategy.teachers[0].scale.data.fill_(0.5)  # same argmax, much less confident
    out = strategy.loss(batch())
    assert out.logs["teacher_weight_0"] + out.logs["teacher_weight_1"] == pytest.approx(1.0)
    assert out.logs["teacher_weight_1"] > out.logs["teacher_weight_0"]


def test_fixed_weights_are_normalised_and_must_match_the_teachers():
    strategy = multi_teacher([oracle(), half_right()], weighting="fixed", weights=[1.0, 3.0])
    assert torch.allclose(strategy.teacher_weights, torch.tensor([0.25, 0.75]))
    strategy.prepare(lookup_bundle())  # fixed weights are not re-estimated
    assert torch.allclose(strategy.teacher_weights, torch.tensor([0.25, 0.75]))
    with pytest.raises(SpecError, match=r"strategy\.params\.weights: got 3 weights for 2 teacher"):
        multi_teacher([oracle(), half_right()], weighting="fixed", weights=[1.0, 1.0, 1.0])


@pytest.mark.parametrize("params", [{"weighting": "fixed", "weights": [1.0, -1.0]},
                                    {"weighting": "fixed", "weights": [0.0, 0.0]},
                                    {"weighting": "performance", "weights": [1.0, 1.0]}])
def test_bad_weights_name_the_key_in_the_spec(blobs, tiny_teacher, params):
    with pytest.raises(ValidationError):
        MultiTeacher.Params(**params)
    with pytest.raises(SpecError, match=r"strategy\.params\.weights"):
        parse_spec(tiny_spec(blobs, tiny_teacher, strategy={"name": "multi_teacher", "params": params}))


def test_multi_teacher_loss_is_the_documented_formula_with_different_architectures():
    torch.manual_seed(1)
    teachers = [build_model("cnn_tiny", (1, 8, 8), K), build_model("mlp", (1, 8, 8), K, {"hidden": [8]})]
    strategy = multi_teacher(teachers, weighting="fixed", weights=[0.7, 0.3], temperature=2.0, alpha=0.8)
    b = batch(3)
    out = strategy.loss(b)
    with torch.no_grad():
        t = torch.stack([teacher(b["inputs"]) for teacher in teachers])
        s = strategy.student(b["inputs"])
    p_ens = 0.7 * F.softmax(t[0] / 2, -1) + 0.3 * F.softmax(t[1] / 2, -1)
    kl = (p_ens * (p_ens.log() - F.log_softmax(s / 2, -1))).sum(-1).mean()
    expected = 0.8 * 4 * kl + 0.2 * F.cross_entropy(s, b["targets"])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    out.loss.backward()
    assert all(p.grad is None for teacher in teachers for p in teacher.parameters())


# --- adversarial -------------------------------------------------------------------------------


def adversarial(seed=0, **params):
    torch.manual_seed(seed)
    teacher = build_model("cnn_tiny", (1, 8, 8), K)
    student = build_model("cnn_tiny", (1, 8, 8), K)
    return Adversarial([teacher], student, Adversarial.Params(**params), in_shape=(1, 8, 8)), teacher


def test_discriminator_updates_while_the_teacher_stays_frozen():
    strategy, teacher = adversarial()
    strategy.train()
    d_before = {k: v.clone() for k, v in strategy.discriminator.state_dict().items()}
    t_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    out = strategy.loss(batch())
    d_params = list(strategy.discriminator.parameters())
    assert all(p.grad is not None for p in d_params)
    changed = [k for k, v in strategy.discriminator.state_dict().items() if not torch.equal(v, d_before[k])]
    assert any(k.endswith("original") for k in changed), changed  # the weights themselves moved
    d_grads = [p.grad.clone() for p in d_params]
    out.loss.backward()  # the engine's backward must leave D's gradients alone
    assert all(torch.equal(p.grad, g) for p, g in zip(d_params, d_grads))
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, t_before[k]) for k, v in teacher.state_dict().items())
    assert not teacher.training


def test_discriminator_is_outside_the_engine_optimizer_but_counted():
    strategy, _ = adversarial(use_input=True)
    trainable = {id(p) for p in strategy.trainable_parameters()}
    d_params = list(strategy.discriminator.parameters())
    assert d_params and not any(id(p) in trainable for p in d_params)
    assert trainable == {id(p) for p in strategy.student.parameters()}
    assert strategy.extra_parameter_count() == sum(p.numel() for p in d_params)
    assert strategy.discriminator.net[0].parametrizations.weight.original.shape[1] == K + 64


def test_adversarial_term_reaches_the_student():
    grads = []
    for adv_weight in (0.0, 1.0):
        strategy, _ = adversarial(seed=0, adv_weight=adv_weight)
        strategy.loss(batch()).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in strategy.student.parameters()]))
    assert not torch.allclose(grads[0], grads[1])


def test_discriminator_learns_to_separate_sharp_teacher_from_flat_student():
    strategy, _ = adversarial(d_lr=1e-2, d_steps=10, temperature=1.0)
    strategy.teachers[0] = oracle()  # one-hot-like teacher outputs; the fresh student is near uniform
    b = batch(0)
    b["inputs"][:, 0, 0, 0] = b["targets"].float()
    logs = [strategy.loss(b).logs for _ in range(4)]  # the student is not stepped here
    d_losses = [log["d_loss"] for log in logs]
    assert d_losses == sorted(d_losses, reverse=True)  # D improves call after call...
    assert logs[-1]["adv_loss"] > logs[0]["adv_loss"]  # ...so fooling it costs the student more
    assert logs[-1]["d_accuracy"] > 0.5


def test_a_few_steps_stay_finite_with_condition_and_gradient_penalty():
    strategy, _ = adversarial(use_input=True, gradient_penalty=1.0, d_steps=2)
    optimizer = torch.optim.SGD(strategy.trainable_parameters(), lr=0.05)
    strategy.train()
    for step in range(4):
        out = strategy.loss(batch(step))
        assert torch.isfinite(out.loss)
        assert {"kd", "hard", "adv_loss", "d_loss", "d_accuracy"} <= out.logs.keys()
        assert all(torch.isfinite(torch.tensor(v)) for v in out.logs.values())
        assert 0.0 <= out.logs["d_accuracy"] <= 1.0
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()


def test_discriminator_and_its_adam_state_survive_a_weights_only_checkpoint():
    strategy, _ = adversarial()
    strategy.loss(batch())
    buffer = io.BytesIO()
    torch.save(strategy.trainable_state_dict(), buffer)  # as the engine saves it
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # as the engine loads it
    restored, _ = adversarial(seed=1)
    restored.load_trainable_state_dict(state)
    for a, b in zip(strategy.discriminator.state_dict().values(), restored.discriminator.state_dict().values()):
        assert torch.equal(a, b)
    moments = [restored.d_optimizer.state[p]["exp_avg"] for p in restored.discriminator.parameters()]
    expected = [strategy.d_optimizer.state[p]["exp_avg"] for p in strategy.discriminator.parameters()]
    assert all(torch.equal(m, e) for m, e in zip(moments, expected))
