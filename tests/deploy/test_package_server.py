"""``distillab package`` and the inference server, run for real on loopback: the package's own
``serve.py`` and ``distillab serve-model`` (micro-batching, 413/422/415, /metrics, shadow and
canary routing); a tampered or incomplete package is refused."""

from __future__ import annotations

import ast
import io
import json
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import finished_cnn_run
from distillab.cli import app
from distillab.compress import run_student
from distillab.deploy.package import package_run, percent
from distillab.experiment.stats import p_value_text
from distillab.deploy.server import Package, PackageError, read_manifest

runner = CliRunner()


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """A finished run and two packages of it (seed 0 and seed 1)."""
    tmp = tmp_path_factory.mktemp("package")
    run_dir = finished_cnn_run(tmp)
    result = runner.invoke(app, ["package", str(run_dir), "--out", str(tmp / "pkg0"), "--seed", "0"])
    assert result.exit_code == 0, result.output
    package_run(run_dir, tmp / "pkg1", seed=1)
    return run_dir, tmp / "pkg0", tmp / "pkg1"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(command: list[str], tmp_path):
    port = free_port()
    log = open(tmp_path / f"server_{port}.log", "w")
    process = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.time() < deadline, (tmp_path / f"server_{port}.log").read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def test_the_package_holds_what_it_lists_and_its_card_repeats_the_report(packaged):
    run_dir, pkg0, _ = packaged
    manifest = read_manifest(pkg0)
    assert set(manifest["files"]) == {"model.onnx", "student.safetensors", "export.json", "MODEL_CARD.md",
                                      "serve.py", "requirements.txt", "Dockerfile"}
    assert manifest["model"]["seed"] == 0 and manifest["preprocessing"]["in_shape"] == [1, 8, 8]
    report = json.loads((run_dir / "report.json").read_text())
    card = (pkg0 / "MODEL_CARD.md").read_text()
    for entry in report["models"]:
        row = next(line for line in card.splitlines() if line.startswith(f"| {entry['role']} |"))
        assert percent(entry["accuracy"]) in row
        mean, std = re.search(r"([\d.]+) ± ([\d.]+) %", row).groups()
        assert float(mean) == pytest.approx(100 * entry["accuracy"]["mean"], abs=0.005)
        assert float(std) == pytest.approx(100 * entry["accuracy"]["std"], abs=0.005)
        for value in entry["accuracy"]["per_seed"]:
            assert f"{100 * value:.2f}" in row
    comparison = report["comparisons"][0]
    assert f"{100 * comparison['mean_diff']:+.2f} points, {p_value_text(comparison)}" in card
    parity = json.loads((pkg0 / "export.json").read_text())["parity"]
    assert f"argmax agreement {100 * parity['argmax_agreement']:.2f} %" in card
    assert 'CMD ["python", "serve.py"' in (pkg0 / "Dockerfile").read_text()
    assert "onnxruntime==" in (pkg0 / "requirements.txt").read_text()


def test_serve_py_imports_nothing_from_distillab(packaged):
    tree = ast.parse((packaged[1] / "serve.py").read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(module.split(".")[0] == "distillab" for module in modules if module)


def test_a_tampered_or_incomplete_package_is_refused(packaged, tmp_path):
    _, pkg0, _ = packaged
    tampered = tmp_path / "tampered"
    shutil.copytree(pkg0, tampered)
    with open(tampered / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(PackageError, match="model.onnx does not match its sha256"):
        Package.load(tampered)
    incomplete = tmp_path / "incomplete"
    shutil.copytree(pkg0, incomplete)
    (incomplete / "student.safetensors").unlink()
    with pytest.raises(PackageError, match="incomplete package: student.safetensors is missing"):
        Package.load(incomplete)
    result = runner.invoke(app, ["serve-model", str(tampered)])
    assert result.exit_code == 2 and "does not match its sha256" in result.output
    result = runner.invoke(app, ["serve-model", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no such package folder" in result.output


def test_a_signed_package_refuses_a_consistent_swap_and_a_key_guards_the_routes(packaged, tmp_path, monkeypatch):
    """The sha256 list alone cannot catch a swap that rewrites a file and its checksum together;
    the signature (an HMAC of the manifest under the operator's key) does. With an API key,
    /predict, /metrics and /stats need it, and /healthz does not."""
    import hashlib

    run_dir, pkg0, _ = packaged
    monkeypatch.setenv("SIGN_KEY", "operator-secret")
    monkeypatch.setenv("SERVE_KEY", "client-secret")
    signed = tmp_path / "signed"
    result = runner.invoke(app, ["package", str(run_dir), "--out", str(signed), "--seed", "0",
                                 "--sign-key-env", "SIGN_KEY"])
    assert result.exit_code == 0, result.output
    assert (signed / "package.json.sig").is_file()
    Package.load(signed, verify_key=b"operator-secret")
    with pytest.raises(PackageError, match="does not match its signature"):
        Package.load(signed, verify_key=b"another-key")
    with pytest.raises(PackageError, match="was not signed"):
        Package.load(pkg0, verify_key=b"operator-secret")

    swapped = tmp_path / "swapped"  # a consistent swap: a file and its checksum changed together
    shutil.copytree(signed, swapped)
    (swapped / "MODEL_CARD.md").write_text("a different card\n")
    manifest = json.loads((swapped / "package.json").read_text())
    manifest["files"]["MODEL_CARD.md"] = hashlib.sha256(b"a different card\n").hexdigest()
    (swapped / "package.json").write_text(json.dumps(manifest))
    Package.load(swapped)  # the checksums alone accept it
    result = runner.invoke(app, ["serve-model", str(swapped), "--verify-key-env", "SIGN_KEY"])
    assert result.exit_code == 2 and "does not match its signature" in result.output
    result = runner.invoke(app, ["serve-model", str(signed), "--verify-key-env", "UNSET_VARIABLE"])
    assert result.exit_code == 2 and "UNSET_VARIABLE is not set" in result.output

    command = [sys.executable, str(signed / "serve.py"), str(signed), "--verify-key-env", "SIGN_KEY",
               "--api-key-env", "SERVE_KEY"]
    with server(command, tmp_path) as url:
        body = {"inputs": [[[0] * 8] * 8]}
        assert httpx.post(url + "/predict", json=body).status_code == 401
        assert httpx.get(url + "/metrics").status_code == 401 and httpx.get(url + "/stats").status_code == 401
        assert httpx.get(url + "/healthz").status_code == 200
        good = {"Authorization": "Bearer client-secret"}
        assert httpx.post(url + "/predict", json=body, headers=good).status_code == 200
        statuses = [httpx.post(url + "/predict", json=body, headers={"Authorization": "Bearer no"}).status_code
                    for _ in range(25)]
        # 20 wrong keys a minute from one address (the three above count): then 429s
        assert statuses[:17] == [401] * 17 and set(statuses[17:]) == {429}
        assert httpx.post(url + "/predict", json=body, headers=good).status_code == 200  # not locked out


def test_packaging_into_a_used_folder_or_a_bad_run_is_a_clear_error(packaged, tmp_path):
    run_dir, pkg0, _ = packaged
    result = runner.invoke(app, ["package", str(run_dir), "--out", str(pkg0)])
    assert result.exit_code == 2 and "earlier `distillab package` output" in result.output
    result = runner.invoke(app, ["package", str(tmp_path), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "no report.json" in result.output and not (tmp_path / "p").exists()


def bomb_png() -> bytes:
    picture = io.BytesIO()
    Image.new("1", (6000, 6000)).save(picture, format="PNG")
    assert len(picture.getvalue()) < 10_000
    return picture.getvalue()


def test_the_package_server_predicts_batches_and_rejects_bad_requests(packaged, tmp_path):
    run_dir, pkg0, _ = packaged
    student = run_student(run_dir, 0)
    raw = student.data.test.images[:6]  # (6, 1, 8, 8) uint8, as the dataset stores them
    with torch.no_grad():
        expected = torch.softmax(student.model(student.data.normalize(raw)), -1).numpy()
    command = [sys.executable, str(pkg0 / "serve.py"), str(pkg0), "--max-wait-ms", "300", "--max-body-mb", "0.01"]
    with server(command, tmp_path) as url:
        answer = httpx.post(url + "/predict", json={"inputs": raw.tolist()}).json()
        probabilities = np.array([p["probabilities"] for p in answer["predictions"]])
        np.testing.assert_allclose(probabilities, expected, atol=1e-4)
        assert [p["index"] for p in answer["predictions"]] == expected.argmax(-1).tolist()

        def one(row):
            return httpx.post(url + "/predict", json={"inputs": raw[row].tolist()}, timeout=30).json()

        with ThreadPoolExecutor(6) as pool:  # six concurrent single-sample requests
            answers = list(pool.map(one, range(6)))
        assert [a["predictions"][0]["index"] for a in answers] == expected.argmax(-1).tolist()
        metrics = httpx.get(url + "/metrics").text
        calls = float(re.search(r'distillab_batch_size_count\{package="[^"]+"\} ([\d.]+)', metrics).group(1))
        samples = float(re.search(r'distillab_batch_size_sum\{package="[^"]+"\} ([\d.]+)', metrics).group(1))
        assert samples == 12 and calls < 7  # 1 call for the first request; the 6 concurrent ones were merged

        picture = io.BytesIO()
        Image.fromarray(raw[0, 0].numpy()).save(picture, format="PNG")
        image_answer = httpx.post(url + "/predict", content=picture.getvalue(), headers={"content-type": "image/png"})
        assert image_answer.status_code == 200
        assert image_answer.json()["predictions"][0]["index"] == int(expected[0].argmax())

        wrong = httpx.post(url + "/predict", json={"inputs": [[1, 2, 3]]})
        assert wrong.status_code == 422 and "expected shape (N, 1, 8, 8)" in wrong.json()["detail"]
        big = httpx.post(url + "/predict", json={"inputs": [0] * 20000})
        assert big.status_code == 413 and "over the limit" in big.json()["detail"]
        for body, headers, status in [(b"{not json", {"content-type": "application/json"}, 422),
                                      (b'{"x": 1}', {"content-type": "application/json"}, 422),
                                      (b"GIF89", {"content-type": "image/gif"}, 422),
                                      (b"hello", {"content-type": "text/plain"}, 415),
                                      # numbers past int64 and float32, too long to parse, nested too deep
                                      (b'{"inputs": [' + b"9" * 400 + b"]}", {}, 422),
                                      (b'{"inputs": [' + b"9" * 5000 + b"]}", {}, 422),
                                      (b'{"inputs": [1e39]}', {}, 422),
                                      (b'{"inputs": ' + b"[" * 4000 + b"]" * 4000 + b"}", {}, 422),
                                      # text and booleans are not numbers
                                      (b'{"inputs": "0"}', {}, 422), (b'{"inputs": true}', {}, 422),
                                      (json.dumps({"inputs": [[[[True] * 8] * 8]]}).encode(), {}, 422),
                                      # a 6000x6000 1-bit PNG of a few KB: refused before it is decoded
                                      (bomb_png(), {"content-type": "image/png"}, 413)]:
            response = httpx.post(url + "/predict", content=body,
                                  headers=headers or {"content-type": "application/json"})
            assert response.status_code == status and "detail" in response.json(), (body[:60], response.text)
        assert 'distillab_requests_total{outcome="rejected"' in httpx.get(url + "/metrics").text


def test_shadow_and_canary_routing_report_per_package(packaged, tmp_path):
    run_dir, pkg0, pkg1 = packaged
    student = run_student(run_dir, 0)
    raw = student.data.test.images[:8].tolist()
    cli = [sys.executable, "-m", "distillab.cli", "serve-model", str(pkg0), "--candidate", str(pkg1)]
    with server([*cli, "--mode", "shadow", "--fraction", "1.0", "--max-wait-ms", "1"], tmp_path) as url:
        for row in raw:
            assert httpx.post(url + "/predict", json={"inputs": row}).json()["package"] == "tiny-seed0"
        deadline = time.time() + 10
        while httpx.get(url + "/stats").json()["shadow"]["compared"] < 8 and time.time() < deadline:
            time.sleep(0.1)
        stats = httpx.get(url + "/stats").json()
        assert stats["shadow"]["compared"] == 8 and 0.0 <= stats["shadow"]["agreement"] <= 1.0
        assert stats["packages"]["tiny-seed0"]["requests"] == 8 and stats["packages"]["tiny-seed1"]["requests"] == 8
        assert 'distillab_shadow_comparisons_total{result="agree"}' in httpx.get(url + "/metrics").text
    with server([*cli, "--mode", "canary", "--fraction", "1.0"], tmp_path) as url:
        assert httpx.post(url + "/predict", json={"inputs": raw[0]}).json()["package"] == "tiny-seed1"
        assert httpx.get(url + "/healthz").json()["mode"] == "canary"
