"""Embedding distillation for sentence encoders."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from distillab.strategies.base import Params, StepOutput, Strategy


class EmbeddingKDParams(Params):
    loss: Literal["cosine", "mse"] = Field("cosine", description="1 - cos(student, teacher), or the squared distance")


class EmbeddingKD(Strategy):
    """Sentence-embedding distillation (Reimers & Gurevych 2020, "Making Monolingual Sentence
    Embeddings Multilingual using Knowledge Distillation"; the sentence-transformers recipe for
    a smaller student): the student regresses the teacher's embedding of each sentence,

    L = mean_i (1 - cos(s_i, t_i))   or   L = mean_i ||s_i - t_i||^2.

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
        return StepOutput(loss, student, {})
