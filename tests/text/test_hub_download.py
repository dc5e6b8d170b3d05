"""The hub path (``teacher.hub``) downloads with transformers' own client; here against a
loopback server speaking the hub's file protocol (this machine has no network)."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import text_spec
from hub_server import serve_repo

CLI = [sys.executable, "-m", "distillab.cli"]


def test_a_hub_teacher_is_downloaded_and_a_missing_repo_is_named(tmp_path, corpus, tiny_lm):
    server, requests = serve_repo("org/tiny", tiny_lm)
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}",
               "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_DOWNLOAD_TIMEOUT": "5", "HF_HUB_ETAG_TIMEOUT": "5"}
        env.pop("HF_HUB_OFFLINE", None)
        spec = text_spec(corpus, tiny_lm)
        spec["teacher"] = {"hub": "org/tiny"}
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(spec))
        # validate reads the config and tokenizer only; a run downloads the weights
        done = subprocess.run([*CLI, "validate", str(path)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert not any("model.safetensors" in r for r in requests)
        done = subprocess.run([*CLI, "run", str(path), "--out", str(tmp_path / "run"), "--set", "training.seeds=[0]",
                               "--set", "training.epochs=1"], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert any("/org/tiny/resolve/" in r and "model.safetensors" in r for r in requests)
        assert list(Path(tmp_path / "hub").rglob("model.safetensors"))  # in the hub cache, as a user's would be

        spec["teacher"] = {"hub": "org/missing"}
        path.write_text(json.dumps(spec))
        done = subprocess.run([*CLI, "validate", str(path)], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "org/missing" in done.stderr and "Traceback" not in done.stderr, done.stderr
    finally:
        server.shutdown()
