"""Database fixtures for the service tests (imported by name; not a conftest, whose module name
the other test folders import): SQLite always; PostgreSQL from DISTILLAB_TEST_POSTGRES_URL,
or a throw-away server started here from the installed binaries (skipped, with the reason,
only when no server can be started)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest
from sqlalchemy import create_engine, text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user then."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="session")
def postgres_server():
    """A SQLAlchemy URL of a PostgreSQL server for the whole session."""
    if os.environ.get("DISTILLAB_TEST_POSTGRES_URL"):
        yield os.environ["DISTILLAB_TEST_POSTGRES_URL"]
        return
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        pytest.skip("PostgreSQL tests skipped: no server binaries (apt-get install postgresql) and no "
                    "DISTILLAB_TEST_POSTGRES_URL")
    bindir = os.path.dirname(binaries[-1])
    datadir = tempfile.mkdtemp(prefix="distillab-pg-")
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    port = _free_port()
    try:
        subprocess.run(_as_postgres([f"{bindir}/initdb", "-D", datadir, "-A", "trust", "-U", "postgres"]),
                       check=True, capture_output=True)
        subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", datadir, "-w", "-l", f"{datadir}/log", "-o",
                                     f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1", "start"]),
                       check=True, capture_output=True)
    except (subprocess.CalledProcessError, OSError) as error:
        shutil.rmtree(datadir, ignore_errors=True)
        pytest.skip(f"PostgreSQL tests skipped: could not start a server ({error})")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "stop"]),
                       capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)


@contextlib.contextmanager
def fresh_postgres_database(server: str, prefix: str = "t"):
    """A new, empty database on ``server`` for the block; dropped after it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'jobs.db'}"
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_server")) as url:
        yield url
