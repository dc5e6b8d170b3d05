"""Adaptive distillation v2: the student's last 3x3 convolution (or the
chosen ones) becomes input-conditioned (a per-input mixture of K kernels, ``adaptive.dynamic``),
trained end to end with KD from the first step; the adaptive distiller's discriminator heads act as weak
regularisers."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from distillab import losses
from distillab.adaptive.dynamic import dynamic_layers, make_dynamic, temperature_at
from distillab.adaptive.objective import CONDITION_DIMS
from distillab.errors import SpecError
from distillab.models.critic import Critic, critic_loss, critic_step, input_condition
from distillab.strategies.base import OwnDiscriminator, Params, StepOutput, Strategy


class AdaptiveV2Params(Params):
    experts: int = Field(4, ge=1, le=16, description="K: kernels mixed per input in each dynamic layer")
    layers: list[str] | None = Field(None, description="Conv2d layers made dynamic (module paths); default: the "
                                                        "student's last spatial convolution")
    gates: bool = Field(True, description="per-output-channel gates on the dynamic layers' activations")
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T of the KD term")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; 1 - alpha weighs CE")
    route_start: float = Field(30.0, ge=1, le=100, description="the routing softmax's temperature at step 0")
    route_end: float = Field(1.0, gt=0, le=100, description="... after the anneal, and at inference")
    anneal_fraction: float = Field(0.1, ge=0, le=1, description="share of the training steps the anneal takes")
    adv_weight: float = Field(0.05, ge=0, le=0.1, description="D's output head: teacher-vs-student logit critic "
                                                              "(0 switches D off)")
    balance_weight: float = Field(0.01, ge=0, le=0.1, description="routing load balance over the batch (the "
                                                                  "weight-statistics head's role; 0 = off)")
    entropy_weight: float = Field(0.0, ge=0, le=0.1, description="per-input routing entropy, pushing each input "
                                                                 "to a decisive mixture (0 = off)")
    max_macs_ratio: float = Field(1.1, ge=1, le=10, description="hard MAC budget against the static student "
                                                                "(the complexity head's role)")
    vae: bool = Field(False, description="routing logits drawn from a Gaussian with a KL term (a VAE over the routing)")
    kl_weight: float = Field(1e-3, ge=0, le=10, description="weight of the routing VAE's KL term")
    d_lr: float = Field(1e-4, gt=0, le=1, description="learning rate of the discriminator's own Adam")
    d_hidden: int = Field(128, ge=8, le=2048, description="width of the discriminator's output head")


class AdaptiveV2(OwnDiscriminator, Strategy):
    """Input-adaptive KD with dynamic convolutions (CondConv / Dynamic Convolution family). The
    chosen layers (default: the last spatial convolution) keep K kernels each; a cheap router per layer (global pooling and a small
    MLP, the generator G) gives every input a softmax over them, whose weights are a K-number
    code of that input's kernel. Trained from step 0 with

        L = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE + adv_weight * -log D_out(p_s)
            + balance_weight * K * sum_k mean_b(a_bk)^2 + entropy_weight * mean_b H(a_b)
            + kl_weight * KL(q(logits | x) || N(0, I))     (with ``vae``)

    while the routing temperature anneals from ``route_start`` to ``route_end`` over the first
    ``anneal_fraction`` of the steps (near-uniform mixing first, so every expert learns). The
    MAC budget is checked when the student is built."""

    summary = "input-adaptive KD: dynamic convolutions (per-input mixture of K kernels) trained end to end with KD"
    student_export = "rebuilt"  # the chosen convolutions are dynamic: deployed_model() rebuilds them
    compressible = False  # dynamic convolutions are neither pruned nor quantization-trained
    paper = "distillab's adaptive distiller; CondConv (Yang et al. 2019); Dynamic Convolution (Chen et al. 2020)"
    Params = AdaptiveV2Params

    def __init__(self, teachers, student, params, in_shape=None):
        super().__init__(teachers, student, params, in_shape)
        from distillab.models.facts import macs_per_sample

        static_macs = macs_per_sample(student, self.in_shape) if self.in_shape is not None else None
        self.dynamic_names = make_dynamic(student, params.layers, params.experts, params.gates,
                                          variational=params.vae)
        if static_macs:
            ratio = macs_per_sample(student, self.in_shape) / static_macs
            if ratio > params.max_macs_ratio:
                raise SpecError(f"strategy.params.max_macs_ratio: the dynamic student needs {ratio:.3f}x the static "
                                f"student's MACs, over the budget of {params.max_macs_ratio:g}x; use fewer experts "
                                "or layers")
        num_classes = self.student_classes()
        self.condition_dims = min(CONDITION_DIMS, math.prod(self.in_shape)) if self.in_shape is not None else 0
        self.attach_discriminator(Critic(num_classes + self.condition_dims, params.d_hidden), params.d_lr)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.steps_per_epoch = None
        self._set_route_temperature(params.route_start)

    def prepare(self, bundle) -> None:
        self.steps_per_epoch = getattr(bundle, "steps_per_epoch", None)

    def _set_route_temperature(self, value: float) -> None:
        for layer in dynamic_layers(self.student):
            layer.set_temperature(value)

    def _anneal(self, batch: dict) -> float:
        p = self.params
        if self.student.training:
            steps = self.steps_per_epoch(len(batch["targets"])) if callable(self.steps_per_epoch) else None
            total = (steps or 1) * batch.get("epochs", 1)
            value = temperature_at(int(self.step), total, p.route_start, p.route_end, p.anneal_fraction)
            self.step += 1
        else:
            value = p.route_end
        self._set_route_temperature(value)
        return value

    def loss(self, batch):
        p = self.params
        route_temperature = self._anneal(batch)
        inputs = batch["inputs"]
        teacher_logits = self.teacher_logits(batch).mean(0).float()
        student_logits = self.student(inputs)
        soft = losses.soft_kl(student_logits, teacher_logits, p.temperature)
        hard = self.hard_loss(student_logits, batch)
        loss = p.alpha * soft + (1 - p.alpha) * hard
        logs = {"soft": soft.item(), "hard": hard.item(), "route_temperature": route_temperature}
        layers = dynamic_layers(self.student)
        mixing = [layer.last_mixing for layer in layers if layer.last_mixing is not None]
        if p.balance_weight > 0 and mixing:
            balance = torch.stack([p.experts * m.float().mean(0).square().sum() for m in mixing]).mean()
            loss = loss + p.balance_weight * balance
            logs["balance"] = balance.item()
        if p.entropy_weight > 0 and mixing:
            entropy = torch.stack([-(m.float() * (m.float() + 1e-8).log()).sum(-1).mean() for m in mixing]).mean()
            loss = loss + p.entropy_weight * entropy
            logs["route_entropy"] = entropy.item()
        if p.vae:
            kl = torch.stack([layer.last_kl for layer in layers if layer.last_kl is not None]).mean()
            loss = loss + p.kl_weight * kl
            logs["vae_kl"] = kl.item()
        if p.adv_weight > 0 and torch.is_grad_enabled():
            with torch.autocast(inputs.device.type, enabled=False):
                condition = input_condition(inputs.float(), self.condition_dims)
                logs.update(critic_step(self.discriminator, self.d_optimizer, teacher_logits, student_logits,
                                        condition, p.temperature))
                adv = critic_loss(self.discriminator, student_logits, condition, p.temperature)
            loss = loss + p.adv_weight * adv
            logs["adv_output"] = adv.item()
        return StepOutput(loss, student_logits, logs)
