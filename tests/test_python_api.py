"""The Python API: a user's own nn.Modules on tensors, a Dataset or a DataLoader, through the
one engine; custom losses and strategies; resume; the spec path and the Python path agree."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distillab import Distiller, compare
from distillab.engine.loop import Stop
from distillab.errors import DataError, SpecError
from distillab.experiment.run import run
from distillab.models.loading import load_state_into
from distillab.models.zoo import build_model
from distillab.strategies import STRATEGIES
from distillab.strategies.base import StepOutput, Strategy

from conftest import make_blobs_npz, tiny_spec


def blobs_tensors(tmp_path, n_train=240):
    data = np.load(make_blobs_npz(tmp_path / "b.npz", n_train=n_train))
    def split(kind):
        x = torch.tensor(data[f"x_{kind}"], dtype=torch.float32).unsqueeze(1) / 255  # (N, 1, 8, 8)
        return x, torch.tensor(data[f"y_{kind}"], dtype=torch.long)
    return split("train"), split("test")


class Teacher(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(32, classes)

    def forward(self, x):  # (B, 1, 8, 8) -> (B, classes)
        return self.head(self.body(x))


class Student(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.out = nn.Linear(16, classes)

    def forward(self, x):
        return self.out(self.hidden(x))


class BlobDataset(Dataset):
    """A user's map-style Dataset: items are (image, label) pairs."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.fixture
def trained_teacher(tmp_path):
    (x, y), _ = blobs_tensors(tmp_path)
    torch.manual_seed(0)
    return _fitted(Teacher(), x, y)


def _fitted(teacher, x, y):
    optimizer = torch.optim.Adam(teacher.parameters(), 1e-2)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(teacher(x), y).backward()
        optimizer.step()
    return teacher.eval()


def test_user_models_on_a_dataset_end_to_end(tmp_path, trained_teacher):
    (x, y), (x_test, y_test) = blobs_tensors(tmp_path)
    torch.manual_seed(0)
    distiller = Distiller(trained_teacher, Student(), temperature=4.0, alpha=0.9, lr=1e-2, batch_size=32)
    history = distiller.fit(BlobDataset(x, y), epochs=4)
    assert len(history.epochs) == 4 and len(history.history["val_accuracy"]) == 4
    assert history.best_val == max(history.history["val_accuracy"])  # selected on validation
    metrics = distiller.evaluate(BlobDataset(x_test, y_test))
    assert metrics["accuracy"] > 0.6  # three easy classes; chance is 1/3
    # distiller.student is the trained module, holding the selected weights
    logits = distiller.student.eval()(x_test)
    assert (logits.argmax(-1) == y_test).float().mean().item() == pytest.approx(metrics["accuracy"])


def test_a_dataloader_with_its_own_collate(tmp_path, trained_teacher):
    (x, y), _ = blobs_tensors(tmp_path)
    seen = []

    def collate(items):  # the user's collate: a dict, as Hugging Face loaders yield
        seen.append(len(items))
        return {"inputs": torch.stack([i[0] for i in items]), "targets": torch.tensor([i[1] for i in items])}

    train = DataLoader(BlobDataset(x[:200], y[:200]), batch_size=25, shuffle=True, collate_fn=collate)
    val = DataLoader(BlobDataset(x[200:], y[200:]), batch_size=40, collate_fn=collate)
    history = Distiller(trained_teacher, Student(), lr=1e-2).fit(train, val_data=val, epochs=2)
    assert len(history.epochs) == 2
    assert 25 in seen and 40 in seen  # the user's batch sizes, through the user's collate


def test_plain_tensors_use_the_teacher_cache(tmp_path, trained_teacher, private_cache):
    (x, y), (x_test, y_test) = blobs_tensors(tmp_path)
    # fp32: on a CPU with native bf16, precision "auto" would fill the cache under bf16 autocast
    Distiller(trained_teacher, Student(), lr=1e-2, precision="fp32").fit((x, y), epochs=2)
    filled = list((private_cache / "teacher_outputs").glob("*/logits.npy"))
    assert len(filled) == 1
    cached = torch.from_numpy(np.load(filled[0]))  # (views, rows, K): the teacher's logits of every row
    assert torch.allclose(cached[0], trained_teacher(x), atol=1e-5)


def test_a_custom_loss_callable(tmp_path, trained_teacher):
    (x, y), _ = blobs_tensors(tmp_path)
    calls = []

    def loss(student_logits, teacher_logits, targets):
        calls.append(teacher_logits.shape)
        return nn.functional.mse_loss(student_logits, teacher_logits)  # logit matching (Ba & Caruana)

    torch.manual_seed(0)
    student = Student()
    with torch.no_grad():
        gap_before = nn.functional.mse_loss(student(x), trained_teacher(x)).item()
    distiller = Distiller(trained_teacher, student, loss=loss, lr=1e-2, batch_size=16)
    history = distiller.fit((x, y), epochs=8)
    assert calls and calls[0][-1] == 3
    assert history.history["train_loss"][-1] < 0.8 * history.history["train_loss"][0]
    with torch.no_grad():
        gap_after = nn.functional.mse_loss(distiller.student(x), trained_teacher(x)).item()
    assert gap_after < 0.5 * gap_before  # the student's logits moved to the teacher's, as the loss asked


class Agreement(Strategy):
    """A user's strategy: cross-entropy towards the teacher's argmax (hard pseudo-labels)."""

    summary = "pseudo-labels"
    paper = "-"

    def loss(self, batch):
        pseudo = self.teacher_logits(batch).mean(0).argmax(-1)  # (B,)
        student_logits = self.student(batch["inputs"])
        return StepOutput(nn.functional.cross_entropy(student_logits, pseudo), student_logits)


def test_a_custom_strategy_subclass(tmp_path, trained_teacher):
    (x, y), _ = blobs_tensors(tmp_path)
    torch.manual_seed(0)
    distiller = Distiller(trained_teacher, Student(), strategy=Agreement, lr=1e-2)
    distiller.fit((x, y), epochs=6)
    agreement = (distiller.student(x).argmax(-1) == trained_teacher(x).argmax(-1)).float().mean().item()
    assert agreement > 0.8


def test_resume_with_user_models(tmp_path, trained_teacher):
    (x, y), _ = blobs_tensors(tmp_path)

    class StopAfter:
        def __init__(self, epochs):
            self.epochs = epochs

        def on_epoch_start(self, epoch, steps): ...
        def on_step(self, epoch, step, metrics): ...
        def close(self): ...

        def on_epoch_end(self, epoch, metrics):
            if epoch + 1 == self.epochs:
                raise Stop("interrupted")

    torch.manual_seed(0)
    interrupted = Distiller(trained_teacher, Student(), lr=1e-2)
    with pytest.raises(Stop):
        interrupted.fit((x, y), epochs=4, run_dir=tmp_path / "run", callbacks=[StopAfter(2)])
    history = interrupted.fit((x, y), epochs=4, run_dir=tmp_path / "run", resume=True)
    assert [h["epoch"] for h in history.epochs] == [1, 2, 3, 4]

    torch.manual_seed(0)
    straight = Distiller(trained_teacher, Student(), lr=1e-2)
    straight_history = straight.fit((x, y), epochs=4)
    assert history.history["val_accuracy"] == straight_history.history["val_accuracy"]
    for a, b in zip(interrupted.student.state_dict().values(), straight.student.state_dict().values()):
        assert torch.equal(a, b)


def test_the_spec_path_and_the_python_path_give_identical_reports(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, name="same", training={"epochs": 2, "seeds": [0, 1], "lr": 0.01})
    spec["output"] = {"tensorboard": False, "latency_repeats": 2}
    from_spec = run(spec, tmp_path / "spec").data
    teacher = load_state_into(build_model(spec["teacher"]["model"], (1, 8, 8), 3), tiny_teacher, "teacher")
    student = spec["student"]
    from_python = compare(teacher, lambda: build_model(student["model"], (1, 8, 8), 3, student["model_args"]),
                          spec["data"], seeds=[0, 1], epochs=2, lr=0.01, batch_size=32, cache_views=2,
                          out_dir=tmp_path / "python", name="same", latency_repeats=2).data
    for key in ("dataset", "seeds", "strategy", "comparisons", "verdict"):
        assert from_python[key] == from_spec[key], key
    for a, b in zip(from_python["models"], from_spec["models"]):
        for key in ("role", "accuracy", "val_accuracy", "curves", "train_loss_curves", "params", "macs"):
            assert a.get(key) == b.get(key), (a["role"], key)
    assert json.loads((tmp_path / "python" / "report.json").read_text())["spec"]["data"] == \
        {"dataset": spec["data"]}


def test_compare_with_user_models_writes_the_report(tmp_path, trained_teacher):
    (x, y), (x_test, y_test) = blobs_tensors(tmp_path)
    report = compare(trained_teacher, lambda: Student(), (x, y), (x_test, y_test), seeds=[0, 1], epochs=2,
                     lr=1e-2, out_dir=tmp_path / "cmp", latency_repeats=2)
    assert [m["role"] for m in report.models] == ["teacher", "scratch", "distilled"]
    assert report.models[1]["model"] == "Student" and report.models[0]["model"] == "Teacher"
    assert report.data["comparisons"][0]["n"] == 2
    assert (tmp_path / "cmp" / "report.md").exists() and (tmp_path / "cmp" / "curves.png").exists()


class SmallCNN(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("name", [n for n, cls in STRATEGIES.items()
                                  if n != "none" and (cls.tasks is None or "image_classification" in cls.tasks)])
def test_every_registry_strategy_takes_user_models(tmp_path, name):
    (x, y), (x_test, y_test) = blobs_tensors(tmp_path, n_train=120)
    # spatial attention needs feature maps; adaptive_v2 needs a 3x3 convolution to make dynamic
    student_cls = SmallCNN if name in ("attention", "adaptive_v2") else Student
    torch.manual_seed(0)
    teacher = [Teacher(), Teacher()] if name == "multi_teacher" else Teacher()
    if STRATEGIES[name].stages(STRATEGIES[name].Params()):  # several models in stages: compare builds them
        report = compare(_fitted(teacher, x, y), student_cls, (x, y), (x_test, y_test), seeds=[0], epochs=2,
                         strategy=name,
                         out_dir=tmp_path / "c", latency_repeats=1, plots=False)
        assert report.model("distilled")["strategy"] == name
        return
    # on 8x8 inputs a dynamic layer's router costs more than adaptive_v2's default 1.1x MAC budget
    params = {"max_macs_ratio": 10} if name == "adaptive_v2" else None
    distiller = Distiller(teacher, student_cls(), strategy=name, strategy_params=params)
    history = distiller.fit((x, y), epochs=4)
    assert len(history.epochs) == 4 and all(math.isfinite(v) for v in history.history["train_loss"])
    assert distiller.deployed is not None


# ---- bad input: each error names the argument


def test_a_student_with_another_output_size(tmp_path, trained_teacher):
    (x, y), _ = blobs_tensors(tmp_path)
    with pytest.raises(DataError, match=r"^student: outputs 5 values per sample but teacher outputs 3"):
        Distiller(trained_teacher, Student(classes=5)).fit((x, y), epochs=1)


def test_a_dataloader_yielding_something_else(tmp_path, trained_teacher):
    (x, y), _ = blobs_tensors(tmp_path)
    triples = DataLoader([(x[i], y[i], i) for i in range(64)], batch_size=16)
    with pytest.raises(DataError, match=r"^train_data: each batch must be \(inputs, targets\).*a list of 3"):
        Distiller(trained_teacher, Student()).fit(triples, val_data=triples, epochs=1)
    no_targets = DataLoader([{"inputs": x[i], "label": y[i]} for i in range(64)], batch_size=16)
    with pytest.raises(DataError, match=r"^train_data: a batch dict needs 'inputs' and 'targets'.*'label'"):
        Distiller(trained_teacher, Student()).fit(no_targets, val_data=no_targets, epochs=1)


def test_a_teacher_on_another_device(trained_teacher):
    with pytest.raises(SpecError, match=r"^teacher: its weights are on meta but the student's are on cpu"):
        Distiller(Teacher().to("meta"), Student())


def test_the_training_arguments_are_checked_alike_in_every_entry_point(tmp_path, trained_teacher):
    """Distiller, train and compare share one set of training arguments: a misspelt one and a bad
    value are the same error, naming the argument, before anything trains."""
    from distillab import train

    with pytest.raises(SpecError, match=r"^lrr: not a training argument \(did you mean: lr\?\)"):
        Distiller(trained_teacher, Student(), lrr=0.1)
    with pytest.raises(SpecError, match=r"^lrr: not a training argument"):
        train(Student(), *blobs_tensors(tmp_path)[:1], lrr=0.1)
    with pytest.raises(SpecError, match=r"^lrr: not a training argument"):
        compare(trained_teacher, lambda: Student(), *blobs_tensors(tmp_path), lrr=0.1)
    with pytest.raises(SpecError, match=r"^batch_size: Input should be greater than or equal to 1"):
        Distiller(trained_teacher, Student(), batch_size=0)
    with pytest.raises(SpecError, match=r"^optimizer: Input should be 'adamw' or 'sgd'"):
        train(Student(), *blobs_tensors(tmp_path)[:1], optimizer="lion")


def test_objects_that_are_not_modules(tmp_path, trained_teacher):
    with pytest.raises(SpecError, match=r"^teacher: expected a torch.nn.Module, got str"):
        Distiller("resnet", Student())
    with pytest.raises(SpecError, match=r"^student: expected a torch.nn.Module, got type \(a class\?"):
        Distiller(trained_teacher, Student)
    with pytest.raises(SpecError, match=r"^student: compare trains a fresh student"):
        compare(trained_teacher, Student(), *blobs_tensors(tmp_path))


def test_an_empty_dataset(trained_teacher):
    with pytest.raises(DataError, match=r"^train_data: the Dataset is empty"):
        Distiller(trained_teacher, Student()).fit(BlobDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0)), epochs=1)


def test_a_layer_name_that_does_not_exist(tmp_path, trained_teacher):
    (x, y), _ = blobs_tensors(tmp_path)
    distiller = Distiller(trained_teacher, Student(), strategy="feature",
                          strategy_params={"pairs": [["hiden", "body"]]})
    with pytest.raises(SpecError, match=r"^strategy_params.pairs\[0\] \(student\): no layer named 'hiden' in Student "
                                        r"\(did you mean: hidden"):
        distiller.fit((x, y), epochs=1)
    distiller = Distiller(trained_teacher, Student(), strategy="feature", strategy_params={"pairs": [["zzz", "body"]]})
    with pytest.raises(SpecError, match=r"no layer named 'zzz' in Student; choose from: hidden, hidden.0, "):
        distiller.fit((x, y), epochs=1)


def test_alpha_for_a_strategy_without_one():
    with pytest.raises(SpecError, match=r"^alpha: the feature strategy has no alpha parameter \(its parameters: pairs, "):
        Distiller(Teacher(), Student(), strategy="feature", alpha=0.5)


_FIT_SCRIPT = """
import sys, torch
from torch import nn
import distillab
torch.manual_seed(0)
X = torch.randn(200, 8); y = (X[:, 0] > 0).long()
teacher = nn.Linear(8, 2); student = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
kwargs = {} if sys.argv[1] == "default" else {"progress": sys.argv[1] == "on"}
distillab.Distiller(teacher, student, cache=False).fit((X, y), epochs=2, **kwargs)
"""


@pytest.mark.integration  # a fresh interpreter per case
@pytest.mark.parametrize("progress, lines", [("default", 2), ("off", 0)])
def test_fit_logs_one_plain_line_per_epoch_by_default(tmp_path, progress, lines):
    """From Python, with no logging configured, fit logs one line per epoch on stderr (outside a
    terminal: no live bar, no blank lines); progress=False is quiet."""
    script = tmp_path / "fit.py"
    script.write_text(_FIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), progress], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    epoch_lines = [line for line in done.stderr.splitlines() if "fit epoch" in line]
    assert len(epoch_lines) == lines, done.stderr
    assert all("distillab:" in line and "val acc" in line for line in epoch_lines)
    if lines:
        assert "fit epoch 1/2" in epoch_lines[0] and "fit epoch 2/2" in epoch_lines[1]
        assert not [line for line in done.stderr.splitlines() if not line.strip()], "blank lines outside a terminal"
