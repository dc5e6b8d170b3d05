"""Relative paths in a spec file are the file's, not the working folder's; a path that is
missing is named resolved; exporting a finished run's student needs no teacher file."""

import shutil

import yaml
from conftest import tiny_spec
from typer.testing import CliRunner

from distillab.cli import app
from distillab.spec_io import load_spec

runner = CliRunner()


def _spec_in_folder(tmp_path, blobs, tiny_teacher):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    shutil.copy(tiny_teacher, tmp_path / "project" / "teacher.safetensors")
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": [0], "epochs": 1})
    spec["data"]["path"] = "../../blobs.npz"  # blobs live in tmp_path
    spec["teacher"]["checkpoint"] = "../teacher.safetensors"
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_spec_runs_from_any_folder_and_exports_without_its_teacher(tmp_path, blobs, tiny_teacher, monkeypatch):
    spec_path = _spec_in_folder(tmp_path, blobs, tiny_teacher)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_spec(spec_path)
    assert spec.teacher.checkpoint == tmp_path / "project" / "teacher.safetensors"
    result = runner.invoke(app, ["run", str(spec_path), "--out", "run"])
    assert result.exit_code == 0, result.output
    (tmp_path / "project" / "teacher.safetensors").unlink()
    result = runner.invoke(app, ["export", "run", "--out", "exported"])
    assert result.exit_code == 0, result.output
    assert (elsewhere / "exported" / "model.onnx").is_file()


def test_a_missing_relative_path_is_named_resolved_without_union_noise(tmp_path, blobs, tiny_teacher, monkeypatch):
    spec_path = _spec_in_folder(tmp_path, blobs, tiny_teacher)
    (tmp_path / "project" / "teacher.safetensors").unlink()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", str(spec_path)])
    assert result.exit_code == 2
    assert str(tmp_path / "project" / "teacher.safetensors") in result.output
    assert "valid list" not in result.output
