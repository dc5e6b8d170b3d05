"""Sweeps: a grid over strategy parameters, selection on validation, resume after an
interruption without redoing finished trials, and a clear error for unknown parameters."""

import json

import pytest

from distillab.errors import SpecError
from distillab.experiment import sweep as sweep_module
from distillab.experiment.sweep import parse_grid, parse_ranges, sweep
from conftest import tiny_spec


@pytest.fixture
def spec_file(tmp_path, blobs, tiny_teacher):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_spec(blobs, tiny_teacher, training={"epochs": 1, "seeds": [0]})))
    return path


def test_grid_sweep_resumes_without_redoing_finished_trials(spec_file, tmp_path, monkeypatch):
    grid = parse_grid(["strategy.params.temperature=1,4", "strategy.params.alpha=0.1,0.9"])
    real_phase = sweep_module.phase
    calls = []

    def interrupted_phase(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the third trial dies
        calls.append(args[3])
        return real_phase(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "phase", interrupted_phase)
    with pytest.raises(KeyboardInterrupt):
        sweep(spec_file, tmp_path / "sweep", grid, {})

    monkeypatch.setattr(sweep_module, "phase", lambda *a, **k: (calls.append(a[3]), real_phase(*a, **k))[1])
    best = sweep(spec_file, tmp_path / "sweep", grid, {})
    assert len(calls) == 4  # 2 before the interruption + the 2 remaining grid points, nothing redone
    assert best["trials"] == 4 and best["selected_on"] == "validation split"
    assert 0 <= best["val_accuracy"] <= 1
    table = (tmp_path / "sweep" / "trials.md").read_text()
    assert table.count("\n") == 2 + 4
    assert (tmp_path / "sweep" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    again = sweep(spec_file, tmp_path / "sweep", grid, {})  # a finished sweep runs nothing
    assert len(calls) == 4 and again["params"] == best["params"]


def test_unknown_grid_parameter_is_named(spec_file, tmp_path):
    with pytest.raises(SpecError, match="strategy.params.temprature: unknown key"):
        sweep(spec_file, tmp_path / "bad", parse_grid(["strategy.params.temprature=1,2"]), {})


def test_grid_and_range_parsing():
    assert parse_grid(["a.b=1,2.5,x"]) == {"a.b": [1, 2.5, "x"]}
    assert parse_ranges(["a.b=0.001:0.1:log"]) == {"a.b": (0.001, 0.1, True)}
    with pytest.raises(SpecError, match="expected key.path=v1,v2"):
        parse_grid(["nothing"])
    with pytest.raises(SpecError, match="low must be below high"):
        parse_ranges(["a=2:1"])


def test_the_cli_sweep_takes_set_logs_validation_only_and_prints_the_best_command(spec_file, tmp_path, caplog):
    import logging

    from typer.testing import CliRunner

    from distillab.cli import app

    caplog.set_level(logging.INFO, logger="distillab")
    result = CliRunner().invoke(app, ["sweep", str(spec_file), "--out", str(tmp_path / "s"),
                                      "--grid", "strategy.params.alpha=0.1,0.9", "--set", "training.epochs=2"])
    assert result.exit_code == 0, result.output
    logged = caplog.text + result.output
    assert "validation accuracy" in logged and "test accuracy" not in logged and "test " not in caplog.text
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    line = next(line for line in result.output.splitlines() if line.startswith("run the best point"))
    assert f"distillab run {spec_file} --set=training.epochs=2 --set=strategy.params.alpha=" \
           f"{best['params']['strategy.params.alpha']}" in line
    trial = json.loads(next((tmp_path / "s" / "trials").rglob("result.json")).read_text())
    assert len(trial["history"]) == 2 and trial["test_accuracy"] is None
