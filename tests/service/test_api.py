"""The job service end to end: a real uvicorn server and real worker processes, on SQLite
and on PostgreSQL."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load
from service_databases import postgres_server  # noqa: F401  (fixture)
from service_processes import service  # noqa: F401  (fixture)
from service_processes import PREFIX, UPLOAD_LIMIT_MB, seed_body, upload_teacher

from distillab import data as data_module
from distillab.tasks.image_classification import evaluate
from distillab.models.zoo import build_model
from distillab.spec import DataSpec

TERMINAL = ("cancelled", "stopped", "completed", "failed")


def read_events(client, job_id: str, timeout: float = 180) -> list[tuple[str, dict]]:
    """Every SSE event of a job until its ``end`` event."""
    events, kind = [], None
    with client.stream("GET", f"/jobs/{job_id}/events", timeout=timeout) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
                if kind == "end":
                    break
    return events


def test_lifecycle_create_watch_results_download_load(service):
    teacher = upload_teacher(service)
    with service.client() as client:
        created = client.post("/jobs", json={**seed_body(teacher, epochs=3, seeds=[0, 1]),
                                             "usage_stats": {"monthly_volume": 10_000_000},
                                             "constraints": {"quality_thresholds": {"min_accuracy": 0.5}}})
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["status"] == "queued" and job["strategy"] == "response" and job["name"] == "digits test"
        assert job["estimated_duration_seconds"] > 0 and job["estimated_cost"] > 0
        assert job["estimate_basis"].startswith("MACs per sample")
        service.start_worker()
        events = read_events(client, job["job_id"])
        kinds = [kind for kind, _ in events]
        assert kinds[-1] == "end" and events[-1][1]["status"] == "completed", service.worker_logs()
        progress = [state["progress"] for kind, state in events if kind == "progress"]
        assert progress == sorted(progress) and progress[-1] == 100.0
        running = [state for _, state in events if state["status"] == "running"]
        assert running and {s["current_phase"] for s in running} <= {None, "teacher", "teacher_outputs", "scratch",
                                                                    "distilling", "evaluating"}

        status = client.get(f"/jobs/{job['job_id']}").json()
        assert status["results_available"] and status["progress"] == 100.0 and status["device_seconds"] > 0
        results = client.get(f"/jobs/{job['job_id']}/results").json()
        for section in ("performance_metrics", "efficiency_gains", "quality_assessment", "deployment_ready",
                        "recommendations", "cost_analysis", "artifacts"):
            assert section in results
        report = client.get(results["artifacts"]["report.json"].removeprefix(PREFIX)).json()
        distilled = next(m for m in report["models"] if m["role"] == "distilled")
        assert results["performance_metrics"]["accuracy"] == distilled["accuracy"]["mean"]
        assert results["quality_assessment"]["distilled_vs_scratch"] == report["comparisons"][0]
        ready = distilled["accuracy"]["mean"] >= 0.5
        assert results["deployment_ready"] is ready
        assert any("min_accuracy" in r for r in results["recommendations"]) is (not ready)
        cost = results["cost_analysis"]
        assert cost["total_training_cost"] == pytest.approx(status["device_seconds"] / 3600 * 0.5)
        teacher_model = next(m for m in report["models"] if m["role"] == "teacher")
        saved = teacher_model["latency_ms"] - distilled["latency_ms"]
        assert cost["projected_monthly_savings"] == pytest.approx(saved / 1000 / 3600 * 10_000_000 * 0.5)

        # the student: download, load, and it scores what the report says for its seed
        facts = client.get(results["artifacts"]["student.json"].removeprefix(PREFIX)).json()
        blob = client.get(results["model_download_url"].removeprefix(PREFIX))
        assert blob.status_code == 200
        student = build_model(facts["model"], tuple(facts["in_shape"]), facts["num_classes"], facts["model_args"])
        student.load_state_dict(load(blob.content))
        bundle = data_module.build(DataSpec(dataset="digits"), facts["seed"])
        accuracy = evaluate(student, bundle.test, bundle.normalize, 512, torch.device("cpu")).accuracy
        per_seed = dict(zip(report["seeds"], distilled["accuracy"]["per_seed"]))
        assert accuracy == pytest.approx(per_seed[facts["seed"]], abs=1e-6)
        assert "student.onnx" in results["artifacts"]

        # a second, identical job is estimated from the first one's measured device time
        service.stop_workers()  # (so that it stays queued, and its cancellation is immediate)
        again = client.post("/jobs", json=seed_body(teacher, epochs=3, seeds=[0, 1])).json()
        assert again["estimate_basis"].startswith("history")
        assert client.delete(f"/jobs/{again['job_id']}").json()["status"] == "cancelled"

        listing = client.get("/jobs", params={"status": "completed", "strategy": "response", "limit": 1}).json()
        assert listing["total"] >= 1 and len(listing["items"]) == 1 and listing["items"][0]["status"] == "completed"
    with service.client("admin") as admin:
        actions = [e["action"] for e in admin.get("/audit", params={"limit": 1000}).json()["items"]]
        for action in ("model.upload", "job.create", "artifact.download", "job.cancel"):
            assert action in actions
        analytics = admin.get("/analytics").json()
        assert analytics["completed_jobs"] >= 1 and analytics["success_rate"] is not None
        assert analytics["popular_strategies"]["response"] >= 2
        assert analytics["average_improvement"] is not None
        assert set(analytics["system_utilization"]) == {"queue_length", "live_workers", "busy_workers",
                                                        "current_load"}


def test_cancel_mid_run_keeps_partial_results(service):
    teacher = upload_teacher(service)
    with service.client() as client:
        job = client.post("/jobs", json=seed_body(teacher, epochs=60, batch_size=8)).json()
        service.start_worker()
        service.wait(job["job_id"], lambda j: j["current_phase"] == "scratch" and "val_accuracy" in j["current_metrics"])
        cancelled = client.delete(f"/jobs/{job['job_id']}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] in ("cancelling", "cancelled")
        final = service.wait(job["job_id"], lambda j: j["status"] in TERMINAL)
        assert final["status"] == "cancelled" and final["stop_reason"] == "cancelled by the user"
        assert final["partial_results_available"] and not final["results_available"]
        results = client.get(f"/jobs/{job['job_id']}/results").json()
        assert results["partial"] is True and results["stopped"] == "cancelled by the user"
        scratch = results["phases"][0]
        assert scratch["role"] == "scratch" and not scratch["complete"] and scratch["epochs_done"] >= 1
        name = "seed_0_scratch_student.safetensors"
        assert name in results["artifacts"]
        weights = client.get(f"/jobs/{job['job_id']}/artifacts/{name}")
        assert weights.status_code == 200 and "classifier.weight" in load(weights.content)
        assert client.delete(f"/jobs/{job['job_id']}").status_code == 409
    service.stop_workers()


def test_budget_stops_the_job_with_partial_results_and_says_why(service):
    teacher = upload_teacher(service)
    with service.client() as client:
        body = {**seed_body(teacher, epochs=200, batch_size=8),
                "constraints": {"budget_constraints": {"max_duration_hours": 2 / 3600}}}
        job = client.post("/jobs", json=body).json()
        service.start_worker()
        final = service.wait(job["job_id"], lambda j: j["status"] in TERMINAL)
        assert final["status"] == "stopped", final
        assert "max_duration_hours" in final["stop_reason"]
        assert final["device_seconds"] >= 2.0  # stopped once the budget was spent, not before
        results = client.get(f"/jobs/{job['job_id']}/results").json()
        assert results["partial"] and "max_duration_hours" in results["stopped"]
        assert not any(phase["complete"] for phase in results["phases"])  # and long before 200 epochs
    service.stop_workers()


def test_killed_worker_job_resumes_from_its_checkpoint(service):
    teacher = upload_teacher(service)
    with service.client() as client:
        job = client.post("/jobs", json=seed_body(teacher, epochs=12, batch_size=8)).json()
        first = service.start_worker()
        service.wait(job["job_id"], lambda j: (j["current_metrics"].get("epoch") or 0) >= 3
                     and j["current_phase"] == "scratch")
        first.send_signal(signal.SIGKILL)
        first.wait()
        checkpoint = service.data_dir / "jobs" / job["job_id"] / "run.partial" / "seed_0" / "scratch" / "checkpoint.pt"
        assert checkpoint.is_file()  # kill -9 leaves every epoch checkpoint in place
        epochs_before = torch.load(checkpoint, weights_only=True)["epoch"]
        assert epochs_before >= 1
        service.start_worker()
        final = service.wait(job["job_id"], lambda j: j["status"] in TERMINAL, timeout=240)
        assert final["status"] == "completed", service.worker_logs()
        assert final["attempts"] == 2
        resumed = final["current_metrics"]["resumed"]
        assert resumed["attempt"] == 2 and resumed["epochs_done"] >= epochs_before
        report = client.get(f"/jobs/{job['job_id']}/artifacts/report.json").json()
        scratch = next(m for m in report["models"] if m["role"] == "scratch")
        assert len(scratch["curves"]["0"]) == 12  # every epoch, once
        log = (service.data_dir / "jobs" / job["job_id"] / "worker.log").read_text()
        assert f"resumed after epoch {epochs_before}" in log
    service.stop_workers()


@contextmanager
def loaded_cpu(processes: int = 3):
    """Busy processes that keep every core loaded (a starved heartbeat is what a loaded machine risks)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(processes)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def test_two_workers_run_twelve_jobs_each_exactly_once_on_a_loaded_cpu(service):
    """Two workers, twelve jobs and three processes spinning on two cores: no job is run twice
    (one attempt each, one "started by worker" line in each job's log)."""
    with loaded_cpu():
        _jobs_on_two_workers(service, 12)


def _jobs_on_two_workers(service, count: int):
    teacher = upload_teacher(service)
    with service.client() as client:
        body = seed_body(teacher, epochs=1)
        body["dataset_config"]["sample_count"] = 300
        ids = []
        for _ in range(count):
            response = client.post("/jobs", json={"spec": {**_spec_of(body), "output": {
                "plots": False, "tensorboard": False, "latency_repeats": 1}}, "teacher_model_ids": [teacher]})
            assert response.status_code == 201, response.text
            ids.append(response.json()["job_id"])
        service.start_worker()
        service.start_worker()
        for job_id in ids:
            final = service.wait(job_id, lambda j: j["status"] in TERMINAL, timeout=300)
            assert final["status"] == "completed" and final["attempts"] == 1, final
    service.stop_workers()
    for job_id in ids:
        log = (service.data_dir / "jobs" / job_id / "worker.log").read_text()
        assert log.count("started by worker") == 1, log


def _spec_of(body: dict) -> dict:
    """The JobSpec of a body in the documented job shape, written by hand (teacher from teacher_model_ids)."""
    return {"name": body["name"], "data": {"dataset": "digits", "limit_train": body["dataset_config"]["sample_count"]},
            "teacher": {"model": "mlp"}, "student": {"model": "mlp", "model_args": {"hidden": [16]}},
            "strategy": {"name": "response"}, "training": body["training"]}


def test_auth_missing_key_wrong_user_and_admin_routes(service):
    teacher = upload_teacher(service)
    with service.client() as alice, service.client("bob") as bob, service.client(None) as anonymous:
        job = alice.post("/jobs", json=seed_body(teacher)).json()["job_id"]
        assert anonymous.get("/jobs").status_code == 401
        assert anonymous.get(f"/jobs/{job}").status_code == 401
        assert "X-API-Key" in anonymous.get("/strategies").json()["detail"]
        with service.client(None) as wrong:
            assert wrong.get("/jobs", headers={"X-API-Key": "dk_not-a-key"}).status_code == 401
        for method, path in (("GET", f"/jobs/{job}"), ("GET", f"/jobs/{job}/results"), ("DELETE", f"/jobs/{job}"),
                             ("GET", f"/jobs/{job}/events"), ("GET", f"/jobs/{job}/artifacts/report.json")):
            response = bob.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
        assert job not in [j["job_id"] for j in bob.get("/jobs").json()["items"]]
        assert teacher not in [m["model_id"] for m in bob.get("/models").json()]
        other = bob.post("/jobs", json=seed_body(teacher))  # alice's model id is not bob's
        assert other.status_code == 422 and other.json()["detail"][0]["loc"] == ["body", "teacher_model_ids", 0]
        assert bob.get("/analytics").status_code == 403
        assert bob.get("/audit").status_code == 403
        assert alice.delete(f"/jobs/{job}").json()["status"] == "cancelled"
    with service.client("admin") as admin:
        assert admin.get("/analytics").status_code == 200
    import httpx

    assert httpx.get(service.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(service.url + "/docs").status_code == 200


def test_bad_requests_get_clear_4xx(service):
    teacher = upload_teacher(service)
    with service.client() as client:
        body = seed_body(teacher, epochs=0)
        body["strategy"] = "nonsense"
        response = client.post("/jobs", json=body)
        assert response.status_code == 422
        locs = {tuple(e["loc"]) for e in response.json()["detail"]}
        assert ("body", "training", "epochs") in locs and ("body", "strategy") in locs, locs
        response = client.post("/jobs", json={"spec": {"teacher": {"model": "mlp"}, "student": {"model": "nope"},
                                                        "training": {"lr": -1}}})
        assert response.status_code == 422
        locs = {tuple(e["loc"]) for e in response.json()["detail"]}
        assert ("body", "spec", "student", "model") in locs and ("body", "spec", "training", "lr") in locs
        response = client.post("/jobs", json={"spec": {"teacher": {"checkpoint": "/etc/passwd"},
                                                        "student": {"model": "mlp"}}})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "spec", "teacher", "checkpoint"]
        assert client.post("/jobs", json={"unknown": 1}).status_code == 422
        assert client.post("/jobs", content=b"not json", headers={"content-type": "application/json"}).status_code == 422

        params = {"name": "t", "architecture": "mlp", "dataset": "digits", "model_args": '{"hidden": [64]}'}
        too_big = client.post("/models", params=params, content=b"\0" * int(UPLOAD_LIMIT_MB * 2**20 + 1024))
        assert too_big.status_code == 413 and "limit" in too_big.json()["detail"]
        buffer = io.BytesIO()
        torch.save({"w": torch.zeros(3)}, buffer)
        pickled = client.post("/models", params=params, content=buffer.getvalue())
        assert pickled.status_code == 400 and "pickle" in pickled.json()["detail"]
        import pickle

        assert client.post("/models", params=params, content=pickle.dumps({"a": 1})).status_code == 400
        wrong_arch = client.post("/models", params={**params, "model_args": '{"hidden": [8]}'},
                                 content=(service.tmp / next(p.name for p in service.tmp.glob("teacher-*"))).read_bytes())
        assert wrong_arch.status_code == 400, wrong_arch.text
        assert client.post("/models", params={**params, "architecture": "os.system"}, content=b"x").status_code == 422
        assert not list((service.data_dir / "models").glob(".upload-*"))  # refused uploads leave nothing behind

        job = client.post("/jobs", json=seed_body(teacher)).json()["job_id"]
        for name in ("../../service.db", "..%2F..%2Fservice.db", "report.json"):
            assert client.get(f"/jobs/{job}/artifacts/{name}").status_code == 404
        assert client.get(f"/jobs/{job}/results").status_code == 409
        assert client.get("/jobs", params={"status": "sleeping"}).status_code == 422
        assert client.delete(f"/jobs/{job}").status_code == 200


def test_api_and_cli_runs_give_identical_results(service, tmp_path):
    import subprocess

    import yaml
    from service_processes import CLI

    spec = {"name": "same", "data": {"dataset": "digits", "limit_train": 400},
            "teacher": {"model": "mlp", "model_args": {"hidden": [32]}, "training": {"epochs": 15, "seeds": [0]}},
            "student": {"model": "mlp", "model_args": {"hidden": [16]}},
            "strategy": {"name": "response"}, "training": {"epochs": 2, "seeds": [0, 1]},
            "output": {"plots": False, "tensorboard": False, "latency_repeats": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    subprocess.run([*CLI, "run", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "cli")], env=service.env,
                   check=True, capture_output=True)
    cli_report = json.loads((tmp_path / "cli" / "report.json").read_text())
    with service.client() as client:
        job = client.post("/jobs", json={"spec": spec}).json()["job_id"]
        service.start_worker()
        final = service.wait(job, lambda j: j["status"] in TERMINAL, timeout=240)
        assert final["status"] == "completed", service.worker_logs()
        api_report = client.get(f"/jobs/{job}/artifacts/report.json").json()
    service.stop_workers()
    for role in ("teacher", "scratch", "distilled"):
        cli_model = next(m for m in cli_report["models"] if m["role"] == role)
        api_model = next(m for m in api_report["models"] if m["role"] == role)
        assert api_model["accuracy"] == cli_model["accuracy"], role
        assert api_model.get("curves") == cli_model.get("curves"), role
    assert api_report["spec"] == cli_report["spec"]


def test_workers_shut_down_by_sigterm_hand_the_job_back(service):
    teacher = upload_teacher(service)
    with service.client() as client:
        job = client.post("/jobs", json=seed_body(teacher, epochs=200, batch_size=8)).json()["job_id"]
        worker = service.start_worker()
        service.wait(job, lambda j: j["status"] == "running" and "val_accuracy" in j["current_metrics"])
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        assert service.wait(job, lambda j: j["status"] == "queued")["attempts"] == 1
        assert client.delete(f"/jobs/{job}").json()["status"] == "cancelled"
    service.stop_workers()
