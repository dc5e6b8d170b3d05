"""Every run measures its teacher before a student trains: a teacher fed inputs it was not
trained on is found, and the right ``teacher.input`` is suggested; a teacher near chance stops
the run unless the user accepts it; the measurement is cached."""

import json

import numpy as np
import pytest
import torch
from conftest import make_blobs_npz, tiny_spec, trained
from typer.testing import CliRunner

from distillab.cli import app
from distillab.compress.export import write_onnx
from distillab.errors import SpecError
from distillab.experiment.run import run
from distillab.models.zoo import build_model

runner = CliRunner()


def _raw_teacher(folder, fmt):
    """A cnn_tiny trained on the blobs' raw pixel values 0..255 (not normalised), as a black box."""
    arrays = np.load(make_blobs_npz(folder / "blobs.npz"))
    images = torch.from_numpy(arrays["x_train"]).unsqueeze(1).float()
    labels = torch.from_numpy(arrays["y_train"]).long()
    torch.manual_seed(0)
    model = build_model("cnn_tiny", (1, 8, 8), 3)
    model = trained(model, images, labels)
    from distillab.data.transforms import fit_normalize

    normalize = fit_normalize(images)

    class Raw(torch.nn.Module):  # expects raw 0..255 values, normalises them itself
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return self.inner(normalize(x))

    raw = Raw().eval()
    path = folder / ("teacher.onnx" if fmt == "onnx" else "teacher.pt")
    example = torch.zeros(2, 1, 8, 8)
    if fmt == "onnx":
        write_onnx(raw, example, path)
    else:
        torch.jit.trace(raw, example).save(str(path))
    return folder / "blobs.npz", path


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_a_raw_input_teacher_is_found_and_the_setting_suggested(tmp_path, fmt):
    blobs, teacher = _raw_teacher(tmp_path, fmt)
    spec = tiny_spec(blobs, teacher, teacher={"checkpoint": str(teacher)}, training={"seeds": [0], "epochs": 1})
    spec["teacher"].pop("model")
    with pytest.raises(SpecError, match=r"on raw inputs .* set teacher.input: raw"):
        run(spec, tmp_path / "refused")
    assert not (tmp_path / "refused").exists() and not (tmp_path / "refused.partial").exists()
    spec["teacher"]["input"] = "raw"
    report = run(spec, tmp_path / "run")
    assert report.model("teacher")["accuracy"]["mean"] > 0.9
    check = report.data["teacher_check"][0]
    assert check["input"] == "raw" and check["val_accuracy"] > 0.9 and check["other_inputs"]["normalized"] < 0.9


def test_a_teacher_near_chance_stops_the_cli_unless_accepted(tmp_path, blobs):
    torch.manual_seed(3)
    weak = build_model("cnn_tiny", (1, 8, 8), 3)
    with torch.no_grad():
        weak.classifier.weight.zero_()
        weak.classifier.bias.copy_(torch.tensor([0.0, 0.0, 5.0]))  # always one class
    from distillab.models.loading import save_model

    save_model(weak, tmp_path / "weak.safetensors")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec(blobs, tmp_path / "weak.safetensors",
                                              training={"seeds": [0], "epochs": 1})))
    result = runner.invoke(app, ["run", str(spec_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "near chance" in result.output and "--accept-weak-teacher" in result.output
    assert not (tmp_path / "run").exists()
    result = runner.invoke(app, ["run", str(spec_file), "--out", str(tmp_path / "run"), "--accept-weak-teacher"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["teacher_check"][0]["accepted_weak"] and report["spec"]["accept_weak_teacher"] is True


def test_the_teachers_evaluation_is_cached_by_its_key(tmp_path, blobs, tiny_teacher, private_cache):
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": [0], "epochs": 1})
    report = run(spec, tmp_path / "a")
    assert report.data["precision"]["requested"] == "auto" and report.data["precision"]["used"] in ("fp32", "bf16")
    entries = sorted((private_cache / "teacher_eval").iterdir())
    assert len(entries) == 2  # validation and test
    stamps = [entry.stat().st_mtime_ns for entry in entries]
    run(spec, tmp_path / "b")
    assert [entry.stat().st_mtime_ns for entry in sorted((private_cache / "teacher_eval").iterdir())] == stamps
