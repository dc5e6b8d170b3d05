"""Errors meant for people: a bad spec, file or input. The CLI prints them and exits 2;
the service answers them with a 4xx. Anything else is our bug and keeps its traceback."""

from __future__ import annotations

import difflib
import errno
import shutil
from collections.abc import Iterable
from pathlib import Path


class DistillabError(Exception):
    """A user mistake, with a message that says what is wrong and where."""


class SpecError(DistillabError):
    """The job spec (or a value in it) is invalid."""


class DataError(DistillabError):
    """A data set is missing, empty or holds bad values."""


class CheckpointError(DistillabError):
    """A model file is missing, corrupt, or does not fit its architecture."""


class DiskFull(DistillabError):
    """A write failed because the disk (or the user's quota) is full."""


def is_disk_full(error: BaseException, folder: Path | None = None, margin_bytes: int = 1 << 20) -> bool:
    """Whether ``error`` comes from a full disk: an ENOSPC/EDQUOT anywhere in its chain, or
    (for writers such as torch.save that hide the errno, "unexpected pos ...") a write error
    while ``folder``'s file system has less than ``margin_bytes`` free."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        seen = seen.__cause__ or seen.__context__
    if folder is not None and isinstance(error, (OSError, RuntimeError)):
        try:
            return shutil.disk_usage(folder).free < margin_bytes
        except OSError:
            return False
    return False


class TrainingDiverged(DistillabError):
    """The loss became NaN or infinite."""


def close_matches(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean: a, b?)' suffix, or '' when nothing is close."""
    matches = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else f"; choose from: {', '.join(sorted(choices))}"
