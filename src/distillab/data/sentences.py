"""Sentences for text-embedding distillation: a corpus split by position (as for language
models), each split cut into sentences and tokenised by the teacher's tokenizer, padded to
``context_length``. The teacher's embeddings of the training sentences are cached once.

``data.limit_train`` keeps that many training sentences (evenly spaced); validation and test
keep at most ``EVAL_SENTENCES`` each, evenly spaced, so that pairwise metrics stay cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from distillab.data.corpora import CORPORA, files_stamp
from distillab.data.text import (SPLITS, SplitData, checked_context, cut_documents, documents_digest,
                                 tokenizer_fingerprint)
from distillab.data.transforms import Augment
from distillab.files import atomic_write_bytes, atomic_write_json
from distillab.errors import DataError

EVAL_SENTENCES = 2000
MIN_CHARACTERS = 20
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences_of(text: str) -> list[str]:
    """Sentences of a text: split after . ! ? and whitespace; line breaks joined; short ones dropped."""
    flat = " ".join(text.split())
    return [s for s in SENTENCE_END.split(flat) if len(s) >= MIN_CHARACTERS]


@dataclass
class SentenceSplit:
    ids: torch.Tensor  # (N, T) int64, padded with the tokenizer's pad id
    texts: list[str]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class SentenceData(SplitData):
    name: str
    source: str
    train: SentenceSplit
    val: SentenceSplit
    test: SentenceSplit
    context_length: int
    tokenizer: object
    num_classes: int = 0  # no classes: the outputs are embeddings
    augment: Augment = Augment()
    teacher: object = None  # the encoder whose embeddings the metrics compare with (set by the task)
    mixture: list | None = None  # a corpus mixture: each corpus's weight, share and repeats

    def train_batches(self, batch_size: int, generator: torch.Generator, caches=(), order=None):
        """Shuffled sentences; with a cache, ``teacher_embeddings`` (n_teachers, B, D)."""
        order = torch.randperm(len(self.train), generator=generator) if order is None else order
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self._batch(self.train, rows)
            if caches:
                batch["teacher_embeddings"] = torch.stack([cache.lookup(rows) for cache in caches])
            yield batch

    def eval_batches(self, split: str, batch_size: int):
        sentences = self.split(split)
        for start in range(0, len(sentences), batch_size):
            yield self._batch(sentences, torch.arange(start, min(start + batch_size, len(sentences))))

    @staticmethod
    def _batch(split: SentenceSplit, rows: torch.Tensor) -> dict:
        # ``targets`` is the row: there are no labels, only the teacher's embeddings
        return {"inputs": split.ids[rows], "targets": rows.clone(), "index": rows}

    def example_inputs(self, n: int = 2) -> torch.Tensor:
        return self.train.ids[:n]

    def describe(self) -> dict:
        return {"name": self.name, "train": len(self.train), "val": len(self.val), "test": len(self.test),
                "num_classes": 0, "in_shape": [self.context_length],
                "split": "by position inside each document, then into sentences",
                "units": "sentences", **({"mixture": self.mixture} if self.mixture else {})}


def build_sentences(data_spec, tokenizer, tokenizer_name: str, max_context: int | None = None) -> SentenceData:
    context = checked_context(data_spec.context_length, max_context)
    if data_spec.dataset == "mixture":
        from distillab.data.mixture import parts_of

        return _build_mixture(parts_of(data_spec), data_spec.val_size, data_spec.test_size, context,
                              data_spec.limit_train, tokenizer_fingerprint(tokenizer), _Tok(tokenizer),
                              tuple(files_stamp(e.path) for e in data_spec.mixture))
    return _build(data_spec.dataset, str(data_spec.path) if data_spec.path else None, data_spec.val_size,
                  data_spec.test_size, context, data_spec.limit_train, tokenizer_name,
                  tokenizer_fingerprint(tokenizer), _Tok(tokenizer), files_stamp(data_spec.path))


class _Tok:
    """The tokenizer, hashed by identity of its fingerprint (passed beside it) for lru_cache."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __hash__(self):
        return 0

    def __eq__(self, other):
        return isinstance(other, _Tok)


@lru_cache(maxsize=2)
def _build(dataset: str, path: str | None, val_size: float, test_size: float, context: int, limit: int | None,
           tokenizer_name: str, fingerprint: str, tok: _Tok,
           stamp: tuple = ()) -> SentenceData:  # stamp: the files' sizes and times, so an edit is read again
    reader, _ = CORPORA[dataset]
    documents = reader(Path(path) if path else None, "data")
    # the corpus's text, not only its name: an edited text_folder gets a new teacher-embedding key
    source = (f"sentences:{dataset}:{path}:{documents_digest(documents)}:{fingerprint}:ctx{context}:val{val_size}"
              f":test{test_size}:lim{limit}")
    return _sentence_data(dataset, source, documents, val_size, test_size, context, limit, tok.tokenizer, "data")


@lru_cache(maxsize=2)
def _build_mixture(parts: tuple, val_size: float, test_size: float, context: int, limit: int | None,
                   fingerprint: str, tok: _Tok, stamp: tuple = ()) -> SentenceData:
    """Sentences of a weighted corpus mixture (``data.mixture``): training sentences in the
    weights' shares (``limit``: about that many in total), validation and test every corpus's."""
    from distillab.data.mixture import mixture_splits

    train, val, test, sources, facts = mixture_splits(
        parts, lambda part, documents, index: _sentence_data(part.dataset, "", documents, val_size, test_size,
                                                             context, None, tok.tokenizer, f"data.dataset[{index}]"),
        _rows_of, _joined, limit, EVAL_SENTENCES, "sentences")
    source = (f"sentences:mixture:{'|'.join(sources)}:{fingerprint}:ctx{context}:val{val_size}:test{test_size}"
              f":lim{limit}")
    return SentenceData("+".join(part.dataset for part in parts), source, train, val, test, context, tok.tokenizer,
                        mixture=facts)


def _rows_of(split: SentenceSplit, rows: torch.Tensor) -> SentenceSplit:
    return SentenceSplit(split.ids[rows], [split.texts[i] for i in rows.tolist()])


def _joined(splits: list[SentenceSplit]) -> SentenceSplit:
    return SentenceSplit(torch.cat([s.ids for s in splits]), [t for s in splits for t in s.texts])


def sentences_from_documents(documents: list[str], tokenizer, context: int, val_size: float = 0.05,
                             test_size: float = 0.05, limit: int | None = None,
                             where: str = "train_data") -> SentenceData:
    """Sentence splits of the user's own documents (strings, from Python), cut by position
    inside each like a corpus; the source key hashes the text, for the embedding cache."""
    from distillab.data.text import user_documents

    kept = user_documents(documents, where)
    source = (f"sentences:python:{documents_digest(kept)}:{tokenizer_fingerprint(tokenizer)}:ctx{context}:val{val_size}"
              f":test{test_size}:lim{limit}")
    return _sentence_data("documents", source, kept, val_size, test_size, context, limit, tokenizer, where)


def _sentence_data(name: str, source: str, documents, val_size: float, test_size: float, context: int,
                   limit: int | None, tokenizer, where: str) -> SentenceData:
    parts = cut_documents(documents, val_size, test_size)
    splits = {}
    for split in SPLITS:
        texts = [s for piece in parts[split] for s in sentences_of(piece)]
        cap = limit if split == "train" else EVAL_SENTENCES
        if cap is not None and len(texts) > cap:
            keep = np.linspace(0, len(texts) - 1, cap).round().astype(int)
            texts = [texts[i] for i in sorted(set(keep.tolist()))]
        if len(texts) < 2:
            raise DataError(f"{where}: the {split} split of {name} has fewer than 2 sentences of {MIN_CHARACTERS}+ "
                            "characters")
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=context, return_tensors="pt")
        splits[split] = SentenceSplit(encoded["input_ids"].long(), texts)
    return SentenceData(name, source, splits["train"], splits["val"], splits["test"], context, tokenizer)


@dataclass
class EmbeddingCache:
    embeddings: np.ndarray  # (N, D) float16
    hit: bool
    meta: dict

    def lookup(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.embeddings[rows.numpy()], dtype=np.float32))


@torch.no_grad()
def teacher_embeddings(teacher, checksum: str, data: SentenceData, cache_dir: Path, batch_size: int = 64,
                       device="cpu") -> EmbeddingCache:
    """The teacher's embeddings of every training sentence, computed once (fp16 .npy, atomic)."""
    key = hashlib.sha256(f"teacher={checksum}|data={data.source}".encode()).hexdigest()[:24]
    path = cache_dir / "teacher_embeddings" / f"{key}.npy"
    if path.is_file():
        meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").exists() else {}
        return EmbeddingCache(np.load(path, mmap_mode="r"), True, meta)
    import io
    import time

    teacher.eval().to(device)
    started, out = time.perf_counter(), []
    for start in range(0, len(data.train), batch_size):
        out.append(teacher(data.train.ids[start : start + batch_size].to(device)).float().cpu())
    embeddings = torch.cat(out).numpy().astype(np.float16)
    buffer = io.BytesIO()
    np.save(buffer, embeddings)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    meta = {"sentences": len(data.train), "seconds": round(time.perf_counter() - started, 2), "dimension":
            int(embeddings.shape[1])}
    atomic_write_json(path.with_suffix(".json"), meta)
    return EmbeddingCache(np.load(path, mmap_mode="r"), False, meta)
