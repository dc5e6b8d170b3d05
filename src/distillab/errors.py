"""Errors meant for people: a bad spec, file or input. The CLI prints them and exits 2;
the service answers them with a 4xx. Anything else is our bug and keeps its traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistillabError(Exception):
    """A user mistake, with a message that says what is wrong and where."""


class SpecError(DistillabError):
    """The job spec (or a value in it) is invalid."""


class DataError(DistillabError):
    """A data set is missing, empty or holds bad values."""


class CheckpointError(DistillabError):
    """A model file is missing, corrupt, or does not fit its architecture."""


class TrainingDiverged(DistillabError):
    """The loss became NaN or infinite."""


def close_matches(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean: a, b?)' suffix, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else f"; choose from: {', '.join(sorted(choices))}"
