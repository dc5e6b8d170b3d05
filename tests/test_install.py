"""`pip install distillab[service]` gives a working service: the wheel is built, installed with
the service extra into a fresh virtual environment at the lock's versions (requirements.lock as
constraints), and `distillab serve` from that environment answers /healthz. A command that needs
an extra that is not installed says which one, with exit code 2.

torch is the one package not installed again: the fresh environment links this environment's
build (the lock's torch==2.13.0+cpu), so that pip sees it installed and installs what torch and
distillab declare around it, without unpacking 750 MB once more."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A new venv holding the wheel with [service] and the lock's versions; its bin folder."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # a copy: the build writes build/ and egg-info, never into the checkout
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(tmp / "wheels"), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((tmp / "wheels").glob("distillab-*.whl"))
    venv = tmp / "venv"
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    subprocess.run([str(base_python), "-m", "venv", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    ours = Path(sysconfig.get_paths()["purelib"])
    for entry in [*ours.glob("torch-*.dist-info"), ours / "torch", ours / "torchgen", ours / "functorch"]:
        (site / entry.name).symlink_to(entry)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "PYTHONPATH"))}
    installed = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[service]",
                                "-c", str(ROOT / "requirements.lock")], capture_output=True, text=True, env=env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return venv / "bin"


def test_the_wheel_with_the_service_extra_serves_healthz(fresh, tmp_path):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DISTILLAB_")},
           "DISTILLAB_DATA_DIR": str(tmp_path / "data"), "PYTHONPATH": ""}
    added = subprocess.run([str(fresh / "distillab"), "users", "add", "ada", "--admin"], capture_output=True,
                           text=True, env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr[-2000:]
    key = added.stdout.strip().splitlines()[-1]
    port = _free_port()
    server = subprocess.Popen([str(fresh / "distillab"), "serve", "--port", str(port), "--log-level", "warning"],
                              env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.3)
        assert health is not None, server.stdout.read()[-3000:] if server.poll() is not None else "no answer"
        assert health.status_code == 200 and health.json()["status"] == "ok"
        strategies = httpx.get(f"http://127.0.0.1:{port}/api/v1/distillation/strategies", headers={"X-API-Key": key})
        assert strategies.status_code == 200 and any(row["name"] == "response" for row in strategies.json())
    finally:
        server.terminate()
        server.wait(timeout=30)
    # the fresh environment is the package's own: not this checkout's source
    where = subprocess.run([str(fresh / "python"), "-c", "import distillab; print(distillab.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path)
    assert str(fresh.parent) in where.stdout and str(ROOT / "src") not in where.stdout


def test_a_command_that_needs_a_missing_extra_names_it(fresh, tmp_path):
    """[service] does not bring Optuna: `distillab sweep` says to install distillab[sweep]."""
    spec = tmp_path / "job.yaml"
    spec.write_text("data: {dataset: npz, path: x.npz}\nteacher: {model: mlp}\nstudent: {model: mlp}\n")
    result = subprocess.run([str(fresh / "distillab"), "sweep", str(spec), "--out", str(tmp_path / "sweep"),
                             "--grid", "strategy.params.alpha=0.5,0.9"], capture_output=True, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pip install 'distillab[sweep]'" in result.stderr and "Traceback" not in result.stderr
