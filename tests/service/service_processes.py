"""A real service for the API tests: ``distillab serve`` under uvicorn on a free loopback
port and ``distillab worker`` processes, on SQLite and on PostgreSQL (imported by name)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch
from sqlalchemy import create_engine, text

from distillab.models.loading import save_model
from distillab.models.zoo import build_model

PREFIX = "/api/v1/distillation"
CLI = [sys.executable, "-m", "distillab.cli"]
UPLOAD_LIMIT_MB = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    url: str
    env: dict
    data_dir: Path
    keys: dict
    tmp: Path
    workers: list = field(default_factory=list)
    server: subprocess.Popen | None = None

    def start_server(self) -> None:
        """Start ``distillab serve`` on this service's port and wait until /healthz answers."""
        port = int(self.url.rsplit(":", 1)[1])
        log = open(self.tmp / "serve.log", "a")
        self.server = subprocess.Popen([*CLI, "serve", "--host", "127.0.0.1", "--port", str(port),
                                        "--log-level", "warning"], env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the server did not start:\n{(self.tmp / 'serve.log').read_text()}")
            time.sleep(0.2)

    def stop_server(self, sig=signal.SIGTERM) -> None:
        if self.server is None:
            return
        self.server.send_signal(sig)
        try:
            self.server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()
        self.server = None

    def client(self, user: str | None = "alice") -> httpx.Client:
        headers = {"X-API-Key": self.keys[user]} if user else {}
        return httpx.Client(base_url=self.url + PREFIX, headers=headers, timeout=60)

    def start_worker(self, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "w")
        process = subprocess.Popen([*CLI, "worker", "--poll", "0.2", "--heartbeat", "0.3", *args], env=self.env,
                                   stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(process)
        return process

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.workers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.workers.clear()

    def wait(self, job_id: str, until, timeout: float = 120, user: str = "alice") -> dict:
        """Poll GET /jobs/{id} until ``until(job)`` holds."""
        deadline = time.time() + timeout
        with self.client(user) as client:
            while True:
                job = client.get(f"/jobs/{job_id}").json()
                if until(job):
                    return job
                if time.time() > deadline:
                    raise AssertionError(f"timed out waiting for job {job_id}: {job}\n{self.worker_logs()}")
                time.sleep(0.1)

    def worker_logs(self) -> str:
        return "\n".join(path.read_text()[-3000:] for path in sorted(self.tmp.glob("worker-*.log")))


def _postgres_database(server: str):
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    return admin, name, server.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def running_service(request, tmp_path_factory, extra_env: dict | None = None):
    """A server on ``request.param`` ("sqlite" or "postgresql"); users alice, bob and admin."""
    tmp = tmp_path_factory.mktemp(f"service-{request.param}")
    admin_engine = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp / 'service.db'}"
    else:
        admin_engine, name, url = _postgres_database(request.getfixturevalue("postgres_server"))
    env = {**os.environ, "DISTILLAB_DATA_DIR": str(tmp / "data"), "DISTILLAB_DATABASE_URL": url,
           "DISTILLAB_HEARTBEAT_TIMEOUT_S": "3", "DISTILLAB_MAX_UPLOAD_MB": str(UPLOAD_LIMIT_MB),
           "DISTILLAB_CACHE": str(tmp / "cache"), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    keys = {}
    for user in ("alice", "bob", "admin"):
        out = subprocess.run([*CLI, "users", "add", user, *(["--admin"] if user == "admin" else [])], env=env,
                             capture_output=True, text=True, check=True)
        keys[user] = out.stdout.strip().splitlines()[-1]
    service = Service(f"http://127.0.0.1:{free_port()}", env, tmp / "data", keys, tmp)
    service.start_server()
    try:
        yield service
    finally:
        service.stop_workers()
        service.stop_server()
        if admin_engine is not None:
            with admin_engine.connect() as connection:
                connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            admin_engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request, tmp_path_factory):
    """One server per database kind for a test module."""
    with running_service(request, tmp_path_factory) as running:
        yield running


def digits_teacher(path: Path, hidden: int = 64, seed: int = 0) -> Path:
    """An MLP teacher for the 10 digit classes, trained briefly on the digits, as safetensors."""
    from conftest import trained

    from distillab.data.readers import read_digits

    train, _ = read_digits(None)
    torch.manual_seed(seed)
    model = trained(build_model("mlp", (1, 8, 8), 10, {"hidden": [hidden]}), train.images, train.labels, steps=60)
    save_model(model, path)
    return path


def upload_teacher(service: Service, user: str = "alice", hidden: int = 64) -> str:
    path = digits_teacher(service.tmp / f"teacher-{uuid.uuid4().hex[:6]}.safetensors", hidden)
    with service.client(user) as client:
        response = client.post("/models", content=path.read_bytes(), params={
            "name": "digits-teacher", "architecture": "mlp", "dataset": "digits",
            "model_args": json.dumps({"hidden": [hidden]})})
    assert response.status_code == 201, response.text
    return response.json()["model_id"]


def seed_body(teacher_id: str, **training) -> dict:
    return {
        "name": "digits test",
        "teacher_model_ids": [teacher_id],
        "student_specification": {"architecture": "mlp", "model_args": {"hidden": [16]}},
        "strategy": "response",
        "dataset_config": {"dataset": "digits"},
        "training": {"epochs": 2, "seeds": [0], **training},
    }
