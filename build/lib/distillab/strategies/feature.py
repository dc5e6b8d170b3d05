"""FitNets: the student's intermediate features, through learned adapters, regress the teacher's.

Also holds the layer-pair wiring that ``attention`` shares: resolving (student layer,
teacher layer) names, choosing pairs automatically, and reading output shapes with a
dummy forward pass.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distillab import losses
from distillab.errors import SpecError
from distillab.models.taps import Taps, named_module, stage_outputs, tappable_layers
from distillab.strategies.base import Params, StepOutput, Strategy

log = logging.getLogger("distillab")

LayerPairs = list[tuple[str, str]]
PAIRS_FIELD = Field(
    None, min_length=1,
    description="[(student layer, teacher layer)] module paths (see `distillab layers`); "
    "None: one pair per spatial resolution, matched from the deepest",
)


def probe_outputs(model: nn.Module, names: list[str], in_shape, where: Callable[[int], str]) -> dict[str, torch.Tensor]:
    """The named layers' outputs for a zero batch of 2, in eval mode without gradients: their
    shapes size the adapters before the optimizer exists. ``where(i)`` names names[i] in errors."""
    for i, name in enumerate(names):
        named_module(model, name, where(i))
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), Taps(model, names, detach=True) as taps:
            model(torch.zeros(2, *in_shape, device=device))
    finally:
        model.train(was_training)
    for i, name in enumerate(names):
        if not isinstance(taps.outputs.get(name), torch.Tensor):
            raise SpecError(f"{where(i)}: layer {name!r} of {type(model).__name__} returns no tensor in the forward pass")
    return taps.outputs


def stage_layer_names(model: nn.Module, in_shape) -> list[str]:
    return [name for name, _ in stage_outputs(model, in_shape)]


def penultimate_layer(model: nn.Module, in_shape) -> list[str]:
    """[the layer whose output feeds the model's last Linear] (the pooled or penultimate
    features), found in forward order; [] when there is none."""
    layers = tappable_layers(model, in_shape)
    modules = dict(model.named_modules())
    linear = [i for i, (name, _) in enumerate(layers) if isinstance(modules[name], nn.Linear)]
    if not linear:
        return []
    width = modules[layers[linear[-1]][0]].in_features
    for name, shape in reversed(layers[: linear[-1]]):
        if math.prod(shape) == width and not isinstance(modules[name], nn.Flatten):
            return [name]
    return []


def resolve_pairs(strategy: str, pairs: LayerPairs | None, student, teacher, in_shape,
                  find_layers: Callable = stage_layer_names, fallback: Callable | None = None):
    """-> (pairs, student outputs, teacher outputs) on a zero batch. ``pairs`` None: match the
    layers ``find_layers`` picks in each model by order from the deepest backwards (as many
    pairs as the shorter list), and log the choice. When one model has none, ``fallback``
    picks one layer in each (the penultimate features, for FitNets)."""
    if in_shape is None:
        raise SpecError(f"strategy {strategy!r}: in_shape (C, H, W) is needed to read the layers' output shapes")
    if pairs is None:
        student_layers, teacher_layers = find_layers(student, in_shape), find_layers(teacher, in_shape)
        if fallback is not None and not (student_layers and teacher_layers):
            student_layers, teacher_layers = fallback(student, in_shape), fallback(teacher, in_shape)
        for layers, model in ((student_layers, student), (teacher_layers, teacher)):
            if not layers:
                raise SpecError(f"strategy.params.pairs: no layers to match automatically in {type(model).__name__}; "
                                "name (student layer, teacher layer) pairs (see `distillab layers MODEL`)")
        count = min(len(student_layers), len(teacher_layers))
        pairs = list(zip(student_layers[len(student_layers) - count:], teacher_layers[len(teacher_layers) - count:]))
        log.info("%s: layer pairs chosen automatically (student -> teacher): %s",
                 strategy, ", ".join(f"{s} -> {t}" for s, t in pairs))
    pairs = [tuple(pair) for pair in pairs]
    student_outputs = probe_outputs(student, [s for s, _ in pairs], in_shape,
                                    lambda i: f"strategy.params.pairs[{i}] (student)")
    teacher_outputs = probe_outputs(teacher, [t for _, t in pairs], in_shape,
                                    lambda i: f"strategy.params.pairs[{i}] (teacher)")
    return pairs, student_outputs, teacher_outputs


def tapped_forward(model: nn.Module, names: list[str], inputs, no_grad: bool = False):
    """-> (logits (B, K), {layer: output}) from one forward pass."""
    with torch.set_grad_enabled(not no_grad and torch.is_grad_enabled()):
        with Taps(model, list(dict.fromkeys(names)), detach=no_grad) as taps:
            logits = model(inputs)
    return logits.float(), taps.outputs


def make_adapter(student_shape, teacher_shape, where: str) -> nn.Module:
    """A trainable map from a student output to the teacher output's shape (shapes without batch).

    (C, H, W) pairs: a larger student map is adaptive-average-pooled to the smaller height and
    width, then a 1x1 conv + BN maps C_s to C_t channels (a larger teacher map is pooled in the
    loss instead). (D,) or (T, D) pairs: a Linear on the last dimension. Equal shapes: identity.
    Outputs of different ranks (an MLP's (D,) and a CNN's pooled (C, 1, 1)) are flattened first
    (see ``flat_pair``).
    """
    s, t = tuple(student_shape), tuple(teacher_shape)
    if flat_pair(s, t):
        s, t = (math.prod(s),), (math.prod(t),)
    if s == t:
        return nn.Identity()
    if len(s) == 3 and len(t) == 3:
        size = (min(s[1], t[1]), min(s[2], t[2]))
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(size)] if s[1:] != size else []
        if s[0] != t[0]:
            layers += [nn.Conv2d(s[0], t[0], 1, bias=False), nn.BatchNorm2d(t[0])]
        return nn.Sequential(*layers)
    if len(s) == len(t) and s[:-1] == t[:-1]:
        return nn.Linear(s[-1], t[-1])
    raise SpecError(f"{where}: cannot map the student output {s} to the teacher output {t}; "
                    "pick layers that are both (C, H, W) or both (D,)")


def flat_pair(student_shape, teacher_shape) -> bool:
    """A flat (D,) output and a pooled (C, 1, 1) one are compared flattened to (B, D)."""
    shapes = sorted((tuple(student_shape), tuple(teacher_shape)), key=len)
    return len(shapes[0]) == 1 and len(shapes[1]) == 3 and shapes[1][1:] == (1, 1)


def pool_to(feature: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Adaptive-average-pool a (B, C, H, W) feature to ``like``'s spatial size, when it differs."""
    if feature.dim() == 4 and feature.shape[-2:] != like.shape[-2:]:
        return F.adaptive_avg_pool2d(feature, like.shape[-2:])
    return feature


class FeatureParams(Params):
    pairs: LayerPairs | None = PAIRS_FIELD
    hint_weight: float = Field(1.0, ge=0, le=10000, description="weight of the hint (feature MSE) term, summed over pairs")
    ce_weight: float = Field(1.0, ge=0, le=100, description="weight of the hard-label cross-entropy")
    kd_weight: float = Field(0.0, ge=0, le=100, description="weight of an optional Hinton KD term")
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T of the Hinton term")


class Feature(Strategy):
    """FitNets hints: Romero et al. (ICLR 2015), "FitNets: Hints for Thin Deep Nets", arXiv:1412.6550.

    L = ce_weight * CE(s, y) + hint_weight * sum_pairs mean_e (r(u) - v)^2
        + kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))
    u: a student layer's output, v: the paired teacher layer's output, r: a learned adapter
    (``make_adapter``: 1x1 conv + BN, Linear or identity), trained with the student and dropped
    afterwards. Unlike the paper's two stages (hints first, then KD), all terms train together.
    Without ``pairs``, one pair per spatial resolution is matched from the deepest stage back;
    where a model has no spatial stages (an MLP), the penultimate features are paired (the
    input of each model's last Linear: the student's hidden layer, the teacher's pooled features).
    With several teachers the hint term is averaged over the teachers and t is their mean logits.
    """

    summary = "FitNets: regress teacher features from student features through learned adapters"
    paper = "Romero et al. 2015, arXiv:1412.6550"
    Params = FeatureParams
    logits_only = False

    def __init__(self, teachers, student, params, in_shape=None):
        super().__init__(teachers, student, params, in_shape)
        if not self.teachers:
            raise SpecError("strategy 'feature': needs a teacher")
        self.pairs: list[LayerPairs] = []  # one list per teacher
        self.adapters = nn.ModuleList()  # [teacher][pair]
        for teacher in self.teachers:
            pairs, student_out, teacher_out = resolve_pairs("feature", params.pairs, student, teacher, self.in_shape,
                                                            fallback=penultimate_layer)
            self.pairs.append(pairs)
            self.adapters.append(nn.ModuleList(
                make_adapter(student_out[s].shape[1:], teacher_out[t].shape[1:], f"strategy.params.pairs[{i}]")
                for i, (s, t) in enumerate(pairs)
            ))

    def loss(self, batch):
        p = self.params
        inputs = batch["inputs"]
        student_names = [s for pairs in self.pairs for s, _ in pairs]
        student_logits, student_feats = tapped_forward(self.student, student_names, inputs)  # (B, K), {name: (B, ...)}
        hints, teacher_logits = [], []
        for teacher, pairs, adapters in zip(self.teachers, self.pairs, self.adapters):
            logits, teacher_feats = tapped_forward(teacher, [t for _, t in pairs], inputs, no_grad=True)
            teacher_logits.append(logits)
            for (s, t), adapter in zip(pairs, adapters):
                student_feat, teacher_feat = student_feats[s], teacher_feats[t].float()
                if flat_pair(student_feat.shape[1:], teacher_feat.shape[1:]):
                    student_feat, teacher_feat = student_feat.flatten(1), teacher_feat.flatten(1)  # (B, D)
                adapted = adapter(student_feat)  # the teacher's channels, the smaller map
                hints.append(losses.hint_mse(adapted, pool_to(teacher_feat, adapted)))
        hint = torch.stack(hints).sum() / len(self.teachers)
        ce = self.hard_loss(student_logits, batch)
        kd = losses.soft_kl(student_logits, torch.stack(teacher_logits).mean(0), p.temperature)
        loss = p.ce_weight * ce + p.hint_weight * hint + p.kd_weight * kd
        return StepOutput(loss, student_logits, {"hint": hint.item(), "ce": ce.item(), "kd": kd.item()})
