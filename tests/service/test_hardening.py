"""The service as a careless user or an attacker meets it, on SQLite and PostgreSQL: every bad
request answers a 4xx with a short JSON body, limits answer 413/422/429, a killed server
loses nothing, a full disk fails one job cleanly, and the data directory stays private."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import uuid

import httpx
import pytest
import torch
from service_databases import postgres_server  # noqa: F401  (fixture)
from service_processes import PREFIX, digits_teacher, running_service, seed_body, upload_teacher

from distillab.models.loading import save_model
from distillab.models.zoo import build_model

LIMITS = {"DISTILLAB_MAX_QUEUED_JOBS_PER_USER": "3", "DISTILLAB_MAX_SEEDS": "5",
          "DISTILLAB_MAX_MODEL_PARAMETERS": "1000000", "DISTILLAB_MAX_JOB_DEVICE_HOURS": "0.1",
          "DISTILLAB_AUTH_FAILURES_PER_MINUTE": "5", "DISTILLAB_MAX_BODY_KB": "64"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hardened(request, tmp_path_factory):
    with running_service(request, tmp_path_factory, LIMITS) as running:
        running.teacher = upload_teacher(running)
        yield running


def raw_post(service, text: str, user: str = "alice") -> httpx.Response:
    """POST /jobs with a body written by hand (JSON that json.dumps would not write)."""
    with service.client(user) as client:
        return client.post("/jobs", content=text.encode("utf-8", "surrogatepass"),
                           headers={"Content-Type": "application/json"})


def assert_clean_4xx(response: httpx.Response, status, *needles) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    assert len(response.content) < 8_000  # never an echo of a large input
    text = json.dumps(response.json())
    for needle in needles:
        assert needle in text, text


def deep(levels: int) -> str:
    return '{"x": ' * levels + "1" + "}" * levels


BAD_BODIES = {
    "unknown model_args key": ({"student_specification": {"architecture": "mlp", "model_args": {"hiden": [16]}}},
                               "hiden"),
    "negative hidden size": ({"student_specification": {"architecture": "mlp", "model_args": {"hidden": [-1]}}},
                             "model_args"),
    "dropout 5": ({"student_specification": {"architecture": "mlp", "model_args": {"dropout": 5}}}, "dropout"),
    "NUL in the name": ({"name": "a\x00b"}, "U+0000"),
    "NUL in the description": ({"description": "x\x00"}, "U+0000"),
    "NUL in a strategy parameter key": ({"strategy_params": {"t\x00": 1}}, "U+0000"),
    "seeds of 2**64": ({"training": {"epochs": 1, "seeds": [2**64]}}, "training"),
    "too many seeds": ({"training": {"epochs": 1, "seeds": [0, 1, 2, 3, 4, 5]}}, "DISTILLAB_MAX_SEEDS"),
    "a student over the parameter cap": (
        {"student_specification": {"architecture": "mlp", "model_args": {"hidden": [100_000]}}},
        "DISTILLAB_MAX_MODEL_PARAMETERS"),
    "a giant student": ({"student_specification": {"architecture": "mlp", "model_args": {"hidden": [10**9]}}},
                        "parameters"),
    "a zero-width student": ({"student_specification": {"architecture": "mlp", "model_args": {"hidden": [0]}}},
                             "0 is out of range"),
    "a zero-width wrn": ({"student_specification": {"architecture": "wrn", "model_args": {"widen_factor": 0}}},
                         "0 is out of range for wrn"),
    "1,000 hidden layers": ({"student_specification": {"architecture": "mlp",
                                                         "model_args": {"hidden": [1] * 1_000}}}, "at most 64 layers"),
    "a resnet 60,002 deep": ({"student_specification": {"architecture": "resnet",
                                                        "model_args": {"depth": 60002, "width": 1}}}, "60002 is out of range"),
    "a job over the device-hour cap": ({"training": {"epochs": 10_000, "seeds": [0, 1, 2, 3, 4]}},
                                       "DISTILLAB_MAX_JOB_DEVICE_HOURS"),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_job_bodies_are_clean_422s(hardened, case):
    changes, needle = BAD_BODIES[case]
    body = {**seed_body(hardened.teacher), **changes}
    with hardened.client() as client:
        assert_clean_4xx(client.post("/jobs", json=body), 422, needle)


@pytest.mark.parametrize("case, text_of, needle", [
    ("lone surrogate in the name", lambda b: b.replace('"digits test"', '"\\ud800"'), "name"),
    ("-Infinity budget", lambda b: b[:-1] + ', "constraints": {"budget_constraints": {"max_cost_usd": -Infinity}}}',
     "max_cost_usd"),
    ("Infinity learning rate", lambda b: b.replace('"epochs": 2', '"epochs": 2, "lr": Infinity'), "finite"),
    ("NaN in model_args", lambda b: b.replace('"hidden": [16]', '"hidden": [16], "x": NaN'), "finite"),
    ("model_args nested 500 deep", lambda b: b.replace('{"hidden": [16]}', deep(500)), "nested"),
    ("model_args nested 10,000 deep", lambda b: b.replace('{"hidden": [16]}', "[" * 10_000 + "]" * 10_000), ""),
])
def test_json_no_encoder_writes_is_a_clean_4xx(hardened, case, text_of, needle):
    response = raw_post(hardened, text_of(json.dumps(seed_body(hardened.teacher))))
    assert_clean_4xx(response, (400, 422), needle)


@pytest.mark.parametrize("path, query", [
    *[(path, query) for path in ("/jobs", "/audit") for query in (
        "offset=100000000000000000000", "offset=9223372036854775808", "offset=-1", "limit=0")],
    ("/jobs", "strategy=a%00b"), ("/jobs", "status=nope"), ("/audit", "action=a%00b"),
])
def test_bad_query_parameters_are_clean_422s(hardened, path, query):
    with hardened.client("admin") as client:
        assert_clean_4xx(client.get(f"{path}?{query}"), 422)


def test_a_large_body_is_refused_before_it_is_read(hardened):
    body = seed_body(hardened.teacher)
    body["description"] = "x" * 200_000  # over the 64 KB limit of this server
    with hardened.client() as client:
        response = client.post("/jobs", json=body)
    assert_clean_4xx(response, 413, "DISTILLAB_MAX_BODY_KB")


def test_bad_uploads(hardened, tmp_path):
    model = build_model("mlp", (1, 8, 8), 10, {"hidden": [64]})
    with torch.no_grad():
        model.classifier.bias[3] = float("nan")
    nan_file = tmp_path / "nan.safetensors"
    save_model(model, nan_file)
    good = digits_teacher(tmp_path / "good.safetensors").read_bytes()
    params = {"name": "t", "architecture": "mlp", "dataset": "digits", "model_args": '{"hidden": [64]}'}
    with hardened.client() as client:
        assert_clean_4xx(client.post("/models", content=nan_file.read_bytes(), params=params), 400, "NaN")
        assert_clean_4xx(client.post("/models", content=good, params={**params, "name": "a\x00b"}), 422, "U+0000")
        assert_clean_4xx(client.post("/models", content=good, params={
            **params, "model_args": '{"hidden": [1000000000]}'}), 422, "DISTILLAB_MAX_MODEL_PARAMETERS")
        assert_clean_4xx(client.post("/models", content=good, params={**params, "model_args": deep(100)}), 422,
                         "nested")
        assert_clean_4xx(client.post("/models", content=good, params={**params, "model_args": "[1, 1, 1"}), 422)


def test_the_queue_cap_holds_under_forty_simultaneous_submits(hardened):
    """JSON and YAML submits at once from an empty queue: exactly the cap (3) get in; the rest
    get a 429 that states the limit."""
    from concurrent.futures import ThreadPoolExecutor

    import yaml

    from test_api import _spec_of

    body = seed_body(hardened.teacher)
    spec_text = yaml.safe_dump(_spec_of({**body, "dataset_config": {"dataset": "digits", "sample_count": 300}}))

    def submit(index):
        with hardened.client() as client:
            if index % 2:
                return client.post("/jobs", json=body)
            return client.post("/jobs/yaml", content=spec_text, headers={"Content-Type": "application/yaml"})

    with ThreadPoolExecutor(40) as pool:
        responses = list(pool.map(submit, range(40)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 3 and statuses.count(429) == 37, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert_clean_4xx(refused, 429, "the limit is 3")
    with hardened.client() as client:
        for response in responses:
            if response.status_code == 201:
                client.delete(f"/jobs/{response.json()['job_id']}")


def test_queued_jobs_per_user_are_capped(hardened):
    with hardened.client() as client, hardened.client("bob") as bob:
        bob_teacher = upload_teacher(hardened, "bob")
        created = []
        for _ in range(3):
            response = client.post("/jobs", json=seed_body(hardened.teacher))
            assert response.status_code == 201, response.text
            created.append(response.json()["job_id"])
        refused = client.post("/jobs", json=seed_body(hardened.teacher))
        assert_clean_4xx(refused, 429, "DISTILLAB_MAX_QUEUED_JOBS_PER_USER")
        assert refused.headers["retry-after"]
        assert bob.post("/jobs", json=seed_body(bob_teacher)).status_code == 201  # the limit is per user
        assert client.delete(f"/jobs/{created[0]}").json()["status"] == "cancelled"
        again = client.post("/jobs", json=seed_body(hardened.teacher))
        assert again.status_code == 201, again.text  # a cancelled job freed a slot
        for job_id in [*created[1:], again.json()["job_id"]]:
            client.delete(f"/jobs/{job_id}")
        for job in bob.get("/jobs").json()["items"]:
            bob.delete(f"/jobs/{job['job_id']}")


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_killed_server_loses_nothing_and_files_stay_private(hardened):
    """kill -9 of the API server mid-job: after a restart the job's status and results are
    intact and it completes (the worker never noticed)."""
    with hardened.client() as client:
        job_id = client.post("/jobs", json=seed_body(hardened.teacher, epochs=12)).json()["job_id"]
    hardened.start_worker("--max-jobs", "1", "--threads", "1")
    before = hardened.wait(job_id, lambda job: job["status"] == "running" and job["progress"] > 5)
    hardened.stop_server(signal.SIGKILL)
    with pytest.raises(httpx.TransportError):
        httpx.get(hardened.url + "/healthz", timeout=2)
    hardened.start_server()
    with hardened.client() as client:
        after = client.get(f"/jobs/{job_id}").json()
        assert after["job_id"] == job_id and after["created_at"] == before["created_at"]
        assert after["progress"] >= before["progress"]
    done = hardened.wait(job_id, lambda job: job["status"] in ("completed", "failed"), timeout=240)
    assert done["status"] == "completed", (done, hardened.worker_logs())
    with hardened.client() as client:
        results = client.get(f"/jobs/{job_id}/results")
    assert results.status_code == 200 and results.json()["partial"] is False
    hardened.stop_workers()

    data = hardened.data_dir
    assert mode(data) == 0o700
    job_folder = data / "jobs" / job_id
    files = [p for p in job_folder.rglob("*") if p.is_file()]
    assert files and all(mode(p) & 0o077 == 0 for p in files), [(p, oct(mode(p))) for p in files if mode(p) & 0o077]
    assert all(mode(p) & 0o077 == 0 for p in (data / "models").rglob("*"))
    database = hardened.tmp / "service.db"
    if database.exists():
        assert mode(database) & 0o077 == 0


def _mount_tmpfs(folder, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {result.stderr.strip()}")


def test_a_full_disk_fails_the_job_cleanly_and_the_service_keeps_answering(hardened):
    """The job's folder is a 1 MB tmpfs that its first checkpoint overflows; a full model
    folder turns uploads into 507s. Earlier results stay readable."""
    with hardened.client() as client:
        earlier = [j["job_id"] for j in client.get("/jobs", params={"status": "completed"}).json()["items"]]
        body = seed_body(hardened.teacher, epochs=3)
        body["student_specification"]["model_args"] = {"hidden": [512, 512]}  # ~2 MB of checkpoint per epoch
        job_id = client.post("/jobs", json=body).json()["job_id"]
    job_folder = hardened.data_dir / "jobs" / job_id
    models = hardened.data_dir / "models"
    _mount_tmpfs(job_folder, "1m")
    try:
        hardened.start_worker("--max-jobs", "1", "--threads", "1")
        failed = hardened.wait(job_id, lambda job: job["status"] in ("completed", "failed"), timeout=180)
        assert failed["status"] == "failed" and "disk is full" in failed["error"], failed
        assert not (job_folder / "run.partial").exists()  # the unfinished run was removed
        assert hardened.workers[-1].wait(timeout=30) == 0  # the worker finished its loop, it did not crash

        _mount_tmpfs(models, "64k")
        (models / "filler").write_bytes(b"\0" * 60_000)
        with hardened.client() as client:
            teacher_file = digits_teacher(hardened.tmp / f"{uuid.uuid4().hex}.st")
            upload = client.post("/models", content=teacher_file.read_bytes(), params={
                "name": "t", "architecture": "mlp", "dataset": "digits", "model_args": '{"hidden": [64]}'})
            assert_clean_4xx(upload, 507, "disk is full")
            assert client.get(f"/jobs/{job_id}").json()["status"] == "failed"
            for old in earlier:
                assert client.get(f"/jobs/{old}/results").status_code == 200
    finally:
        hardened.stop_workers()
        for folder in (models, job_folder):
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_wrong_keys_are_rate_limited_without_locking_out_valid_ones(hardened):
    """Wrong keys from one address are limited (a forged X-Forwarded-For does not move them to
    another address: no proxy is trusted by default); a valid key from that address still works.
    The requests come from an address of their own (127.0.0.2), so the limit they reach neither
    depends on nor affects the module's other tests."""
    own_address = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=hardened.url + PREFIX, headers={"X-API-Key": "wrong"}, timeout=30,
                      transport=own_address) as wrong:
        statuses = [wrong.get("/jobs", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(5)]
        assert statuses == [401] * 5
        limited = wrong.get("/jobs", headers={"X-Forwarded-For": "10.0.1.1"})
        assert_clean_4xx(limited, 429, "too many wrong API keys")
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert wrong.get("/jobs", headers={"X-API-Key": ""}).status_code in (401, 429)
    valid = {"X-API-Key": hardened.keys["alice"]}  # someone else behind the same address, with a valid key
    with httpx.Client(base_url=hardened.url + PREFIX, headers=valid, timeout=30,
                      transport=httpx.HTTPTransport(local_address="127.0.0.2")) as client:
        assert client.get("/jobs").status_code == 200
    assert httpx.get(hardened.url + "/healthz").status_code == 200


@pytest.mark.parametrize("job_id", ["%00", "a%00b", "x" * 10_000, "0" * 31 + "g"])
def test_ids_that_cannot_be_ids_are_a_short_404_on_every_job_route(hardened, job_id):
    """A NUL (which PostgreSQL refuses in a text value) or a 10,000-character id never reaches
    the database; the answer echoes at most 200 characters of it."""
    with hardened.client("admin") as client:
        for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/results"), ("GET", "/events"),
                             ("GET", "/artifacts/report.md")]:
            response = client.request(method, f"/jobs/{job_id}{path}")
            assert_clean_4xx(response, 404, "no job")
            assert len(response.content) < 400, (method, path, len(response.content))
        response = client.post("/jobs", json={**seed_body(hardened.teacher), "teacher_model_ids": [job_id]})
        assert response.status_code in (404, 422) and len(response.content) < 1000


def test_security_headers_and_a_405_that_lists_every_method(hardened):
    page = httpx.get(hardened.url + "/ui/jobs")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    with hardened.client() as client:
        assert client.get("/jobs").headers["x-content-type-options"] == "nosniff"
        refused = client.put("/jobs")
        assert_clean_4xx(refused, 405)
        assert {m.strip() for m in refused.headers["allow"].split(",")} >= {"GET", "POST"}
