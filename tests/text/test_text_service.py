"""Language models over HTTP: a teacher uploaded as a tar of a Hugging Face folder (or as
GGUF), a text job submitted to a real uvicorn server as a spec, run by a worker process, its
progress streamed and its results read back (SQLite); and the bad uploads, each a clean 4xx."""

import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "service"))
from conftest import make_tiny_lm  # noqa: E402
from service_processes import PREFIX, digits_teacher, running_service  # noqa: E402

needs_austen = pytest.mark.skipif(not (Path("/usr/lib/R/site-library/janeaustenr/data").is_dir()),
                                  reason="r-cran-janeaustenr is not installed")


@pytest.fixture(scope="module", params=["sqlite"])
def service(request, tmp_path_factory):
    with running_service(request, tmp_path_factory, {"DISTILLAB_MAX_UPLOAD_MB": "1"}) as running:
        yield running


def text_job_spec(**teacher) -> dict:
    return {
        "name": "austen over http",
        "task": "language_modeling",
        "data": {"dataset": "austen", "context_length": 32, "val_size": 0.02, "test_size": 0.02,
                 "limit_tokens": 512, "limit_eval_tokens": 256},
        "teacher": teacher or {"pretrained": "smollm2-135m-instruct"},
        "student": {"model": "gpt", "model_args": {"layers": 1, "dim": 32, "heads": 2}},
        "strategy": {"name": "token_kd", "params": {"top_k": 8}},
        "training": {"epochs": 1, "batch_size": 8, "seeds": [0, 1], "eval_batch_size": 8},
        "output": {"tensorboard": False, "plots": False, "latency_repeats": 2},
    }


def tar_of(folder: Path, arcname: str = "my-lm", gz: bool = True, extra=()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        archive.add(folder, arcname=arcname)
        for info, data in extra:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_lm_tar(tmp_path_factory) -> bytes:
    return tar_of(make_tiny_lm(tmp_path_factory.mktemp("upload_lm")))


@needs_austen
def test_an_uploaded_language_model_teaches_a_text_job_over_http(service, tiny_lm_tar):
    with service.client() as client:
        types = client.get("/model-types").json()
        assert "smollm2-135m-instruct" in types["pretrained_teachers"] and "austen" in types["text_corpora"]
        assert "gguf" in types["teacher_formats"]
        refused = client.post("/jobs", json={"spec": {**text_job_spec(), "teacher": {"hub": "org/model"}}})
        assert refused.status_code == 422 and "does not download models" in refused.text
        served = client.post("/jobs", json={"spec": {**text_job_spec(), "teacher": {"url": "http://127.0.0.1:9"}}})
        assert served.status_code == 422 and "does not call other servers" in served.text
        pretrained = client.post("/jobs", json={"spec": text_job_spec()})  # the installed SmolLM2 is accepted
        assert pretrained.status_code == 201 and pretrained.json()["estimated_duration_seconds"] > 0
        assert client.delete(f"/jobs/{pretrained.json()['job_id']}").status_code == 200  # not run here
        upload = client.post("/models", content=tiny_lm_tar, params={"name": "tiny llama", "task": "language_modeling"})
        assert upload.status_code == 201, upload.text
        model = upload.json()
        assert model["task"] == "language_modeling" and model["format"] == "hf"
        assert model["architecture"] == "causal_lm" and model["model_args"]["parameters"] > 0
        spec = text_job_spec()
        del spec["teacher"]
        cut = {"hidden_size": 16, "intermediate_size": 32, "heads": 2, "kv_heads": 2, "calibration_tokens": 256}
        bad = {**spec, "student": {"model": "teacher_pruned", "model_args": {**cut, "heads": 3}}}
        refused = client.post("/jobs", json={"spec": bad, "teacher_model_ids": [model["model_id"]]})
        assert refused.status_code == 422 and "must be a multiple of heads (3)" in refused.text
        spec["student"] = {"model": "teacher_pruned", "model_args": cut}  # a student cut from the uploaded teacher
        spec["output"] = {**spec["output"], "draft_prompts": 2, "draft_tokens": 4}
        created = client.post("/jobs", json={"spec": spec, "teacher_model_ids": [model["model_id"]]})
        assert created.status_code == 201, created.text
        job = created.json()
        service.start_worker()
        status = service.wait(job["job_id"], lambda s: s["status"] in ("completed", "failed"), timeout=600)
        assert status["status"] == "completed", service.worker_logs()
        results = client.get(f"/jobs/{job['job_id']}/results").json()
        report = client.get(results["artifacts"]["report.json"].removeprefix(PREFIX)).json()
        assert report["task"]["metric"] == "bits_per_character"
        teacher = next(m for m in report["models"] if m["role"] == "teacher")
        assert teacher["score"]["mean"] > 0 and teacher["params"] == model["model_args"]["parameters"]
        assert report["comparisons"][0]["metric"] == "bits_per_character"
        assert report["student_cut"]["shape"]["hidden_size"] == 16 and report["draft"]["identical_output"]
        assert json.dumps(results)  # the results document is built for a text job too


@needs_austen
def test_a_language_model_search_job_runs_end_to_end_over_http(service, tiny_lm_tar):
    with service.client() as client:
        upload = client.post("/models", content=tiny_lm_tar, params={"name": "lm for a search",
                                                                     "task": "language_modeling"})
        assert upload.status_code == 201, upload.text
        spec = text_job_spec()
        del spec["teacher"]
        spec["training"] = {**spec["training"], "seeds": [0]}
        spec["auto"] = {"constraints": {"max_params": 60_000}, "budget": {"max_trials": 2},
                        "space": {"families": ["gpt"], "epochs": [1, 1]}}
        created = client.post("/jobs", json={"spec": spec, "teacher_model_ids": [upload.json()["model_id"]]})
        assert created.status_code == 201, created.text
        job = created.json()["job_id"]
        service.start_worker()
        status = service.wait(job, lambda s: s["status"] in ("completed", "failed"), timeout=600)
        assert status["status"] == "completed", service.worker_logs()
        results = client.get(f"/jobs/{job}/results").json()
        report = client.get(results["artifacts"]["report.json"].removeprefix(PREFIX)).json()
        assert report["task"]["metric"] == "bits_per_character" and report["spec"]["student"]["model"] == "gpt"
        distilled = next(m for m in report["models"] if m["role"] == "distilled")
        assert distilled["params"] <= 60_000 and len(report["seeds"]) == 3  # the chosen student, over 3 seeds
        search = results["auto"]
        assert search["trials"] == 2 and search["front"] and search["final"]["latency_ms_measured"] > 0
        assert {"front.png", "auto.json", "trials.md"} <= set(results["artifacts"])
        assert "student.int8.onnx" not in results["artifacts"]  # int8 advice is for classifiers


def test_bad_language_model_uploads_are_clean_4xx(service, tiny_lm_tar, tmp_path):
    lm = {"name": "lm", "task": "language_modeling"}

    def post(content, params=lm):
        with service.client() as client:
            return client.post("/models", content=content, params=params)

    def entry(name, kind=tarfile.REGTYPE, data=b"x", link=""):
        info = tarfile.TarInfo(name)
        info.type, info.size, info.linkname = kind, len(data) if kind == tarfile.REGTYPE else 0, link
        return info, data if kind == tarfile.REGTYPE else None

    folder = make_tiny_lm(tmp_path / "lm")
    cases = [
        (post(b"GGUF" + b"\0" * 64), 400, "is GGUF v0; this reader handles v2 and v3"),
        (post(crafted_gguf()), 400, "unpack_from requires a buffer"),  # a key declaring 2^60 bytes
        (post(tar_of(folder, extra=[entry("my-lm/pytorch_model.bin")])), 400, "pickle"),
        (post(tar_of(folder, extra=[entry("../../escape.txt")])), 400, "would be written outside the upload"),
        (post(tar_of(folder, extra=[entry("my-lm/evil", tarfile.SYMTYPE, link="/etc/passwd")])), 400,
         "not a plain file or folder"),
        (post(tar_of(tmp_path, arcname="a", extra=[entry("b/config.json")])), 400, "no config.json"),
        (post(tiny_lm_tar[: len(tiny_lm_tar) // 2]), 400, "tar"),
        (post(tar_of(folder, extra=[entry("my-lm/zeros.txt", data=b"\0" * 2**21)])), 413, "unpacks to"),
        (post(digits_teacher(tmp_path / "t.safetensors").read_bytes()), 400, "this is safetensors"),
        (post(tiny_lm_tar, {"name": "lm", "architecture": "mlp", "dataset": "digits"}), 400,
         "upload it with task=language_modeling"),
        (post(tiny_lm_tar, {**lm, "architecture": "mlp"}), 422, "brings its own architecture"),
        (post(tiny_lm_tar, {"name": "x"}), 422, "Field required"),
    ]
    for response, status, text in cases:
        assert response.status_code == status and text in response.text, (status, text, response.text)
        assert str(service.data_dir) not in response.text and "/tmp" not in response.text  # no server paths
        assert response.json()["detail"]  # a JSON body, never a traceback
    assert not list((service.data_dir / "models").glob(".staging-*"))  # refused uploads leave nothing behind
    assert not list((service.data_dir / "models").glob(".upload-*"))


def crafted_gguf() -> bytes:
    """A GGUF v3 header whose one metadata key declares a length of 2^60 bytes."""
    import struct

    return b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**60) + b"abc"


def test_a_giant_language_model_config_is_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    """A small upload whose config declares a model over the limit is counted on the meta device
    from its config and refused; the weights are never loaded."""
    import json as json_module

    from distillab.models import hf
    from distillab.service import registry

    folder = make_tiny_lm(tmp_path / "lm")
    config = json_module.loads((folder / "config.json").read_text())
    config.update(hidden_size=4096, intermediate_size=16384, num_hidden_layers=48, num_attention_heads=32,
                  num_key_value_heads=32)
    (folder / "config.json").write_text(json_module.dumps(config))  # about 10 billion parameters declared

    def never(*args, **kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(hf, "load_causal_lm", never)
    models = tmp_path / "models"
    models.mkdir()
    upload = models / "upload.tar"
    upload.write_bytes(tar_of(folder))
    with pytest.raises(registry.UploadError) as refused:
        registry.validate_and_store_language_model(upload, registry.HF_ARCHIVE, models, 2**24, tmp_path / "cache",
                                                   max_parameters=150_000_000)
    assert refused.value.status == 400 and "this service builds at most 150,000,000" in refused.value.message
    assert not [p for p in models.iterdir() if p.name != "upload.tar"]


def test_a_language_model_over_the_parameter_limit_is_refused_and_not_kept(tiny_lm_tar, tmp_path):
    from distillab.service import registry

    models = tmp_path / "models"
    models.mkdir()
    upload = models / "upload.tar"
    upload.write_bytes(tiny_lm_tar)
    with pytest.raises(registry.UploadError) as refused:
        registry.validate_and_store_language_model(upload, registry.HF_ARCHIVE, models, 2**24, tmp_path / "cache",
                                                   max_parameters=1_000)
    assert refused.value.status == 400 and "parameters; this service builds at most 1,000" in str(refused.value)
    assert not [p for p in models.iterdir() if p.name != "upload.tar"]  # nothing stored
    upload.write_bytes(tiny_lm_tar)
    _, path, parameters = registry.validate_and_store_language_model(upload, registry.HF_ARCHIVE, models, 2**24,
                                                                     tmp_path / "cache", max_parameters=10**6)
    assert 1_000 < parameters <= 10**6 and path.exists()
