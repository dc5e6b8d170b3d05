"""Readers on small hand-made files: IDX (plain and gzip), npz, CIFAR-10 pickles, image folders, digits."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from distillab.data.readers import (
    read_cifar10,
    read_digits,
    read_idx,
    read_image_folder,
    read_mnist_folder,
    read_npz,
)
from distillab.errors import DataError


def idx_bytes(array: np.ndarray, type_code: int = 0x08, dtype: str = "u1") -> bytes:
    """Magic (0, 0, type, ndim), big-endian uint32 dims, then the values big-endian."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


def write_idx(path: Path, array: np.ndarray, **kwargs) -> Path:
    data = idx_bytes(array, **kwargs)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# --- IDX ---------------------------------------------------------------------------------------


def test_read_idx_plain_uint8_gives_the_written_array(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    result = read_idx(write_idx(tmp_path / "images-idx3-ubyte", array))
    assert result.shape == (2, 3, 4)
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, array)


def test_read_idx_gzipped_gives_the_written_array(tmp_path):
    array = np.array([7, 0, 255, 3], dtype=np.uint8)
    result = read_idx(write_idx(tmp_path / "labels-idx1-ubyte.gz", array))
    np.testing.assert_array_equal(result, array)


def test_read_idx_big_endian_int32(tmp_path):
    array = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    result = read_idx(write_idx(tmp_path / "ints-idx2", array, type_code=0x0C, dtype=">i4"))
    np.testing.assert_array_equal(result, array)


def test_read_idx_truncated_body_raises(tmp_path):
    data = idx_bytes(np.zeros((2, 3, 4), dtype=np.uint8))
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(data[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_header_raises(tmp_path):
    data = idx_bytes(np.zeros((2, 3, 4), dtype=np.uint8))
    path = tmp_path / "header-idx3-ubyte"
    path.write_bytes(data[:9])  # magic + one and a bit of three dimension words
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_multibyte_values_raise(tmp_path):
    data = idx_bytes(np.arange(4, dtype=np.int32), type_code=0x0C, dtype=">i4")
    path = tmp_path / "ints-idx1"
    path.write_bytes(data[:-2])  # half of the last int32
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_bad_magic_raises(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)


def test_read_idx_unknown_type_code_is_bad_magic(tmp_path):
    path = tmp_path / "type-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 2) + b"\x00\x01")
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)


def test_read_idx_corrupt_gzip_raises_data_error(tmp_path):
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot read IDX"):
        read_idx(path)


# --- MNIST folder ------------------------------------------------------------------------------


def write_mnist_folder(folder: Path, n_train: int = 5, n_test: int = 3, gz: bool = True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 4, 5), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 4, 5), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_read_mnist_folder_shapes_and_values(tmp_path, gz):
    arrays = write_mnist_folder(tmp_path, gz=gz)
    train, test = read_mnist_folder(tmp_path)
    assert train.images.shape == (5, 1, 4, 5) and train.images.dtype == torch.uint8
    assert test.images.shape == (3, 1, 4, 5)
    assert train.labels.dtype == torch.int64 and test.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(train.labels.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_read_mnist_folder_missing_file_names_it(tmp_path):
    write_mnist_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        read_mnist_folder(tmp_path)


def test_read_mnist_folder_count_mismatch(tmp_path):
    write_mnist_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.uint8))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        read_mnist_folder(tmp_path)


# --- npz ---------------------------------------------------------------------------------------


def test_read_npz_uint8_images_gain_a_channel(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    x_test = rng.integers(0, 256, (2, 4, 4), dtype=np.uint8)
    path = tmp_path / "images.npz"
    np.savez(path, x_train=x_train, y_train=np.arange(6) % 3, x_test=x_test, y_test=np.array([0, 2]))
    train, test = read_npz(path)
    assert train.images.shape == (6, 1, 4, 4) and train.images.dtype == torch.uint8
    assert test.images.shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(train.images[:, 0].numpy(), x_train)
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert test.labels.tolist() == [0, 2]


def test_read_npz_float_vectors_stay_flat(tmp_path):
    x_train = np.arange(15, dtype=np.float64).reshape(5, 3)
    path = tmp_path / "vectors.npz"
    np.savez(path, x_train=x_train, y_train=np.zeros(5, np.int32),
             x_test=np.ones((2, 3), np.float64), y_test=np.zeros(2, np.int32))
    train, test = read_npz(path)
    assert train.images.shape == (5, 3) and train.images.dtype == torch.float32
    assert test.images.shape == (2, 3)
    np.testing.assert_allclose(train.images.numpy(), x_train)


def test_read_npz_missing_arrays_are_named(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((2, 3)), y_train=np.zeros(2))
    with pytest.raises(DataError, match="missing arrays x_test, y_test"):
        read_npz(path)


def test_read_npz_row_mismatch(tmp_path):
    path = tmp_path / "mismatch.npz"
    np.savez(path, x_train=np.zeros((3, 2)), y_train=np.zeros(2), x_test=np.zeros((1, 2)), y_test=np.zeros(1))
    with pytest.raises(DataError, match="x_train has 3 rows but y_train has 2"):
        read_npz(path)


def test_read_npz_not_an_npz(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(DataError, match="cannot read npz"):
        read_npz(path)


# --- CIFAR-10 ----------------------------------------------------------------------------------


def write_cifar_batches(folder: Path, per_batch: int = 2) -> dict:
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, per_batch).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
        batches[name] = batch
    return batches


def test_read_cifar10_synthetic_batches(tmp_path):
    batches = write_cifar_batches(tmp_path)
    train, test = read_cifar10(tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (2, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and len(train.labels) == 10
    # rows are stored channel-major: 1024 red, 1024 green, 1024 blue values
    first = batches["data_batch_1"][b"data"][0]
    np.testing.assert_array_equal(train.images[0, 1].numpy().ravel(), first[1024:2048])
    last = batches["data_batch_5"][b"data"][1]
    np.testing.assert_array_equal(train.images[9].numpy().ravel(), last)
    expected_labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert train.labels.tolist() == expected_labels
    assert test.labels.tolist() == batches["test_batch"][b"labels"]


def test_read_cifar10_finds_the_extracted_subfolder(tmp_path):
    write_cifar_batches(tmp_path / "cifar-10-batches-py", per_batch=1)
    train, test = read_cifar10(tmp_path)
    assert len(train) == 5 and len(test) == 1


def test_read_cifar10_missing_batch_is_named(tmp_path):
    write_cifar_batches(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        read_cifar10(tmp_path)


def test_read_cifar10_corrupt_batch(tmp_path):
    write_cifar_batches(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="cannot read CIFAR batch"):
        read_cifar10(tmp_path)


# --- image folder ------------------------------------------------------------------------------


def write_png(path: Path, value: int, size=(3, 2), mode: str = "L") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 0, 255 - value)
    Image.new(mode, size, color).save(path)


def test_read_image_folder_classes_sorted_by_name(tmp_path):
    # class "b" is written first; labels must still follow name order: a=0, b=1
    write_png(tmp_path / "train" / "b" / "1.png", 200)
    write_png(tmp_path / "train" / "b" / "2.png", 210)
    write_png(tmp_path / "train" / "a" / "1.png", 10)
    write_png(tmp_path / "test" / "b" / "1.png", 220)
    write_png(tmp_path / "test" / "a" / "1.png", 20)
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    train, test = read_image_folder(tmp_path)
    assert train.images.shape == (3, 1, 2, 3) and train.images.dtype == torch.uint8  # (N, C, H, W)
    assert train.labels.tolist() == [0, 1, 1]
    assert train.images[:, 0, 0, 0].tolist() == [10, 200, 210]
    assert test.labels.tolist() == [0, 1]
    assert test.images[:, 0, 0, 0].tolist() == [20, 220]


def test_read_image_folder_rgb_has_three_channels(tmp_path):
    for split in ("train", "test"):
        for name in ("a", "b"):
            write_png(tmp_path / split / name / "x.png", 40, mode="RGB")
    train, _ = read_image_folder(tmp_path)
    assert train.images.shape == (2, 3, 2, 3)
    assert train.images[0, :, 0, 0].tolist() == [40, 0, 215]


def test_read_image_folder_sizes_differ(tmp_path):
    write_png(tmp_path / "train" / "a" / "1.png", 10, size=(3, 2))
    write_png(tmp_path / "train" / "b" / "1.png", 10, size=(4, 4))
    write_png(tmp_path / "test" / "a" / "1.png", 10)
    with pytest.raises(DataError, match="differ in size"):
        read_image_folder(tmp_path)


def test_read_image_folder_without_train_classes(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="train/<class>"):
        read_image_folder(tmp_path)


def test_read_image_folder_unreadable_image(tmp_path):
    write_png(tmp_path / "train" / "a" / "1.png", 10)
    (tmp_path / "train" / "a" / "2.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        read_image_folder(tmp_path)


# --- digits ------------------------------------------------------------------------------------


def test_read_digits_split_sizes_and_range():
    train, test = read_digits(None)
    assert len(train) == 1438 and len(test) == 359
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.float32
    assert float(train.images.min()) == 0.0 and float(train.images.max()) == 1.0
    assert float(test.images.min()) >= 0.0 and float(test.images.max()) <= 1.0
    assert set(train.labels.tolist()) == set(range(10))
    # the split is fixed: a second read gives the same rows
    again, _ = read_digits(None)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
