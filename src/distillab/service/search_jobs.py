"""What a worker does for automated-search jobs beyond running them: the study's name in the
service's study database, an idle worker's share of another worker's running search (it
trains trials as ``distillab auto --join`` does, until the plan, the budget or the job ends),
and the measured int8 recommendation for a search's chosen classifier."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import traceback
from pathlib import Path

from distillab.engine.callbacks import Callback
from distillab.engine.loop import Stop
from distillab.errors import DistillabError
from distillab.files import atomic_write_json
from distillab.service.store import JobStore
from distillab.service.worker import SHUTDOWN, job_dir

log = logging.getLogger("distillab.worker")


def study_name(job_id: str) -> str:
    """The study of a search job in the service's study database."""
    return f"job-{job_id}"


class HelperStop(Callback):
    """Stops a helper's trial at the next step once the job is no longer running (cancelled,
    finished, re-queued) or the helper's worker is shutting down; the job's status is read at
    most every ``every_s``."""

    def __init__(self, store: JobStore, job_id: str, shutdown: threading.Event, every_s: float = 2.0):
        self.store, self.job_id, self.shutdown, self.every_s = store, job_id, shutdown, every_s
        self.checked = 0.0

    def on_step(self, epoch, step, metrics):
        if self.shutdown.is_set():
            raise Stop(SHUTDOWN)
        if time.monotonic() - self.checked < self.every_s:
            return
        self.checked = time.monotonic()
        try:
            status = self.store.status(self.job_id)
        except Exception:  # a database hiccup: look again at the next step
            return
        if status != "running":
            raise Stop(f"the job is {status or 'gone'}")


def help_a_search(worker) -> bool:
    """An idle ``worker`` joins another worker's running search (its study, once its latency
    model is measured) and trains its trials until its plan or budget is spent, the job ends, or
    the worker shuts down. Each search is joined once per worker. True when one was joined."""
    import optuna

    from distillab.autodistill.search import search
    from distillab.autodistill.shared import LATENCY_KEY

    try:
        running = [job for job in worker.store.running_searches(worker.id) if job not in worker.helped]
    except Exception as problem:
        log.warning("worker %s: cannot list running searches: %s", worker.id, problem)
        return False
    for job_id in running:
        name = study_name(job_id)
        try:
            if worker.study_storage is None:  # one connection pool for every look, not one per poll
                worker.study_storage = optuna.storages.RDBStorage(worker.settings.resolved_study_url)
            study = optuna.load_study(study_name=name, storage=worker.study_storage)
            ready = LATENCY_KEY in study.user_attrs
        except Exception:  # not created yet: its worker is still setting it up
            ready = False
        if not ready:
            continue
        worker.helped.add(job_id)
        folder = job_dir(worker.settings, job_id) / "helpers" / worker.id.replace(":", "-")
        log.info("worker %s: helping the search of job %s", worker.id, job_id)
        worker._retry(lambda: worker.store.worker_heartbeat(worker.id, job_id), "worker heartbeat", attempts=1)
        stop = HelperStop(worker.store, job_id, worker.shutdown)
        try:
            search(None, folder, storage=worker.settings.resolved_study_url, study_name=name, join=True,
                   run_options={"callbacks": lambda role, seed: [stop]})
            log.info("worker %s: its share of job %s's search is done", worker.id, job_id)
        except Stop as stopped:
            log.info("worker %s: stopped helping job %s: %s", worker.id, job_id, stopped.reason)
        except DistillabError as problem:
            log.warning("worker %s: could not help job %s: %s", worker.id, job_id, problem)
        except Exception:  # a bug: the helper goes on serving; the job's own worker is unaffected
            log.error("worker %s: helping job %s crashed:\n%s", worker.id, job_id, traceback.format_exc())
        return True
    return False


def quantized(out: Path) -> None:
    """For a search's chosen student: export it to int8 (ONNX Runtime, static, calibrated on
    training inputs) and measure what that changes on the whole test split, beside the fp32
    student, into ``quantized.json`` (the results' recommendations read it). A model that does not
    quantize is recorded as such; the job's result stands either way."""
    import torch

    from distillab.compress.export import onnx_runner
    from distillab.compress.runs import best_seed, export_run, read_report, run_student

    if (out / "quantized.json").exists() or not (out / "student.onnx").exists():
        return
    staging = out / ".export-int8"
    try:
        seed = best_seed(out, read_report(out))
        record = export_run(out, staging, fmt="onnx", quantize="int8", seed=seed, parity_samples=256, overwrite=True)
        student = run_student(out, seed)
        batches = [(batch["inputs"], batch["targets"]) for batch in student.data.eval_batches("test", 256)]
        int8 = onnx_runner(staging / record["file"])
        with torch.no_grad():
            fp32_right = sum((student.model(x).argmax(-1) == y).sum().item() for x, y in batches)
        int8_right = sum((int8(x).argmax(-1) == y).sum().item() for x, y in batches)
        count = sum(len(y) for _, y in batches)
        facts = {"fp32_bytes": (out / "student.onnx").stat().st_size, "int8_bytes": record["bytes"],
                 "fp32_accuracy": fp32_right / count, "int8_accuracy": int8_right / count,
                 "test_samples": count, "parity": record["parity"]}
        os.replace(staging / record["file"], out / "student.int8.onnx")
    except Exception as problem:  # quantization is advice; the job's result stands
        log.warning("int8 export failed: %s", problem)
        facts = {"error": str(problem)[:300]}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_json(out / "quantized.json", facts)
