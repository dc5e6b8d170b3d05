"""Every teacher-output cache key covers everything that decides the cached outputs: changing any
one input that changes what the teacher computes -- its weights, its code, how its inputs are
prepared, the data's contents, the views, the precision, the temperature and selection of a text
cache -- gives a new key, and the same inputs give the same key."""

import numpy as np
import pytest
import torch
from torch import nn

from conftest import make_blobs_npz, write_corpus
from distillab import data as data_module
from distillab.data import cache as image_cache
from distillab.data import text_cache
from distillab.models.identity import file_teacher_key, python_teacher_key
from distillab.models.zoo import build_model
from distillab.spec import DataSpec


class Doubled(nn.Module):
    """The same weights as the model it wraps, other code."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return 2 * self.model(x)


def _bundle(npz, **augment):
    return data_module.build(DataSpec(dataset="npz", path=npz, augment=augment or {"crop_padding": 2, "hflip": True}),
                             0)


def test_the_image_cache_key_changes_with_each_input_that_changes_the_outputs(tmp_path):
    npz = make_blobs_npz(tmp_path / "blobs.npz")
    bundle = _bundle(npz)
    torch.manual_seed(0)
    model = build_model("cnn_tiny", (1, 8, 8), 3)
    teacher = python_teacher_key(model, bundle)

    def key(teacher_key=teacher, data=bundle, views=2, fp16=False, precision="fp32"):
        return image_cache.cache_key(teacher_key, data, views, fp16, precision)

    base = key()
    assert key() == base == key(python_teacher_key(model, _bundle(npz)))  # the same inputs, the same key

    other_weights = build_model("cnn_tiny", (1, 8, 8), 3)
    with torch.no_grad():
        other_weights.load_state_dict(model.state_dict())
        next(other_weights.parameters()).add_(0.01)
    # the same data at the same path, its rows reordered: the file's contents decide the key
    arrays = dict(np.load(npz))
    order = np.random.default_rng(1).permutation(len(arrays["x_train"]))
    reordered = tmp_path / "reordered.npz"
    np.savez(reordered, **{**arrays, "x_train": arrays["x_train"][order], "y_train": arrays["y_train"][order]})
    reordered.replace(npz)  # same path, other contents
    changes = {
        "weights": key(python_teacher_key(other_weights, bundle)),
        "code": key(python_teacher_key(Doubled(model), bundle)),
        "preprocessing": key(file_teacher_key(teacher, "onnx", "raw")),
        "data": key(data=_bundle(npz)),
        "transform": key(data=_bundle(tmp_path / "blobs.npz", crop_padding=1)),
        "views": key(views=3),
        "storage": key(fp16=True),
        "precision": key(precision="bf16"),
    }
    assert base not in changes.values(), {k: v for k, v in changes.items() if v == base}
    assert len(set(changes.values())) == len(changes)


@pytest.fixture
def text_data(tmp_path, tiny_lm):
    from transformers import AutoTokenizer

    from distillab.data.text import build_text

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm, local_files_only=True)
    folder = write_corpus(tmp_path / "corpus")

    def build():
        spec = DataSpec(dataset="text_folder", path=folder, context_length=16, val_size=0.15, test_size=0.15)
        return build_text(spec, tokenizer, "tiny")

    return folder, build


def test_the_text_cache_key_changes_with_each_input_that_changes_the_outputs(text_data):
    folder, build = text_data
    data = build()

    def key(checksum="teacher-a", data=data, temperature=1.0, precision="fp32", selection="top_k"):
        return text_cache.cache_key(checksum, data, temperature, precision, selection)

    base = key()
    assert key(data=build()) == base
    book = next(folder.glob("*.txt"))
    book.write_text(book.read_text().replace("the", "a"))  # the same folder, edited text
    changes = {"teacher": key("teacher-b"), "data": key(data=build()), "temperature": key(temperature=2.0),
               "precision": key(precision="bf16"), "selection": key(selection="sampled")}
    assert base not in changes.values(), {k: v for k, v in changes.items() if v == base}
    assert len(set(changes.values())) == len(changes)


def test_a_trained_teachers_key_follows_the_data_contents(tmp_path):
    """A teacher distillab trains is cached by its spec and by the training data's contents: a
    data file replaced at the same path trains a new teacher."""
    from distillab.experiment.teacher import _trained_teacher_key
    from distillab.spec_io import parse_spec

    npz = make_blobs_npz(tmp_path / "blobs.npz")
    spec = {"name": "t", "data": {"dataset": "npz", "path": str(npz)}, "teacher": {"model": "cnn_tiny"},
            "student": {"model": "mlp"}, "strategy": {"name": "response"}}
    before = _trained_teacher_key(parse_spec(spec), 0)
    assert _trained_teacher_key(parse_spec(spec), 0) == before
    make_blobs_npz(tmp_path / "other.npz", seed=1).replace(npz)
    assert _trained_teacher_key(parse_spec(spec), 0) != before
