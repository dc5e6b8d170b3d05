"""The per-epoch training checkpoint, read back for --resume."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from distillab.errors import CheckpointError


def load_training_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: corrupt or truncated training checkpoint ({error})") from None
