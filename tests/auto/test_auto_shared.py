"""A search shared by two processes through one study database: both train its trials, no
configuration is trained twice at a rung, and the creator retrains the chosen student."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import optuna
import pytest
from typer.testing import CliRunner

from distillab.cli import app

from test_auto_search import auto_spec


def distillab(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "distillab.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_two_processes_share_one_search(tmp_path, blobs, tiny_teacher):
    # enough first-rung trials (about 15 s) that the joined process, which starts up while the
    # creator measures its latency model, finds work left
    spec = auto_spec(tmp_path, blobs, tiny_teacher, budget={"max_trials": 24},
                     space={"families": ["mlp"], "epochs": [4, 12], "strategies": ["response"]})
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    joined = distillab("auto", "--join", "shared", "--storage", url, "--out", str(tmp_path / "worker"),
                       "--wait", "120")  # started first: it waits for the study
    creator = distillab("auto", str(spec), "--out", str(tmp_path / "main"), "--storage", url, "--study", "shared")
    outputs = {name: process.communicate(timeout=300)[0] for name, process in (("joined", joined),
                                                                               ("creator", creator))}
    assert joined.returncode == 0, outputs["joined"][-2000:]
    assert creator.returncode == 0, outputs["creator"][-2000:]
    study = optuna.load_study(study_name="shared", storage=url)
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len({t.user_attrs["worker"] for t in trained}) == 2  # both processes trained trials
    counts = Counter((t.user_attrs["rung"], t.user_attrs["config"]) for t in trained)
    assert max(counts.values()) == 1  # no configuration twice at a rung
    assert {t.user_attrs["rung"] for t in trained} == {0, 1}
    assert (tmp_path / "main" / "run" / "report.json").is_file() and not (tmp_path / "worker" / "run").exists()
    assert "trained here" in outputs["joined"]


def test_joining_needs_the_storage_and_an_existing_study(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["auto", "--join", "nope", "--out", str(tmp_path / "w")])
    assert result.exit_code == 2 and "--storage" in result.output
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    optuna.create_study(study_name="other", storage=url)
    result = runner.invoke(app, ["auto", "--join", "nope", "--storage", url, "--out", str(tmp_path / "w")])
    assert result.exit_code == 2 and "no such study" in result.output and "other" in result.output
    result = runner.invoke(app, ["auto", "--join", "other", "--storage", url, "--out", str(tmp_path / "w")])
    assert result.exit_code == 2 and "not made by distillab auto --storage" in result.output


@pytest.mark.parametrize("extra", [["--study", "x"], ["--set", "training.epochs=2"]])
def test_a_joined_process_takes_nothing_but_the_study(tmp_path, extra):
    result = CliRunner().invoke(app, ["auto", "spec.yaml", "--join", "s", "--storage", "sqlite://", "--out",
                                      str(tmp_path), *extra])
    assert result.exit_code == 2 and "give only --storage and --out" in result.output
