"""Datasets: a literal registry of readers, and deterministic train/val/test splits."""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
from functools import lru_cache
from pathlib import Path

import torch

from distillab.data.readers import (
    ArraySet,
    read_cifar10,
    read_digits,
    read_image_folder,
    read_mnist_folder,
    read_npz,
)
from distillab.data.transforms import Augment, Normalize, fit_normalize
from distillab.errors import DataError


MAX_CLASSES = 100_000


@dataclass(frozen=True)
class DatasetInfo:
    reader: object
    default_path: str | None
    summary: str
    in_shape: tuple[int, int, int] | None = None  # known before reading the files (None: it depends on them)
    num_classes: int | None = None


# name -> reader. A literal allow-list (design rule 2).
DATASETS = {
    "fashion_mnist": DatasetInfo(read_mnist_folder, "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX files",
                                 (1, 28, 28), 10),
    "mnist": DatasetInfo(read_mnist_folder, "/usr/share/datasets/mnist", "MNIST IDX files", (1, 28, 28), 10),
    "digits": DatasetInfo(read_digits, None, "scikit-learn 8x8 digits (bundled with scikit-learn)", (1, 8, 8), 10),
    "cifar10": DatasetInfo(read_cifar10, None, "CIFAR-10 python batches in a local folder", (3, 32, 32), 10),
    "npz": DatasetInfo(read_npz, None, "an .npz with x_train, y_train, x_test, y_test"),
    "image_folder": DatasetInfo(read_image_folder, None, "folder/{train,test}/<class>/<image> via Pillow"),
}

# What each class index means, for a deployed model's labels (datasets not named here: "0", "1", ...)
CLASS_NAMES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(str(digit) for digit in range(10)),
    "digits": tuple(str(digit) for digit in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


@dataclass
class DataBundle:
    """Everything the engine needs: three splits, one normalisation, one augmentation.

    ``train_index`` maps each training row to its row in the full training file, which is
    how the teacher-output cache addresses samples independently of the split seed.
    """

    name: str
    source: str  # dataset + path, part of the cache key
    train: ArraySet
    train_index: torch.Tensor  # (N_train,) int64 rows of the full training set
    full_train: ArraySet
    n_rows: int  # rows of the full training file in use (limit_train applied)
    val: ArraySet
    test: ArraySet
    normalize: Normalize
    augment: Augment
    num_classes: int

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    @property
    def cacheable(self) -> bool:
        """Samples are addressed by row, so the teacher's outputs can be cached per view."""
        return True

    def split(self, name: str) -> ArraySet:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def steps_per_epoch(self, batch_size: int) -> int:
        return max(1, -(-len(self.train) // batch_size))

    def train_batches(self, batch_size: int, generator: torch.Generator, caches=(), order=None):
        from distillab.data.batches import train_batches

        return train_batches(self, batch_size, generator, caches, order)

    def eval_batches(self, split: str, batch_size: int):
        from distillab.data.batches import eval_batches

        return eval_batches(self.split(split), self.normalize, batch_size)

    def example_inputs(self, n: int = 2) -> torch.Tensor:
        """``n`` normalised training inputs, for a dummy forward pass."""
        return self.normalize(self.train.images[:n])


def _stamp(name: str, path: str | None) -> tuple:
    """Each data file's name, size and modification time: a file changed on disk is read again,
    not served from this process's memory."""
    info = DATASETS[name]
    resolved = Path(path) if path else (Path(info.default_path) if info.default_path else None)
    if resolved is None or not resolved.exists():
        return ()
    files = [resolved] if resolved.is_file() else sorted(p for p in resolved.iterdir() if p.is_file())
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def read_dataset(name: str, path: str | None) -> tuple[ArraySet, ArraySet]:
    """(train, test) of a dataset, read once per process while its files stay the same."""
    return _read(name, path, _stamp(name, path))


def data_digest(name: str, path: str | None) -> str:
    """A hash of the training inputs' contents (see ``_digest``)."""
    return _digest(name, path, _stamp(name, path))


@lru_cache(maxsize=4)
def _digest(name: str, path: str | None, stamp: tuple) -> str:
    """A hash of the training inputs' contents: the teacher-output cache is keyed by what the
    teacher sees, so a file replaced (or reordered) at the same path gets a new key."""
    train, _ = _read(name, path, stamp)
    images = train.images.contiguous()
    digest = hashlib.blake2b(f"{images.dtype}{tuple(images.shape)}".encode(), digest_size=12)
    digest.update(images.numpy().tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=4)
def _read(name: str, path: str | None, stamp: tuple) -> tuple[ArraySet, ArraySet]:
    info = DATASETS[name]
    resolved = Path(path) if path else (Path(info.default_path) if info.default_path else None)
    if resolved is None and name != "digits":
        raise DataError(f"data.path: dataset {name!r} has no default location; set data.path")
    if resolved is not None and not resolved.exists():
        hint = " (install Debian's dataset-fashion-mnist, or run: distillab data fetch fashion_mnist --to DIR)"
        raise DataError(f"data.path: no such file or folder: {resolved}{hint if name == 'fashion_mnist' else ''}")
    return info.reader(resolved)


def _check(split: ArraySet, where: str) -> None:
    if len(split) == 0:
        raise DataError(f"{where}: the dataset is empty")
    if split.images.is_floating_point() and not torch.isfinite(split.images).all():
        bad = (~torch.isfinite(split.images.flatten(1))).any(1).nonzero()[:5].flatten().tolist()
        raise DataError(f"{where}: inputs contain NaN or infinite values (first rows: {bad})")
    if (split.labels < 0).any():
        raise DataError(f"{where}: labels must be >= 0")


def split_sizes(data_spec) -> tuple[int, int, tuple[int, ...], int]:
    """(train rows, validation rows, input shape, classes) of a data spec, without building
    its splits (the files are read once and cached, as ``build`` reads them)."""
    full_train, test = read_dataset(data_spec.dataset, str(data_spec.path) if data_spec.path else None)
    _check(full_train, f"{data_spec.dataset} train split")
    n_total = len(full_train) if data_spec.limit_train is None else min(data_spec.limit_train, len(full_train))
    n_val = max(1, round(n_total * data_spec.val_size))
    classes = int(max(full_train.labels.max(), test.labels.max())) + 1
    return n_total - n_val, n_val, tuple(full_train.images.shape[1:]), classes


def build(data_spec, seed: int) -> DataBundle:
    """Read the dataset (cached in memory) and split train/val deterministically by ``seed``."""
    path = str(data_spec.path) if data_spec.path else None
    full_train, test = read_dataset(data_spec.dataset, path)
    _check(full_train, f"{data_spec.dataset} train split")
    _check(test, f"{data_spec.dataset} test split")
    if full_train.images.shape[1:] != test.images.shape[1:]:
        raise DataError(f"{data_spec.dataset}: train inputs have shape {tuple(full_train.images.shape[1:])} but "
                        f"test inputs {tuple(test.images.shape[1:])}; they must match")
    num_classes = int(max(full_train.labels.max(), test.labels.max())) + 1
    augment = data_spec.augment
    if (augment.crop_padding or augment.hflip or augment.mix != "none") and full_train.images.dim() != 4:
        raise DataError(f"data.augment: crops, flips and mixing apply to images (N, C, H, W); {data_spec.dataset} "
                        f"holds inputs of shape {tuple(full_train.images.shape)}; turn augmentation off")
    if num_classes > MAX_CLASSES:
        raise DataError(f"{data_spec.dataset}: labels go up to {num_classes - 1}; at most {MAX_CLASSES:,} classes "
                        "are supported (labels must be 0 .. classes-1)")
    n_total = len(full_train) if data_spec.limit_train is None else min(data_spec.limit_train, len(full_train))
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(10_007 + seed))
    n_val = max(1, round(n_total * data_spec.val_size))
    if n_total - n_val < 1:
        raise DataError(f"data.limit_train: {n_total} samples leave none for training after the validation split")
    val_rows, train_rows = order[:n_val].sort().values, order[n_val:].sort().values
    return DataBundle(
        name=data_spec.dataset,
        source=(f"{data_spec.dataset}:{Path(path).resolve() if path else 'default'}:"
                f"{data_digest(data_spec.dataset, path)}"),
        train=ArraySet(full_train.images[train_rows], full_train.labels[train_rows]),
        train_index=train_rows,
        full_train=full_train,
        n_rows=n_total,
        val=ArraySet(full_train.images[val_rows], full_train.labels[val_rows]),
        test=test,
        normalize=fit_normalize(full_train.images),
        augment=Augment(data_spec.augment.crop_padding, data_spec.augment.hflip, data_spec.augment.mix,
                        data_spec.augment.mix_alpha),
        num_classes=num_classes,
    )
