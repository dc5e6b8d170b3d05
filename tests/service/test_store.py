"""The job store on SQLite and PostgreSQL: migrations build the models' schema on an empty database, claims
are atomic across real processes, stale jobs are re-queued, cancellation is graceful."""

import subprocess
import sys
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from distillab.service.db import Base, User, make_engine, utcnow
from distillab.service.migrate import upgrade
from distillab.service.settings import Settings
from distillab.service.store import JobStore
from service_databases import database_url, postgres_server  # noqa: F401 (fixtures)


@pytest.fixture
def database(database_url):
    url = database_url
    engine = make_engine(url)
    upgrade(engine)
    store = JobStore(engine)
    with store.sessions.begin() as session:
        session.add(User(id=1, name="ada", key_hash="0" * 64, is_admin=False, created_at=utcnow()))
    return url, store


def test_migrations_apply_to_an_empty_database_and_match_the_models(database_url):
    engine = make_engine(database_url)
    upgrade(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_claim_heartbeat_finish(database):
    _, store = database
    first = store.create(1, "a", "response", {"name": "a"})
    second = store.create(1, "b", "response", {"name": "b"})
    claim = store.claim("w1")
    assert claim.job_id == first and claim.attempts == 1 and claim.spec == {"name": "a"}
    assert store.heartbeat(first, "w1", progress=40.0, phase="distilling", metrics={"val": 0.5}) == "running"
    job = store.get(first)
    assert (job.progress, job.current_phase, job.metrics) == (40.0, "distilling", {"val": 0.5})
    assert store.heartbeat(first, "w2") == "lost"  # another worker cannot touch it
    assert store.finish(first, "w1", "completed") and store.get(first).status == "completed"
    assert store.claim("w2").job_id == second
    assert store.claim("w3") is None
    with pytest.raises(ValueError, match="finish status"):
        store.finish(second, "w2", "running")


def test_a_stale_job_is_requeued_and_claimed_again_with_its_attempt_count(database):
    _, store = database
    job_id = store.create(1, "a", "response", {})
    store.claim("w1")
    assert store.requeue_stale(60) == []  # fresh heartbeat
    assert store.requeue_stale(60, now=utcnow() + timedelta(seconds=61)) == [job_id]
    assert store.get(job_id).status == "queued"
    assert store.heartbeat(job_id, "w1") == "lost"  # the old worker learns it lost the job
    again = store.claim("w2")
    assert again.job_id == job_id and again.attempts == 2


def test_cancel_queued_at_once_running_gracefully(database):
    _, store = database
    queued, running = store.create(1, "q", "response", {}), store.create(1, "r", "response", {})
    assert store.cancel(queued) == "cancelled"
    store.claim("w1")
    assert store.cancel(running) == "cancelling"
    assert store.heartbeat(running, "w1") == "cancelling"  # the worker sees it at its next step
    assert store.finish(running, "w1", "cancelled")
    assert store.get(running).status == "cancelled"
    with pytest.raises(KeyError):
        store.cancel("nope")


CLAIMER = """
import sys
from distillab.service.db import make_engine
from distillab.service.store import JobStore
store = JobStore(make_engine(sys.argv[1]))
while (claim := store.claim(sys.argv[2])) is not None:
    print(claim.job_id, flush=True)
    store.finish(claim.job_id, sys.argv[2], "completed")
"""


def test_racing_worker_processes_claim_every_job_exactly_once(database):
    url, store = database
    jobs = {store.create(1, f"j{i}", "response", {}) for i in range(40)}
    workers = [subprocess.Popen([sys.executable, "-c", CLAIMER, url, f"w{i}"], stdout=subprocess.PIPE, text=True)
               for i in range(4)]
    claimed = []
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0
        claimed += out.split()
    assert sorted(claimed) == sorted(jobs)  # all of them, none twice
    assert all(store.get(j).status == "completed" and store.get(j).attempts == 1 for j in jobs)


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTILLAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("DISTILLAB_PRICE_PER_DEVICE_HOUR", "2.5")
    settings = Settings()
    assert settings.price_per_device_hour == 2.5
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'distillab.db'}"
    monkeypatch.setenv("DISTILLAB_DATABASE_URL", "postgresql+psycopg://u@localhost/db")
    assert Settings().resolved_database_url == "postgresql+psycopg://u@localhost/db"


def test_users_add_prints_the_key_once_and_stores_only_its_hash(tmp_path, monkeypatch):
    from sqlalchemy.orm import Session
    from typer.testing import CliRunner

    from distillab.cli import app
    from distillab.service.auth import authenticate, hash_key

    monkeypatch.setenv("DISTILLAB_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(app, ["users", "add", "grace", "--admin"])
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert key.startswith("dk_") and len(key) > 40
    engine = make_engine(Settings().resolved_database_url)
    with Session(engine) as session:
        user = authenticate(session, key)
        assert user.name == "grace" and user.is_admin and user.key_hash == hash_key(key)
        assert authenticate(session, key + "x") is None and authenticate(session, None) is None
    assert key.encode() not in (tmp_path / "distillab.db").read_bytes()
    again = runner.invoke(app, ["users", "add", "grace"])
    assert again.exit_code == 2 and "already exists" in again.output and "Traceback" not in again.output


def test_a_user_at_the_running_limit_waits_while_others_run(database):
    url, _ = database
    store = JobStore(make_engine(url), max_running_per_user=1)
    with store.sessions.begin() as session:
        session.add(User(id=2, name="bo", key_hash="1" * 64, is_admin=False, created_at=utcnow()))
    first, second = store.create(1, "a1", "response", {}), store.create(1, "a2", "response", {})
    other = store.create(2, "b1", "response", {})
    assert store.claim("w1").job_id == first
    assert store.claim("w2").job_id == other  # ada's older job waits: she has one running
    assert store.claim("w3") is None
    assert store.finish(first, "w1", "completed")
    assert store.claim("w3").job_id == second  # a finished job frees her slot
