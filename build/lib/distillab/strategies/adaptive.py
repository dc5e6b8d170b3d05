"""Adaptive distillation via a GAN: a VAE generator writes per-input student weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from distillab import losses
from distillab.adaptive.discriminator import MultiHeadDiscriminator
from distillab.adaptive.generator import WeightGenerator
from distillab.adaptive.objective import CONDITION_DIMS, Weights, discriminator_step, generator_loss
from distillab.adaptive.student import AdaptiveStudent
from distillab.errors import SpecError
from distillab.models.critic import input_condition
from distillab.models.loading import load_state_into
from distillab.strategies.base import OwnDiscriminator, Params, StepOutput, Strategy


class AdaptiveParams(Params):
    mode: Literal["modulate", "full"] = Field(
        "modulate", description="modulate: per-input channel scales (and rank-r updates) of shared base weights; "
                                "full: G writes the whole weight of small layers")
    layers: list[str] | None = Field(None, description="student layers G writes (module paths); default: every "
                                                        "Conv2d/Linear (modulate) or the last Linear (full)")
    rank: int = Field(0, ge=0, le=64, description="rank of the per-input low-rank update in modulate mode; 0 = scales only")
    latent_dims: int = Field(16, ge=1, le=512, description="size of the VAE latent z")
    hidden: int = Field(64, ge=4, le=4096, description="width of the decoder's hidden layer")
    base_fraction: float = Field(0.5, ge=0, lt=1, description="share of the epochs that distil the base student "
                                                              "statically (Hinton KD) before G is trained")
    base_checkpoint: str | None = Field(None, description="safetensors of an already distilled student of the "
                                                          "same architecture to start the base from")
    finetune_base: bool = Field(False, description="keep training the base weights while G trains")
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T of the KD term and of D's output head")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the KD term; 1 - alpha weighs CE")
    adv_weight: float = Field(0.1, ge=0, le=10, description="weight of G's adversarial term from D's output head")
    weights_weight: float = Field(0.05, ge=0, le=10, description="weight of D's weights head (0 switches it off)")
    complexity_weight: float = Field(0.05, ge=0, le=10, description="weight of D's complexity head (0 switches it off)")
    kl_weight: float = Field(1e-3, ge=0, le=10, description="weight of the VAE's KL term")
    d_lr: float = Field(1e-4, gt=0, le=1, description="learning rate of the discriminator's own Adam")
    d_steps: int = Field(1, ge=1, le=10, description="discriminator updates per generator step")
    d_hidden: int = Field(128, ge=8, le=2048, description="width of the discriminator heads")
    use_input: bool = Field(True, description="condition D's output head on the pooled input")
    gradient_penalty: float = Field(0.0, ge=0, le=100, description="R1 weight on the output head's teacher samples")
    weight_rows: int = Field(8, ge=1, le=1024, description="batch rows whose generated weights the weight heads score")

    @field_validator("base_checkpoint")
    @classmethod
    def _exists(cls, path):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"no such file: {path}")
        return path

    def objective(self) -> Weights:
        return Weights(self.temperature, self.alpha, self.adv_weight, self.weights_weight, self.complexity_weight,
                       self.kl_weight, self.gradient_penalty, self.d_steps, self.weight_rows)


class Adaptive(OwnDiscriminator, Strategy):
    """Input-adaptive distillation with a GAN. A generator G (a VAE:
    encoder -> mu, log sigma^2 -> z -> decoder) writes student weights for each input; the
    student runs with them (vmap over ``functional_call``); a three-head discriminator D
    judges the outputs against the teacher's and the weights against the statically
    distilled reference. See ``distillab.adaptive`` for the modes and heads.

    Phase 1 (the first ``base_fraction`` of the epochs): the base student is distilled
    statically, L = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE. Phase 2: the base is
    frozen (unless ``finetune_base``), G is trained on

        L_G = alpha * T^2 * KL(p_t || p_s(x; W(x))) + (1 - alpha) * CE + adv_weight * -log D_out
              + weights_weight * -log D_weights + complexity_weight * -log D_complexity
              + kl_weight * KL(q(z|x) || N(0, I))

    and D takes ``d_steps`` Adam steps per batch on its three heads. Validation selects only
    among phase-2 epochs, so the selected model is always the adaptive one. The teacher
    passes equal a static run's with the same epochs (phase 1 and 2 share them).
    """

    summary = "GAN-guided input-adaptive KD: a VAE writes per-input student weights, a 3-head D judges them"
    student_export = "pipeline"  # G writes the student's weights: distillab export --format adaptive
    paper = "distillab's adaptive distiller; VAE: Kingma & Welling 2014; hypernetworks: Ha, Dai & Le 2016"
    Params = AdaptiveParams

    def __init__(self, teachers, student, params, in_shape=None):
        super().__init__(teachers, student, params, in_shape)
        if self.in_shape is None:
            raise ValueError("adaptive needs in_shape to size its generator")
        if params.base_checkpoint:
            load_state_into(student, Path(params.base_checkpoint), "strategy.params.base_checkpoint")
        num_classes = self.student_classes()
        generator = WeightGenerator(student, self.in_shape, params.mode, params.layers, params.latent_dims,
                                    params.hidden, params.rank)
        self.student = AdaptiveStudent(student, generator, params.finetune_base)
        reference = {name: p.detach() for name, p in student.named_parameters() if any(
            slot.param == name for slot in generator.slots)}
        self.condition_dims = min(CONDITION_DIMS, int(torch.tensor(self.in_shape).prod())) if params.use_input else 0
        self.attach_discriminator(MultiHeadDiscriminator(num_classes, self.condition_dims, reference, params.d_hidden),
                                  params.d_lr)

    def base_epochs(self, epochs: int) -> int:
        return min(math.floor(self.params.base_fraction * epochs), epochs - 1)

    def selectable(self, epoch: int, epochs: int) -> bool:
        return epoch >= self.base_epochs(epochs)

    def deployed_model(self):
        model = self.student
        if not model.is_active:
            model.activate()
        return model

    def _start_adaptive_phase(self):
        self.student.activate()
        base = self.student.base_parameters()
        self.discriminator.set_reference({name: base[name] for name in self.discriminator.params})

    def loss(self, batch):
        p = self.params
        inputs, targets = batch["inputs"], batch["targets"]
        teacher_logits = self.teacher_logits(batch).mean(0)  # (B, K)
        # Without epoch information (a single call outside the engine) G is trained directly.
        if batch.get("epoch", 0) < self.base_epochs(batch.get("epochs", 1)):
            student_logits = self.student.student(inputs)
            soft = losses.soft_kl(student_logits, teacher_logits, p.temperature)
            hard = self.hard_loss(student_logits, batch)
            return StepOutput(p.alpha * soft + (1 - p.alpha) * hard, student_logits,
                              {"soft": soft.item(), "hard": hard.item()})
        if not self.student.is_active:
            if ("epochs" in batch and p.base_fraction > 0 and self.base_epochs(batch["epochs"]) == 0
                    and not p.base_checkpoint and not p.finetune_base):
                raise SpecError(f"strategy.params.base_fraction: {p.base_fraction} of {batch['epochs']} epoch(s) "
                                "leaves no epoch to distil the base student; train more epochs, give "
                                "base_checkpoint, or set finetune_base: true")
            self._start_adaptive_phase()
        cfg = p.objective()
        generated, mu, logvar = self.student.generate(inputs, sample=True)
        student_logits = self.student.run_student(inputs, generated)
        with torch.autocast(inputs.device.type, enabled=False):
            condition = input_condition(inputs, self.condition_dims)
            logs = discriminator_step(self.discriminator, self.d_optimizer, teacher_logits, student_logits,
                                      generated, condition, cfg)
            loss, g_logs = generator_loss(self.discriminator, teacher_logits.float(), student_logits.float(),
                                          generated, mu, logvar, condition, cfg, targets)
        return StepOutput(loss, student_logits, {**logs, **g_logs})
