"""Adversarial KD: a discriminator learns to tell teacher outputs from student outputs."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from distillab import losses
from distillab.models.critic import Critic, critic_loss, critic_step, input_condition
from distillab.strategies.base import OwnDiscriminator, Params, StepOutput, Strategy

INPUT_EMBEDDING_DIMS = 64  # the optional input condition is the input average-pooled to at most this


class AdversarialParams(Params):
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T of the KD term and of D's inputs")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; 1 - alpha weighs CE")
    adv_weight: float = Field(0.1, ge=0, le=10, description="weight of the student's adversarial term")
    d_lr: float = Field(1e-4, gt=0, le=1, description="learning rate of the discriminator's own Adam")
    d_steps: int = Field(1, ge=1, le=10, description="discriminator updates per student step")
    d_hidden: int = Field(128, ge=8, le=2048, description="width of the discriminator's two hidden layers")
    use_input: bool = Field(False, description="condition D on the input, average-pooled to at most 64 values")
    gradient_penalty: float = Field(0.0, ge=0, le=100, description="R1 weight gamma on teacher samples; 0 = off")


class Adversarial(OwnDiscriminator, Strategy):
    """Xu, Hsu & Huang (2017), "Training Shallow and Thin Networks for Acceleration via Knowledge
    Distillation with Conditional Adversarial Networks", arXiv:1709.00513: a discriminator D
    learns to tell the teacher's outputs from the student's and the student learns to fool it.
    Here D sees softened probabilities p = softmax(./T), optionally joined with a pooled input
    e(x) as the condition, and the Hinton KD term is kept. (Not KDGAN, Wang et al. 2018, which
    also trains the teacher.) With several teachers, t is the mean of their logits.

        L_S = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(s, y) + adv_weight * E[-log D(p_s, e(x))]
        L_D = E[-log D(p_t, e(x))] + E[-log(1 - D(p_s, e(x)))] + gamma * E[1/2 ||grad_p D(p_t, e(x))||^2]

    D (spectral norm on every layer) takes ``d_steps`` Adam steps on L_D inside ``loss`` on
    detached student outputs; the engine's optimizer sees only the student.
    """

    summary = "Hinton KD plus a GAN term: a spectral-norm discriminator tells teacher from student outputs"
    paper = "Xu, Hsu & Huang 2017, arXiv:1709.00513"
    Params = AdversarialParams

    def __init__(self, teachers, student, params, in_shape=None):
        super().__init__(teachers, student, params, in_shape)
        if self.in_shape is None:
            raise ValueError("adversarial needs in_shape to size its discriminator")
        num_classes = self.student_classes()
        self.condition_dims = min(INPUT_EMBEDDING_DIMS, math.prod(self.in_shape)) if params.use_input else 0
        self.attach_discriminator(Critic(num_classes + self.condition_dims, params.d_hidden), params.d_lr)

    def loss(self, batch):
        p = self.params
        inputs = batch["inputs"]  # (B, C, H, W)
        teacher_logits = self.teacher_logits(batch).mean(0)  # (B, K)
        student_logits = self.student(inputs)  # (B, K)
        kd = losses.soft_kl(student_logits, teacher_logits, p.temperature)
        hard = self.hard_loss(student_logits, batch)

        # D is small and trained here, in float32 whatever autocast the engine uses.
        with torch.autocast(inputs.device.type, enabled=False):
            condition = input_condition(inputs, self.condition_dims)  # (B, E) or None
            d_logs = critic_step(self.discriminator, self.d_optimizer, teacher_logits, student_logits, condition,
                                 p.temperature, steps=p.d_steps, gradient_penalty=p.gradient_penalty)
            adv = critic_loss(self.discriminator, student_logits, condition, p.temperature)

        loss = p.alpha * kd + (1 - p.alpha) * hard + p.adv_weight * adv
        logs = {"kd": kd.item(), "hard": hard.item(), "adv_loss": adv.item(), "d_loss": d_logs["d_loss"],
                "d_accuracy": d_logs["d_output_accuracy"]}
        return StepOutput(loss, student_logits, logs)
