"""Shared fixtures: a small synthetic image dataset on disk, a tiny trained teacher, and a
private cache folder for every test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from distillab.models.loading import save_model
from distillab.models.zoo import build_model

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("DISTILLAB_CACHE", str(cache))
    return cache


def make_blobs_npz(path: Path, n_train=240, n_test=80, classes=3, size=8, seed=0) -> Path:
    """Images whose class is a bright square in one of ``classes`` positions, plus noise:
    easy enough for a tiny model to learn in a few steps, hard enough to be non-trivial."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, classes, n)
        images = rng.integers(0, 60, (n, size, size)).astype(np.uint8)
        for i, label in enumerate(labels):
            row = (label * size) // classes
            images[i, row : row + 3, 1:6] = 230
        return images, labels

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture
def blobs(tmp_path) -> Path:
    return make_blobs_npz(tmp_path / "blobs.npz")


@pytest.fixture
def tiny_teacher(tmp_path) -> Path:
    """An untrained-but-fixed cnn_tiny teacher for 3 classes on 1x8x8 inputs."""
    torch.manual_seed(0)
    model = build_model("cnn_tiny", (1, 8, 8), 3)
    path = tmp_path / "teacher.safetensors"
    save_model(model, path)
    return path


def tiny_spec(npz: Path, teacher_path: Path, **overrides) -> dict:
    spec = {
        "name": "tiny",
        "data": {"dataset": "npz", "path": str(npz), "augment": {"crop_padding": 1, "hflip": True}},
        "teacher": {"model": "cnn_tiny", "checkpoint": str(teacher_path)},
        "student": {"model": "mlp", "model_args": {"hidden": [16]}},
        "strategy": {"name": "response"},
        "training": {"epochs": 2, "batch_size": 32, "seeds": [0, 1], "eval_batch_size": 256},
        "cache": {"views": 2},
        "output": {"tensorboard": False, "plots": True, "latency_repeats": 2},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value} if isinstance(value, dict) else value
    return spec
