"""Corpus mixtures: ``data.dataset`` as a weighted list of corpora, e.g.

    dataset:
      - {dataset: austen, weight: 2}
      - {dataset: moby_dick}
      - {dataset: text_folder, path: my_texts, weight: 0.5}

Every corpus is split per document, by position, as a single corpus is (the split does not
mix corpora: each document's last part is test, the part before it validation). The weights
are the shares of the *training* data: with ``limit_tokens`` (or ``limit_train`` sentences)
the training set holds about that much in total, each corpus its weighted share; without a
limit, the size of all training text together. A corpus whose share is larger than its own
training text is repeated (its blocks or sentences, evenly); the report records each corpus's
share and repeats. Validation and test are every corpus's held-out text together, unweighted,
so a score reads as on the union.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distillab.errors import DataError


@dataclass(frozen=True)
class Part:
    dataset: str
    path: str | None
    weight: float


def parts_of(data_spec) -> tuple[Part, ...]:
    return tuple(Part(entry.dataset, str(entry.path) if entry.path else None, float(entry.weight))
                 for entry in data_spec.mixture)


def read_part(part: Part, index: int):
    """The documents of one corpus of a mixture, errors naming ``data.dataset[index]``."""
    from pathlib import Path

    from distillab.data.corpora import CORPORA

    reader, _ = CORPORA[part.dataset]
    documents = reader(Path(part.path) if part.path else None, f"data.dataset[{index}]")
    if not documents:
        raise DataError(f"data.dataset[{index}]: {part.dataset} holds no text")
    return documents


def weighted_rows(sizes: list[int], weights: list[float], total: int | None) -> list[torch.Tensor]:
    """Per corpus, the rows (0..size-1) its weighted share of ``total`` takes: evenly spaced,
    repeated evenly when the share is larger than the corpus. ``total`` None: all rows together."""
    total = sum(sizes) if total is None else total
    norm = sum(weights)
    out = []
    for size, weight in zip(sizes, weights):
        count = max(1, round(total * weight / norm))
        out.append((torch.arange(count, dtype=torch.float64) * size / count).floor().long())
    return out


def evenly(count: int, limit: int | None) -> torch.Tensor | None:
    """Evenly spaced rows of ``count`` keeping about ``limit`` (None: keep all)."""
    if limit is None or limit >= count:
        return None
    return torch.linspace(0, count - 1, max(1, limit)).round().long().unique()


def share_facts(parts: tuple[Part, ...], sizes: list[int], rows: list[torch.Tensor], unit: str) -> list[dict]:
    taken = sum(len(r) for r in rows)
    return [{"dataset": part.dataset, **({"path": part.path} if part.path else {}), "weight": part.weight,
             f"train_{unit}": len(r), "share": round(len(r) / taken, 4), "repeats": round(len(r) / size, 3)}
            for part, size, r in zip(parts, sizes, rows)]


def mixture_splits(parts: tuple[Part, ...], build, rows_of, joined, train_total: int | None, eval_cap: int | None,
                   unit: str) -> tuple:
    """(train, val, test, per-corpus source keys, share facts) of a mixture: ``build(part, documents,
    index)`` splits one corpus; ``rows_of(split, rows)`` and ``joined(splits)`` select and join
    splits of that kind; the training rows follow the weights, held-out rows are all joined
    (evenly cut to ``eval_cap``)."""
    from distillab.data.text import documents_digest

    pieces, sources = [], []
    for index, part in enumerate(parts):
        documents = read_part(part, index)
        sources.append(f"{part.dataset}:{part.path}:{documents_digest(documents)}:w{part.weight}")
        pieces.append(build(part, documents, index))
    sizes = [len(piece.train) for piece in pieces]
    rows = weighted_rows(sizes, [part.weight for part in parts], train_total)
    train = joined([rows_of(piece.train, r) for piece, r in zip(pieces, rows)])
    held_out = []
    for split in ("val", "test"):
        together = joined([piece.split(split) for piece in pieces])
        keep = evenly(len(together), eval_cap)
        held_out.append(together if keep is None else rows_of(together, keep))
    return train, *held_out, sources, share_facts(parts, sizes, rows, unit)
