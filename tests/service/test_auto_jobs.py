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
from distillab.engine.loop import Stop
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
            status = page.inner_text("#job-search")  # what the search did: trials, time, best point
            assert status.startswith("3 of 3 trials · ") and "best validation accuracy" in status and "mlp" in status
        finally:
            browser.close()


def _study_trials(service, job: str, timeout: float, until) -> list:
    """The search's trials in the service's study database, polled until ``until(trials)``."""
    import optuna
    from sqlalchemy.exc import OperationalError

    from distillab.autodistill.shared import LATENCY_KEY

    deadline = time.time() + timeout
    while True:
        try:
            study = optuna.load_study(study_name=f"job-{job}", storage=f"sqlite:///{service.data_dir / 'studies.db'}")
            if LATENCY_KEY in study.user_attrs and until(study.trials):
                return study.trials
        except (KeyError, OperationalError):  # not created yet, or busy
            pass
        assert time.time() < deadline, service.worker_logs()
        time.sleep(0.2)


def test_idle_workers_train_trials_of_a_running_search_until_it_is_cancelled(service):
    import optuna

    complete = optuna.trial.TrialState.COMPLETE
    teacher = upload_teacher(service)
    spec = {"name": "shared digits search", "data": {"dataset": "digits"}, "student": {"model": "mlp"},
            "training": {"seeds": [0], "batch_size": 64}, "output": {"tensorboard": False, "plots": False},
            "auto": {"constraints": {"max_params": 20000}, "budget": {"max_trials": 200},  # more than either trains
                     "space": {"families": ["cnn"], "epochs": [3, 9], "strategies": ["response"]}}}
    with service.client() as client:
        created = client.post("/jobs", json={"spec": spec, "teacher_model_ids": [teacher]})
        assert created.status_code == 201, created.text
        job = created.json()["job_id"]
        service.start_worker()
        _study_trials(service, job, 120, lambda trials: any(t.state == complete for t in trials))
        service.start_worker()  # idle: it joins the running search
        _study_trials(service, job, 180, lambda trials: any(
            t.state == complete and t.user_attrs.get("joined") for t in trials))
        assert client.delete(f"/jobs/{job}").status_code == 200
        final = service.wait(job, lambda j: j["status"] in TERMINAL, timeout=120)
        assert final["status"] == "cancelled", service.worker_logs()
        deadline = time.time() + 60
        while "stopped helping job" not in service.worker_logs():  # the helper saw the job end
            assert time.time() < deadline, service.worker_logs()
            time.sleep(0.5)
        search = client.get(f"/jobs/{job}/results").json()["auto"]  # the partial front
    service.stop_workers()
    trained = [t for t in _study_trials(service, job, 30, lambda trials: True) if t.state == complete]
    assert len({t.user_attrs["worker"] for t in trained}) == 2  # both workers trained trials
    assert any(t.user_attrs["joined"] for t in trained) and not all(t.user_attrs["joined"] for t in trained)
    claims = [(t.user_attrs["rung"], t.user_attrs["config"]) for t in trained]
    assert len(claims) == len(set(claims))  # no configuration trained twice at a rung
    assert search["stopped"] == "cancelled by the user" and search["trials"] >= 2 and search["front"]


def test_a_search_jobs_device_time_counts_its_helpers_trials():
    from distillab.service.worker import Budget, JobProgress
    from distillab.spec_io import parse_spec

    spec = parse_spec({"name": "x", "data": {"dataset": "digits"}, "teacher": {"model": "mlp"},
                       "student": {"model": "mlp"}})
    progress = JobProgress(spec, time.monotonic(), 100.0, Budget({}, 0.5))
    progress.on_search({"trials_done": 1, "trials_planned": 5, "helper_trial_seconds": 30.0})  # counted before
    assert 100.0 <= progress.device_seconds() < 110.0
    progress.on_search({"trials_done": 3, "trials_planned": 5, "helper_trial_seconds": 75.0})
    assert 145.0 <= progress.device_seconds() < 155.0  # 45 s of helpers' trials since this attempt began
    capped = JobProgress(spec, time.monotonic(), 0.0, Budget({"budget": {"max_duration_hours": 0.01}}, 0.5))
    capped.on_search({"trials_done": 0, "trials_planned": 5, "helper_trial_seconds": 0.0})
    with pytest.raises(Stop, match="max_duration_hours 0.01 exceeded"):  # 36 s: the helpers' time spends it too
        capped.on_search({"trials_done": 2, "trials_planned": 5, "helper_trial_seconds": 40.0})


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
