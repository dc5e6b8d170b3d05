"""The shipped Fashion-MNIST teacher: its file matches its recorded facts, and it reaches
the recorded (>= 93.5 %) test accuracy on the real test set."""

import json
from pathlib import Path

import pytest

from distillab import data as data_module
from distillab.tasks.image_classification import evaluate
from distillab.experiment.teacher import get_teachers
from distillab.models.loading import file_checksum
from distillab.spec_io import load_spec

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "teachers" / "fashion_mnist_resnet20.safetensors"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_shipped_teacher_facts_match_the_file():
    facts = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert facts["sha256"] == file_checksum(WEIGHTS)
    assert facts["test_accuracy"] >= 0.935
    assert facts["command"].startswith("distillab teacher configs/fashion_mnist_teacher.yaml")


@pytest.mark.skipif(not FASHION.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_shipped_teacher_reaches_its_recorded_accuracy():
    spec = load_spec(ROOT / "configs" / "fashion_mnist_kd.yaml", [f"teacher.checkpoint={WEIGHTS}"])
    bundle = data_module.build(spec.data, 0)
    ((teacher, _, _),) = get_teachers(spec, bundle)
    accuracy = evaluate(teacher, bundle.test, bundle.normalize).accuracy
    recorded = json.loads(WEIGHTS.with_suffix(".json").read_text())["test_accuracy"]
    assert accuracy >= 0.935
    assert abs(accuracy - recorded) < 1e-3
