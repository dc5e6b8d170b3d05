"""``distillab worker``: claim queued jobs and run each with ``experiment.run``, the same
entry point as ``distillab run``.

While a job runs, a heartbeat thread records progress, the current phase and metrics, and
device time, and reads the job's status back: "cancelling" (the user cancelled) or a spent
budget makes the next training step raise ``Stop``; the engine keeps its epoch checkpoints
and ``run`` writes ``partial.json``. A job whose worker died (no heartbeat for
``heartbeat_timeout_s``) is re-queued by any live worker and resumes from its checkpoints.

Job folders: ``DATA_DIR/jobs/<id>/run`` (the finished run), ``run.partial`` (in progress,
stopped or cancelled), ``worker.log``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from pathlib import Path

from distillab.engine.callbacks import Callback
from distillab.files import atomic_write_json
from distillab.engine.loop import Stop
from distillab.errors import DistillabError, is_disk_full
from distillab.service.db import make_engine
from distillab.service.settings import Settings, private_data_dir
from distillab.service.store import Claim, JobStore
from distillab.spec_io import parse_spec
from distillab.strategies import STRATEGIES

log = logging.getLogger("distillab.worker")

CANCELLED = "cancelled by the user"
SHUTDOWN = "the worker is shutting down"
LOST = "the job was re-queued away from this worker"
UNRENEWED = "this worker could not renew its lease on the job"
LEASE_HEARTBEATS = 10  # the lease (heartbeat_timeout_s) is at least this many heartbeats long


class LeaseLost(BaseException):
    """The job's lease is gone (or about to go): the worker stops at once and writes nothing more
    into the job folder, which another worker may now own. Not a ``Stop``: a stopped run writes
    its partial summary, a lost one must not."""


def job_dir(settings: Settings, job_id: str) -> Path:
    """DATA_DIR/jobs/<id>; ids are 32 hex digits made by the store, checked again here."""
    if not (len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)):
        raise ValueError(f"not a job id: {job_id!r}")
    return settings.data_dir.absolute() / "jobs" / job_id


class Budget:
    """Device time and cost limits of one job (``constraints.budget_constraints``)."""

    def __init__(self, options: dict, price_per_device_hour: float):
        budget = (options or {}).get("budget") or {}
        self.max_seconds = budget["max_duration_hours"] * 3600 if budget.get("max_duration_hours") else None
        self.max_cost = budget.get("max_cost_usd")
        self.price = price_per_device_hour

    def exceeded(self, device_seconds: float) -> str | None:
        if self.max_seconds is not None and device_seconds > self.max_seconds:
            return (f"budget: max_duration_hours {self.max_seconds / 3600:g} exceeded "
                    f"after {device_seconds / 3600:.4f} device-hours")
        cost = device_seconds / 3600 * self.price
        if self.max_cost is not None and cost > self.max_cost:
            return f"budget: max_cost_usd {self.max_cost:g} exceeded (${cost:.4f} at ${self.price:g}/device-hour)"
        return None


class JobProgress(Callback):
    """Turns run phases and engine callbacks into a job's progress (%), phase and metrics,
    and raises ``Stop`` at the next step once a stop reason is set."""

    def __init__(self, spec, started: float, device_seconds_before: float, budget: Budget):
        strategy_cls = STRATEGIES[spec.strategy.name]
        stages = strategy_cls.stages(strategy_cls.Params.model_validate(spec.strategy.params)) or ()
        self.epochs = spec.training.epochs
        self.weights = {"scratch": self.epochs, "distilling": self.epochs * max(1, len(stages))}
        self.total = len(spec.training.seeds) * sum(self.weights.values())
        self.done = 0.0  # epochs of finished phases
        self.phase: str | None = None
        self.phase_info: dict = {}
        self.fraction = 0.0  # of the current training phase
        self.stage, self.last_epoch, self.steps = 0, -1, 1
        self.renewed_at = time.monotonic()  # the last time the heartbeat renewed the job's lease
        self.fence_after_s: float | None = None  # stop when the lease has not been renewed this long
        self.metrics: dict = {}
        self.started, self.before, self.budget = started, device_seconds_before, budget
        self.stop_reason: str | None = None
        self.forwarded: dict | None = None  # a multi-process job's progress, as its rank 0 reported it
        self.search: dict | None = None  # an automated search's trials (on_search)
        self.helpers_before: float | None = None  # helpers' trial seconds when this attempt began
        self.helper_seconds = 0.0  # helpers' trial seconds since: device time of this job too
        self.final = False  # the search's final run has started
        self.lock = threading.Lock()

    # run(on_phase=...)
    def on_phase(self, name: str, info: dict) -> None:
        with self.lock:
            if self.phase in self.weights and not self.phase_info.get("done"):
                self.done += self.weights[self.phase]  # the previous training phase finished
            self.phase, self.phase_info, self.fraction, self.stage, self.last_epoch = name, info, 0.0, 0, -1
            if name in self.weights and info.get("done"):
                self.done += self.weights[name]
        self._check()

    # run(callbacks=...): one instance serves every phase
    def __call__(self, role: str, seed: int) -> list[Callback]:
        if role == "teacher":
            with self.lock:
                self.phase = "teacher"
        return [self]

    def on_epoch_start(self, epoch, steps):
        with self.lock:
            if epoch < self.last_epoch:
                self.stage += 1  # the next stage of a multi-stage strategy
            self.last_epoch, self.steps = epoch, max(1, steps)

    def on_step(self, epoch, step, metrics):
        with self.lock:
            self.fraction = (self.stage * self.epochs + epoch + min(1.0, (step + 1) / self.steps)) / (
                self.weights.get(self.phase, self.epochs) or 1)
            self.metrics.update(seed=self.phase_info.get("seed"), epoch=epoch + 1, train_loss=metrics["loss"],
                                train_accuracy=metrics["accuracy"], samples_per_s=metrics["samples_per_s"])
        self._check()

    def on_epoch_end(self, epoch, metrics):
        with self.lock:
            primary = metrics.get("primary", "accuracy")
            self.metrics.update(val_accuracy=metrics.get("val_accuracy"), val_loss=metrics.get("val_loss"),
                                val_metric=primary, val_score=metrics.get(f"val_{primary}"),
                                epoch_seconds=metrics["epoch_seconds"])

    def _check(self) -> None:
        if self.fence_after_s is not None and time.monotonic() - self.renewed_at > self.fence_after_s:
            self.stop_reason = self.stop_reason or UNRENEWED  # a starved heartbeat: stop before the lease can lapse
        reason = self.stop_reason or self.budget.exceeded(self.device_seconds())
        if reason in (LOST, UNRENEWED):
            raise LeaseLost(reason)
        if reason:
            self.stop_reason = reason
            raise Stop(reason)

    def device_seconds(self) -> float:
        """Earlier attempts', this one's, and the trial seconds of workers that helped its search."""
        return self.before + (time.monotonic() - self.started) + self.helper_seconds

    # an automated search: its trials are the first SEARCH_SHARE of the job, the chosen student's
    # final run the rest
    SEARCH_SHARE = 0.6

    def on_search(self, info: dict) -> None:
        with self.lock:
            self.phase, self.search = "searching", info
            self.metrics["auto"] = info
            helpers = info.get("helper_trial_seconds", 0.0)
            if self.helpers_before is None:  # counted by an earlier attempt already
                self.helpers_before = helpers
            self.helper_seconds = max(0.0, helpers - self.helpers_before)
        self._check()

    def retarget(self, spec) -> None:
        """The final run of a search trains another spec than the job's: its epochs and seeds."""
        with self.lock:
            self.epochs = spec.training.epochs
            self.weights = {"scratch": self.epochs, "distilling": self.epochs}
            self.total = len(spec.training.seeds) * sum(self.weights.values())
            self.done, self.fraction, self.final = 0.0, 0.0, True

    def progress(self) -> float:
        if self.forwarded is not None:
            return self.forwarded["progress"]
        with self.lock:
            current = self.weights.get(self.phase, 0) * min(1.0, self.fraction) if not self.phase_info.get("done") else 0
            share = min(1.0, (self.done + current) / max(1, self.total))
            if self.search is None:
                return round(100.0 * share, 2)
            if not self.final:
                searched = self.search["trials_done"] / max(1, self.search["trials_planned"])
                return round(100.0 * self.SEARCH_SHARE * min(1.0, searched), 2)
            return round(100.0 * (self.SEARCH_SHARE + (1 - self.SEARCH_SHARE) * share), 2)

    def snapshot(self) -> tuple[float, str | None, dict]:
        if self.forwarded is not None:
            return self.forwarded["progress"], self.forwarded["phase"], self.forwarded["metrics"]
        progress = self.progress()
        with self.lock:
            return progress, self.phase, {**self.metrics, "phase": self.phase}


class Worker:
    def __init__(self, settings: Settings, *, poll_s: float = 1.0, heartbeat_s: float = 1.0, nproc: int = 1):
        self.settings = settings
        self.nproc = nproc  # > 1: each job runs in that many data-parallel processes (job_process)
        private_data_dir(settings)
        self.engine = make_engine(settings.resolved_database_url)
        self.store = JobStore(self.engine, settings.max_running_jobs_per_user)
        self.poll_s, self.heartbeat_s = poll_s, heartbeat_s
        if settings.heartbeat_timeout_s < LEASE_HEARTBEATS * heartbeat_s:
            raise ValueError(f"DISTILLAB_HEARTBEAT_TIMEOUT_S ({settings.heartbeat_timeout_s:g} s) must be at least "
                             f"{LEASE_HEARTBEATS} heartbeats ({LEASE_HEARTBEATS * heartbeat_s:g} s), so that a busy "
                             "machine never loses a running job to another worker")
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.shutdown = threading.Event()
        self.current: JobProgress | None = None
        self.helped: set[str] = set()  # searches this worker joined (once each)
        self.study_storage = None  # the study database, opened when a running search is first looked at

    def request_shutdown(self, *_args) -> None:
        self.shutdown.set()
        if self.current is not None:
            self.current.stop_reason = SHUTDOWN

    def serve(self, max_jobs: int | None = None, idle_exit_s: float | None = None) -> int:
        """Claim and run jobs until shut down, ``max_jobs`` ran, or idle for ``idle_exit_s``.
        A database or disk error between jobs is logged and retried; it never ends the loop."""
        os.environ.setdefault("DISTILLAB_CACHE", str(self.settings.data_dir.absolute() / "cache"))
        self._retry(lambda: self.store.register_worker(self.id, socket.gethostname(), os.getpid()), "register")
        log.info("worker %s: polling %s", self.id, self.engine.url.render_as_string(hide_password=True))
        done, idle_since = 0, time.monotonic()
        try:
            while not self.shutdown.is_set() and (max_jobs is None or done < max_jobs):
                try:
                    requeued = self.store.requeue_stale(self.settings.heartbeat_timeout_s)
                    if requeued:
                        log.info("re-queued jobs without a heartbeat: %s", ", ".join(requeued))
                    claim = self.store.claim(self.id)
                except Exception as problem:  # the database is unreachable or its disk is full: wait, retry
                    log.error("worker %s: cannot poll the queue (%s); retrying", self.id, problem)
                    self.shutdown.wait(max(self.poll_s, 2.0))
                    continue
                if claim is None and self.settings.help_searches and self.help_a_search():
                    idle_since = time.monotonic()
                    continue
                if claim is None:
                    self._retry(lambda: self.store.worker_heartbeat(self.id, None), "worker heartbeat", attempts=1)
                    if idle_exit_s is not None and time.monotonic() - idle_since > idle_exit_s:
                        break
                    self.shutdown.wait(self.poll_s)
                    continue
                self.run_job(claim)
                done += 1
                idle_since = time.monotonic()
                self._retry(lambda: self.store.worker_heartbeat(self.id, None, finished_one=True), "worker heartbeat",
                            attempts=1)
        finally:
            self._retry(lambda: self.store.worker_stopped(self.id), "worker stop", attempts=2)
            self.engine.dispose()
            if self.study_storage is not None:
                self.study_storage.engine.dispose()
        return done

    def help_a_search(self) -> bool:
        """Train trials of another worker's running search (``search_jobs.help_a_search``)."""
        from distillab.service.search_jobs import help_a_search

        return help_a_search(self)

    def _retry(self, write, what: str, attempts: int = 6):
        """Run a database write, retrying with back-off; a failure is logged, never raised (a
        worker that dies leaves its job 'running' until another worker notices)."""
        for attempt in range(attempts):
            try:
                return write()
            except Exception as problem:
                log.warning("%s failed (attempt %d of %d): %s", what, attempt + 1, attempts, problem)
                if attempt + 1 < attempts:
                    self.shutdown.wait(min(0.5 * 2**attempt, 8.0))
        log.error("%s: giving up after %d attempts", what, attempts)
        return None

    def run_job(self, claim: Claim) -> str:
        """Run one claimed job to its end; returns the status it finished with. Whatever goes
        wrong (a full disk included) ends in a recorded status, never in a dead worker."""
        from distillab.experiment.report import partial_summary
        from distillab.experiment.run import run

        folder = job_dir(self.settings, claim.job_id)
        out, partial = folder / "run", folder / "run.partial"
        spec = parse_spec(claim.spec)
        progress = JobProgress(spec, time.monotonic(), claim.device_seconds,
                               Budget(claim.options, self.settings.price_per_device_hour))
        status, error, reason, handler = "failed", None, None, None
        stop_beating = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(claim.job_id, progress, stop_beating), daemon=True)
        progress.fence_after_s = self.settings.heartbeat_timeout_s / 2
        self.current = progress
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(folder / "worker.log")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logging.getLogger("distillab").addHandler(handler)
            if claim.attempts > 1 and partial.exists():
                before = partial_summary(partial, "resumed")
                progress.metrics["resumed"] = {
                    "attempt": claim.attempts,
                    "phases_complete": sum(p["complete"] for p in before["phases"]),
                    "epochs_done": sum(p.get("epochs", p.get("epochs_done", 0)) for p in before["phases"]),
                }
                log.info("job %s attempt %d: resuming %s", claim.job_id, claim.attempts, progress.metrics["resumed"])
            log.info("job %s attempt %d: started by worker %s", claim.job_id, claim.attempts, self.id)
            beat.start()
            if not (out / "report.json").exists():  # else it finished before a crash prevented finish()
                (partial / "partial.json").unlink(missing_ok=True)
                if spec.auto is not None:  # the search, then its chosen student's run in OUT (one process)
                    from distillab.autodistill.search import search
                    from distillab.service.search_jobs import study_name

                    search(claim.spec, folder, run_options={"callbacks": progress, "on_phase": progress.on_phase},
                           on_progress=progress.on_search, on_final=progress.retarget,
                           storage=self.settings.resolved_study_url, study_name=study_name(claim.job_id))
                elif self.nproc > 1:
                    self._run_processes(claim, folder, progress)
                else:
                    run(spec, out, resume=claim.attempts > 1, callbacks=progress, on_phase=progress.on_phase)
            package(out, self.settings)
            if spec.auto is not None and spec.task == "image_classification":  # int8 advice for a classifier
                from distillab.service.search_jobs import quantized

                quantized(out)
            progress.metrics["summary"] = summary(out)
            status = "completed"
        except LeaseLost as lost:
            reason, status = str(lost), "lost"
            log.warning("job %s: %s; stopped without writing more", claim.job_id, reason)
        except Stop as stop:
            reason = stop.reason
            status = {CANCELLED: "cancelled", SHUTDOWN: "queued", LOST: "lost"}.get(reason, "stopped")
            log.info("job %s stopped: %s", claim.job_id, reason)
        except DistillabError as problem:
            error = str(problem)
            log.error("job %s failed: %s", claim.job_id, error)
        except Exception as problem:
            if is_disk_full(problem, folder.parent):
                shutil.rmtree(partial, ignore_errors=True)  # frees the space the failure needs to be recorded
                error = f"the disk is full: {folder} could not be written; the unfinished run was removed"
                log.error("job %s failed: %s", claim.job_id, error)
            else:  # a bug: keep the traceback in the job log and the job row
                error = f"internal error: {type(problem).__name__}: {problem}"
                log.error("job %s crashed:\n%s", claim.job_id, traceback.format_exc())
        finally:
            stop_beating.set()
            if beat.is_alive():
                beat.join()
            self.current = None
            if handler is not None:
                logging.getLogger("distillab").removeHandler(handler)
                handler.close()
        seconds = progress.device_seconds()
        if status == "queued":
            self._retry(lambda: self.store.release(claim.job_id, self.id, device_seconds=seconds), "release")
        elif status != "lost":
            self._retry(lambda: self.store.heartbeat(claim.job_id, self.id, progress=progress.progress(),
                                                     phase=progress.phase, metrics=progress.snapshot()[2],
                                                     device_seconds=seconds), "last heartbeat", attempts=2)
            self._retry(lambda: self.store.finish(claim.job_id, self.id, status, error=error, stop_reason=reason,
                                                  device_seconds=seconds), "finish")
        log.info("job %s: %s", claim.job_id, status)
        return status

    def _run_processes(self, claim: Claim, folder: Path, progress: JobProgress) -> None:
        """Run the job in ``nproc`` processes through torchrun (``service.job_process``),
        forwarding rank 0's progress to the heartbeat and a stop reason to rank 0."""
        import subprocess
        import sys

        from distillab.service.job_process import PROGRESS, STOP

        for name in (PROGRESS, STOP):
            (folder / name).unlink(missing_ok=True)
        atomic_write_json(folder / "claim.json", {"spec": claim.spec, "options": claim.options})
        threads = max(1, (os.cpu_count() or 1) // self.nproc)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={self.nproc}",
                   "-m", "distillab.service.job_process", "--job-dir", str(folder),
                   "--device-seconds", str(claim.device_seconds), "--price", str(self.settings.price_per_device_hour),
                   *(["--resume"] if claim.attempts > 1 else [])]
        with open(folder / "processes.log", "a") as output:
            process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
            stop_sent = False
            while process.poll() is None:
                time.sleep(0.3)
                if progress.stop_reason and not stop_sent:
                    (folder / STOP).write_text(progress.stop_reason)
                    stop_sent = True
                progress.forwarded = _read_progress(folder / PROGRESS) or progress.forwarded
        state = _read_progress(folder / PROGRESS) or {}
        progress.forwarded = state or progress.forwarded
        outcome = state.get("outcome") or {"status": "failed", "error": f"the job's {self.nproc} processes ended "
                                           f"with exit code {process.returncode} (see processes.log)"}
        if outcome["status"] == "stopped":
            raise Stop(outcome["reason"])
        if outcome["status"] != "completed":
            raise DistillabError(outcome["error"])

    def _heartbeats(self, job_id: str, progress: JobProgress, stop: threading.Event) -> None:
        """Renew the job's lease every ``heartbeat_s``. A worker that could not renew it for half
        the lease stops the job itself, before any other worker may take it over (self-fencing)."""
        renewed = time.monotonic()
        while not stop.wait(self.heartbeat_s):
            value, phase, metrics = progress.snapshot()
            try:
                status = self.store.heartbeat(job_id, self.id, progress=value, phase=phase, metrics=metrics,
                                              device_seconds=progress.device_seconds())
                self.store.worker_heartbeat(self.id, job_id)
            except Exception as problem:  # a database hiccup: try again at the next beat
                log.warning("heartbeat for %s failed: %s", job_id, problem)
                if time.monotonic() - renewed > self.settings.heartbeat_timeout_s / 2:
                    progress.stop_reason = UNRENEWED
                continue
            renewed = progress.renewed_at = time.monotonic()
            if status == "cancelling":
                progress.stop_reason = progress.stop_reason or CANCELLED
            elif status == "lost":
                progress.stop_reason = LOST


def summary(out: Path) -> dict:
    """The headline numbers of a finished run, kept in the job row for analytics."""
    report = json.loads((out / "report.json").read_text())
    accuracy = {m["role"]: m["accuracy"]["mean"] for m in report["models"] if m["role"] != "teacher"}
    teachers = [m["accuracy"]["mean"] for m in report["models"] if m["role"] == "teacher"]
    return {"distilled_accuracy": accuracy["distilled"], "scratch_accuracy": accuracy["scratch"],
            "teacher_accuracy": max(teachers), "p_value": report["comparisons"][0]["p_value"],
            "train_samples": report["dataset"]["train"]}


def package(out: Path, settings: Settings) -> None:
    """Put the deployable student at the top of a finished run: the distilled student of
    the seed with the best validation accuracy as ``student.safetensors`` (+ its facts in
    ``student.json``) and, when it exports with parity (the one exporter,
    ``compress.export``), ``student.onnx``."""
    from distillab.compress.runs import best_seed, export_run, read_report

    if (out / "student.json").exists():
        return
    report = read_report(out)
    spec = parse_spec(report["spec"])
    seed = best_seed(out, report)
    source = out / f"seed_{seed}" / "distilled" / "student.safetensors"
    if not source.exists():
        return  # multi-stage strategies keep their students per stage; the report is still complete
    tmp = out / ".student.safetensors.tmp"
    shutil.copyfile(source, tmp)
    os.replace(tmp, out / "student.safetensors")
    facts = {"model": spec.student.model, "model_args": spec.student.model_args, "seed": seed,
             "in_shape": report["dataset"]["in_shape"], "num_classes": report["dataset"]["num_classes"],
             "normalize": report["dataset"].get("normalize"), "task": spec.task, "onnx": None}
    if spec.strategy.name != "adaptive" and spec.task != "text_embedding":
        staging = out / ".export"
        try:
            record = export_run(out, staging, fmt="onnx", seed=seed, parity_samples=256, overwrite=True)
            os.replace(staging / "model.onnx", out / "student.onnx")
            facts["onnx"], facts["onnx_parity"] = "student.onnx", record["parity"]
        except Exception as problem:  # ONNX export is a convenience; the safetensors student stands
            log.warning("ONNX export failed: %s", problem)
            facts["onnx_error"] = str(problem)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    atomic_write_json(out / "student.json", facts)


def _read_progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
