"""Layer-wise distillation for language models: hidden states and attention maps."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from distillab import losses
from distillab.errors import SpecError
from distillab.losses.base import _reduce
from distillab.strategies.base import Params, StepOutput, Strategy


class LayerwiseParams(Params):
    pairs: list[tuple[int, int]] | None = Field(
        None, min_length=1, description="[(student layer, teacher layer)]: 0 is the embeddings, i the output of block "
                                        "i; null = each student block to the teacher block at the same relative depth")
    hidden_loss: Literal["cosine", "mse"] = Field("cosine", description="cosine distance, or MSE of layer-normalised "
                                                                        "states (scale-free: Llama states grow with depth)")
    hidden_weight: float = Field(1.0, ge=0, le=1000, description="weight of the hidden-state term")
    attention_weight: float = Field(0.0, ge=0, le=1000, description="weight of the attention-map KL (0: off)")
    temperature: float = Field(1.0, gt=0, le=100, description="T of the logit term")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the logit KL; 1 - alpha weighs next-token CE")


def _widths(model) -> list[int]:
    """The width of each hidden state (embeddings first): from a Hugging Face model's config
    (which also serves a teacher built without its weights), else from a probe forward pass."""
    if hasattr(model, "hidden_widths"):
        return model.hidden_widths()
    probe = torch.zeros(1, 2, dtype=torch.long, device=next(model.parameters()).device)
    with torch.no_grad():
        _, states, _ = _outputs(model, probe, False)
    return [state.shape[-1] for state in states]


def _outputs(model, ids, attentions: bool):
    logits, extra = model(ids, hidden_states=True, attentions=attentions)
    return logits, extra["hidden_states"], extra["attentions"]


class Layerwise(Strategy):
    """Layer-wise KD of intermediate representations, as in DistilBERT (Sanh et al.
    2019, cosine of hidden states), TinyBERT (Jiao et al. 2020, hidden-state MSE through a learned
    projection, attention maps) and MiniLM (Wang et al. 2020, attention distributions):

    L = alpha T^2 KL(P_t || P_s) + (1 - alpha) CE + w_h sum_pairs d(W h_s^i, h_t^j) + w_a sum_pairs KL(A_t^j || A_s^i)

    over counted tokens; W a learned projection per pair, d the cosine distance or the MSE of
    layer-normalised states, A the attention probabilities averaged over heads (so student and
    teacher may have different head counts). The teacher runs online (it gives its features).
    """

    summary = "language models: hidden-state (cosine / MSE, learned projections) and attention-map distillation"
    paper = "Sanh et al. 2019, arXiv:1910.01108; Jiao et al. 2020, arXiv:1909.10351; Wang et al. 2020, arXiv:2002.10957"
    Params = LayerwiseParams
    logits_only = False
    supports_mix = False
    tasks = ("language_modeling",)

    def __init__(self, teachers, student, params, in_shape=None):
        super().__init__(teachers, student, params, in_shape)
        student_widths, teacher_widths = _widths(student), _widths(self.teachers[0])
        n_student, n_teacher = len(student_widths) - 1, len(teacher_widths) - 1
        pairs = params.pairs or [(i, round(i * n_teacher / n_student)) for i in range(1, n_student + 1)]
        for index, (s, t) in enumerate(pairs):
            if not 0 <= s <= n_student or not 0 <= t <= n_teacher:
                raise SpecError(f"strategy.params.pairs[{index}]: ({s}, {t}) is out of range: the student has layers "
                                f"0-{n_student}, the teacher 0-{n_teacher} (0 = embeddings)")
        self.pairs = pairs
        self.projections = nn.ModuleList(
            nn.Linear(student_widths[s], teacher_widths[t], bias=False) for s, t in pairs)

    def loss(self, batch):
        p = self.params
        ids, mask = batch["inputs"], batch["mask"]  # (B, T) each
        attend = p.attention_weight > 0
        student_logits, student_states, student_maps = _outputs(self.student, ids, attend)
        with torch.no_grad():
            teacher_logits, teacher_states, teacher_maps = _outputs(self.teachers[0], ids, attend)
        soft = losses.soft_kl(student_logits, teacher_logits.float(), p.temperature, mask=mask)
        hard = losses.cross_entropy(student_logits, batch["targets"], mask=mask)
        hidden = student_logits.new_zeros(())
        attention = student_logits.new_zeros(())
        for (s, t), projection in zip(self.pairs, self.projections):
            projected, target = projection(student_states[s]), teacher_states[t].float()  # (B, T, D_t) each
            if p.hidden_loss == "cosine":
                per_token = 1 - F.cosine_similarity(projected, target, dim=-1)  # (B, T)
            else:
                D = target.shape[-1]
                per_token = (F.layer_norm(projected, (D,)) - F.layer_norm(target, (D,))).pow(2).mean(-1)
            hidden = hidden + _reduce(per_token, "mean", mask) / len(self.pairs)
            if attend:
                # layer index i >= 1 has attention maps; the embeddings (0) have none
                if s == 0 or t == 0:
                    continue
                student_map = student_maps[s - 1].float().mean(1).clamp_min(1e-12)  # (B, T, T): heads averaged
                teacher_map = teacher_maps[t - 1].float().mean(1).clamp_min(1e-12)  # (B, T, T)
                per_query = (teacher_map * (teacher_map.log() - student_map.log())).sum(-1)  # (B, T)
                attention = attention + _reduce(per_query, "mean", mask) / len(self.pairs)
        loss = p.alpha * soft + (1 - p.alpha) * hard + p.hidden_weight * hidden + p.attention_weight * attention
        logs = {"soft": soft.item(), "hard": hard.item(), "hidden": hidden.item(), "attention": attention.item()}
        return StepOutput(loss, student_logits, logs)
