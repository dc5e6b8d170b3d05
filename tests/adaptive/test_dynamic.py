"""Dynamic convolutions (adaptive v2): the grouped convolution computes, for each input, the
convolution with that input's mixture of the K kernels; it equals the per-sample vmap path; the
temperature anneals 30 -> 1 over the first tenth; a converted student starts as the static one;
bad K and bad layers are clear errors."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distillab.adaptive.dynamic import DynamicConv2d, dynamic_layers, make_dynamic, temperature_at
from distillab.errors import SpecError
from distillab.models.zoo import build_model


def _layer(experts=4, bias=True, gates=True, stride=1):
    torch.manual_seed(0)
    layer = DynamicConv2d(nn.Conv2d(6, 5, 3, stride=stride, padding=1, bias=bias), experts=experts, gates=gates,
                          temperature=1.0, noise=0.5)
    with torch.no_grad():  # a router that actually discriminates between inputs
        layer.head.weight.normal_(0, 1.0)  # the routing logits and (with gates) the gate pre-activations
    return layer


@pytest.mark.parametrize("bias,gates,stride", [(True, True, 1), (False, False, 2)])
def test_each_input_is_convolved_with_its_own_mixture_of_the_kernels(bias, gates, stride):
    layer = _layer(bias=bias, gates=gates, stride=stride)
    x = torch.randn(3, 6, 9, 9)
    out = layer(x)
    mixing, gate = layer.route(x)
    assert torch.allclose(mixing.sum(-1), torch.ones(3)) and not torch.allclose(mixing[0], mixing[1])
    for b in range(3):  # explicit: sample b, kernel sum_k a_bk W_k
        kernels = layer.weight.reshape(layer.experts, 5, 6, 3, 3)
        kernel = sum(mixing[b, k] * kernels[k] for k in range(layer.experts))
        bias_b = sum(mixing[b, k] * layer.bias[k] for k in range(layer.experts)) if bias else None
        expected = F.conv2d(x[b:b + 1], kernel, bias_b, stride, 1)[0]
        if gates:
            expected = expected * (1 + torch.tanh(gate[b]))[:, None, None]
        torch.testing.assert_close(out[b], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(layer(x[b:b + 1])[0], expected, atol=1e-5, rtol=1e-5)  # the batch-1 path


def test_the_grouped_path_equals_the_vmap_path_with_gradients(monkeypatch):
    import distillab.adaptive.dynamic as dynamic

    monkeypatch.setattr(dynamic, "GROUPED_CHUNK", 3)  # 4 inputs: a chunk of 3 and one of 1
    layer = _layer()
    x = torch.randn(4, 6, 8, 8, requires_grad=True)
    grouped, per_sample = layer(x), layer.forward_per_sample(x)
    torch.testing.assert_close(grouped, per_sample, atol=1e-5, rtol=1e-5)
    (g1,) = torch.autograd.grad(grouped.square().sum(), layer.weight)
    (g2,) = torch.autograd.grad(per_sample.square().sum(), layer.weight)
    torch.testing.assert_close(g1, g2, atol=1e-4, rtol=1e-4)
    assert g1.reshape(layer.experts, -1).abs().sum(1).min() > 0  # every expert receives gradient


def test_the_temperature_anneals_from_30_to_1_over_the_first_tenth():
    assert temperature_at(0, 1000) == 30.0
    assert temperature_at(50, 1000) == pytest.approx(15.5)
    assert temperature_at(100, 1000) == 1.0 and temperature_at(999, 1000) == 1.0
    layer = _layer()
    x = torch.randn(2, 6, 8, 8)
    layer.set_temperature(30.0)
    hot = layer.route(x)[0]
    layer.set_temperature(1.0)
    cold = layer.route(x)[0]
    assert hot.max() - hot.min() < cold.max() - cold.min()  # high T mixes nearly uniformly


def test_a_converted_student_starts_as_the_static_one_and_adds_parameters_not_macs():
    torch.manual_seed(0)
    student = build_model("cnn_small", (1, 28, 28), 10).eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        before = student(x)
    names = make_dynamic(student, experts=4)
    assert names == ["stages.2.2.0"] and isinstance(student.get_submodule(names[0]), DynamicConv2d)  # the last 3x3
    with torch.no_grad():
        after = student(x)
    # experts start near the static kernel (1 % noise) and the gates at exactly 1
    assert (before.argmax(1) == after.argmax(1)).all()
    torch.testing.assert_close(after, before, atol=0.05, rtol=0.05)
    assert all(layer.extra_parameters() > 0 for layer in dynamic_layers(student))


def test_bad_experts_and_bad_layers_are_named():
    with pytest.raises(SpecError, match="K must be at least 1"):
        DynamicConv2d(nn.Conv2d(3, 4, 3), experts=0)
    student = build_model("cnn_small", (1, 28, 28), 10)
    with pytest.raises(SpecError, match="'classifier' is a Linear, not a spatial Conv2d"):
        make_dynamic(student, ["classifier"])
    with pytest.raises(SpecError, match="'nope' is not a layer"):
        make_dynamic(student, ["nope"])


def test_the_v2_strategy_anneals_routing_trains_d_and_keeps_its_mac_budget():
    from distillab.strategies.adaptive_v2 import AdaptiveV2

    torch.manual_seed(0)
    teacher = build_model("cnn_small", (1, 28, 28), 10)
    params = AdaptiveV2.Params(experts=4, adv_weight=0.1, balance_weight=0.05, entropy_weight=0.01, vae=True)
    strategy = AdaptiveV2([teacher], build_model("cnn_small", (1, 28, 28), 10), params, in_shape=(1, 28, 28))
    strategy.prepare(type("Bundle", (), {"steps_per_epoch": staticmethod(lambda batch_size: 10)})())
    optimizer = torch.optim.SGD(strategy.trainable_parameters(), lr=0.05)
    batch = {"inputs": torch.randn(8, 1, 28, 28), "targets": torch.randint(0, 10, (8,)), "epoch": 0, "epochs": 2}
    d_before = [p.detach().clone() for p in strategy.discriminator.parameters()]
    strategy.train()
    temperatures = []
    for _ in range(3):
        out = strategy.loss(batch)
        temperatures.append(out.logs["route_temperature"])
        optimizer.zero_grad()
        out.loss.backward()
        for layer in dynamic_layers(strategy.student):  # every regulariser reaches the router (G)
            assert layer.head.weight.grad[: layer.routing_outputs].abs().sum() > 0
        optimizer.step()
    assert temperatures[0] == 30.0 and temperatures[0] > temperatures[1] > temperatures[2] >= 1.0
    assert {"balance", "route_entropy", "vae_kl", "adv_output", "d_loss"} <= set(out.logs)
    assert any(not torch.equal(a, b) for a, b in zip(d_before, strategy.discriminator.parameters()))  # D trains
    with pytest.raises(SpecError, match="max_macs_ratio"):
        AdaptiveV2([teacher], build_model("cnn_small", (1, 28, 28), 10), AdaptiveV2.Params(experts=16),
                   in_shape=(1, 28, 28))


@pytest.mark.parametrize("head", ["adv_weight", "balance_weight", "entropy_weight", "kl_weight"])
def test_every_regulariser_moves_the_generator(head):
    """Each of D's roles (the output critic, routing balance, routing entropy, the VAE's KL) changes
    the routers' gradient when switched on: a head whose gradient never reaches G is a bug."""
    from distillab.strategies.adaptive_v2 import AdaptiveV2

    def router_gradient(weight):
        torch.manual_seed(0)
        teacher = build_model("cnn_small", (1, 28, 28), 10)
        params = {"experts": 4, "adv_weight": 0.0, "balance_weight": 0.0, "entropy_weight": 0.0, "vae": True,
                  "kl_weight": 0.0, head: weight}
        strategy = AdaptiveV2([teacher], build_model("cnn_small", (1, 28, 28), 10), AdaptiveV2.Params(**params),
                              in_shape=(1, 28, 28)).train()
        strategy.prepare(type("Bundle", (), {"steps_per_epoch": staticmethod(lambda batch_size: 1)})())
        strategy.step.fill_(10)  # past the anneal: routing at T = 1
        torch.manual_seed(1)  # the same batch and the same VAE noise for both
        batch = {"inputs": torch.randn(8, 1, 28, 28), "targets": torch.randint(0, 10, (8,)), "epoch": 0,
                 "epochs": 1}
        strategy.loss(batch).loss.backward()
        return torch.cat([p.grad.flatten() for layer in dynamic_layers(strategy.student)
                          for p in (layer.router.weight, layer.head.weight)])

    assert not torch.allclose(router_gradient(0.1), router_gradient(0.0), atol=1e-9, rtol=0)
