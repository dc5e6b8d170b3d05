"""The teacher-output cache knows its teacher: two teachers that answer differently never share
an entry, whatever their weights; a teacher that cannot be identified is never cached."""

import torch
from torch import nn

from distillab import Distiller
from distillab.data.user import tensor_bundle
from distillab.models.identity import file_teacher_key, python_teacher_key


class Fixed(nn.Module):
    """A teacher without parameters: logits from a fixed projection of the inputs (sign flips it)."""

    def __init__(self, sign: float):
        super().__init__()
        self.sign = sign

    def forward(self, x):  # (B, C, H, W) -> (B, 3)
        flat = x.flatten(1)
        return self.sign * torch.stack([flat[:, :20].mean(1), flat[:, 20:40].mean(1), flat[:, 40:].mean(1)], 1) * 10


class Noisy(nn.Module):
    def forward(self, x):
        return torch.randn(len(x), 3)


def _data(n=120):
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=generator)
    y = x.flatten(1)[:, :20].mean(1).gt(0.5).long() + x.flatten(1)[:, 20:40].mean(1).gt(0.5).long()
    return x, y


def _student():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))


def _distilled(teacher, cache_dir):
    distiller = Distiller(teacher, _student(), alpha=1.0, temperature=2.0, cache_dir=cache_dir)
    distiller.fit(_data(), epochs=2, progress=False)
    return torch.cat([p.detach().flatten() for p in distiller.student.parameters()])


def test_two_parameterless_teachers_give_different_students(tmp_path):
    plus, minus = _distilled(Fixed(1.0), tmp_path), _distilled(Fixed(-1.0), tmp_path)
    assert not torch.equal(plus, minus)
    entries = list((tmp_path / "teacher_outputs").iterdir())
    assert len([e for e in entries if not e.name.startswith(".")]) == 2


def test_the_key_changes_with_state_code_and_class_but_not_between_calls():
    data = tensor_bundle(_data(), None, None, seed=0)
    base = python_teacher_key(Fixed(1.0), data)
    assert base == python_teacher_key(Fixed(1.0), data)
    assert base != python_teacher_key(Fixed(-1.0), data)  # same (empty) state, other outputs

    class Changed(Fixed):  # same class name and state, other forward code
        def forward(self, x):
            return super().forward(x) + 1

    Changed.__qualname__ = Fixed.__qualname__
    assert base != python_teacher_key(Changed(1.0), data)
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    key = python_teacher_key(linear, data)
    with torch.no_grad():
        linear[1].bias += 0.5
    assert key != python_teacher_key(linear, data)
    other = tensor_bundle((_data()[0] + 1, _data()[1]), None, None, seed=0)
    assert base != python_teacher_key(Fixed(1.0), other)  # other probe inputs: other outputs


def test_a_teacher_with_unreproducible_outputs_is_not_cached(tmp_path):
    assert python_teacher_key(Noisy(), tensor_bundle(_data(), None, None, seed=0)) is None
    Distiller(Noisy(), _student(), cache_dir=tmp_path).fit(_data(), epochs=1, progress=False)
    assert not (tmp_path / "teacher_outputs").exists() or not any(
        e for e in (tmp_path / "teacher_outputs").iterdir() if not e.name.startswith("."))


def test_a_file_teachers_key_covers_its_format_and_input_convention():
    keys = {file_teacher_key("abc", fmt, convention) for fmt in ("safetensors", "onnx", "torchscript")
            for convention in ("normalized", "raw")}
    assert len(keys) == 6
