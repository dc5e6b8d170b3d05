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

    selection: Literal["top_k", "sampled"] = Field(
        "top_k", description="which k teacher tokens are kept: its top-k, or k draws from its distribution "
                             "(Sparse Logit Sampling's random-sampling KD: unbiased, forward KL only)")
    on_policy: float = Field(0.0, ge=0, le=1, description="GKD's lambda: the share of steps trained on the "
                                                          "student's own continuations, scored by the online teacher")
    sample_temperature: float = Field(1.0, gt=0, le=10, description="temperature of the student's on-policy samples")

    @model_validator(mode="after")
    def _sampled_fits(self):
        if self.selection == "sampled" and (self.divergence != "forward_kl" or self.top_k is None):
            raise ValueError("selection: sampled estimates the forward KL from top_k draws; use divergence "
                             "forward_kl and a top_k")
        return self

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
    cache (or taken from the online teacher's logits when the cache is off). With
    ``selection: sampled``, the k tokens are draws from the teacher's distribution instead, and
    the loss is their unbiased estimate of the forward KL (Sparse Logit Sampling).

    On-policy (GKD's lambda = ``on_policy``): on that share of steps the student continues the
    first half of each block by sampling, the teacher scores the whole sequence online, and the
    loss is D over the sampled positions only (full vocabulary; no CE: the samples have no
    true next token). The other steps are the off-policy loss above, from the cache.
    """

    summary = "token-level KD for language models: forward/reverse KL, generalized JSD or TVD over top-k + tail"
    paper = "Hinton et al. 2015; Kim & Rush 2016, arXiv:1606.07947; Agarwal et al. 2024, arXiv:2306.13649"
    Params = TokenKDParams
    supports_mix = False
    tasks = ("language_modeling",)

    def loss(self, batch):
        p = self.params
        if p.on_policy and self.teachers and float(torch.rand(())) < p.on_policy:
            return self._on_policy_loss(batch)
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
            soft = self._soft(student_logits, ids, values, tail, mask, log_probs)
        else:
            teacher_logits = self.teacher_logits(batch).mean(0)  # (B, T, V), online
            if p.top_k is None:
                soft = losses.dense_divergence(student_logits, teacher_logits, p.temperature, p.divergence, p.beta,
                                               mask=mask)
            else:
                from distillab.data.text_cache import sampled_logprobs, topk_logprobs

                pick = sampled_logprobs if p.selection == "sampled" else topk_logprobs
                ids, values, tail = pick(teacher_logits, p.top_k, p.temperature)
                soft = self._soft(student_logits, ids, values, tail, mask, None)
        loss = p.alpha * soft + (1 - p.alpha) * hard
        return StepOutput(loss, student_logits, {"soft": soft.item(), "hard": hard.item()})

    def _soft(self, student_logits, ids, values, tail, mask, log_probs):
        p = self.params
        if p.selection == "sampled":
            return losses.sampled_kl(student_logits, ids, values, p.temperature, mask=mask, student_log_probs=log_probs)
        return losses.topk_divergence(student_logits, ids, values, tail, p.temperature, p.divergence, p.beta, p.tail,
                                      mask=mask, student_log_probs=log_probs)

    def _on_policy_loss(self, batch) -> StepOutput:
        p = self.params
        ids = batch["inputs"]  # (B, T)
        T = ids.shape[1]
        prompt = max(1, T // 2)
        was_training = self.student.training
        self.student.eval()
        with torch.no_grad():
            sequence = sample_continuations(self.student, ids[:, :prompt], T - prompt, p.sample_temperature)  # (B, T)
            teacher_logits = self.teachers[0](sequence).float()  # (B, T, V), online
        self.student.train(was_training)
        student_logits = self.student(sequence)  # (B, T, V)
        mask = torch.zeros_like(batch["mask"])
        mask[:, prompt - 1 : T - 1] = batch["mask"][:, prompt - 1 : prompt]  # positions that predict a sample
        soft = losses.dense_divergence(student_logits, teacher_logits[..., : student_logits.shape[-1]],
                                       p.temperature, p.divergence, p.beta, mask=mask)
        return StepOutput(soft, student_logits, {"soft": soft.item(), "on_policy": 1.0}, scored=False)


def sample_continuations(model, prompt: torch.Tensor, new_tokens: int, temperature: float) -> torch.Tensor:
    """``prompt`` (B, P) continued by ``new_tokens`` sampled tokens: with the key/value cache of
    the zoo GPT or transformers' generate, else any module over the whole prefix each step."""
    from distillab.models.gpt import GPT
    from distillab.models.hf import CausalLM

    if new_tokens <= 0:
        return prompt
    if isinstance(model, GPT):
        return model.generate(prompt, new_tokens, temperature=temperature)
    if isinstance(model, CausalLM):
        return model.generate(prompt, new_tokens, do_sample=True, temperature=temperature)
    ids = prompt
    for _ in range(new_tokens):
        logits = model(ids)[:, -1].float() / temperature  # (B, V)
        ids = torch.cat([ids, torch.multinomial(torch.softmax(logits, -1), 1)], dim=1)
    return ids
