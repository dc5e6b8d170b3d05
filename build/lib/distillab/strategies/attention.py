"""Attention transfer: the student matches where the teacher's activations (or attention) sit."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from distillab import losses
from distillab.errors import SpecError
from distillab.models.taps import tappable_layers
from distillab.strategies.base import Params, StepOutput, Strategy
from distillab.strategies.feature import PAIRS_FIELD, LayerPairs, probe_outputs, resolve_pairs, tapped_forward


def is_probabilities(output: torch.Tensor) -> bool:
    """(B, heads, T, S) with non-negative rows summing to 1 over the last dimension."""
    return (output.dim() == 4 and output.is_floating_point() and bool((output >= 0).all())
            and torch.allclose(output.sum(-1), torch.ones((), dtype=output.dtype, device=output.device), atol=1e-4))


def attention_probability_layers(model, in_shape) -> list[str]:
    """Layers whose output on a zero batch are attention probabilities, in forward order. Of
    layers returning the same tensor (a softmax, then eval-mode dropout) the first is kept."""
    candidates = [name for name, shape in tappable_layers(model, in_shape) if len(shape) == 3]
    outputs = probe_outputs(model, candidates, in_shape, lambda i: "strategy.params.pairs") if candidates else {}
    found, seen = [], set()
    for name in candidates:
        if is_probabilities(outputs[name]) and outputs[name].data_ptr() not in seen:
            seen.add(outputs[name].data_ptr())
            found.append(name)
    return found


class AttentionParams(Params):
    pairs: LayerPairs | None = PAIRS_FIELD
    mode: Literal["spatial", "probabilities"] = Field(
        "spatial", description="spatial: activation maps of (C, H, W) features; "
        "probabilities: a transformer's (heads, T, T) attention probabilities")
    beta: float = Field(1000.0, ge=0, le=100000, description="spatial mode: the AT term is weighted beta/2")
    p: float = Field(2.0, ge=1, le=8, description="spatial mode: exponent of the attention map mean_c |f|^p")
    prob_weight: float = Field(1.0, ge=0, le=1000, description="probabilities mode: weight of the attention KL")
    ce_weight: float = Field(1.0, ge=0, le=100, description="weight of the hard-label cross-entropy")
    kd_weight: float = Field(0.0, ge=0, le=100, description="weight of an optional Hinton KD term")
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T of the Hinton term")


class Attention(Strategy):
    """Attention transfer: Zagoruyko & Komodakis (ICLR 2017), "Paying More Attention to Attention",
    arXiv:1612.03928.

    spatial:       L = ce_weight * CE(s, y) + beta/2 * sum_pairs mean_b ||Q_s - Q_t||_2^2 / (h*w) + L_KD
                   Q = vec(mean_c |f_c|^p) / ||vec(mean_c |f_c|^p)||_2, maps pooled to the smaller size
    probabilities: L = ce_weight * CE(s, y) + prob_weight * sum_pairs KL(a_t || a_s) + L_KD
                   a: (heads, T, T) attention rows, KL averaged over heads and queries (MiniLM style)
    L_KD = kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T)).

    Attention maps have no channels, so student and teacher widths may differ and nothing is
    learned besides the student. Without ``pairs``: spatial mode matches one layer per spatial
    resolution, probabilities mode every layer that outputs attention probabilities, both from
    the deepest backwards. With several teachers the transfer term is averaged over them.
    """

    summary = "attention transfer: match normalised activation maps (or transformer attention rows)"
    paper = "Zagoruyko & Komodakis 2017, arXiv:1612.03928"
    Params = AttentionParams
    logits_only = False

    def __init__(self, teachers, student, params, in_shape=None):
        super().__init__(teachers, student, params, in_shape)
        if not self.teachers:
            raise SpecError("strategy 'attention': needs a teacher")
        probabilities = params.mode == "probabilities"
        if not probabilities and params.pairs is None and self.in_shape is not None:
            maps = [name for name, shape in tappable_layers(student, self.in_shape) if len(shape) == 3]
            if not maps:
                raise SpecError(f"strategy 'attention': spatial attention transfer needs convolutional feature maps "
                                f"(C, H, W), and the student {type(student).__name__} has none; use 'feature' "
                                "(FitNets, which pairs penultimate features) or 'response' for this student")
        find_layers = {"find_layers": attention_probability_layers} if probabilities else {}
        self.pairs: list[LayerPairs] = []  # one list per teacher
        for teacher in self.teachers:
            pairs, student_out, teacher_out = resolve_pairs(
                "attention", params.pairs, student, teacher, self.in_shape, **find_layers)
            for i, (s, t) in enumerate(pairs):
                self._check_pair(i, s, t, student_out[s], teacher_out[t], probabilities)
            self.pairs.append(pairs)

    @staticmethod
    def _check_pair(i, s, t, student_out, teacher_out, probabilities):
        shapes = f"student {s!r} gives {tuple(student_out.shape[1:])}, teacher {t!r} gives {tuple(teacher_out.shape[1:])}"
        if not probabilities and (student_out.dim() != 4 or teacher_out.dim() != 4):
            raise SpecError(f"strategy.params.pairs[{i}]: attention transfer needs (C, H, W) outputs; {shapes}")
        if probabilities and not (is_probabilities(student_out) and is_probabilities(teacher_out)
                                  and student_out.shape[-2:] == teacher_out.shape[-2:]):
            raise SpecError(f"strategy.params.pairs[{i}]: mode 'probabilities' needs attention probabilities "
                            f"(heads, T, T) of the same T, rows summing to 1; {shapes}")

    def loss(self, batch):
        p = self.params
        inputs = batch["inputs"]
        student_names = [s for pairs in self.pairs for s, _ in pairs]
        student_logits, student_feats = tapped_forward(self.student, student_names, inputs)  # (B, K), {name: (B, ...)}
        terms, teacher_logits = [], []
        for teacher, pairs in zip(self.teachers, self.pairs):
            logits, teacher_feats = tapped_forward(teacher, [t for _, t in pairs], inputs, no_grad=True)
            teacher_logits.append(logits)
            for s, t in pairs:
                if p.mode == "probabilities":  # (B, heads, T, T) each
                    terms.append(losses.attention_prob_kl(student_feats[s], teacher_feats[t]))
                else:  # (B, C, H, W) each
                    terms.append(losses.attention_transfer(student_feats[s], teacher_feats[t], p.p))
        transfer = torch.stack(terms).sum() / len(self.teachers)
        weight = p.prob_weight if p.mode == "probabilities" else p.beta / 2
        ce = self.hard_loss(student_logits, batch)
        kd = losses.soft_kl(student_logits, torch.stack(teacher_logits).mean(0), p.temperature)
        loss = p.ce_weight * ce + weight * transfer + p.kd_weight * kd
        return StepOutput(loss, student_logits, {"attention": transfer.item(), "ce": ce.item(), "kd": kd.item()})
