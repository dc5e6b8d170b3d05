"""Layer-wise distillation for language models: pairing, projections, and its terms."""

import pytest
import torch

from distillab.errors import SpecError
from distillab.models.zoo import build_model
from distillab.strategies import STRATEGIES

V, T = 31, 8


def gpt(layers, dim=16, seed=0):
    torch.manual_seed(seed)
    return build_model("gpt", (T,), V, {"layers": layers, "dim": dim, "heads": 2})


def batch(seed=0):
    tokens = torch.randint(0, V, (3, T + 1), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(3, T, dtype=torch.bool)
    mask[1, 5:] = False
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask}


def test_layers_pair_at_the_same_relative_depth_through_learned_projections():
    cls = STRATEGIES["layerwise"]
    strategy = cls([gpt(6, dim=24)], gpt(2), cls.Params(), in_shape=(T,))
    assert strategy.pairs == [(1, 3), (2, 6)]
    assert [tuple(p.weight.shape) for p in strategy.projections] == [(24, 16), (24, 16)]
    with pytest.raises(SpecError, match=r"pairs\[1\]: \(3, 2\) is out of range: the student has layers 0-2"):
        cls([gpt(6, dim=24)], gpt(2), cls.Params(pairs=[(1, 1), (3, 2)]), in_shape=(T,))


def test_a_student_identical_to_its_teacher_has_no_hidden_or_attention_loss():
    cls = STRATEGIES["layerwise"]
    teacher = gpt(2, seed=1)
    student = gpt(2, seed=1)
    strategy = cls([teacher], student, cls.Params(attention_weight=1.0, pairs=[(1, 1), (2, 2)]), in_shape=(T,))
    for projection in strategy.projections:
        projection.weight.data = torch.eye(16)
    out = strategy.loss(batch())
    assert out.logs["hidden"] == pytest.approx(0.0, abs=1e-5)
    assert out.logs["attention"] == pytest.approx(0.0, abs=1e-5)
    assert out.logs["soft"] == pytest.approx(0.0, abs=1e-5)


def test_the_terms_are_positive_and_train_the_projections():
    cls = STRATEGIES["layerwise"]
    strategy = cls([gpt(4, dim=24, seed=2)], gpt(2, seed=3), cls.Params(attention_weight=1.0, hidden_loss="mse"),
                   in_shape=(T,))
    out = strategy.loss(batch(1))
    assert out.logs["hidden"] > 0 and out.logs["attention"] > 0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in strategy.projections.parameters())
