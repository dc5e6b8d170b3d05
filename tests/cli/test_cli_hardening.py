"""A careless user or an attacker on the CLI (issue: hardening). Every case exits with code 2
and one line that names the problem, leaves no run folder behind, and touches none of the
user's files."""

import json
import os
import zlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from distillab.cli import app
from distillab.experiment.folders import default_out_dir
from distillab.models.loading import save_model
from distillab.models.zoo import build_model
from conftest import tiny_spec

runner = CliRunner()


def snapshot(folder: Path) -> dict:
    """path -> (size, mtime, mode) of everything under ``folder``."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode) for p in folder.rglob("*")
            if not p.is_fifo()}


def refused(tmp_path, args, *needles, cwd=None):
    """Run the CLI; assert exit 2, one error line naming every needle, nothing created or changed."""
    before = snapshot(tmp_path)
    old = os.getcwd()
    os.chdir(cwd or tmp_path)
    try:
        result = runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and output.strip().endswith(errors[0]), output
    for needle in needles:
        assert needle in errors[0], output
    assert snapshot(tmp_path) == before, "files were created or changed"
    return errors[0]


def spec_file(tmp_path, spec: dict, name="spec.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


def yaml_file(tmp_path, text: str | bytes) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def run_and_validate_refuse(tmp_path, spec_path, *needles):
    refused(tmp_path, ["validate", spec_path], *needles)
    refused(tmp_path, ["run", spec_path, "--out", tmp_path / "out"], *needles)


# ---------------------------------------------------------------- 1. data loss
def test_a_folder_that_is_not_a_run_is_never_replaced(tmp_path, blobs, tiny_teacher):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "thesis.txt").write_text("four years of work")
    spec = spec_file(tmp_path, tiny_spec(blobs, tiny_teacher))
    refused(tmp_path, ["run", spec, "--out", folder], "not empty", "holds no distillab run")
    refused(tmp_path, ["run", spec, "--out", folder, "--overwrite"], "holds no distillab run")
    assert (folder / "thesis.txt").read_text() == "four years of work"


def test_a_user_folder_named_like_a_partial_is_never_removed(tmp_path, blobs, tiny_teacher):
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("mine")
    refused(tmp_path, ["run", spec_file(tmp_path, tiny_spec(blobs, tiny_teacher)), "--out", tmp_path / "out"],
            "out.partial", "not an unfinished distillab run")


def test_overwrite_replaces_only_a_finished_run(tmp_path, blobs, tiny_teacher):
    spec = spec_file(tmp_path, tiny_spec(blobs, tiny_teacher, training={"epochs": 1, "seeds": [0]}))
    out = tmp_path / "out"
    assert runner.invoke(app, ["run", str(spec), "--out", str(out)]).exit_code == 0
    first = (out / "report.json").read_text()
    refused(tmp_path, ["run", spec, "--out", out], "already holds a finished run")
    result = runner.invoke(app, ["run", str(spec), "--out", str(out), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "report.json").read_text() != first  # a new run (a new timestamp) took its place
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out"]


@pytest.mark.parametrize("name, expected", [
    ("../escaped_by_name", "escaped_by_name"), ("/some/existing/folder", "some-existing-folder"),
    ("..", "distillation"), ("Résumé 📈 run", "resume-run"), (".hidden", "hidden"),
])
def test_default_folders_are_safe_slugs_under_runs(name, expected):
    assert default_out_dir(name) == Path("runs") / expected


def test_a_name_that_climbs_out_of_runs_stays_inside(tmp_path, blobs, tiny_teacher):
    work = tmp_path / "work"
    work.mkdir()
    spec = spec_file(tmp_path, tiny_spec(blobs, tiny_teacher, name="../escaped_by_name",
                                         training={"epochs": 1, "seeds": [0]}))
    old = os.getcwd()
    os.chdir(work)
    try:
        result = runner.invoke(app, ["run", str(spec)])
    finally:
        os.chdir(old)
    assert result.exit_code == 0, result.output
    assert (work / "runs" / "escaped_by_name" / "report.json").is_file()
    assert not (tmp_path / "escaped_by_name").exists()


# ---------------------------------------------------------------- 2. tracebacks
def test_yaml_that_is_not_utf8(tmp_path):
    run_and_validate_refuse(tmp_path, yaml_file(tmp_path, b"name: caf\xe9\n"), "not UTF-8")


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_documents_nested_100000_deep(tmp_path, suffix):
    path = tmp_path / f"deep.{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000)
    run_and_validate_refuse(tmp_path, path, "nested")


def test_model_args_nested_3000_deep(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, student={"model": "mlp", "model_args": "DEEP"})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec).replace('"DEEP"', '{"x": ' * 3000 + "{}" + "}" * 3000))
    run_and_validate_refuse(tmp_path, path, "nested more than")


@pytest.mark.parametrize("seed", ["18446744073709551616", "-10000000000000000000"])
def test_seeds_that_overflow(tmp_path, blobs, tiny_teacher, seed):
    spec = json.dumps(tiny_spec(blobs, tiny_teacher)).replace('"seeds": [0, 1]', f'"seeds": [{seed}]')
    path = tmp_path / "spec.json"
    path.write_text(spec)
    run_and_validate_refuse(tmp_path, path, "training.seeds.0")


def test_a_name_with_a_nul_byte(tmp_path, blobs, tiny_teacher):
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, tiny_spec(blobs, tiny_teacher, name="a\x00b")),
                            "name", "U+0000")


def test_out_dot_the_current_folder(tmp_path, blobs, tiny_teacher):
    refused(tmp_path, ["run", spec_file(tmp_path, tiny_spec(blobs, tiny_teacher)), "--out", "."],
            "holds no distillab run")


def test_out_naming_a_regular_file(tmp_path, blobs, tiny_teacher):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n1,2\n")
    refused(tmp_path, ["run", spec_file(tmp_path, tiny_spec(blobs, tiny_teacher)), "--out", target],
            "is not a folder")
    assert target.read_text() == "a,b\n1,2\n"


def test_out_under_an_unwritable_location(tmp_path, blobs, tiny_teacher):
    refused(tmp_path, ["run", spec_file(tmp_path, tiny_spec(blobs, tiny_teacher)), "--out", "/proc/distillab/run"],
            "cannot create the run folder")


def test_negative_hidden_size(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, student={"model": "mlp", "model_args": {"hidden": [-1]}})
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, spec), "student.model_args")


# ---------------------------------------------------------------- 3. accepted, but should not be
def test_duplicate_yaml_keys(tmp_path):
    run_and_validate_refuse(tmp_path, yaml_file(tmp_path, "name: a\nname: b\n"), "duplicate key 'name'")


def test_duplicate_json_keys(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{"name": "a", "name": "b"}')
    run_and_validate_refuse(tmp_path, path, "duplicate key 'name'")


@pytest.mark.parametrize("key, value, needle", [
    ("epochs", True, "training.epochs"), ("batch_size", 32.0, "training.batch_size"),
    ("lr", True, "training.lr"), ("amp", 1, "training.amp"),
])
def test_booleans_and_numbers_are_not_interchangeable(tmp_path, blobs, tiny_teacher, key, value, needle):
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, tiny_spec(blobs, tiny_teacher, training={key: value})),
                            needle)


@pytest.mark.parametrize("model, args, needle", [
    ("mlp", {"hiden": [16]}, "hiden"),
    ("mlp", {"hidden": [-5]}, "student.model_args"),
    ("mlp", {"dropout": 5}, "dropout"),
    ("resnet", {"depth": 9}, "depth must be 6n+2"),
    # zero widths, and structures too long to build or that pool an 8x8 input away
    ("mlp", {"hidden": [0]}, "hidden[0]: 0 is out of range"),
    ("wrn", {"widen_factor": 0}, "widen_factor: 0 is out of range"),
    ("resnet", {"width": 0}, "width: 0 is out of range"),
    ("cnn", {"stages": [[0]]}, "stages[0][0]: 0 is out of range"),
    ("cnn", {"stages": [[4]] * 5}, "leaves nothing of a 8x8 input"),
    ("mlp", {"hidden": [1] * 100_000}, "at most 64 layers"),
    ("resnet", {"depth": 60002, "width": 1}, "depth: 60002 is out of range"),
])
def test_model_args_are_checked_by_building_the_model(tmp_path, blobs, tiny_teacher, model, args, needle):
    spec = tiny_spec(blobs, tiny_teacher, student={"model": model, "model_args": args})
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, spec), needle)


def test_a_teacher_with_nan_weights(tmp_path, blobs):
    model = build_model("cnn_tiny", (1, 8, 8), 3)
    with torch.no_grad():
        model.classifier.weight[0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    save_model(model, path)
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, tiny_spec(blobs, path)), "classifier.weight", "NaN")


def test_too_many_seeds(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": list(range(10_000))})
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, spec), "training.seeds", "at most 100")


# ---------------------------------------------------------------- 4. hangs and memory bombs
def test_billion_laughs(tmp_path):
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for index in range(1, 10):
        previous = chr(ord("a") + index - 1)
        lines.append(f"{chr(ord('a') + index)}: &{chr(ord('a') + index)} [{', '.join(['*' + previous] * 9)}]")
    text = "name: bomb\nstudent:\n  model: mlp\n  model_args:\n" + "\n".join("    " + line for line in lines) + "\n"
    run_and_validate_refuse(tmp_path, yaml_file(tmp_path, text), "aliases")


def test_a_million_seeds(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": list(range(1_000_000))})
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, spec), "bytes; a spec may have at most")  # 7.9 MB of seeds


def test_a_giant_model_is_refused_without_allocating_it(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, student={"model": "mlp", "model_args": {"hidden": [1_000_000_000]}})
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, spec), "student.model_args", "parameters")


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_nan_and_infinite_floats(tmp_path, blobs, tiny_teacher, value):
    text = json.dumps(tiny_spec(blobs, tiny_teacher))
    path = yaml_file(tmp_path, text[:-1] + f', "constraints": {{"max_duration_s": {value}}}}}'.replace('"', "'"))
    run_and_validate_refuse(tmp_path, path, "constraints.max_duration_s")


# ---------------------------------------------------------------- 9. data files
def test_a_fifo_as_data_path(tmp_path, tiny_teacher):
    fifo = tmp_path / "data.npz"
    os.mkfifo(fifo)
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, tiny_spec(fifo, tiny_teacher)), "not a regular file")


def _png(path: Path, width: int, height: int) -> None:
    """A valid 1-bit PNG of zeros: a few kilobytes on disk, width x height pixels decoded."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    data = zlib.compress(row * height, 9)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_a_decompression_bomb_in_an_image_folder(tmp_path, tiny_teacher):
    for split in ("train", "test"):
        (tmp_path / "images" / split / "cat").mkdir(parents=True)
    _png(tmp_path / "images" / "train" / "cat" / "bomb.png", 5_000, 5_000)
    _png(tmp_path / "images" / "test" / "cat" / "small.png", 8, 8)
    spec = tiny_spec(tmp_path / "images", tiny_teacher, data={"dataset": "image_folder"})
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, spec), "bomb.png", "pixels")


def _npz(tmp_path, name, **arrays):
    rng = np.random.default_rng(0)
    base = {"x_train": rng.integers(0, 255, (40, 8, 8)).astype(np.uint8), "y_train": np.arange(40) % 3,
            "x_test": rng.integers(0, 255, (10, 8, 8)).astype(np.uint8), "y_test": np.arange(10) % 3}
    base.update(arrays)
    path = tmp_path / name
    np.savez(path, **base)
    return path


@pytest.mark.parametrize("arrays, needle", [
    ({"y_train": np.full(40, 10**9)}, "at most 100,000 classes"),
    ({"y_train": np.zeros((40, 2), np.int64)}, "one label per row"),
    ({"x_test": np.zeros((10, 9, 9), np.uint8)}, "must match"),
    ({"y_train": np.arange(39) % 3}, "x_train has 40 rows but y_train has 39"),
    ({"x_train": np.ones((40, 8, 8), np.complex64)}, "imaginary part would be lost"),
    ({"x_train": np.array([np.ones(3)] * 40, dtype=object)}, "cannot be read"),
    ({"y_train": np.full(40, 1.5)}, "whole-number class labels"),
    ({"y_test": -(np.arange(10) % 3)}, "labels must be >= 0"),
])
def test_bad_npz_files(tmp_path, tiny_teacher, arrays, needle):
    path = _npz(tmp_path, "bad.npz", **arrays)
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, tiny_spec(path, tiny_teacher)), needle)


def test_a_safetensors_teacher_with_wrong_shapes(tmp_path, blobs):
    path = tmp_path / "wide.safetensors"
    save_model(build_model("cnn_tiny", (1, 8, 8), 3), path)
    spec = tiny_spec(blobs, path, teacher={"model": "cnn", "model_args": {"stages": [[8], [8]]}})
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, spec), "does not fit the architecture")


def test_mixing_with_a_strategy_that_needs_the_true_class(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, data={"augment": {"mix": "mixup"}}, strategy={"name": "dkd"})
    run_and_validate_refuse(tmp_path, spec_file(tmp_path, spec), "data.augment.mix", "dkd")


# ---------------------------------------------------------------- 4. configuration and odd inputs
def test_layers_with_model_args_nested_10000_deep(tmp_path):
    refused(tmp_path, ["layers", "resnet", "--model-args", "[" * 10_000 + "]" * 10_000], "--model-args", "not valid")


def test_a_sweep_with_negative_trials_leaves_nothing(tmp_path, blobs, tiny_teacher):
    spec = spec_file(tmp_path, tiny_spec(blobs, tiny_teacher))
    result = runner.invoke(app, ["sweep", str(spec), "--out", str(tmp_path / "sweep"), "--range",
                                 "strategy.params.alpha=0.1:0.9", "--trials", "-1"])
    assert result.exit_code == 2 and "--trials" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("url, needle", [
    ("postgresql+psycopg://user:password@127.0.0.1:1/none", "Connection refused"),
    ("postgresql+psycopg://user:password@127.0.0.1:port/none", "invalid literal"),
])
def test_users_add_with_an_unreachable_database_is_a_clear_error(tmp_path, monkeypatch, url, needle):
    monkeypatch.setenv("DISTILLAB_DATABASE_URL", url)
    monkeypatch.setenv("DISTILLAB_DATA_DIR", str(tmp_path.parent / f"{tmp_path.name}-data"))  # outside the check
    refused(tmp_path, ["users", "add", "bob"], "cannot open the service database", needle)


def test_a_folder_or_a_fifo_named_as_the_spec(tmp_path):
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    refused(tmp_path, ["validate", tmp_path / "folder"], "a folder, not a spec file")
    refused(tmp_path, ["validate", tmp_path / "fifo"], "not a regular file")
