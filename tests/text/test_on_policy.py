"""On-policy token KD (GKD's lambda): the student samples continuations, the teacher scores them
online, and the divergence counts the sampled positions only."""

import copy

import pytest
import torch

from distillab.models.gpt import GPT
from distillab.strategies.token_kd import TokenKD, TokenKDParams, sample_continuations

VOCAB, T = 50, 12


def batch_of(rows: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, T + 1), generator=g)
    return {"inputs": ids[:, :T], "targets": ids[:, 1:], "mask": torch.ones(rows, T, dtype=torch.bool)}


def gpt(seed: int) -> GPT:
    torch.manual_seed(seed)
    return GPT((T,), VOCAB, layers=1, dim=16, heads=2)


def test_samples_keep_the_prompt_and_follow_the_seed():
    model = gpt(0)
    prompt = batch_of()["inputs"][:, :5]
    torch.manual_seed(3)
    first = sample_continuations(model, prompt, 7, temperature=1.0)
    torch.manual_seed(3)
    again = sample_continuations(model, prompt, 7, temperature=1.0)
    assert first.shape == (4, 12) and torch.equal(first[:, :5], prompt) and torch.equal(first, again)
    # any module (no generate) is sampled over the whole prefix each step
    plain = torch.nn.Sequential(model.embed, model.head)
    torch.manual_seed(3)
    assert sample_continuations(plain, prompt, 7, temperature=1.0).shape == (4, 12)
    # near-zero temperature is greedy: the cached generate and its argmax agree
    assert torch.equal(sample_continuations(model, prompt, 7, temperature=1e-4), model.generate(prompt, 7))


def test_an_on_policy_step_scores_only_the_sampled_positions():
    teacher, student = gpt(0), gpt(1)
    strategy = TokenKD([teacher], student, TokenKDParams(on_policy=1.0, top_k=None))
    batch = batch_of()
    torch.manual_seed(0)
    out = strategy.loss(batch)
    assert not out.scored and out.logs["on_policy"] == 1.0 and "hard" not in out.logs
    assert out.loss.item() > 0
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.embed.weight.grad is not None and student.embed.weight.grad.abs().sum() > 0
    # the loss is the teacher-student divergence on the positions that predict a sample
    torch.manual_seed(0)
    float(torch.rand(()))  # the step's coin
    sequence = sample_continuations(student, batch["inputs"][:, : T // 2], T - T // 2, 1.0)
    with torch.no_grad():
        log_t = torch.log_softmax(teacher(sequence), -1)
        log_s = torch.log_softmax(student(sequence), -1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)[:, T // 2 - 1 : T - 1]  # (B, sampled positions)
    assert out.loss.item() == pytest.approx(kl.mean().item(), rel=1e-4)


def test_a_student_equal_to_its_teacher_has_no_on_policy_loss():
    teacher = gpt(0)
    strategy = TokenKD([teacher], copy.deepcopy(teacher), TokenKDParams(on_policy=1.0, top_k=None))
    assert strategy.loss(batch_of()).loss.item() == pytest.approx(0.0, abs=1e-6)


def test_lambda_zero_never_samples_and_lambda_between_mixes():
    teacher, student = gpt(0), gpt(1)
    off = TokenKD([teacher], student, TokenKDParams(on_policy=0.0, top_k=None))
    assert all(off.loss(batch_of(seed=s)).scored for s in range(5))
    mixed = TokenKD([teacher], student, TokenKDParams(on_policy=0.5, top_k=None))
    torch.manual_seed(0)
    kinds = [mixed.loss(batch_of(seed=s)).scored for s in range(40)]
    assert 8 < kinds.count(False) < 32  # about half of the steps are on-policy
