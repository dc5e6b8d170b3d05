"""``distillab serve-teacher`` on loopback: only top-k probabilities leave it, only with the key;
a spec's ``teacher.url`` fills the cache from it and trains with the tail-bucket loss; an
unreachable server or one that breaks its k is a clear error."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch
import uvicorn

from conftest import tiny_spec
from distillab import losses, run
from distillab.errors import CheckpointError, DistillabError
from distillab.models.loading import load_state_into
from distillab.models.remote import NPY, RemoteTeacher, npy_bytes
from distillab.models.zoo import build_model
from test_package_server import free_port, server

KEY = "s3cret-key"


@pytest.fixture
def served(blobs, tiny_teacher, tmp_path, monkeypatch):
    """A served tiny teacher (k = 2 of 3 classes) and the spec it serves."""
    spec = tiny_spec(blobs, tiny_teacher, training={"epochs": 1, "seeds": [0]})
    (tmp_path / "teacher_spec.json").write_text(json.dumps(spec))
    monkeypatch.setenv("DISTILLAB_TEACHER_KEY", KEY)
    command = [sys.executable, "-m", "distillab.cli", "serve-teacher", str(tmp_path / "teacher_spec.json"), "--k", "2"]
    with server(command, tmp_path) as url:
        yield url, spec


def _local(tiny_teacher):
    model = build_model("cnn_tiny", (1, 8, 8), 3)
    return load_state_into(model, tiny_teacher, "teacher").eval()


def test_only_top_k_probabilities_leave_the_server_and_only_with_the_key(served, tiny_teacher):
    url, _ = served
    inputs = torch.randn(5, 1, 8, 8)
    body, headers = npy_bytes(inputs.numpy()), {"Content-Type": NPY, "Authorization": f"Bearer {KEY}"}
    assert httpx.post(url + "/v1/topk", content=body, headers={"Content-Type": NPY}).status_code == 401
    assert httpx.post(url + "/v1/topk", content=body,
                      headers={"Content-Type": NPY, "Authorization": "Bearer wrong"}).status_code == 401
    answer = httpx.post(url + "/v1/topk", content=body, headers=headers).json()
    assert set(answer) == {"indices", "probabilities"}
    assert all(len(row) == 2 for row in answer["indices"] + answer["probabilities"])
    with torch.no_grad():
        expected = torch.softmax(_local(tiny_teacher)(inputs), -1).topk(2)
    np.testing.assert_allclose(answer["probabilities"], expected.values.numpy(), atol=1e-6)
    assert answer["indices"] == expected.indices.tolist()
    wrong = httpx.post(url + "/v1/topk", content=npy_bytes(np.zeros((2, 3, 8, 8), np.float32)), headers=headers)
    assert wrong.status_code == 422 and "expected float32 (B, 1, 8, 8)" in wrong.json()["detail"]
    assert httpx.get(url + "/v1/info", headers=headers).json()["k"] == 2


def test_a_spec_with_teacher_url_distils_from_the_served_teacher(served, tiny_teacher, tmp_path):
    url, spec = served
    remote_spec = {**spec, "teacher": {"url": url}}
    report = run(remote_spec, tmp_path / "remote")
    teacher_row = next(m for m in report.data["models"] if m["role"] == "teacher")
    local_report = run(spec, tmp_path / "local")
    local_row = next(m for m in local_report.data["models"] if m["role"] == "teacher")
    assert teacher_row["accuracy"]["mean"] == pytest.approx(local_row["accuracy"]["mean"])  # same argmax
    assert teacher_row["runtime"] == "http (top-k)"
    remote = RemoteTeacher(url, KEY, (1, 8, 8), 3)
    inputs = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        local = torch.log_softmax(_local(tiny_teacher)(inputs), -1)
        received = remote(inputs)
    top = local.topk(2)
    torch.testing.assert_close(received.gather(1, top.indices), top.values, atol=1e-5, rtol=1e-5)
    tail = torch.log1p(-top.values.exp().sum(-1))
    torch.testing.assert_close(received.logsumexp(-1), torch.zeros(4), atol=1e-5, rtol=1e-5)
    assert torch.all(received.topk(2).indices.sort().values == top.indices.sort().values)
    assert torch.isfinite(tail).all()


def test_the_tail_bucket_loss_ignores_how_the_tail_is_spread():
    torch.manual_seed(0)
    student = torch.randn(6, 10)
    teacher = torch.randn(6, 10) * 3
    top = teacher.topk(3).indices
    reshuffled = teacher.clone()
    outside = torch.ones_like(teacher, dtype=torch.bool).scatter_(1, top, False)
    # a different tail inside the same total mass: move mass between the non-top-k classes
    probs = teacher.softmax(-1)
    tail = probs.masked_fill(~outside, 0)
    spread = tail.sum(-1, keepdim=True) / 7 * outside
    reshuffled = torch.where(outside, spread, probs).log()
    assert losses.topk_bucket_kl(student, teacher, 3, 1.0) == pytest.approx(
        float(losses.topk_bucket_kl(student, reshuffled, 3, 1.0)), rel=1e-5)
    spread_kl = float(losses.soft_kl(student, reshuffled, 1.0))
    assert float(losses.soft_kl(student, teacher, 1.0)) != pytest.approx(spread_kl)
    full = losses.topk_bucket_kl(student, teacher, 10, 2.0)
    assert float(full) == pytest.approx(float(losses.soft_kl(student, teacher, 2.0)), rel=1e-4)
    assert float(losses.topk_bucket_kl(teacher, teacher, 3, 2.0)) == pytest.approx(0.0, abs=1e-5)


def _lying_server(k_announced: int, k_sent: int):
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/info")
    def info():
        return {"k": k_announced, "temperature": 1.0, "num_classes": 3, "in_shape": [1, 8, 8], "fingerprint": "x"}

    @app.post("/v1/topk")
    async def topk():
        return {"indices": [list(range(k_sent))] * 2, "probabilities": [[0.3] * k_sent] * 2}

    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not instance.started and time.time() < deadline:
        time.sleep(0.05)
    return instance, f"http://127.0.0.1:{port}"


def test_an_unreachable_or_lying_teacher_url_is_a_clear_error(blobs, tiny_teacher, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CheckpointError, match=f"teacher.url: cannot reach {dead}"):
        RemoteTeacher(dead, KEY, (1, 8, 8), 3)
    instance, url = _lying_server(k_announced=2, k_sent=3)
    try:
        teacher = RemoteTeacher(url, KEY, (1, 8, 8), 3)
        with pytest.raises(CheckpointError, match="it announced k = 2"):
            teacher(torch.zeros(2, 1, 8, 8))
        with pytest.raises(CheckpointError, match="served teacher has 3 classes but the dataset has 10"):
            RemoteTeacher(url, KEY, (1, 8, 8), 10)
        spec = tiny_spec(blobs, tiny_teacher, teacher={"url": url}, training={"epochs": 1, "seeds": [0]})
        spec["teacher"] = {"url": url}
        with pytest.raises(DistillabError, match="announced k = 2"):
            run(spec, tmp_path / "lied")
        assert not (tmp_path / "lied").exists()
    finally:
        instance.should_exit = True


def test_serve_teacher_needs_a_key_and_an_image_task(blobs, tiny_teacher, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from distillab.cli import app

    (tmp_path / "spec.json").write_text(json.dumps(tiny_spec(blobs, tiny_teacher)))
    monkeypatch.delenv("DISTILLAB_TEACHER_KEY", raising=False)
    result = CliRunner().invoke(app, ["serve-teacher", str(tmp_path / "spec.json")])
    assert result.exit_code == 2 and "DISTILLAB_TEACHER_KEY" in result.output
    monkeypatch.setenv("DISTILLAB_TEACHER_KEY", KEY)
    result = CliRunner().invoke(app, ["serve-teacher", str(tmp_path / "spec.json"), "--k", "7"])
    assert result.exit_code == 2 and "--k 7" in result.output
    assert os.environ["DISTILLAB_TEACHER_KEY"] == KEY


def test_the_teacher_server_refuses_hostile_inputs_with_json_4xx(served):
    """Non-finite inputs, a header that declares 2^40 rows, a streamed body past the limit and
    a flood of wrong keys get JSON 4xx answers; a valid key still works after the flood."""
    import struct

    url, _ = served
    headers = {"Content-Type": NPY, "Authorization": f"Bearer {KEY}"}
    for value in (np.nan, np.inf, -np.inf, 3e38):
        inputs = np.full((2, 1, 8, 8), value, np.float32)
        answer = httpx.post(url + "/v1/topk", content=npy_bytes(inputs), headers=headers)
        if value == 3e38 and answer.status_code == 200:  # finite; the teacher may or may not overflow on it
            assert np.isfinite(answer.json()["probabilities"]).all()
            continue
        assert answer.status_code == 422 and "finite" in answer.json()["detail"], (value, answer.text)
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1, 8, 8), }"
    header += " " * (118 - len(header)) + "\n"
    forged = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + b"\0" * 256
    answer = httpx.post(url + "/v1/topk", content=forged, headers=headers)
    assert answer.status_code == 422 and "expected float32" in answer.json()["detail"]

    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(300):
            yield b"\0" * (1 << 20)

    answer = httpx.post(url + "/v1/topk", content=chunks(), headers=headers, timeout=60)
    assert answer.status_code == 413 and "over the limit" in answer.json()["detail"]

    wrong = {"Content-Type": NPY, "Authorization": "Bearer wrong"}
    body = npy_bytes(np.zeros((1, 1, 8, 8), np.float32))
    statuses = [httpx.post(url + "/v1/topk", content=body, headers=wrong).status_code for _ in range(30)]
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    assert httpx.post(url + "/v1/topk", content=body, headers=headers).status_code == 200
