"""Corpora, splits by position, token blocks and characters per token."""

import pytest
import torch

from distillab.data.corpora import AUSTEN_TITLES, CORPORA, R_LIBRARY, Document, read_text_folder
from distillab.data.text import blocks, cut_documents, token_stream
from distillab.errors import DataError


def test_documents_are_split_by_position_never_by_token():
    text = " ".join(f"word{i}" for i in range(2000))
    parts = cut_documents([Document("a", text), Document("b", text.upper())], 0.1, 0.05)
    for index, original in enumerate((text, text.upper())):
        pieces = [parts[split][index] for split in ("train", "val", "test")]
        assert "".join(pieces) == original  # contiguous, no overlap, nothing lost
        assert original.endswith(pieces[2]) and len(pieces[2]) == pytest.approx(0.05 * len(original), rel=0.1)
        assert not pieces[0].endswith(("word", "WORD"))  # cut at a space, never inside a word


def test_characters_per_token_cover_the_text_and_blocks_predict_each_token_once(tiny_lm):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm, local_files_only=True)
    pieces = ["It is a truth universally acknowledged.", "Emma Woodhouse, handsome, clever, and rich."]
    ids, chars, total = token_stream(pieces, tokenizer, tokenizer.eos_token_id)
    assert total == sum(map(len, pieces)) and sum(chars) == total
    assert ids.count(tokenizer.eos_token_id) == 1 and chars[ids.index(tokenizer.eos_token_id)] == 0
    context = 5
    split = blocks(ids, chars, total, context, tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert split.tokens.shape[1] == context + 1
    predicted = split.tokens[:, 1:][split.mask].tolist()
    expected = [t for t in ids[1:] if t != tokenizer.eos_token_id]
    assert predicted == expected  # every token but the first, once, in order; separators not counted
    assert split.text_chars == total - chars[0]
    assert torch.equal(split.tokens[1:, 0], split.tokens[:-1, -1])  # blocks overlap by one token


def test_limit_keeps_evenly_spaced_blocks():
    ids = list(range(1, 1001))
    split = blocks(ids, [1] * 1000, 1000, 10, 0, None, limit_tokens=200)
    assert len(split) == 20
    assert split.tokens[0, 0] == 1 and split.tokens[-1, 0] > 900  # from the whole stream, not its start


def test_bad_corpora_are_named(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"fine text \xff\xfe broken")
    with pytest.raises(DataError, match=r"bad.txt is not UTF-8 text \(byte 10"):
        read_text_folder(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("   \n")
    with pytest.raises(DataError, match="holds no text"):
        read_text_folder(empty)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="no .txt or .jsonl files"):
        read_text_folder(tmp_path / "none")
    lines = tmp_path / "lines"
    lines.mkdir()
    (lines / "d.jsonl").write_text('{"text": "one document"}\n{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"d.jsonl line 2: expected an object with a string 'text' field"):
        read_text_folder(lines)


def test_jsonl_lines_are_documents(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "first"}\n\n{"text": "second"}\n')
    assert [d.text for d in read_text_folder(tmp_path)] == ["first", "second"]


@pytest.mark.skipif(not (R_LIBRARY / "janeaustenr").is_dir(), reason="r-cran-janeaustenr is not installed")
def test_austen_reads_six_novels_from_r_data():
    books = CORPORA["austen"][0](None)
    assert sorted(b.name for b in books) == sorted(AUSTEN_TITLES.values())
    assert 3_900_000 < sum(len(b.text) for b in books) < 4_200_000
    emma = next(b for b in books if b.name == "Emma")
    assert "Emma Woodhouse, handsome, clever, and rich" in emma.text.replace("\n", " ")
