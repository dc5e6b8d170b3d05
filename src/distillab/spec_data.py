"""A corpus of a mixture (``data.dataset`` as a weighted list of corpora; ``data.mixture``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from distillab.spec_base import Number, Strict, registered


class MixtureEntry(Strict):
    dataset: str = Field(description="a text corpus (distillab datasets)")
    path: Path | None = Field(None, description="its folder or file (text_folder); null = the corpus's default")
    weight: Number = Field(1.0, description="its share of the training data, relative to the others' (> 0)")

    @field_validator("dataset")
    @classmethod
    def _known_corpus(cls, name: str) -> str:
        from distillab.data.corpora import CORPORA

        return registered(name, CORPORA, "corpus")

    @field_validator("weight")
    @classmethod
    def _positive(cls, weight: float) -> float:
        if not weight > 0:
            raise ValueError(f"{weight} must be greater than 0 (leave a corpus out instead of weighting it 0)")
        return weight

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.exists():
            raise ValueError(f"no such file or folder: {path}")
        return path
