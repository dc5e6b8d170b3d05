"""The job service's response shapes (documented in the OpenAPI document) and the public views
of jobs and models."""

from __future__ import annotations

import json
from datetime import timedelta

from fastapi.responses import Response
from pydantic import BaseModel

from distillab.service import registry
from distillab.service.db import RegisteredModel, utcnow
from distillab.service.settings import Settings
from distillab.service.worker import job_dir


class ErrorBody(BaseModel):
    """Every error answer: a message, or FastAPI-shaped [{loc, msg, type}] items."""

    detail: str | list[dict]


def errors(*codes: int) -> dict:
    """OpenAPI entries for the error statuses a route can answer."""
    meaning = {
        400: "the body cannot be read (not JSON, or not a usable model file)", 401: "missing or unknown API key",
        403: "the route is for admins, or the user's storage quota is used", 404: "no such job (or not yours)", 409: "the job is in the wrong state",
        413: "request body over the limit", 422: "invalid request", 429: "too many wrong keys, requests or queued jobs",
        503: "the database is unavailable", 507: "the server's disk is full",
    }
    # the explicit JSON content: on the SSE route the default media type would be text/event-stream
    return {code: {"model": ErrorBody, "description": meaning[code], "content": {"application/json": {}}}
            for code in codes}


class JobCreated(BaseModel):
    success: bool = True
    job_id: str
    name: str
    strategy: str
    status: str
    estimated_duration: str
    estimated_duration_seconds: float
    estimated_cost: float
    estimate_basis: str


class JobPublic(BaseModel):
    job_id: str
    owner_id: int
    name: str
    description: str
    strategy: str
    status: str
    progress: float
    current_phase: str | None
    current_metrics: dict
    created_at: str
    started_at: str | None
    finished_at: str | None
    estimated_completion: str | None
    estimated_cost: float | None
    device_seconds: float
    attempts: int
    results_available: bool
    partial_results_available: bool
    error: str | None
    stop_reason: str | None


class JobPage(BaseModel):
    items: list[JobPublic]
    total: int
    limit: int
    offset: int


def iso(moment) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        from datetime import timezone

        moment = moment.replace(tzinfo=timezone.utc)
    return moment.isoformat(timespec="seconds")


def json_response(document: dict) -> Response:
    """A response body serialised once (returning a model would make FastAPI validate it again
    against the route's response model, which documents the shape): the hot read routes use it."""
    return Response(json.dumps(document, separators=(",", ":")), media_type="application/json")


def public(job, settings: Settings) -> JobPublic:
    return JobPublic.model_construct(**public_fields(job, settings))


def public_fields(job, settings: Settings) -> dict:
    """A job's public view (the fields of ``JobPublic``) from its row or ORM object."""
    ended = job.status in ("completed", "cancelled", "stopped", "failed")
    folder = job_dir(settings, job.id) if ended else None  # files are looked at only for jobs that ended
    completion = None
    if job.status in ("running", "cancelling") and job.started_at is not None:
        if job.progress and job.progress > 0:
            elapsed = job.device_seconds or 0.0
            completion = iso(utcnow() + timedelta(seconds=elapsed * (100 - job.progress) / job.progress))
        elif job.estimated_seconds:
            completion = iso(utcnow() + timedelta(seconds=job.estimated_seconds))
    elif job.status == "queued" and job.estimated_seconds:
        completion = iso(utcnow() + timedelta(seconds=job.estimated_seconds))
    return dict(
        job_id=job.id, owner_id=job.owner_id, name=job.name, description=job.description, strategy=job.strategy, status=job.status,
        progress=job.progress, current_phase=job.current_phase, current_metrics=job.metrics or {},
        created_at=iso(job.created_at), started_at=iso(job.started_at), finished_at=iso(job.finished_at),
        estimated_completion=completion, estimated_cost=job.estimated_cost_usd,
        device_seconds=job.device_seconds or 0.0, attempts=job.attempts,
        results_available=job.status == "completed" and (folder / "run" / "report.json").is_file(),
        partial_results_available=job.status in ("cancelled", "stopped", "failed")
        and (folder / "run.partial" / "partial.json").is_file(),
        error=job.error, stop_reason=job.stop_reason,
    )


def model_public(model: RegisteredModel) -> dict:
    task = "language_modeling" if model.file_format in registry.LANGUAGE_MODEL_FORMATS else "image_classification"
    return {"model_id": model.id, "name": model.name, "task": task, "architecture": model.architecture,
            "model_args": model.model_args, "format": model.file_format, "dataset": model.dataset,
            "sha256": model.sha256, "size_bytes": model.size_bytes, "created_at": iso(model.created_at)}
