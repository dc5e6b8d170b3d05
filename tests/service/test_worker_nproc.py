"""A worker started with --nproc 2 runs each job in 2 data-parallel processes (torchrun, gloo):
the job completes with its report and its progress reaches 100 %, and a cancelled job's
processes stop (none waits on a peer that left) and the job ends cancelled with partial results."""

import os

import pytest

from service_processes import running_service, seed_body, upload_teacher

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two processes need two cores")


# SQLite only: what runs in two processes is the job, not the store (the store's claims and leases
# are tested on PostgreSQL in test_api and test_store)
@pytest.fixture(scope="module", params=["sqlite"])
def service(request, tmp_path_factory):
    with running_service(request, tmp_path_factory) as running:
        running.start_worker("--nproc", "2")
        yield running


def test_a_job_runs_in_two_processes_and_a_cancelled_one_stops(service):
    teacher = upload_teacher(service)
    with service.client() as client:
        job = client.post("/jobs", json=seed_body(teacher, epochs=2, seeds=[0, 1])).json()["job_id"]
        done = service.wait(job, lambda j: j["status"] in ("completed", "failed"), timeout=300)
        assert done["status"] == "completed", (done, service.worker_logs())
        assert done["progress"] == 100.0 and done["results_available"]
        results = client.get(f"/jobs/{job}/results").json()
        assert results["performance_metrics"]["seeds"] == 2
        folder = service.data_dir / "jobs" / job
        assert (folder / "run" / "report.json").exists() and (folder / "progress.json").exists()

        long = client.post("/jobs", json=seed_body(teacher, epochs=200, seeds=[0])).json()["job_id"]
        service.wait(long, lambda j: j["status"] == "running" and j["progress"] > 0, timeout=300)
        assert client.delete(f"/jobs/{long}").json()["status"] == "cancelling"
        ended = service.wait(long, lambda j: j["status"] not in ("running", "cancelling"), timeout=120)
        assert ended["status"] == "cancelled", (ended, service.worker_logs())
        assert ended["partial_results_available"]
