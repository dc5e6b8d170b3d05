"""Text for language models: a corpus split by position, tokenised with the teacher's
tokenizer, cut into blocks of ``context_length`` next-token predictions.

Splits are by position inside each document, never random by token: the last ``test_size``
of every document is the test text, the ``val_size`` before it validation, the rest training
(cut at a line or word boundary). The split does not depend on the seed; seeds change the
initial weights and the order of batches.

Each split is one token stream (documents joined by the tokenizer's end-of-text token) cut
into blocks of T + 1 tokens that overlap by one, so every token but the first is predicted
exactly once: a block gives ``inputs`` (T,) and ``targets`` (T,) (the inputs shifted by one),
a ``mask`` (T,) of counted targets (not padding, not a document separator), and ``chars``
(T,): how many characters of the text each target token covers, from the tokenizer's
offsets, so bits per character sum exactly over the split's text.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import torch

from distillab.data.corpora import CORPORA, Document
from distillab.data.transforms import Augment
from distillab.errors import DataError

log = logging.getLogger("distillab")

SPLITS = ("train", "val", "test")


@dataclass
class TokenBlocks:
    """One split: (N, T + 1) token blocks, with the counted mask and characters per target."""

    tokens: torch.Tensor  # (N, T + 1) int64
    mask: torch.Tensor  # (N, T) bool, per target position
    chars: torch.Tensor  # (N, T) int32, characters each target covers (0 where not counted)
    text_chars: int  # characters of the split's text

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def counted_tokens(self) -> int:
        return int(self.mask.sum())


def cut_documents(documents: list[Document], val_size: float, test_size: float) -> dict[str, list[str]]:
    """Each document's text cut by position into train / val / test pieces."""
    parts: dict[str, list[str]] = {split: [] for split in SPLITS}
    for document in documents:
        text = document.text
        n = len(text)
        val_start = _boundary(text, int(n * (1 - val_size - test_size)))
        test_start = _boundary(text, int(n * (1 - test_size)))
        for split, piece in zip(SPLITS, (text[:val_start], text[val_start:test_start], text[test_start:])):
            if piece.strip():
                parts[split].append(piece)
    return parts


def _boundary(text: str, position: int, reach: int = 200) -> int:
    """The first line break within ``reach`` characters after ``position``, else the first
    space, else ``position`` itself, so no word is cut."""
    for separator in ("\n", " "):
        found = text.find(separator, position, position + reach)
        if found >= 0:
            return found + 1
    return position


def token_stream(pieces: list[str], tokenizer, separator: int | None) -> tuple[list[int], list[int], int]:
    """(token ids, characters per token, characters) of the pieces joined by ``separator``
    (a token covering no characters, which is never counted as a target)."""
    ids: list[int] = []
    chars: list[int] = []
    total = 0
    for index, piece in enumerate(pieces):
        if index and separator is not None:
            ids.append(separator)
            chars.append(0)
        encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        starts = [start for start, _ in encoded["offset_mapping"]]
        ids += encoded["input_ids"]
        # each token is charged from its start to the next token's start: every character once
        chars += [b - a for a, b in zip(starts, starts[1:] + [len(piece)])]
        if starts:
            chars[-len(starts)] += starts[0]  # leading characters before the first token
        total += len(piece)
    return ids, chars, total


def blocks(ids: list[int], chars: list[int], text_chars: int, context: int, pad: int, separator: int | None,
           limit_tokens: int | None = None) -> TokenBlocks:
    """Blocks of context + 1 tokens, overlapping by one; a short last block is padded (masked).
    ``limit_tokens``: keep evenly spaced blocks holding about that many target tokens."""
    stream = torch.tensor(ids, dtype=torch.int64)
    per_token = torch.tensor(chars, dtype=torch.int32)
    n = max(1, -(-(len(stream) - 1) // context))
    tokens = torch.full((n, context + 1), pad, dtype=torch.int64)
    char_counts = torch.zeros((n, context + 1), dtype=torch.int32)
    valid = torch.zeros((n, context + 1), dtype=torch.bool)
    for row in range(n):
        piece = stream[row * context : row * context + context + 1]
        tokens[row, : len(piece)] = piece
        char_counts[row, : len(piece)] = per_token[row * context : row * context + len(piece)]
        valid[row, : len(piece)] = True
    mask = valid[:, 1:].clone()
    if separator is not None:
        mask &= tokens[:, 1:] != separator
    if limit_tokens is not None and limit_tokens < n * context:
        keep = torch.linspace(0, n - 1, max(1, limit_tokens // context)).round().long().unique()
        tokens, mask, char_counts = tokens[keep], mask[keep], char_counts[keep]
    chars_of_targets = char_counts[:, 1:] * mask
    return TokenBlocks(tokens, mask, chars_of_targets, int(chars_of_targets.sum()))


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the vocabulary (token -> id): two tokenizers with the same one agree."""
    vocabulary = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(repr(vocabulary).encode()).hexdigest()[:16]


class SplitData:
    """What the text data objects share: three splits addressed by row, a context length."""

    cacheable = True  # samples are addressed by row

    @property
    def in_shape(self) -> tuple[int]:
        return (self.context_length,)

    @property
    def train_index(self) -> torch.Tensor:
        return torch.arange(len(self.train))

    def split(self, name: str):
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def size(self, split: str) -> int:
        return len(self.split(split))

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, -(-len(self.train) // batch_size))


@dataclass
class TextData(SplitData):
    """The engine's data object for a language model (the same methods as a ``DataBundle``)."""

    name: str
    source: str  # corpus, path, tokenizer, context and limits: part of the cache key
    train: TokenBlocks
    val: TokenBlocks
    test: TokenBlocks
    num_classes: int  # the vocabulary
    context_length: int
    tokenizer: object
    augment: Augment = Augment()
    mixture: list | None = None  # a corpus mixture: each corpus's weight, share and repeats

    def train_batches(self, batch_size: int, generator: torch.Generator, caches=(), order=None) -> Iterator[dict]:
        """Shuffled blocks; with a cache, each carries the teacher's top-k log-probabilities
        ``teacher_topk_ids`` / ``teacher_topk_logprobs`` (n_teachers, B, T, k) and ``teacher_tail``
        (n_teachers, B, T)."""
        n = len(self.train)
        order = torch.randperm(n, generator=generator) if order is None else order
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            batch = self._batch(self.train, rows)
            if caches:
                looked_up = [cache.lookup(rows) for cache in caches]
                batch["teacher_topk_ids"] = torch.stack([ids for ids, _, _ in looked_up])
                batch["teacher_topk_logprobs"] = torch.stack([values for _, values, _ in looked_up])
                batch["teacher_tail"] = torch.stack([tail for _, _, tail in looked_up])
            yield batch

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
        blocks_ = self.split(split)
        for start in range(0, len(blocks_), batch_size):
            yield self._batch(blocks_, torch.arange(start, min(start + batch_size, len(blocks_))))

    @staticmethod
    def _batch(blocks_: TokenBlocks, rows: torch.Tensor) -> dict:
        tokens = blocks_.tokens[rows]  # (B, T + 1)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": blocks_.mask[rows],
                "chars": blocks_.chars[rows], "index": rows}

    def example_inputs(self, n: int = 2) -> torch.Tensor:
        return self.train.tokens[:n, :-1]

    def describe(self) -> dict:
        return {"name": self.name, "train": len(self.train), "val": len(self.val), "test": len(self.test),
                "num_classes": self.num_classes, "in_shape": [self.context_length],
                "tokens": {split: self.split(split).counted_tokens for split in SPLITS},
                "characters": {split: self.split(split).text_chars for split in SPLITS},
                "split": "by position inside each document (the last part of each is test, the part before it val)",
                **({"mixture": self.mixture} if self.mixture else {})}


def checked_context(context: int, max_context: int | None, where: str = "data.context_length") -> int:
    """A context length, refused (naming ``where``) when it is longer than the teacher's."""
    if max_context is not None and context > max_context:
        raise DataError(f"{where}: {context} tokens is longer than the teacher's context of {max_context}")
    return context


def build_text(data_spec, tokenizer, tokenizer_name: str, max_context: int | None = None) -> TextData:
    """The splits of a text ``data`` spec, tokenised by the teacher's ``tokenizer``."""
    context = checked_context(data_spec.context_length, max_context)
    from distillab.data.corpora import files_stamp

    if data_spec.dataset == "mixture":
        from distillab.data.mixture import parts_of

        return _build_mixture_text(parts_of(data_spec), data_spec.val_size, data_spec.test_size, context,
                                   data_spec.limit_tokens, data_spec.limit_eval_tokens,
                                   _Hashable(tokenizer, tokenizer_name),
                                   tuple(files_stamp(e.path) for e in data_spec.mixture))
    return _build_text(data_spec.dataset, str(data_spec.path) if data_spec.path else None, data_spec.val_size,
                       data_spec.test_size, context, data_spec.limit_tokens, data_spec.limit_eval_tokens,
                       _Hashable(tokenizer, tokenizer_name), files_stamp(data_spec.path))


class _Hashable:
    """A tokenizer keyed by its name and vocabulary, for the lru_cache below."""

    def __init__(self, tokenizer, name: str):
        self.tokenizer, self.key = tokenizer, (name, tokenizer_fingerprint(tokenizer))

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Hashable) and self.key == other.key


@lru_cache(maxsize=4)
def _build_text(dataset: str, path: str | None, val_size: float, test_size: float, context: int,
                limit_tokens: int | None, limit_eval_tokens: int | None, tokenizer: _Hashable,
                stamp: tuple = ()) -> TextData:  # stamp: the files' sizes and times, so an edit is read again
    from pathlib import Path

    reader, _ = CORPORA[dataset]
    documents = reader(Path(path) if path else None, "data")
    # the corpus's text and the tokenizer's vocabulary, not only their names: an edited text_folder
    # or another tokenizer under the same name gets a new teacher-output cache key
    source = (f"text:{dataset}:{path}:{documents_digest(documents)}:{tokenizer.key[1]}:"
              f"{tokenizer_fingerprint(tokenizer.tokenizer)}:ctx{context}:val{val_size}:test{test_size}"
              f":lim{limit_tokens}:{limit_eval_tokens}")
    return _text_data(dataset, source, documents, val_size, test_size, context, limit_tokens, limit_eval_tokens,
                      tokenizer.tokenizer, "data")


@lru_cache(maxsize=2)
def _build_mixture_text(parts: tuple, val_size: float, test_size: float, context: int, limit_tokens: int | None,
                        limit_eval_tokens: int | None, tokenizer: _Hashable, stamp: tuple = ()) -> TextData:
    """A weighted mixture of corpora (``data.mixture``): each split per document, the training
    blocks in the weights' shares, validation and test every corpus's held-out text."""
    from distillab.data.mixture import mixture_splits

    train, val, test, sources, facts = mixture_splits(
        parts, lambda part, documents, index: _text_data(part.dataset, "", documents, val_size, test_size, context,
                                                         None, None, tokenizer.tokenizer, f"data.dataset[{index}]"),
        _rows_of, _joined, None if limit_tokens is None else max(1, limit_tokens // context),
        None if limit_eval_tokens is None else max(1, limit_eval_tokens // context), "blocks")
    source = (f"mixture:{'|'.join(sources)}:{tokenizer.key[1]}:{tokenizer_fingerprint(tokenizer.tokenizer)}"
              f":ctx{context}:val{val_size}:test{test_size}:lim{limit_tokens}:{limit_eval_tokens}")
    name = "+".join(part.dataset for part in parts)
    log.info("mixture %s: train %d blocks (%s)", name, len(train),
             ", ".join(f"{f['dataset']} {f['train_blocks']}" for f in facts))
    return TextData(name, source, train, val, test, len(tokenizer.tokenizer), context, tokenizer.tokenizer,
                    mixture=facts)


def _rows_of(split: TokenBlocks, rows: torch.Tensor) -> TokenBlocks:
    chars = split.chars[rows]
    return TokenBlocks(split.tokens[rows], split.mask[rows], chars, int(chars.sum()))


def _joined(splits: list[TokenBlocks]) -> TokenBlocks:
    return TokenBlocks(torch.cat([s.tokens for s in splits]), torch.cat([s.mask for s in splits]),
                       torch.cat([s.chars for s in splits]), sum(s.text_chars for s in splits))


def text_from_documents(documents, tokenizer, context: int, val_size: float = 0.05, test_size: float = 0.05,
                        limit_tokens: int | None = None, limit_eval_tokens: int | None = None,
                        where: str = "train_data") -> TextData:
    """Splits of the user's own documents (a list of strings, from Python), cut by position
    inside each document like a registered corpus; the source key hashes the text itself,
    so the teacher cache serves the same documents again and never different ones."""
    kept = user_documents(documents, where)
    source = (f"text:python:{documents_digest(kept)}:{tokenizer_fingerprint(tokenizer)}:ctx{context}:val{val_size}:test{test_size}"
              f":lim{limit_tokens}:{limit_eval_tokens}")
    return _text_data("documents", source, kept, val_size, test_size, context, limit_tokens, limit_eval_tokens,
                      tokenizer, where)


def user_documents(documents, where: str) -> list[Document]:
    """The non-empty documents of a list of strings, or a DataError naming ``where``."""
    if isinstance(documents, str) or not isinstance(documents, (list, tuple)) or not documents:
        raise DataError(f"{where}: give the documents as a non-empty list of strings")
    for index, text in enumerate(documents):
        if not isinstance(text, str):
            raise DataError(f"{where}[{index}]: expected a string, got {type(text).__name__}")
    kept = [Document(f"document {index}", text) for index, text in enumerate(documents) if text.strip()]
    if not kept:
        raise DataError(f"{where}: every document is empty")
    return kept


def documents_digest(documents: list[Document]) -> str:
    """A short hash of the documents' text: the part of a cache key that names user text."""
    return hashlib.sha256("\0".join(d.text for d in documents).encode()).hexdigest()[:16]


def _text_data(name: str, source: str, documents: list[Document], val_size: float, test_size: float, context: int,
               limit_tokens: int | None, limit_eval_tokens: int | None, tok, where: str) -> TextData:
    parts = cut_documents(documents, val_size, test_size)
    separator = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (separator or 0)
    splits = {}
    for split in SPLITS:
        if not parts[split]:
            knobs = "data.val_size / data.test_size" if where == "data" else "val_size / test_size"
            raise DataError(f"{where}: the {split} split of {name} is empty; raise {knobs} or give longer documents")
        ids, chars, total = token_stream(parts[split], tok, separator)
        if len(ids) < 2:
            raise DataError(f"{where}: the {split} split of {name} has fewer than 2 tokens")
        limit = limit_tokens if split == "train" else limit_eval_tokens
        splits[split] = blocks(ids, chars, total, context, pad, separator, limit)
    log.info("text %s: %s", name, ", ".join(f"{s} {len(b)} blocks / {b.counted_tokens} tokens"
                                             for s, b in splits.items()))
    return TextData(name, source, splits["train"], splits["val"], splits["test"], len(tok), context, tok)


CHARACTERS_PER_TOKEN = 4.0  # English under a byte-level BPE: a planning figure, not a measurement


def spec_characters(data_spec) -> int:
    """Characters of a spec's corpus, or of every corpus of its mixture."""
    if data_spec.dataset == "mixture":
        return sum(corpus_characters(e.dataset, str(e.path) if e.path else None) for e in data_spec.mixture)
    return corpus_characters(data_spec.dataset, str(data_spec.path) if data_spec.path else None)


def corpus_characters(dataset: str, path: str | None) -> int:
    """Characters of a corpus; an installed one (no path) is read once per process (the
    service estimates every text job from it)."""
    return _installed_corpus_characters(dataset) if path is None else _characters(dataset, path)


def _characters(dataset: str, path: str | None) -> int:
    from pathlib import Path

    return sum(len(d.text) for d in CORPORA[dataset][0](Path(path) if path else None, "data"))


@lru_cache(maxsize=8)
def _installed_corpus_characters(dataset: str) -> int:
    return _characters(dataset, None)


def text_split_sizes(data_spec) -> tuple[int, int, tuple[int], int]:
    """(train blocks, validation blocks, (context,), an estimate of the vocabulary) of a text
    spec without tokenising it: tokens ~ characters / 4, or the spec's token limits."""
    characters = spec_characters(data_spec)
    context = data_spec.context_length
    train_tokens = characters * (1 - data_spec.val_size - data_spec.test_size) / CHARACTERS_PER_TOKEN
    val_tokens = characters * data_spec.val_size / CHARACTERS_PER_TOKEN
    if data_spec.limit_tokens:
        train_tokens = min(train_tokens, data_spec.limit_tokens)
    if data_spec.limit_eval_tokens:
        val_tokens = min(val_tokens, data_spec.limit_eval_tokens)
    return max(1, round(train_tokens / context)), max(1, round(val_tokens / context)), (context,), 50_000
