"""The durable job store: create, claim atomically, heartbeat, re-queue, cancel, finish.

A claim runs in one transaction: on PostgreSQL the oldest queued row is selected ``FOR
UPDATE SKIP LOCKED`` (concurrent workers skip each other's rows); on SQLite every
transaction is ``BEGIN IMMEDIATE`` (``db.make_engine``), so claims are serialised. Either
way N workers never run one job twice (``tests/service/test_store.py`` races processes).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from distillab.service.db import JobRecord, Worker, utcnow

TERMINAL = ("cancelled", "stopped", "completed", "failed")
ACTIVE = ("queued", "running", "cancelling")


@dataclass(frozen=True)
class Claim:
    job_id: str
    spec: dict
    attempts: int  # 1 on the first run; more after re-queueing (the worker then resumes)
    device_seconds: float = 0.0  # spent by earlier attempts
    options: dict | None = None


class JobStore:
    def __init__(self, engine: Engine, max_running_per_user: int | None = None):
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.skip_locked = engine.dialect.name == "postgresql"
        self.max_running_per_user = max_running_per_user

    def create(self, owner_id: int, name: str, strategy: str, spec: dict, description: str = "",
               estimated_seconds: float | None = None, estimated_cost_usd: float | None = None,
               options: dict | None = None, session=None) -> str:
        """A queued job; inside ``session`` when given (so an audit row commits with it)."""
        job_id = uuid.uuid4().hex
        job = JobRecord(id=job_id, owner_id=owner_id, name=name, description=description, strategy=strategy,
                  spec=spec, status="queued", progress=0.0, metrics={}, attempts=0, options=options or {},
                  device_seconds=0.0, estimated_seconds=estimated_seconds, estimated_cost_usd=estimated_cost_usd)
        if session is not None:
            session.add(job)
            return job_id
        with self.sessions.begin() as own:
            own.add(job)
        return job_id

    def get(self, job_id: str) -> JobRecord | None:
        with self.sessions() as session:
            return session.get(JobRecord, job_id)

    def claim(self, worker_id: str) -> Claim | None:
        """The oldest queued job, now running on ``worker_id``; None when the queue is empty.
        A user with ``max_running_per_user`` jobs running (or cancelling) is skipped: their
        next job waits and other users' jobs go first. On PostgreSQL two workers claiming at
        the same instant can each start one of a user's jobs, so the limit can be passed by
        the number of workers racing, never more."""
        with self.sessions.begin() as session:
            query = select(JobRecord).where(JobRecord.status == "queued")
            if self.max_running_per_user is not None:
                busy = (select(JobRecord.owner_id).where(JobRecord.status.in_(("running", "cancelling"))).group_by(JobRecord.owner_id)
                        .having(func.count() >= self.max_running_per_user))
                query = query.where(JobRecord.owner_id.not_in(busy))
            query = query.order_by(JobRecord.created_at, JobRecord.id).limit(1)
            if self.skip_locked:
                query = query.with_for_update(skip_locked=True)
            job = session.scalars(query).first()
            if job is None:
                return None
            now = utcnow()
            job.status, job.worker_id, job.heartbeat_at = "running", worker_id, now
            job.started_at = job.started_at or now
            job.attempts += 1
            return Claim(job.id, job.spec, job.attempts, job.device_seconds or 0.0, job.options or {})

    def heartbeat(self, job_id: str, worker_id: str, *, progress: float | None = None, phase: str | None = None,
                  metrics: dict | None = None, device_seconds: float | None = None) -> str:
        """Record liveness and progress; returns the job's status, so a worker sees
        "cancelling" (stop at the next step) or loses a job that was re-queued from it."""
        values: dict = {"heartbeat_at": utcnow()}
        if progress is not None:
            values["progress"] = progress
        if phase is not None:
            values["current_phase"] = phase
        if metrics is not None:
            values["metrics"] = metrics
        if device_seconds is not None:
            values["device_seconds"] = device_seconds
        with self.sessions.begin() as session:
            session.execute(update(JobRecord).where(JobRecord.id == job_id, JobRecord.worker_id == worker_id,
                                              JobRecord.status.in_(("running", "cancelling"))).values(**values))
            job = session.get(JobRecord, job_id)
            return "lost" if job is None or job.worker_id != worker_id else job.status

    def requeue_stale(self, timeout_s: float, now: datetime | None = None) -> list[str]:
        """Put running jobs whose worker has not heart-beaten for ``timeout_s`` back in the
        queue (they resume from their checkpoint); cancelling ones become cancelled."""
        cutoff = (now or utcnow()) - timedelta(seconds=timeout_s)
        with self.sessions.begin() as session:
            stale = session.scalars(select(JobRecord).where(JobRecord.status.in_(("running", "cancelling")),
                                                      JobRecord.heartbeat_at < cutoff)).all()
            for job in stale:
                if job.status == "cancelling":
                    job.status, job.finished_at = "cancelled", utcnow()
                else:
                    job.status = "queued"
                job.worker_id = None
            return [job.id for job in stale]

    def cancel(self, job_id: str) -> str:
        """Queued jobs are cancelled at once; running ones are asked to stop (the worker saves
        its checkpoint and partial results, then calls ``finish(..., "cancelled")``)."""
        with self.sessions.begin() as session:
            job = session.get(JobRecord, job_id)
            if job is None:
                raise KeyError(job_id)
            if job.status == "queued":
                job.status, job.finished_at = "cancelled", utcnow()
            elif job.status == "running":
                job.status = "cancelling"
            return job.status

    def finish(self, job_id: str, worker_id: str, status: str, error: str | None = None,
               stop_reason: str | None = None, device_seconds: float | None = None) -> bool:
        """Record the end of a run; False when the job is no longer this worker's."""
        if status not in TERMINAL:
            raise ValueError(f"finish status must be one of {TERMINAL}, got {status!r}")
        values = {"status": status, "error": error, "stop_reason": stop_reason, "finished_at": utcnow(),
                  "progress": 100.0 if status == "completed" else JobRecord.progress}
        if device_seconds is not None:
            values["device_seconds"] = device_seconds
        with self.sessions.begin() as session:
            result = session.execute(update(JobRecord).where(JobRecord.id == job_id, JobRecord.worker_id == worker_id).values(**values))
            return result.rowcount == 1

    def release(self, job_id: str, worker_id: str, device_seconds: float | None = None) -> bool:
        """A worker shutting down hands its running job back to the queue (it resumes from
        its checkpoint elsewhere); a job being cancelled becomes cancelled instead."""
        with self.sessions.begin() as session:
            job = session.get(JobRecord, job_id)
            if job is None or job.worker_id != worker_id:
                return False
            if device_seconds is not None:
                job.device_seconds = device_seconds
            job.worker_id = None
            if job.status == "cancelling":
                job.status, job.finished_at = "cancelled", utcnow()
            else:
                job.status = "queued"
            return True

    def running_searches(self, worker_id: str) -> list[str]:
        """Running automated searches of other workers, oldest first: what an idle worker may join."""
        with self.sessions() as session:
            jobs = session.scalars(select(JobRecord).where(JobRecord.status == "running",
                                                           JobRecord.worker_id != worker_id)
                                   .order_by(JobRecord.started_at, JobRecord.id)).all()
            return [job.id for job in jobs if (job.spec or {}).get("auto")]

    def status(self, job_id: str) -> str | None:
        with self.sessions() as session:
            return session.scalar(select(JobRecord.status).where(JobRecord.id == job_id))

    # Workers: a row per process, for analytics (live workers, load).
    def register_worker(self, worker_id: str, hostname: str, pid: int) -> None:
        with self.sessions.begin() as session:
            session.merge(Worker(id=worker_id, hostname=hostname, pid=pid, started_at=utcnow(),
                                 heartbeat_at=utcnow(), job_id=None, jobs_done=0, stopped_at=None))

    def worker_heartbeat(self, worker_id: str, job_id: str | None, finished_one: bool = False) -> None:
        with self.sessions.begin() as session:
            values = {"heartbeat_at": utcnow(), "job_id": job_id}
            if finished_one:
                values["jobs_done"] = Worker.jobs_done + 1
            session.execute(update(Worker).where(Worker.id == worker_id).values(**values))

    def worker_stopped(self, worker_id: str) -> None:
        with self.sessions.begin() as session:
            session.execute(update(Worker).where(Worker.id == worker_id).values(stopped_at=utcnow(), job_id=None))
