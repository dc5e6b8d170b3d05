"""Token-level knowledge distillation for language models."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from distillab import losses
from distillab.strategies.base import Params, StepOutput, Strategy


class TokenKDParams(Params):
    temperature: float = Field(1.0, gt=0, le=100, description="softmax temperature T of teacher and student")
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher term; 1 - alpha weighs next-token CE")
    divergence: Literal["forward_kl", "reverse_kl", "gjsd", "tvd"] = Field(
        "forward_kl", description="forward_kl KL(t||s), reverse_kl KL(s||t), gjsd (GKD's generalized JSD) or tvd")
    beta: float = Field(0.5, ge=0, le=1, description="gjsd's beta: 0 = forward KL, 1 = reverse KL")
    top_k: int | None = Field(32, ge=1, le=1_000_000, description="teacher log-probabilities kept per token "
                                                                   "(cached offline); null = the full vocabulary, online")
    tail: Literal["bucket", "drop", "renormalize"] = Field(
        "bucket", description="the mass outside the top-k: its own bucket (a true divergence), dropped, or "
                              "renormalised away (misleading; for comparison only)")

    @model_validator(mode="after")
    def _tail_fits(self):
        if self.tail == "drop" and self.divergence != "forward_kl":
            raise ValueError("tail: drop is a truncated forward KL; use tail: bucket with divergence "
                             f"{self.divergence}")
        return self


class TokenKD(Strategy):
    """Token-level KD (Hinton et al. 2015 per token; Kim & Rush 2016's word-level KD), with the
    divergences of GKD (Agarwal et al. 2024) and DistiLLM (Ko et al. 2024):

    L = alpha * D(P_t(.|x_<i) , P_s(.|x_<i)) + (1 - alpha) * CE(s_i, x_i), mean over counted tokens,

    D = T^2 KL(P_t || P_s) (forward), T^2 KL(P_s || P_t) (reverse), T^2 JSD_beta, or TVD. With
    ``top_k`` the teacher's distribution is its top-k plus a tail bucket, read from the offline
    cache (or taken from the online teacher's logits when the cache is off).
    """

    summary = "token-level KD for language models: forward/reverse KL, generalized JSD or TVD over top-k + tail"
    paper = "Hinton et al. 2015; Kim & Rush 2016, arXiv:1606.07947; Agarwal et al. 2024, arXiv:2306.13649"
    Params = TokenKDParams
    supports_mix = False
    tasks = ("language_modeling",)

    def loss(self, batch):
        p = self.params
        student_logits = self.student(batch["inputs"])  # (B, T, V)
        mask = batch["mask"]  # (B, T)
        log_probs = None
        if p.temperature == 1.0:  # one log-softmax over the vocabulary serves CE and the buckets
            log_probs = torch.log_softmax(student_logits.float(), dim=-1)  # (B, T, V)
            nll = -log_probs.gather(-1, batch["targets"].unsqueeze(-1)).squeeze(-1)  # (B, T)
            hard = (nll * mask).sum() / mask.sum().clamp_min(1)
        else:
            hard = losses.cross_entropy(student_logits, batch["targets"], mask=mask)
        if "teacher_topk_ids" in batch:  # the offline cache, first teacher (one tokenizer, one distribution)
            ids, values, tail = (batch[key][0] for key in ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail"))
            soft = losses.topk_divergence(student_logits, ids, values, tail, p.temperature, p.divergence, p.beta,
                                          p.tail, mask=mask, student_log_probs=log_probs)
        else:
            teacher_logits = self.teacher_logits(batch).mean(0)  # (B, T, V), online
            if p.top_k is None:
                soft = losses.dense_divergence(student_logits, teacher_logits, p.temperature, p.divergence, p.beta,
                                               mask=mask)
            else:
                from distillab.data.text_cache import topk_logprobs

                ids, values, tail = topk_logprobs(teacher_logits, p.top_k, p.temperature)
                soft = losses.topk_divergence(student_logits, ids, values, tail, p.temperature, p.divergence, p.beta,
                                              p.tail, mask=mask)
        loss = p.alpha * soft + (1 - p.alpha) * hard
        return StepOutput(loss, student_logits, {"soft": soft.item(), "hard": hard.item()})
