"""Per-user quotas and limits on a real server (SQLite and PostgreSQL): requests per minute
(429 with Retry-After), stored bytes (403), and admins who see and cancel anyone's job, audited."""

import subprocess

import pytest

from service_databases import postgres_server  # noqa: F401  (fixture)
from service_processes import CLI, running_service, seed_body, upload_teacher

LIMITS = {"DISTILLAB_REQUESTS_PER_MINUTE": "30", "DISTILLAB_MAX_STORED_MB_PER_USER": "0.01"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def limited(request, tmp_path_factory):
    with running_service(request, tmp_path_factory, LIMITS) as running:
        out = subprocess.run([*CLI, "users", "add", "carol"], env=running.env, capture_output=True, text=True,
                             check=True)
        running.keys["carol"] = out.stdout.strip().splitlines()[-1]
        yield running


def test_requests_over_the_per_user_rate_get_429_with_retry_after(limited):
    with limited.client("carol") as carol, limited.client("bob") as bob:
        answers = [carol.get("/jobs") for _ in range(40)]
        statuses = [a.status_code for a in answers]
        assert statuses[:30] == [200] * 30 and statuses[-1] == 429, statuses
        refused = answers[-1]
        assert "DISTILLAB_REQUESTS_PER_MINUTE" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert bob.get("/jobs").status_code == 200  # the limit is per user


def test_a_user_over_the_storage_quota_gets_403_on_new_jobs_and_uploads(limited):
    teacher = upload_teacher(limited, "bob")  # under the quota before it: accepted (about 20 kB)
    with limited.client("bob") as bob, limited.client("admin") as admin:
        for response in (bob.post("/jobs", json=seed_body(teacher)),
                         bob.post("/models", content=b"\0" * 100, params={"name": "t", "architecture": "mlp",
                                                                            "dataset": "digits"})):
            assert response.status_code == 403, response.text
            assert "DISTILLAB_MAX_STORED_MB_PER_USER" in response.json()["detail"]
        assert admin.get("/jobs").status_code == 200  # another user is not affected


def test_admins_see_and_cancel_any_job_and_it_is_audited(limited):
    teacher = upload_teacher(limited, "alice", hidden=8)  # small: alice stays under the quota
    with limited.client("alice") as alice, limited.client("admin") as admin, limited.client("bob") as bob:
        job = alice.post("/jobs", json=seed_body(teacher))
        assert job.status_code == 201, job.text
        job_id = job.json()["job_id"]
        assert bob.get("/jobs", params={"all_users": "true"}).status_code == 403
        assert bob.delete(f"/jobs/{job_id}").status_code == 404  # still invisible to other users
        listed = admin.get("/jobs", params={"all_users": "true"}).json()["items"]
        assert job_id in [j["job_id"] for j in listed]
        assert job_id not in [j["job_id"] for j in admin.get("/jobs").json()["items"]]  # own jobs by default
        assert admin.get(f"/jobs/{job_id}").json()["owner_id"] == alice.get(f"/jobs/{job_id}").json()["owner_id"]
        assert admin.delete(f"/jobs/{job_id}").json()["status"] == "cancelled"
        audit = admin.get("/audit", params={"action": "admin.job.cancel"}).json()["items"]
        assert [(e["action"], e["target"]) for e in audit] == [("admin.job.cancel", job_id)]
        assert alice.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
