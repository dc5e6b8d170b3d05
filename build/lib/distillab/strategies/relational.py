"""Relational knowledge distillation (RKD): match the geometry of a batch, not single outputs."""

from __future__ import annotations

import torch
from pydantic import Field

from distillab import losses
from distillab.models.taps import Taps, named_module
from distillab.strategies.base import Params, StepOutput, Strategy


class RelationalParams(Params):
    distance_weight: float = Field(25.0, ge=0, le=1000, description="weight of the RKD distance term")
    angle_weight: float = Field(50.0, ge=0, le=1000, description="weight of the RKD angle term")
    ce_weight: float = Field(1.0, ge=0, le=100, description="weight of the hard-label cross-entropy")
    kd_weight: float = Field(0.0, ge=0, le=100, description="weight of an optional Hinton KD term")
    temperature: float = Field(4.0, gt=0, le=100, description="softmax temperature T of the Hinton term")
    student_layer: str | None = Field(None, description="student module giving the embedding; None: logits")
    teacher_layer: str | None = Field(None, description="teacher module giving the embedding; None: logits")


class Relational(Strategy):
    """Park, Kim, Lu & Cho (CVPR 2019), "Relational Knowledge Distillation".

    L = ce_weight * CE(s, y) + distance_weight * L_D + angle_weight * L_A
        + kd_weight * T^2 * KL(softmax(t/T) || softmax(s/T))
    L_D = mean_{i,j} smooth_l1(|e_i - e_j| / mu_s, |f_i - f_j| / mu_t)    (mu: mean distance)
    L_A = mean_{i,j,k} smooth_l1(cos angle(e_j, e_i, e_k), cos angle(f_j, f_i, f_k))
    with e the student and f the teacher embeddings of the batch.

    Embeddings are the outputs of ``student_layer`` / ``teacher_layer``, flattened to (B, D);
    a layer left as None uses the logits instead (the logit variant of RKD). The two widths
    may differ. With several teachers the relational terms are averaged over the teachers.
    logits_only is False because layers may be tapped; with both layers None the teacher
    side reads only ``teacher_logits(batch)``.
    """

    summary = "RKD: match pairwise distances and triplet angles of student and teacher embeddings"
    paper = "Park et al. 2019, arXiv:1904.05068"
    Params = RelationalParams
    logits_only = False

    def __init__(self, teachers, student, params, in_shape=None):
        super().__init__(teachers, student, params, in_shape)
        # fail at construction, with the parameter's name, when a layer does not exist
        if params.student_layer is not None:
            named_module(student, params.student_layer, "strategy.params.student_layer")
        if params.teacher_layer is not None:
            for teacher in self.teachers:
                named_module(teacher, params.teacher_layer, "strategy.params.teacher_layer")

    def _student_forward(self, inputs):  # -> logits (B, K), embedding (B, D_s)
        layer = self.params.student_layer
        if layer is None:
            logits = self.student(inputs)
            return logits, logits
        with Taps(self.student, [layer]) as taps:
            logits = self.student(inputs)
        return logits, taps.outputs[layer].flatten(1)

    def _teacher_forward(self, batch):  # -> logits (n_teachers, B, K), embeddings [(B, D_t)]
        layer = self.params.teacher_layer
        if layer is None:
            logits = self.teacher_logits(batch)
            return logits, list(logits)
        logits, embeddings = [], []
        with torch.no_grad():
            for teacher in self.teachers:
                with Taps(teacher, [layer], detach=True) as taps:
                    logits.append(teacher(batch["inputs"]).float())
                embeddings.append(taps.outputs[layer].flatten(1).float())
        return torch.stack(logits), embeddings

    def loss(self, batch):
        p = self.params
        student_logits, student_emb = self._student_forward(batch["inputs"])  # (B, K), (B, D_s)
        teacher_logits, teacher_embs = self._teacher_forward(batch)  # (n, B, K), [(B, D_t)]
        distance = torch.stack([losses.rkd_distance(student_emb, t) for t in teacher_embs]).mean()
        angle = torch.stack([losses.rkd_angle(student_emb, t) for t in teacher_embs]).mean()
        hard = self.hard_loss(student_logits, batch)
        loss = p.ce_weight * hard + p.distance_weight * distance + p.angle_weight * angle
        logs = {"distance": distance.item(), "angle": angle.item(), "hard": hard.item()}
        if p.kd_weight > 0:
            soft = losses.soft_kl(student_logits, teacher_logits.mean(0), p.temperature)
            loss = loss + p.kd_weight * soft
            logs["soft"] = soft.item()
        return StepOutput(loss, student_logits, logs)
