"""A language-model job over HTTP: submitted to a real uvicorn server as a spec, run by a
worker process, its progress streamed and its results read back (SQLite)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from service_processes import PREFIX, running_service  # noqa: E402

pytestmark = pytest.mark.skipif(not (Path("/usr/lib/R/site-library/janeaustenr/data").is_dir()),
                                reason="r-cran-janeaustenr is not installed")


@pytest.fixture(scope="module", params=["sqlite"])
def service(request, tmp_path_factory):
    with running_service(request, tmp_path_factory) as running:
        yield running


def text_job_spec(tiny_lm_name="smollm2-135m-instruct") -> dict:
    return {
        "name": "austen over http",
        "task": "language_modeling",
        "data": {"dataset": "austen", "context_length": 32, "val_size": 0.02, "test_size": 0.02,
                 "limit_tokens": 512, "limit_eval_tokens": 256},
        "teacher": {"pretrained": tiny_lm_name},
        "student": {"model": "gpt", "model_args": {"layers": 1, "dim": 32, "heads": 2}},
        "strategy": {"name": "token_kd", "params": {"top_k": 8}},
        "training": {"epochs": 1, "batch_size": 8, "seeds": [0, 1], "eval_batch_size": 8},
        "output": {"tensorboard": False, "plots": False, "latency_repeats": 2},
    }


def test_a_text_job_over_http(service):
    with service.client() as client:
        types = client.get("/model-types").json()
        assert "smollm2-135m-instruct" in types["pretrained_teachers"] and "austen" in types["text_corpora"]
        refused = client.post("/jobs", json={"spec": {**text_job_spec(), "teacher": {"hub": "org/model"}}})
        assert refused.status_code == 422 and "does not download models" in refused.text
        created = client.post("/jobs", json={"spec": text_job_spec()})
        assert created.status_code == 201, created.text
        job = created.json()
        assert job["estimated_duration_seconds"] > 0
        service.start_worker()
        status = service.wait(job["job_id"], lambda s: s["status"] in ("completed", "failed"), timeout=600)
        assert status["status"] == "completed", service.worker_logs()
        results = client.get(f"/jobs/{job['job_id']}/results").json()
        report = client.get(results["artifacts"]["report.json"].removeprefix(PREFIX)).json()
        assert report["task"]["metric"] == "bits_per_character"
        teacher = next(m for m in report["models"] if m["role"] == "teacher")
        assert 1.0 < teacher["score"]["mean"] < 3.0  # SmolLM2 on Austen: about 1.5 bits per character
        assert report["comparisons"][0]["metric"] == "bits_per_character"
        assert json.dumps(results)  # the results document is built for a text job too
