"""A sweep shared through a real PostgreSQL database: one process creates the study, another
joins it from its own folder, and every grid point runs exactly once; joining an unknown study
or a bad database is a clear error (exit 2)."""

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from conftest import tiny_spec  # noqa: E402
from distillab.cli import app  # noqa: E402
from service_databases import fresh_postgres_database, postgres_server  # noqa: E402,F401 (fixture)

CLI = [sys.executable, "-m", "distillab.cli"]
TEMPERATURES = [1, 2, 3, 4, 5, 6]


@pytest.fixture
def postgres_url(postgres_server):
    """A fresh database on the session's PostgreSQL server."""
    with fresh_postgres_database(postgres_server, "sweep") as url:
        yield url


def _study_exists(url: str, name: str) -> bool:
    try:
        return name in [s.study_name for s in optuna.get_all_study_summaries(url)]
    except Exception:
        return False


def test_two_processes_share_one_study_and_no_grid_point_runs_twice(postgres_url, tmp_path, blobs, tiny_teacher):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(tiny_spec(blobs, tiny_teacher, training={"epochs": 6, "seeds": [0]})))
    grid = "strategy.params.temperature=" + ",".join(map(str, TEMPERATURES))
    first = subprocess.Popen([*CLI, "sweep", str(spec), "--out", str(tmp_path / "a"), "--grid", grid,
                              "--storage", postgres_url, "--study", "shared"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not _study_exists(postgres_url, "shared") and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    second = subprocess.Popen([*CLI, "sweep", "--join", "shared", "--storage", postgres_url, "--out",
                               str(tmp_path / "b")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [process.communicate(timeout=600)[0] for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outputs
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    temperatures = sorted(t.params["strategy.params.temperature"] for t in complete)
    assert temperatures == TEMPERATURES  # every grid point once: none twice, none lost
    assert not study.get_trials(states=(optuna.trial.TrialState.WAITING, optuna.trial.TrialState.RUNNING))
    ran = {t.number: t.user_attrs["process"] for t in complete}
    folders = {int(p.name) for side in ("a", "b") for p in (tmp_path / side / "trials").glob("*")}
    assert folders == set(ran)  # each trial's files are in the folder of the process that ran it
    # each process reports the study as it stood when its share was done; the last one saw it whole
    reported = [json.loads((tmp_path / side / "best.json").read_text()) for side in ("a", "b")]
    assert max(best["trials"] for best in reported) == len(TEMPERATURES)
    assert all(best["selected_on"] == "validation split" for best in reported)


def test_joining_needs_a_known_study_and_a_reachable_database(postgres_url, tmp_path):
    runner = CliRunner()
    unknown = runner.invoke(app, ["sweep", "--join", "nope", "--storage", postgres_url, "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "--join nope: no such study" in unknown.output
    no_storage = runner.invoke(app, ["sweep", "--join", "nope", "--out", str(tmp_path)])
    assert no_storage.exit_code == 2 and "--storage" in no_storage.output
    unreachable = runner.invoke(app, ["sweep", "--join", "x", "--storage",
                                      "postgresql+psycopg://nobody:secret@127.0.0.1:1/none", "--out", str(tmp_path)])
    assert unreachable.exit_code == 2 and "cannot open the study database" in unreachable.output
    assert "secret" not in unreachable.output  # the password is not echoed


def test_a_process_that_loses_the_race_to_create_the_tables_opens_the_winners(monkeypatch, tmp_path):
    """Two processes opening a new study database at once: the one whose table creation collides
    with the other's waits and opens the database, rather than failing the sweep or auto search."""
    import optuna.storages

    from distillab.errors import SpecError
    from distillab.experiment import sweep

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **options):
        calls.append(url)
        if len(calls) == 1:
            raise RuntimeError('(sqlite3.IntegrityError) UNIQUE constraint failed: studies.study_name')
        return real(url, **options)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(sweep.time, "sleep", lambda seconds: None)
    storage = sweep.open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []

    def broken(url, **options):
        calls.append(url)
        raise RuntimeError("could not translate host name")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(SpecError, match="cannot open the study database") as refused:
        sweep.open_storage("postgresql+psycopg://me:secret@nowhere/db")
    assert "secret" not in str(refused.value)
    assert calls[-1].endswith("nowhere/db") and len(calls) == 3  # not retried: not a race
