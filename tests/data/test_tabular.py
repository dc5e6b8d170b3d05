"""Feature vectors (N, D) stay flat end to end: through fit, compare and a spec's npz; image
augmentation applies to images only."""

import numpy as np
import pytest
import torch
from conftest import tiny_spec, trained
from torch import nn

from distillab import Distiller, compare
from distillab.errors import DataError
from distillab.experiment.run import run
from distillab.models.loading import save_model
from distillab.models.zoo import build_model


def _vectors(n, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


class Seen(nn.Module):
    """A linear model that records the shape of the inputs it is given."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(12, 3)
        self.shapes = set()

    def forward(self, x):
        self.shapes.add(tuple(x.shape[1:]))
        return self.linear(x)


def test_two_d_tensors_go_through_fit_and_compare_flat(tmp_path):
    x, y = _vectors(200, 0)
    torch.manual_seed(0)
    teacher = trained(Seen(), x, y)
    student = Seen()
    Distiller(teacher, student, cache_dir=tmp_path).fit((x, y), epochs=2, progress=False)
    assert student.shapes == {(12,)} and teacher.shapes == {(12,)}
    report = compare(teacher, lambda: Seen(), (x, y), _vectors(80, 1), seeds=[0], epochs=1, out_dir=tmp_path / "c",
                     latency_repeats=1, plots=False)
    assert 0 <= report.model("distilled")["accuracy"]["mean"] <= 1


def test_an_npz_of_vectors_runs_from_a_spec_and_refuses_image_augmentation(tmp_path):
    x, y = _vectors(300, 0)
    x_test, y_test = _vectors(100, 1)
    path = tmp_path / "vectors.npz"
    np.savez(path, x_train=x.numpy(), y_train=y.numpy(), x_test=x_test.numpy(), y_test=y_test.numpy())
    torch.manual_seed(0)
    teacher = build_model("mlp", (12,), 3, {"hidden": [16]})
    trained(teacher, x, y)  # trained on (x - mean) / std, as distillab normalises per feature
    save_model(teacher, tmp_path / "teacher.safetensors")
    spec = tiny_spec(path, tmp_path / "teacher.safetensors", teacher={"model": "mlp", "model_args": {"hidden": [16]}},
                     training={"seeds": [0], "epochs": 1})
    with pytest.raises(DataError, match="data.augment"):
        run(spec, tmp_path / "refused")
    spec["data"]["augment"] = {}
    report = run(spec, tmp_path / "run")
    assert report.data["dataset"]["in_shape"] == [12]
    assert report.model("teacher")["accuracy"]["mean"] > 0.8
