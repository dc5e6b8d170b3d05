"""Automated searches as service jobs, against a real server and worker (SQLite): a spec with an
auto section runs its search and the chosen student's final run, and its results carry the front
and the choice; the documented job shape without an architecture becomes a search whose
constraints are the body's, estimated from its budget."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from service_processes import running_service, upload_teacher
from distillab.service.store import TERMINAL

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module", params=["sqlite"])
def service(request, tmp_path_factory):
    with running_service(request, tmp_path_factory) as running:
        yield running


def test_a_search_job_on_digits_runs_end_to_end(service):
    teacher = upload_teacher(service)
    spec = {"name": "digits search", "data": {"dataset": "digits"}, "student": {"model": "mlp"},
            "training": {"seeds": [0, 1], "batch_size": 64}, "output": {"tensorboard": False},
            "auto": {"constraints": {"max_params": 5000, "runtime": "onnx"}, "budget": {"max_trials": 3},
                     "space": {"families": ["mlp"], "epochs": [1, 2], "strategies": ["response"]}}}
    with service.client() as client:
        created = client.post("/jobs", json={"spec": spec, "teacher_model_ids": [teacher]})
        assert created.status_code == 201, created.text
        assert "automated search (3 trials of at most 2 epochs)" in created.json()["estimate_basis"]
        service.start_worker()
        final = service.wait(created.json()["job_id"], lambda j: j["status"] in TERMINAL, timeout=240)
        assert final["status"] == "completed", service.worker_logs()
        assert final["current_metrics"]["auto"]["trials_done"] == 3 and final["progress"] == 100.0
        results = client.get(f"/jobs/{final['job_id']}/results").json()
        search = results["auto"]
        assert search["trials"] == 3 and search["front"] and search["chosen"]["candidate"]["params"] <= 5000
        assert search["final"]["seeds"] == [0, 1, 2] and search["final"]["latency_ms_measured"] > 0
        assert {"front.png", "auto.json", "trials.md", "report.json", "student.int8.onnx"} <= set(results["artifacts"])
        measured = [r for r in results["recommendations"] if r.startswith("int8 (ONNX Runtime, static) cuts the size")]
        assert len(measured) == 1 and "points of test accuracy (359 images)" in measured[0], results["recommendations"]
        report = client.get(f"/jobs/{final['job_id']}/artifacts/report.json").json()
        assert report["spec"]["student"]["model_args"] == search["chosen"]["candidate"]["model_args"]
        png = client.get(f"/jobs/{final['job_id']}/artifacts/front.png")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    service.stop_workers()
    _front_renders_in_chromium(service, final["job_id"])


def _front_renders_in_chromium(service, job_id: str) -> None:
    """The job page of the dashboard shows the front among its plots, in a real headless Chromium."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (make setup installs it)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            page = browser.new_page()
            page.goto(service.url + "/ui/login")
            page.fill("#key", service.keys["alice"])
            page.click("#login-form button[type=submit]")
            page.wait_for_url("**/ui/jobs")
            page.goto(f"{service.url}/ui/jobs/{job_id}")
            page.wait_for_selector("#plots img[alt='front.png']", timeout=60_000)
            deadline = time.time() + 30
            while not page.eval_on_selector("#plots img[alt='front.png']", "i => i.complete && i.naturalWidth > 0"):
                assert time.time() < deadline, "the front plot did not load"
                time.sleep(0.1)
            assert "auto.json" in page.inner_text("#artifacts")
        finally:
            browser.close()


def test_the_documented_shape_without_an_architecture_is_a_search(service):
    teacher = upload_teacher(service)
    body = {"name": "find me a student", "teacher_model_ids": [teacher], "dataset_config": {"dataset": "digits"},
            "student_specification": {"parameter_count": 20000, "target_performance": {"accuracy": 0.9},
                                      "efficiency_constraints": {"max_inference_time_ms": 2.0}},
            "constraints": {"budget_constraints": {"max_duration_hours": 0.5}}}
    with service.client() as client:
        created = client.post("/jobs", json=body)
        assert created.status_code == 201, created.text
        assert "automated search (its budget of 1080 s)" in created.json()["estimate_basis"]  # 60 % of 0.5 h
        assert client.delete(f"/jobs/{created.json()['job_id']}").status_code == 200
        stray = client.post("/jobs", json={**body, "student_specification": {"model_args": {"hidden": [8]}}})
        assert stray.status_code == 422
        assert stray.json()["detail"][0]["loc"] == ["body", "student_specification", "model_args"]
        text_search = {"task": "language_modeling", "data": {"dataset": "austen"},
                       "teacher": {"pretrained": "smollm2-135m-instruct"}, "student": {"model": "gpt"},
                       "auto": {"constraints": {"max_latency_ms": 2.0}}}
        refused = client.post("/jobs", json={"spec": text_search})  # a language model's speed is its decoding
        assert refused.status_code == 422 and "give min_decode_tokens_per_s" in refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "spec", "auto"]


def test_a_cancelled_search_keeps_its_partial_front(service):
    teacher = upload_teacher(service)
    spec = {"name": "long search", "data": {"dataset": "digits"}, "student": {"model": "mlp"},
            "training": {"seeds": [0], "batch_size": 16}, "output": {"tensorboard": False},
            "auto": {"budget": {"max_trials": 40},
                     "space": {"families": ["mlp"], "epochs": [2, 60], "strategies": ["response"]}}}
    with service.client() as client:
        job = client.post("/jobs", json={"spec": spec, "teacher_model_ids": [teacher]}).json()
        service.start_worker()
        service.wait(job["job_id"], lambda j: (j["current_metrics"].get("auto") or {}).get("trials_done", 0) >= 2,
                     timeout=180)
        assert client.delete(f"/jobs/{job['job_id']}").status_code == 200
        final = service.wait(job["job_id"], lambda j: j["status"] in TERMINAL, timeout=120)
        assert final["status"] == "cancelled", service.worker_logs()
        results = client.get(f"/jobs/{job['job_id']}/results").json()
        assert results["partial"] is True and results["auto"]["trials"] >= 2 and results["auto"]["front"]
        assert results["auto"]["stopped"] == "cancelled by the user"
        assert "front.png" in results["artifacts"]
    service.stop_workers()
