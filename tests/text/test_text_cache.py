"""The top-k + tail teacher cache for text: a round trip against the live teacher, resume
after an interruption, and its limits."""

import numpy as np
import pytest
import torch

from distillab.data.text_cache import bytes_per_token, distinct_tail, teacher_topk, topk_logprobs
from distillab.errors import SpecError
from distillab.spec_io import parse_spec
from distillab.tasks import TASKS
from conftest import text_spec


@pytest.fixture
def text_data(corpus, tiny_lm):
    spec = parse_spec(text_spec(corpus, tiny_lm))
    task = TASKS["language_modeling"]
    data = task.build(spec.data, 0, spec)
    (teacher, checksum, _), = task.load_teachers(spec, data)
    return data, teacher, checksum


def test_round_trip_matches_the_live_teacher_with_its_tail(text_data, tmp_path):
    data, teacher, checksum = text_data
    cache = teacher_topk(teacher, checksum, data, k=4, temperature=2.0, cache_dir=tmp_path, batch_size=3)
    assert not cache.hit and cache.ids.dtype == np.uint16 and cache.logprobs.dtype == np.float16
    rows = torch.tensor([5, 0, 2])
    ids, values, tail = cache.lookup(rows)
    with torch.no_grad():
        live_ids, live_values, live_tail = topk_logprobs(teacher(data.train.tokens[rows, :-1]), 4, 2.0)
    assert torch.equal(ids, live_ids)
    assert torch.allclose(values, live_values, atol=2e-3)
    assert torch.allclose(tail, live_tail, atol=5e-3)
    assert torch.allclose(values.exp().sum(-1) + tail.exp(), torch.ones_like(tail), atol=1e-5)  # k + 1 buckets sum to 1
    assert sorted(p.name for p in cache.folder.glob("*.npy")) == ["ids.npy", "logprobs.npy"]  # the tail is derived
    assert cache.meta["bytes_per_token"] == bytes_per_token(4, data.num_classes) == 16  # ids + values, no tail
    assert 0 < cache.meta["topk_mass"] < 1 and cache.meta["tokens_per_s"] > 0
    again = teacher_topk(teacher, checksum, data, k=4, temperature=2.0, cache_dir=tmp_path)
    assert again.hit
    other = teacher_topk(teacher, checksum, data, k=4, temperature=1.0, cache_dir=tmp_path)
    assert not other.hit  # the temperature is part of the key


def test_an_interrupted_fill_resumes_where_it_stopped(text_data, tmp_path):
    data, teacher, checksum = text_data
    passes = []
    teacher.register_forward_hook(lambda module, args, out: passes.append(len(args[0])))

    def stop_after_two_chunks(done, total):
        if done == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        teacher_topk(teacher, checksum, data, k=4, temperature=1.0, cache_dir=tmp_path, batch_size=3,
                     progress=stop_after_two_chunks)
    assert sum(passes) == 6
    passes.clear()
    resumed = teacher_topk(teacher, checksum, data, k=4, temperature=1.0, cache_dir=tmp_path, batch_size=3)
    assert sum(passes) == len(data.train) - 6  # only the missing blocks
    fresh = teacher_topk(teacher, checksum, data, k=4, temperature=1.0, cache_dir=tmp_path / "fresh", batch_size=5)
    assert np.array_equal(resumed.ids, fresh.ids) and np.array_equal(resumed.logprobs, fresh.logprobs)


def test_k_larger_than_the_vocabulary_is_refused(text_data, tmp_path):
    data, teacher, checksum = text_data
    with pytest.raises(SpecError, match=f"top_k: {data.num_classes + 1} is larger than the vocabulary"):
        teacher_topk(teacher, checksum, data, k=data.num_classes + 1, temperature=1.0, cache_dir=tmp_path)


def test_a_larger_top_k_serves_a_smaller_one(text_data, tmp_path):
    data, teacher, checksum = text_data
    large = teacher_topk(teacher, checksum, data, k=8, temperature=1.0, cache_dir=tmp_path)
    small = teacher_topk(teacher, checksum, data, k=3, temperature=1.0, cache_dir=tmp_path)
    assert small.hit and small.folder == large.folder and small.k == 3
    rows = torch.tensor([1, 4])
    ids, values, tail = small.lookup(rows)
    with torch.no_grad():
        live_ids, live_values, live_tail = topk_logprobs(teacher(data.train.tokens[rows, :-1]), 3, 1.0)
    assert ids.shape == (2, data.context_length, 3) and torch.equal(ids, live_ids)
    assert torch.allclose(tail, live_tail, atol=5e-3)


def test_a_sampled_cache_draws_from_the_teacher_and_resumes_to_the_same_draws(text_data, tmp_path):
    fill = teacher_topk
    data, teacher, checksum = text_data

    def stop(done, total):
        if done == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fill(teacher, checksum, data, k=64, temperature=1.0, cache_dir=tmp_path, batch_size=3, progress=stop,
             selection="sampled")
    resumed = fill(teacher, checksum, data, k=64, temperature=1.0, cache_dir=tmp_path, batch_size=3,
                   selection="sampled")
    fresh = fill(teacher, checksum, data, k=64, temperature=1.0, cache_dir=tmp_path / "fresh", batch_size=5,
                 selection="sampled")
    assert np.array_equal(resumed.ids, fresh.ids)  # seeded per block row: batching and resuming change nothing
    top = fill(teacher, checksum, data, k=4, temperature=1.0, cache_dir=tmp_path, selection="top_k")
    assert not top.hit and top.folder != resumed.folder  # the selection is part of the key
    rows = torch.arange(len(data.train))
    ids, values, tail = resumed.lookup(rows)
    with torch.no_grad():
        probs = torch.softmax(teacher(data.train.tokens[rows, :-1]).float(), -1)  # (N, T, V)
    distinct = torch.zeros_like(probs).scatter_(-1, ids, 1.0)  # the tail is the mass of the ids never drawn
    torch.testing.assert_close(tail.exp(), (probs * (1 - distinct)).sum(-1), atol=2e-3, rtol=0)
    p_max, argmax = probs.max(-1)
    drawn_share = (ids == argmax.unsqueeze(-1)).float().mean(-1)  # how often the top token was drawn
    mask = data.train.mask[rows]
    assert drawn_share[mask].mean().item() == pytest.approx(p_max[mask].mean().item(), abs=0.03)
    assert torch.allclose(values, probs.log().gather(-1, ids), atol=2e-2)  # the teacher's log-probabilities of the draws


def test_the_derived_tail_counts_a_repeated_id_once():
    ids = torch.tensor([[3, 1, 3, 2]])
    values = torch.tensor([[0.2, 0.1, 0.2, 0.3]]).log()
    torch.testing.assert_close(distinct_tail(ids, values), torch.tensor([0.4]).log())  # 1 - (0.2 + 0.1 + 0.3)
    top_ids, top_values, top_tail = topk_logprobs(torch.randn(2, 5, 50), 8, 1.5)  # distinct ids: log1m_sumexp
    torch.testing.assert_close(distinct_tail(top_ids, top_values), top_tail, atol=1e-5, rtol=1e-5)
