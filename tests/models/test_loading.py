"""Teachers load from safetensors, TorchScript and ONNX with the same logits; bad files
raise CheckpointError with a message that says which file and what is wrong."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distillab.errors import CheckpointError
from distillab.models.loading import OnnxTeacher, file_checksum, load_teacher, save_model
from distillab.models.zoo import build_model
from distillab.spec import TeacherSpec

IN_SHAPE = (1, 28, 28)

# torch 2.13 deprecates TorchScript and the legacy ONNX exporter; the tests still need both
# to make foreign teachers (the dynamo exporter needs onnxscript, which is not installed).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The feature will be removed:DeprecationWarning"),
]
NUM_CLASSES = 10


@pytest.fixture
def teacher() -> nn.Module:
    """cnn_tiny in eval mode with random BatchNorm statistics, so buffers must round-trip too."""
    torch.manual_seed(0)
    model = build_model("cnn_tiny", IN_SHAPE, NUM_CLASSES)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buffer.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(4, *IN_SHAPE, generator=torch.Generator().manual_seed(1))  # (B, C, H, W)


def export_onnx(model: nn.Module, path, dynamic_batch: bool = True) -> None:
    # The dynamo exporter needs onnxscript, which is not installed: use the TorchScript-based one.
    torch.onnx.export(
        model, (torch.zeros(2 if dynamic_batch else 1, *IN_SHAPE),), str(path), dynamo=False,
        input_names=["images"], output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
    )  # fmt: skip


def load(path, fmt, num_classes=NUM_CLASSES, model=None):
    spec = TeacherSpec(model=model, checkpoint=path, format=fmt)
    return load_teacher(spec, IN_SHAPE, num_classes)


def test_safetensors_round_trip_gives_identical_logits(teacher, images, tmp_path):
    path = tmp_path / "teacher.safetensors"
    save_model(teacher, path, {"accuracy": 0.9})
    loaded, checksum = load(path, "safetensors", model="cnn_tiny")
    assert not loaded.training
    assert checksum == file_checksum(path)
    with torch.no_grad():
        assert torch.equal(loaded(images), teacher(images))


def test_torchscript_teacher_gives_the_same_logits(teacher, images, tmp_path):
    path = tmp_path / "teacher.pt"
    torch.jit.trace(teacher, images).save(str(path))
    loaded, _ = load(path, "torchscript")
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), teacher(images))


def test_onnx_teacher_gives_close_logits(teacher, images, tmp_path):
    path = tmp_path / "teacher.onnx"
    export_onnx(teacher, path)
    loaded, _ = load(path, "onnx")
    assert isinstance(loaded, OnnxTeacher)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), teacher(images), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("keep", [0, 6, 0.5, -1], ids=["empty", "in-header", "half", "last-byte-missing"])
def test_truncated_safetensors_names_the_file(teacher, tmp_path, keep):
    whole = tmp_path / "whole.safetensors"
    save_model(teacher, whole)
    data = whole.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="not a readable safetensors file") as caught:
        load(path, "safetensors", model="cnn_tiny")
    assert str(path) in str(caught.value)


def test_state_of_another_architecture_names_the_file(tmp_path):
    path = tmp_path / "small.safetensors"
    save_model(build_model("cnn_small", IN_SHAPE, NUM_CLASSES), path)
    with pytest.raises(CheckpointError, match="does not fit the architecture") as caught:
        load(path, "safetensors", model="cnn_tiny")
    assert str(path) in str(caught.value)


def test_safetensors_with_another_class_count_names_the_file(teacher, tmp_path):
    path = tmp_path / "teacher.safetensors"
    save_model(teacher, path)
    with pytest.raises(CheckpointError, match="outputs 10 classes per sample but the dataset has 7 classes") as caught:
        load(path, "safetensors", num_classes=7, model="cnn_tiny")
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_foreign_teacher_with_wrong_class_count(teacher, images, tmp_path, fmt):
    path = tmp_path / ("teacher.pt" if fmt == "torchscript" else "teacher.onnx")
    if fmt == "torchscript":
        torch.jit.trace(teacher, images).save(str(path))
    else:
        export_onnx(teacher, path)
    with pytest.raises(CheckpointError, match="outputs 10 classes .* dataset has 7 classes") as caught:
        load(path, fmt, num_classes=7)
    assert str(path) in str(caught.value)


class TwoOutputs(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :NUM_CLASSES], x


def test_torchscript_returning_a_tuple_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "tuple.pt"
    torch.jit.trace(TwoOutputs(), torch.zeros(2, *IN_SHAPE)).save(str(path))
    with pytest.raises(CheckpointError, match="returns tuple"):
        load(path, "torchscript")


def test_onnx_with_a_fixed_batch_size_is_a_checkpoint_error(teacher, tmp_path):
    path = tmp_path / "batch1.onnx"
    export_onnx(teacher, path, dynamic_batch=False)
    with pytest.raises(CheckpointError, match="any batch size"):
        load(path, "onnx")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_file_of_the_wrong_format_names_the_file(teacher, tmp_path, fmt):
    path = tmp_path / "teacher.safetensors"
    save_model(teacher, path)
    with pytest.raises(CheckpointError, match="not a loadable") as caught:
        load(path, fmt)
    assert str(path) in str(caught.value)
