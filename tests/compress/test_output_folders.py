"""Every command that writes a folder (export, package, prune, qat) writes only where it may:
never into its input run, a folder above it, the working folder, or a user's folder, with or
without --overwrite; --overwrite replaces only an earlier output of the same command."""

import os

import pytest
from conftest import finished_cnn_run
from typer.testing import CliRunner

from distillab.cli import app

runner = CliRunner()
COMMANDS = {
    "export": [],
    "package": [],
    "prune": ["--steps", "1", "--epochs-per-step", "1"],
    "qat": ["--epochs", "1"],
}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder holding a finished run, a user's notes and code."""
    folder = tmp_path_factory.mktemp("project")
    run_dir = finished_cnn_run(folder, seeds=(0,), epochs=1)
    (folder / "precious.txt").write_text("mine")
    (folder / "code").mkdir()
    (folder / "code" / "main.py").write_text("print('hello')")
    (run_dir / "my_notes.txt").write_text("notes")
    return folder, run_dir


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("target", [".", "run", "code", "project"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_over_the_input_or_a_users_folder_is_refused_and_nothing_is_deleted(project, command, target,
                                                                                       overwrite):
    folder, run_dir = project
    before = _snapshot(folder)
    out = {".": ".", "run": str(run_dir), "code": str(folder / "code"), "project": str(folder)}[target]
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        result = runner.invoke(app, [command, str(run_dir), "--out", out, *COMMANDS[command],
                                     *(["--overwrite"] if overwrite else [])])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and ("refusing" in result.output or "input" in result.output)
    assert _snapshot(folder) == before


def test_overwrite_replaces_an_earlier_output_of_the_same_command_only(project, tmp_path):
    folder, run_dir = project
    out = tmp_path / "exported"
    assert runner.invoke(app, ["export", str(run_dir), "--out", str(out)]).exit_code == 0
    again = runner.invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--overwrite"]).exit_code == 0
    # a package may not replace an export, and an export with a user's file in it is not replaced
    other = runner.invoke(app, ["package", str(run_dir), "--out", str(out), "--overwrite"])
    assert other.exit_code == 2 and "not an earlier `distillab package` output" in other.output
    (out / "notes.txt").write_text("mine")
    mixed = runner.invoke(app, ["export", str(run_dir), "--out", str(out), "--overwrite"])
    assert mixed.exit_code == 2 and "notes.txt" in mixed.output and (out / "notes.txt").read_text() == "mine"


def test_a_one_seed_run_packages_and_its_card_says_why_it_has_no_p_value(project, tmp_path):
    _, run_dir = project
    result = runner.invoke(app, ["package", str(run_dir), "--out", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    card = (tmp_path / "pkg" / "MODEL_CARD.md").read_text()
    assert "no p-value with one seed" in card and "Inconclusive" in card
