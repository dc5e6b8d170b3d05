"""The shared strategy contract, parametrised over the registry: two steps on a tiny model
give a finite loss, the teacher gets no gradient and stays in eval mode, and a checkpoint
round-trips."""

import pytest
import torch

from distillab.models.zoo import build_model
from distillab.strategies import STRATEGIES


VOCAB, CONTEXT = 11, 6  # a tiny language model for the strategies that serve only language_modeling


def is_text(name):
    return STRATEGIES[name].tasks == ("language_modeling",)


def make_strategy(name, seed=0):
    torch.manual_seed(seed)
    cls = STRATEGIES[name]
    if is_text(name):
        args = {"layers": 1, "dim": 16, "heads": 2}
        teacher, student = (build_model("gpt", (CONTEXT,), VOCAB, args) for _ in range(2))
        params = cls.Params(**({"top_k": 4} if "top_k" in cls.Params.model_fields else {}))
        return cls([teacher], student, params, in_shape=(CONTEXT,)), teacher
    teacher = build_model("cnn_tiny", (1, 8, 8), 3)
    student = build_model("cnn_tiny", (1, 8, 8), 3)
    # adaptive_v2's default MAC budget (1.1x) is for real students; on 8x8 inputs the routers cost more
    params = cls.Params(**({"max_macs_ratio": 10} if "max_macs_ratio" in cls.Params.model_fields else {}))
    return cls([teacher], student, params, in_shape=(1, 8, 8)), teacher


def batch(seed=0, name=None):
    g = torch.Generator().manual_seed(seed)
    if name is not None and is_text(name):
        tokens = torch.randint(0, VOCAB, (8, CONTEXT + 1), generator=g)
        mask = torch.ones(8, CONTEXT, dtype=torch.bool)
        mask[0, -2:] = False  # padding at the end of the last block
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": mask, "index": torch.arange(8)}
    return {"inputs": torch.randn(8, 1, 8, 8, generator=g), "targets": torch.randint(0, 3, (8,), generator=g),
            "index": torch.arange(8)}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_two_steps_finite_loss_teacher_frozen(name):
    strategy, teacher = make_strategy(name)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(strategy.trainable_parameters(), lr=0.1)
    strategy.train()
    losses = []
    for step in range(2):
        out = strategy.loss(batch(step, name))
        assert out.loss.dim() == 0 and torch.isfinite(out.loss)
        assert out.student_logits.shape == ((8, CONTEXT, VOCAB) if is_text(name) else (8, 3))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert not teacher.training, "the teacher must stay in eval mode"
    assert all(p.grad is None for p in teacher.parameters()), "the teacher must get no gradient"
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), f"teacher {key} changed"
    trainable = {id(p) for p in strategy.trainable_parameters()}
    assert all(id(p) not in trainable for p in teacher.parameters())
    assert all(id(p) in trainable for p in strategy.student.parameters())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_checkpoint_round_trip(name):
    strategy, _ = make_strategy(name, seed=0)
    optimizer = torch.optim.SGD(strategy.trainable_parameters(), lr=0.1)
    strategy.train()
    out = strategy.loss(batch(0, name))
    optimizer.zero_grad()
    out.loss.backward()
    optimizer.step()
    state = strategy.trainable_state_dict()
    assert not any(key.startswith("teachers.") for key in state)

    restored, _ = make_strategy(name, seed=1)  # different initial weights
    restored.load_trainable_state_dict(state)
    strategy.eval()
    restored.eval()
    probe = batch(5, name)
    with torch.no_grad():
        assert torch.allclose(strategy.student(probe["inputs"]), restored.student(probe["inputs"]))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_declares_summary_paper_and_params(name):
    cls = STRATEGIES[name]
    assert cls.summary and cls.paper and cls.__doc__
    cls.Params()  # every parameter has a default
    with pytest.raises(Exception, match="extra|unknown|not permitted"):
        cls.Params.model_validate({"no_such_param": 1})


def test_cached_teacher_logits_are_used_instead_of_the_teacher():
    strategy, teacher = make_strategy("response")
    calls = []
    teacher.register_forward_hook(lambda *args: calls.append(1))
    b = batch(0)
    b["teacher_logits"] = torch.randn(1, 8, 3)
    strategy.loss(b)
    assert calls == []
    del b["teacher_logits"]
    strategy.loss(b)
    assert calls == [1]
