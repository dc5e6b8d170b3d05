"""Readers that turn files on disk into in-memory arrays.

Each reader returns ``(train, test)``: two ``ArraySet`` with images as a uint8 or float32
tensor (N, C, H, W) and labels as int64 (N,).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillab.errors import DataError


@dataclass
class ArraySet:
    images: torch.Tensor  # (N, C, H, W), uint8 in [0, 255] or float32; or (N, D) feature vectors
    labels: torch.Tensor  # (N,), int64

    def __len__(self) -> int:
        return len(self.labels)


IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read IDX file ({error})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX file (header cut short)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[raw[2]])
    body = raw[4 + 4 * ndim :]
    expected = int(np.prod(dims))
    if len(body) != expected * dtype.itemsize:  # checked in bytes: a partial value would make frombuffer fail
        raise DataError(f"{path}: truncated IDX file ({len(body) // dtype.itemsize} values, header says {expected})")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.exists():
            if not candidate.is_file():  # a FIFO or device would block or never end
                raise DataError(f"{candidate}: not a regular file")
            return candidate
    raise DataError(f"{folder}: missing {stem}.gz")


def read_mnist_folder(folder: Path) -> tuple[ArraySet, ArraySet]:
    """MNIST and Fashion-MNIST: the four IDX files of the original distribution."""
    sets = []
    for prefix in ("train", "t10k"):
        images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise DataError(f"{folder}: {prefix} has {len(images)} images but {len(labels)} labels")
        sets.append(ArraySet(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))))
    return sets[0], sets[1]


def read_digits(_: Path | None) -> tuple[ArraySet, ArraySet]:
    """scikit-learn's 8x8 digits (1797 images, values 0..16); a fixed 80/20 train/test split."""
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError:
        raise DataError("data.dataset: digits comes with scikit-learn, which is not installed: "
                        "pip install 'distillab[digits]'") from None

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1797))
    n_test = len(labels) // 5
    test, train = order[:n_test], order[n_test:]
    return ArraySet(images[train], labels[train]), ArraySet(images[test], labels[test])


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle, encoding="bytes")  # noqa: S301 - the CIFAR format is a pickle
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise DataError(f"{path}: cannot read CIFAR batch ({error})") from None


def read_cifar10(folder: Path) -> tuple[ArraySet, ArraySet]:
    """CIFAR-10 python batches (data_batch_1..5, test_batch) from a local folder."""
    if (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    sets = []
    for names in ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]):
        images, labels = [], []
        for name in names:
            path = folder / name
            if not path.exists():
                raise DataError(f"{folder}: missing CIFAR-10 batch {name}")
            batch = _unpickle(path)
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
        sets.append(ArraySet(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))))
    return sets[0], sets[1]


def _as_images(array: np.ndarray, path: Path, key: str) -> torch.Tensor:
    if array.ndim == 2:  # (N, D) feature vectors stay flat: no image transform applies to them
        pass
    elif array.ndim == 3:  # (N, H, W)
        array = array[:, None]
    elif array.ndim != 4:
        raise DataError(f"{path}: {key} must have 2, 3 or 4 dimensions, got shape {array.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor if tensor.dtype == torch.uint8 else tensor.float()


def read_npz(path: Path) -> tuple[ArraySet, ArraySet]:
    """An .npz with x_train, y_train, x_test, y_test (images N,H,W / N,C,H,W or vectors N,D)."""
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read npz ({error})") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing arrays {', '.join(missing)}")
    sets = []
    for split in ("train", "test"):
        try:
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        except (ValueError, OSError) as error:  # object arrays (pickles), a corrupt member
            raise DataError(f"{path}: x_{split} / y_{split} cannot be read: {str(error)[:200]} (save plain numeric "
                            "arrays)") from None
        if y.ndim != 1:
            raise DataError(f"{path}: y_{split} must be one label per row (shape (N,)), got shape {y.shape}")
        if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
            raise DataError(f"{path}: y_{split} must hold integer class labels, got dtype {y.dtype}")
        if np.issubdtype(y.dtype, np.floating):  # whole-valued floats (1.0) are labels; 1.5 or NaN is not
            bad = np.flatnonzero(~np.isfinite(y) | (y != np.round(y)))
            if len(bad):
                raise DataError(f"{path}: y_{split} must hold whole-number class labels; row {bad[0]} is {y[bad[0]]}")
        if x.ndim == 0 or len(x) != len(y):
            raise DataError(f"{path}: x_{split} has {len(x) if x.ndim else 0} rows but y_{split} has {len(y)}")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
            raise DataError(f"{path}: x_{split} must be real numbers, got dtype {x.dtype}"
                            + (" (the imaginary part would be lost)" if np.iscomplexobj(x) else ""))
        sets.append(ArraySet(_as_images(x, path, f"x_{split}"), torch.from_numpy(y.astype(np.int64))))
    return sets[0], sets[1]


MAX_IMAGE_PIXELS = 4096 * 4096
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def read_image_folder(folder: Path) -> tuple[ArraySet, ArraySet]:
    """``folder/{train,test}/<class name>/<image>``; classes sorted by name, all images one size."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir()) if (folder / "train").is_dir() else []
    if not classes:
        raise DataError(f"{folder}: expected train/<class>/ sub-folders")
    sets = []
    for split in ("train", "test"):
        images, labels = [], []
        for label, name in enumerate(classes):
            for file in sorted((folder / split / name).glob("*")):
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                if not file.is_file():
                    raise DataError(f"{file}: not a regular file")
                try:
                    with Image.open(file) as image:
                        if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:  # checked before decoding
                            raise DataError(f"{file}: {image.size[0]}x{image.size[1]} pixels, over the limit of "
                                            f"{MAX_IMAGE_PIXELS:,} (a decompression bomb, or far too large)")
                        array = np.asarray(image.convert("L" if image.mode in ("L", "1", "P") else "RGB"))
                except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
                    raise DataError(f"{file}: cannot read image ({error})") from None
                images.append(array if array.ndim == 3 else array[:, :, None])
                labels.append(label)
        if images and len({a.shape for a in images}) != 1:
            raise DataError(f"{folder / split}: images differ in size; resize them to one size first")
        stacked = np.stack(images).transpose(0, 3, 1, 2) if images else np.zeros((0, 1, 1, 1), np.uint8)
        sets.append(ArraySet(torch.from_numpy(np.ascontiguousarray(stacked)), torch.tensor(labels, dtype=torch.int64)))
    return sets[0], sets[1]
