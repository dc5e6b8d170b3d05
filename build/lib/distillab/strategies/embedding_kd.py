"""Embedding distillation for sentence encoders."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from distillab.strategies.base import Params, StepOutput, Strategy


class EmbeddingKDParams(Params):
    loss: Literal["cosine", "mse"] = Field("cosine", description="1 - cos(student, teacher), or the squared distance")
    similarity_weight: float = Field(0.0, ge=0, le=100, description="weight of the in-batch similarity term: the "
                                     "squared gap between the student's and the teacher's pairwise cosines")


class EmbeddingKD(Strategy):
    """Sentence-embedding distillation (Reimers & Gurevych 2020, "Making Monolingual Sentence
    Embeddings Multilingual using Knowledge Distillation"; the sentence-transformers recipe for
    a smaller student): the student regresses the teacher's embedding of each sentence,

    L = mean_i (1 - cos(s_i, t_i))   or   L = mean_i ||s_i - t_i||^2,

    plus, with ``similarity_weight`` w > 0, a relational term on the batch's pairwise cosines
    (similarity-preserving KD, Tung & Mori 2019), which is what retrieval and the Spearman metric
    read:

    L += w * mean_{i != j} (cos(s_i, s_j) - cos(t_i, t_j))^2.

    The teacher's embeddings come from the cache (computed once) or online.
    """

    summary = "sentence encoders: the student regresses the teacher's embeddings (cosine or MSE)"
    paper = "Reimers & Gurevych 2020, arXiv:2004.09813"
    Params = EmbeddingKDParams
    supports_mix = False
    tasks = ("text_embedding",)

    def loss(self, batch):
        student = self.student(batch["inputs"])  # (B, D)
        if "teacher_embeddings" in batch:
            teacher = batch["teacher_embeddings"].mean(0)  # (B, D)
        else:
            with torch.no_grad():
                teacher = torch.stack([t(batch["inputs"]).float() for t in self.teachers]).mean(0)
        if self.params.loss == "cosine":
            loss = (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()
        else:
            loss = (student - teacher).pow(2).sum(-1).mean()
        logs = {}
        if self.params.similarity_weight > 0 and len(student) > 1:
            similarity = pairwise_cosine_gap(student.float(), teacher.float())
            loss = loss + self.params.similarity_weight * similarity
            logs["similarity_gap"] = similarity.item()
        return StepOutput(loss, student, logs)


def pairwise_cosine_gap(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """mean over pairs i != j of (cos(s_i, s_j) - cos(t_i, t_j))^2 for (B, D) embeddings, B >= 2."""
    s, t = F.normalize(student, dim=-1), F.normalize(teacher, dim=-1)
    gap = (s @ s.T - t @ t.T).square()  # (B, B); the diagonal is 0 - 0
    count = len(s)
    return gap.sum() / (count * (count - 1))
