"""G writes weights of the student's shapes, and the vmapped functional student computes
exactly what an ordinary module loaded with those weights computes."""

import copy

import pytest
import torch

from distillab import losses
from distillab.adaptive.generator import WeightGenerator, generatable_layers
from distillab.adaptive.student import AdaptiveStudent
from distillab.errors import SpecError
from distillab.models.zoo import build_model

IN_SHAPE = (1, 12, 12)


def student_and_inputs(model="cnn_tiny", n=5):
    torch.manual_seed(0)
    student = build_model(model, IN_SHAPE, 4).eval()
    return student, torch.randn(n, *IN_SHAPE, generator=torch.Generator().manual_seed(1))


def perturb(generator):
    """Make G's output depend on the input (its last layer starts at zero)."""
    with torch.no_grad():
        generator.decoder[-1].weight.normal_(0, 0.05)


@pytest.mark.parametrize("mode,rank", [("modulate", 0), ("modulate", 2), ("full", 0)])
@pytest.mark.parametrize("model", ["cnn_tiny", "mlp"])
def test_generated_weights_match_a_module_loaded_with_them(mode, rank, model):
    student, inputs = student_and_inputs(model)
    generator = WeightGenerator(student, IN_SHAPE, mode=mode, rank=rank)
    perturb(generator)
    adaptive = AdaptiveStudent(student, generator)
    adaptive.active.fill_(True)
    adaptive.eval()
    with torch.no_grad():
        weights, _, _ = adaptive.generate(inputs)
        batched = adaptive.run_student(inputs, weights)  # (B, K)
    shapes = dict(student.named_parameters())
    for name, value in weights.items():
        assert value.shape == (len(inputs), *shapes[name].shape), name
    assert any(not torch.equal(w[0], w[1]) for w in weights.values()), "weights must depend on the input"
    for b in range(len(inputs)):
        module = copy.deepcopy(student)
        state = module.state_dict()
        state.update({name: value[b] for name, value in weights.items()})
        module.load_state_dict(state)
        expected = module(inputs[b : b + 1])[0]
        torch.testing.assert_close(batched[b], expected, rtol=1e-4, atol=1e-5)


def test_untrained_generator_reproduces_the_base_student():
    student, inputs = student_and_inputs()
    for mode, rank in (("modulate", 1), ("full", 0)):
        adaptive = AdaptiveStudent(student, WeightGenerator(student, IN_SHAPE, mode=mode, rank=rank))
        adaptive.activate()
        adaptive.eval()
        with torch.no_grad():
            torch.testing.assert_close(adaptive(inputs), student(inputs), rtol=1e-5, atol=1e-6)


def test_default_layers_per_mode_and_unknown_layer_names_are_errors():
    student, _ = student_and_inputs("cnn_small")
    assert WeightGenerator(student, IN_SHAPE, mode="full").layers == ["classifier"]
    assert WeightGenerator(student, IN_SHAPE, mode="modulate").layers == generatable_layers(student)
    with pytest.raises(SpecError, match=r"strategy.params.layers.0: 'classifer'.*classifier"):
        WeightGenerator(student, IN_SHAPE, layers=["classifer"])
    with pytest.raises(SpecError, match="named twice"):
        WeightGenerator(student, IN_SHAPE, layers=["classifier", "classifier"])
    with pytest.raises(SpecError, match="strategy.params.rank"):
        WeightGenerator(student, IN_SHAPE, mode="full", rank=2)


def test_vae_latent_is_sampled_in_training_and_deterministic_at_inference():
    student, inputs = student_and_inputs()
    generator = WeightGenerator(student, IN_SHAPE)
    perturb(generator)
    a, mu, logvar = generator(inputs, sample=True)
    b, _, _ = generator(inputs, sample=True)
    assert not torch.equal(a, b)
    torch.testing.assert_close(generator(inputs)[0], generator(inputs)[0])
    assert losses.gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0  # the prior itself
    shifted = losses.gaussian_kl(torch.ones(1, 4), torch.zeros(1, 4)).item()
    assert shifted == pytest.approx(2.0)  # 1/2 * sum(mu^2) with unit variance
    assert mu.shape == logvar.shape == (len(inputs), generator.latent_dims)


def test_gradients_reach_the_generator_but_not_the_frozen_base():
    student, inputs = student_and_inputs()
    adaptive = AdaptiveStudent(student, WeightGenerator(student, IN_SHAPE, rank=1))
    adaptive.activate()
    weights, _, _ = adaptive.generate(inputs)
    adaptive.run_student(inputs, weights).logsumexp(-1).sum().backward()
    assert adaptive.generator.decoder[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in student.parameters())


@pytest.mark.parametrize("model", ["cnn_tiny", "mlp"])
def test_channel_scale_shortcut_equals_the_vmapped_student(model):
    student, inputs = student_and_inputs(model)
    generator = WeightGenerator(student, IN_SHAPE, mode="modulate", rank=0)
    perturb(generator)
    adaptive = AdaptiveStudent(student, generator)
    adaptive.active.fill_(True)
    adaptive.eval()
    with torch.no_grad():
        raw, _, _ = generator(inputs)
        vmapped = adaptive.run_student(inputs, generator.weights(raw, adaptive.base_parameters()))
        shortcut = adaptive(inputs)  # no gradients: takes the shortcut
    assert generator.scales_only
    torch.testing.assert_close(shortcut, vmapped, rtol=1e-4, atol=1e-5)
    assert not any(module._forward_hooks for module in student.modules())  # hooks removed
