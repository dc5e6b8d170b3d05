"""FitNets hints (`feature`) and attention transfer (`attention`): adapters, layer pairs,
loss properties, training behaviour, and the `distillab layers` command."""

import logging
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from distillab import losses
from distillab.cli import app
from distillab.errors import SpecError
from distillab.models.zoo import build_model
from distillab.strategies import STRATEGIES
from distillab.strategies.attention import Attention
from distillab.strategies.feature import Feature

IN_SHAPE = (1, 8, 8)


def make(cls, student="cnn_tiny", teacher=("resnet", {"depth": 8, "width": 8}), student_args=None, **params):
    torch.manual_seed(0)
    student_model = build_model(student, IN_SHAPE, 3, student_args)
    teacher_model = build_model(teacher[0], IN_SHAPE, 3, teacher[1])
    return cls([teacher_model], student_model, cls.Params(**params), in_shape=IN_SHAPE), teacher_model


def batch(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randn(n, *IN_SHAPE, generator=g), "targets": torch.randint(0, 3, (n,), generator=g),
            "index": torch.arange(n)}


def test_registered():
    assert STRATEGIES["feature"] is Feature and STRATEGIES["attention"] is Attention


# --- losses -------------------------------------------------------------------------------


def features(seed=0, shape=(4, 6, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_hint_mse_zero_for_identical_and_per_sample():
    a, b = features(0), features(1)
    assert losses.hint_mse(a, a.clone()).item() == 0
    per_sample = losses.hint_mse(a, b, reduction="none")
    assert per_sample.shape == (4,)
    assert torch.allclose(per_sample, ((a - b) ** 2).flatten(1).mean(1))
    with pytest.raises(ValueError, match="shapes differ"):
        losses.hint_mse(a, b[:, :3])


def test_attention_map_rows_have_unit_norm():
    q = losses.attention_map(features(0), p=2)
    assert q.shape == (4, 64)
    assert torch.allclose(q.norm(dim=1), torch.ones(4))
    assert losses.attention_map(features(0), size=(2, 2)).shape == (4, 4)


def test_attention_transfer_zero_for_identical_and_positive_otherwise():
    a, b = features(0), features(1, (4, 12, 4, 4))  # different channels and resolution
    assert losses.attention_transfer(a, a.clone()).item() < 1e-12
    assert losses.attention_transfer(a, b).item() > 0
    assert losses.attention_transfer(a, b, reduction="none").shape == (4,)


@pytest.mark.parametrize("scale", [0.01, 3.0, 100.0])
def test_attention_transfer_invariant_to_positive_scaling(scale):
    a, b = features(0), features(1, (4, 12, 4, 4))
    assert torch.allclose(losses.attention_transfer(a * scale, b), losses.attention_transfer(a, b), rtol=1e-4)
    assert torch.allclose(losses.attention_transfer(a, b * scale), losses.attention_transfer(a, b), rtol=1e-4)


def probs(seed, heads, T=5, B=2):
    return torch.randn(B, heads, T, T, generator=torch.Generator().manual_seed(seed)).softmax(-1)


def test_attention_prob_kl_properties():
    a, b = probs(0, 2), probs(1, 2)
    assert abs(losses.attention_prob_kl(a, a.clone()).item()) < 1e-6
    assert losses.attention_prob_kl(a, b).item() > 0
    # the per-row KL, averaged over heads and queries, by hand
    expected = (b * (b.log() - a.log())).sum(-1).mean((1, 2))
    assert torch.allclose(losses.attention_prob_kl(a, b, reduction="none"), expected, atol=1e-6)


def test_attention_prob_kl_averages_student_heads_when_counts_differ():
    student, teacher = probs(0, 2), probs(1, 4)
    mean_student = student.mean(1, keepdim=True).expand(-1, 4, -1, -1)
    assert torch.allclose(losses.attention_prob_kl(student, teacher), losses.attention_prob_kl(mean_student, teacher))
    # a student whose averaged heads equal the teacher's (single) head costs nothing
    assert losses.attention_prob_kl(torch.cat([student, student], 1), student.mean(1, keepdim=True)).item() < 1e-6
    with pytest.raises(ValueError):
        losses.attention_prob_kl(probs(0, 2, T=5), probs(0, 2, T=6))


@pytest.mark.parametrize("loss", ["hint", "at", "prob"])
def test_finite_gradients(loss):
    if loss == "prob":
        logits = torch.randn(2, 2, 5, 5, requires_grad=True)
        value = losses.attention_prob_kl(logits.softmax(-1), probs(1, 4))
        leaf = logits
    else:
        leaf = torch.zeros(4, 6, 8, 8, requires_grad=True)  # all-zero features: the hardest case
        fn = losses.hint_mse if loss == "hint" else losses.attention_transfer
        value = fn(leaf, features(1))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(leaf.grad).all()


# --- feature: adapters and layer pairs ----------------------------------------------------------------


def adapter_outputs(strategy):
    """[(student shape, adapter output shape, teacher shape)] for teacher 0, from a real forward."""
    from distillab.strategies.feature import probe_outputs

    pairs = strategy.pairs[0]
    student_out = probe_outputs(strategy.student, [s for s, _ in pairs], IN_SHAPE, str)
    teacher_out = probe_outputs(strategy.teachers[0], [t for _, t in pairs], IN_SHAPE, str)
    strategy.eval()
    with torch.no_grad():
        return [(student_out[s].shape, adapter(student_out[s]).shape, teacher_out[t].shape)
                for (s, t), adapter in zip(pairs, strategy.adapters[0])]


def test_adapters_map_student_shapes_to_teacher_shapes():
    strategy, _ = make(Feature)  # student cnn_tiny (16, 32, 64), teacher resnet-8 width 8 (8, 16, 32)
    assert strategy.pairs[0] == [("stages.0", "layer1.0"), ("stages.1", "layer2.0"), ("stages.2", "layer3.0")]
    for student_shape, adapted, teacher_shape in adapter_outputs(strategy):
        assert student_shape != teacher_shape and adapted == teacher_shape
    assert all(isinstance(a[-1], nn.BatchNorm2d) and a[-2].kernel_size == (1, 1) for a in strategy.adapters[0])
    expected = (16 * 8 + 2 * 8) + (32 * 16 + 2 * 16) + (64 * 32 + 2 * 32)  # 1x1 conv weights + BN weight, bias
    assert strategy.extra_parameter_count() == expected


def test_adapters_are_identity_where_shapes_match():
    strategy, _ = make(Feature, teacher=("cnn_small", {}))  # (16, 8, 8), (32, 4, 4), (96, 2, 2)
    kinds = [type(a) for a in strategy.adapters[0]]
    assert kinds == [nn.Identity, nn.Identity, nn.Sequential]
    assert [o[1] == o[2] for o in adapter_outputs(strategy)] == [True, True, True]
    assert strategy.extra_parameter_count() == 64 * 96 + 2 * 96


def test_spatial_mismatch_pools_the_larger_map():
    pairs = [("stages.0", "layer2.0"), ("stages.2", "layer1.0")]  # student larger, then teacher larger
    strategy, _ = make(Feature, pairs=pairs)
    (s0, a0, t0), (s1, a1, t1) = adapter_outputs(strategy)
    assert (s0[1:], a0[1:], t0[1:]) == ((16, 8, 8), (16, 4, 4), (16, 4, 4))
    assert (s1[1:], a1[1:], t1[1:]) == ((64, 2, 2), (8, 2, 2), (8, 8, 8))  # teacher pooled in the loss
    out = strategy.loss(batch())
    assert torch.isfinite(out.loss)


def test_linear_adapter_for_flat_features():
    strategy, _ = make(Feature, student="mlp", student_args={"hidden": [16]},
                       teacher=("mlp", {"hidden": [32]}), pairs=[("features", "features")])
    adapter = strategy.adapters[0][0]
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (16, 32)
    assert torch.isfinite(strategy.loss(batch()).loss)


def test_typo_in_pairs_names_the_key_and_suggests():
    with pytest.raises(SpecError, match=r"strategy\.params\.pairs\[1\] \(teacher\).*layer2\.0") as error:
        make(Feature, pairs=[("stages.0", "layer1.0"), ("stages.1", "layer2.O")])
    assert "did you mean" in str(error.value)
    with pytest.raises(SpecError, match=r"strategy\.params\.pairs\[0\] \(student\).*stages\.1"):
        make(Attention, pairs=[("stages.l", "layer2.0")])


def test_an_mlp_student_pairs_its_penultimate_features_with_the_teachers_pooled_ones(caplog):
    with caplog.at_level(logging.INFO, logger="distillab"):
        strategy, _ = make(Feature, student="mlp", student_args={"hidden": [16]}, ce_weight=0.0)
    assert strategy.pairs == [[("features", "pool")]]  # the inputs of the two last Linear layers
    assert "features -> pool" in caplog.text
    adapter = strategy.adapters[0][0]  # (16,) -> the ResNet's pooled (32, 1, 1), flattened
    assert isinstance(adapter, nn.Linear) and (adapter.in_features, adapter.out_features) == (16, 32)
    optimizer = torch.optim.SGD(strategy.trainable_parameters(), lr=0.05)
    first = None
    for _ in range(30):
        out = strategy.loss(batch())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        first = first if first is not None else out.logs["hint"]
    assert out.logs["hint"] < first / 2


def test_attention_on_an_mlp_student_says_it_needs_feature_maps():
    with pytest.raises(SpecError, match=r"spatial attention transfer needs convolutional feature maps \(C, H, W\), "
                                        r"and the student MLP has none; use 'feature'"):
        make(Attention, student="mlp", student_args={"hidden": [16]})


def test_incompatible_shapes_are_spec_errors():
    with pytest.raises(SpecError, match=r"pairs\[0\]: cannot map"):
        make(Feature, pairs=[("stages.2", "classifier")])
    with pytest.raises(SpecError, match=r"pairs\[0\]: attention transfer needs \(C, H, W\)"):
        make(Attention, pairs=[("stages.2", "classifier")])


@pytest.mark.parametrize("cls", [Feature, Attention])
def test_auto_pairs_are_logged(cls, caplog):
    with caplog.at_level(logging.INFO, logger="distillab"):
        make(cls)
    message = next(r.getMessage() for r in caplog.records if "chosen automatically" in r.getMessage())
    assert "stages.0 -> layer1.0" in message and "stages.2 -> layer3.0" in message
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="distillab"):
        make(cls, pairs=[("stages.2", "layer3.0")])
    assert not any("chosen automatically" in r.getMessage() for r in caplog.records)


# --- training behaviour -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [Feature, Attention])
def test_steps_give_finite_grads_and_leave_the_teacher_alone(cls):
    strategy, teacher = make(cls, kd_weight=0.5)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(strategy.trainable_parameters(), lr=0.05)
    strategy.train()
    for step in range(2):
        out = strategy.loss(batch(step))
        optimizer.zero_grad()
        out.loss.backward()
        grads = [p.grad for p in strategy.trainable_parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        optimizer.step()
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    adapter_ids = {id(p) for p in strategy.adapters.parameters()} if cls is Feature else set()
    assert adapter_ids <= {id(p) for p in strategy.trainable_parameters()}


@pytest.mark.parametrize("cls, key, params", [
    (Feature, "hint", {"ce_weight": 0.0}),
    (Attention, "attention", {"ce_weight": 0.0}),
])
def test_a_few_sgd_steps_reduce_the_feature_loss(cls, key, params):
    strategy, _ = make(cls, **params)
    optimizer = torch.optim.SGD(strategy.trainable_parameters(), lr=0.05, momentum=0.9)
    strategy.train()
    fixed = batch(0, n=16)
    values = []
    for _ in range(8):
        out = strategy.loss(fixed)
        values.append(out.logs[key])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert values[-1] < 0.8 * values[0], values


# --- attention probabilities (transformers) ---------------------------------------------------------


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.probs = nn.Softmax(dim=-1)  # the named submodule whose output is tapped
        self.dropout = nn.Dropout(0.1)

    def forward(self, x):  # (B, T, D)
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # (B, h, T, d)
        attention = self.dropout(self.probs(q @ k.transpose(-1, -2) / math.sqrt(D // self.heads)))  # (B, h, T, T)
        return x + (attention @ v).transpose(1, 2).reshape(B, T, D)


class TinyAttentionNet(nn.Module):
    """Patchify 8x8 into 16 tokens, a few attention blocks, mean-pool, classify."""

    def __init__(self, heads=2, dim=8, depth=1, num_classes=3):
        super().__init__()
        self.embed = nn.Conv2d(1, dim, 2, stride=2)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x):  # (B, 1, 8, 8)
        tokens = self.embed(x).flatten(2).transpose(1, 2)  # (B, 16, dim)
        return self.classifier(self.blocks(tokens).mean(1))  # (B, num_classes)


def make_transformers(**params):
    torch.manual_seed(0)
    student, teacher = TinyAttentionNet(heads=2, depth=1), TinyAttentionNet(heads=4, dim=16, depth=2)
    return Attention([teacher], student, Attention.Params(mode="probabilities", **params), in_shape=IN_SHAPE), teacher


def test_probabilities_mode_with_explicit_pairs():
    strategy, teacher = make_transformers(pairs=[("blocks.0.probs", "blocks.1.probs")])
    optimizer = torch.optim.SGD(strategy.trainable_parameters(), lr=0.5)
    strategy.train()
    fixed = batch(0)
    values = []
    for _ in range(6):
        out = strategy.loss(fixed)
        values.append(out.logs["attention"])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert all(math.isfinite(v) and v >= 0 for v in values)
    assert all(p.grad is None for p in teacher.parameters())
    assert values[-1] < values[0]


def test_probabilities_mode_finds_attention_layers(caplog):
    with caplog.at_level(logging.INFO, logger="distillab"):
        strategy, _ = make_transformers()
    assert strategy.pairs[0] == [("blocks.0.probs", "blocks.1.probs")]  # deepest first; dropout deduplicated
    assert any("blocks.0.probs -> blocks.1.probs" in r.getMessage() for r in caplog.records)


def test_probabilities_mode_rejects_non_probabilities():
    with pytest.raises(SpecError, match=r"pairs\[0\]: mode 'probabilities' needs attention probabilities"):
        make_transformers(pairs=[("embed", "embed")])  # (dim, 4, 4): 4-D but no distribution
    with pytest.raises(SpecError, match=r"pairs\[0\]: mode 'probabilities'"):
        make(Attention, mode="probabilities", pairs=[("stages.0", "layer1.0")])


# --- the `layers` command -----------------------------------------------------------------------------


def test_layers_command_prints_shapes_and_marks_defaults():
    result = CliRunner().invoke(app, ["layers", "resnet", "--model-args", '{"depth": 8}', "--in-shape", "1,8,8",
                                      "--classes", "3"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    marked = [line.split()[1] for line in lines if line.startswith("* ") and "picked" not in line]
    assert marked == ["layer1.0", "layer2.0", "layer3.0"]
    assert any("layer2.0.conv1" in line and "(32, 4, 4)" in line for line in lines)
    assert any("classifier" in line and "(3,)" in line for line in lines)


@pytest.mark.parametrize("args, needle", [
    (["cnn_tinny"], "unknown model"),
    (["cnn_tiny", "--in-shape", "1,x"], "--in-shape"),
    (["cnn_tiny", "--model-args", "{depth"], "--model-args"),
])
def test_layers_command_user_errors_exit_2(args, needle):
    result = CliRunner().invoke(app, ["layers", *args])
    assert result.exit_code == 2 and needle in result.output
    assert "Traceback" not in result.output
