"""An unfinished run is never mixed with another spec or thrown away without a flag."""

import json

import pytest
from conftest import StopAt, tiny_spec
from typer.testing import CliRunner

from distillab.cli import app
from distillab.engine.loop import Stop
from distillab.errors import SpecError
from distillab.experiment.run import run

runner = CliRunner()


@pytest.fixture
def stopped(tmp_path, blobs, tiny_teacher):
    """A run stopped in seed 0's distilled phase: its spec, folder and .partial."""
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": [0, 1], "epochs": 3})
    out = tmp_path / "run"
    with pytest.raises(Stop):
        run(spec, out, callbacks=lambda role, seed: [StopAt(1)] if role == "distilled" else [])
    partial = out.with_name("run.partial")
    assert (partial / "seed_0" / "scratch" / "result.json").is_file()
    return spec, out, partial


def _contents(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_new_run_over_an_unfinished_one_is_refused_naming_both_flags(stopped):
    spec, out, partial = stopped
    before = _contents(partial)
    with pytest.raises(SpecError) as error:
        run(spec, out)
    message = str(error.value)
    assert str(partial) in message and "seed 0 scratch" in message and "--resume" in message
    assert "--overwrite" in message
    assert _contents(partial) == before


def test_overwrite_discards_the_unfinished_run_on_purpose(stopped):
    spec, out, partial = stopped
    report = run({**spec, "training": {**spec["training"], "seeds": [0], "epochs": 1}}, out, overwrite=True)
    assert report.out_dir == out and not partial.exists()


@pytest.mark.parametrize("change, key", [
    ({"training": {"epochs": 4}}, "training.epochs"),
    ({"strategy": {"name": "response", "params": {"temperature": 1.0, "alpha": 0.1}}}, "strategy.params.alpha"),
    ({"student": {"model": "mlp", "model_args": {"hidden": [32]}}}, "student.model_args.hidden"),
])
def test_a_resume_under_another_spec_is_refused_and_the_folder_survives(stopped, change, key):
    spec, out, partial = stopped
    before = _contents(partial)
    changed = {**spec}
    for section, value in change.items():
        changed[section] = {**spec[section], **value}
    with pytest.raises(SpecError) as error:
        run(changed, out, resume=True)
    assert key in str(error.value) and "--resume" in str(error.value)
    assert _contents(partial) == before


def test_a_resume_may_change_only_what_changes_no_result(stopped):
    spec, out, partial = stopped
    changed = {**spec, "output": {**spec["output"], "plots": False}, "name": "renamed"}
    report = run(changed, out, resume=True)
    assert report.out_dir == out and not partial.exists()
    saved = json.loads((out / "spec.json").read_text())
    assert saved["training"]["epochs"] == 3


def test_a_failed_resume_removes_nothing(stopped, tmp_path):
    spec, out, partial = stopped
    before = _contents(partial)
    (tmp_path / "teacher.safetensors").unlink()  # the teacher file is gone: the resume cannot start
    with pytest.raises(SpecError):
        run(spec, out, resume=True)
    assert _contents(partial) == before


def test_the_cli_refuses_a_changed_resume_with_exit_2(stopped, tmp_path):
    spec, out, partial = stopped
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    before = _contents(partial)
    result = runner.invoke(app, ["run", str(spec_file), "--out", str(out), "--resume",
                                 "--set", "training.epochs=9"])
    assert result.exit_code == 2 and "training.epochs: 3 -> 9" in result.output
    assert _contents(partial) == before
    result = runner.invoke(app, ["run", str(spec_file), "--out", str(out)])
    assert result.exit_code == 2 and "unfinished run" in result.output
    assert _contents(partial) == before


def test_a_key_added_by_a_newer_version_at_its_default_does_not_block_a_resume():
    from distillab.experiment.folders import spec_differences

    saved = {"data": {"dataset": "austen"}, "output": {"plots": True}}
    newer = {"data": {"dataset": "austen", "mixture": None}, "output": {"plots": True, "draft_prompts": 8}}
    assert spec_differences(saved, newer) == []
    assert spec_differences(saved, {**newer, "data": {"dataset": "austen", "mixture": [{"dataset": "austen"}]}})
