"""Corpus mixtures: a weighted list of corpora in data.dataset, each split per document."""

import pytest

from conftest import TEXT, text_spec
from distillab.errors import SpecError
from distillab.spec_io import parse_spec
from distillab.tasks import TASKS


def two_folders(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, text in ((first, TEXT[0]), (second, TEXT[1])):
        folder.mkdir()
        (folder / "book.txt").write_text(text * 6)
    return first, second


def test_a_mixture_keeps_each_documents_split_and_trains_in_the_weights_shares(tmp_path, tiny_lm):
    first, second = two_folders(tmp_path)
    mixture = [{"dataset": "text_folder", "path": str(first), "weight": 3},
               {"dataset": "text_folder", "path": str(second)}]
    task = TASKS["language_modeling"]
    spec = parse_spec(text_spec(first, tiny_lm, data={"dataset": mixture, "path": None, "limit_tokens": 16 * 40}))
    assert spec.data.dataset == "mixture" and spec.data.mixture[0].weight == 3
    data = task.build(spec.data, 0, spec)
    alone = [task.build(parse_spec(text_spec(folder, tiny_lm)).data, 0, parse_spec(text_spec(folder, tiny_lm)))
             for folder in (first, second)]
    for split in ("val", "test"):  # held-out text: each corpus's own held-out blocks, together
        own = {tuple(row.tolist()) for corpus in alone for row in corpus.split(split).tokens}
        assert {tuple(row.tolist()) for row in data.split(split).tokens} == own
    own_train = {tuple(row.tolist()) for corpus in alone for row in corpus.train.tokens}
    assert {tuple(row.tolist()) for row in data.train.tokens} <= own_train  # training text: each corpus's own
    shares = data.describe()["mixture"]
    assert len(data.train) == 40 and [s["train_blocks"] for s in shares] == [30, 10]
    assert shares[0]["share"] == 0.75 and "mixture" in data.source


@pytest.mark.parametrize("entry, message", [
    ({"dataset": "austen", "weight": 0}, "greater than 0"),
    ({"dataset": "austen", "weight": -1}, "greater than 0"),
    ({"dataset": "austin"}, "unknown corpus 'austin'"),
    ({"dataset": "fashion_mnist"}, "unknown corpus 'fashion_mnist'"),
])
def test_a_bad_corpus_in_a_mixture_is_named(corpus, tiny_lm, entry, message):
    data = {"dataset": [{"dataset": "text_folder", "path": str(corpus)}, entry], "path": None}
    with pytest.raises(SpecError, match=rf"data\.mixture\.1\.\w+: .*{message}"):
        parse_spec(text_spec(corpus, tiny_lm, data=data))
