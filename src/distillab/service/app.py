"""``create_app(settings)``: the REST API under ``/api/v1/distillation`` (OpenAPI at /docs).

Every route but ``/healthz`` needs an ``X-API-Key``. Users see and touch only their own jobs
and models (another user's ids answer 404); ``/analytics`` and ``/audit`` are for admins.
Job creation, cancellation, artifact downloads, model uploads and admin reads are written
to the audit table in the same transaction as the change they record.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ValidationError
from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, defer, sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from distillab import __version__
from distillab.errors import DistillabError, SpecError
from distillab.inputs import parse_document, text_problem
from distillab.service import registry
from distillab.service.auth import hash_key, user_by_key_hash
from distillab.service.estimate import cost_table
from distillab.service.guards import (AuthLimiter, BodyLimit, RequestLimiter, SecurityHeaders, clean_errors,
                                      storage_error, validation_error)
from distillab.service.db import AuditEvent, Job, RegisteredModel, User, Worker, make_engine, utcnow
from distillab.service.jobs import (BodyError, JobCreate, build_spec, check_body, check_limits, error, options_of,
                                    validate_spec)
from distillab.service.results import artifacts, job_results
from distillab.service.settings import Settings, private_data_dir
from distillab.service.store import ACTIVE, TERMINAL, JobStore
from distillab.service.worker import job_dir

log = logging.getLogger("distillab.service")
PREFIX = "/api/v1/distillation"
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"  # strategy and audit-action filters: registry names only
MAX_OFFSET = 1_000_000_000  # beyond any table here, and inside every database's integer range


# ---------------------------------------------------------------- dependencies
def _read_session(request: Request):
    with request.app.state.read_sessions() as session:
        yield session


def _write_session(request: Request):
    with request.app.state.write_sessions.begin() as session:
        yield session


def _query_names(dependant) -> set[str]:
    """The query parameters a route declares, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def _known_query_parameters(request: Request) -> None:
    """A query parameter the route does not declare is a 422 (a typo such as ``?stauts=`` would
    otherwise be ignored silently), as unknown keys in a spec are."""
    route = request.scope.get("route")
    if route is None or not request.query_params:
        return
    allowed = _query_names(route.dependant)
    unknown = sorted({key for key in request.query_params if key not in allowed})
    if unknown:
        raise RequestValidationError([{"loc": ["query", key], "msg": "unknown query parameter"
                                       f"{'; this route takes: ' + ', '.join(sorted(allowed)) if allowed else ''}",
                                       "type": "extra_forbidden"} for key in unknown[:10]])


ReadSession = Annotated[Session, Depends(_read_session)]
WriteSession = Annotated[Session, Depends(_write_session)]
api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="created by `distillab users add`")


class UserCache:
    """Users by API-key hash for ``ttl_s`` seconds, so that a status read does not pay a
    database lookup (and a thread hop) for its key: a key removed from the database keeps
    working for at most ``ttl_s``."""

    def __init__(self, ttl_s: float = 5.0, size: int = 10_000):
        self.ttl, self.size = ttl_s, size
        self.entries: dict[str, tuple[float, User]] = {}

    def get(self, digest: str) -> User | None:
        entry = self.entries.get(digest)
        if entry is None or time.monotonic() - entry[0] > self.ttl:
            return None
        return entry[1]

    def put(self, digest: str, user: User) -> None:
        if len(self.entries) >= self.size:
            self.entries.clear()
        self.entries[digest] = (time.monotonic(), user)


def _lookup_user(request: Request, digest: str) -> User | None:
    with request.app.state.read_sessions() as session:
        return user_by_key_hash(session, digest)


async def _current_user(request: Request, key: Annotated[str | None, Security(api_key)]) -> User:
    """The key's user. Async, with the user cached: the status and listing routes make at most
    one trip to a worker thread (FastAPI runs each sync dependency in its own)."""
    limiter = request.app.state.auth_limiter
    client = request.client.host if request.client else "unknown"
    user = None
    if key:
        digest = hash_key(key)
        user = request.app.state.users.get(digest)
        if user is None:
            user = _lookup_user(request, digest)  # inline, as the job read below (then cached)
            if user is not None:
                request.app.state.users.put(digest, user)
    if user is None:
        # wrong keys are limited per address; a valid key is never refused by it, so one client
        # behind a shared address cannot lock the others out (keys are 256-bit random tokens:
        # answering a valid one among the 429s gives a guesser nothing)
        wait = limiter.retry_after(client)
        if wait is not None:
            raise HTTPException(429, "too many wrong API keys from this address; try again later",
                                headers={"Retry-After": str(wait)})
        if key:
            limiter.failed(client)
        raise HTTPException(401, "missing or unknown API key: send it in the X-API-Key header")
    wait = request.app.state.request_limiter.retry_after(user.id)
    if wait is not None:
        raise HTTPException(429, f"more than {request.app.state.settings.requests_per_minute} requests in a minute "
                                 "(DISTILLAB_REQUESTS_PER_MINUTE); try again later", headers={"Retry-After": str(wait)})
    return user


CurrentUser = Annotated[User, Depends(_current_user)]


def _admin(user: CurrentUser) -> User:
    if not user.is_admin:
        raise HTTPException(403, "this route is for admins")
    return user


AdminUser = Annotated[User, Depends(_admin)]


# the columns a job's public view does not read: not loaded (nor JSON-decoded) for the hot reads;
# a route that needs them (results) reads them on access, from a session of its own
PUBLIC_ONLY = (defer(Job.spec, raiseload=False), defer(Job.options, raiseload=False))
PUBLIC_COLUMNS = (Job.id, Job.owner_id, Job.name, Job.description, Job.strategy, Job.status, Job.progress,
                  Job.current_phase, Job.metrics, Job.created_at, Job.started_at, Job.finished_at,
                  Job.estimated_seconds, Job.estimated_cost_usd, Job.device_seconds, Job.attempts, Job.error,
                  Job.stop_reason)


@functools.lru_cache(maxsize=8)
def _listing_statements(all_users: bool, by_status: bool, by_strategy: bool):
    """(count, page) statements of GET /jobs for one combination of filters, built once: the
    public columns only, as rows (no ORM objects), the values bound at execution."""
    filters = [] if all_users else [Job.owner_id == bindparam("owner")]
    if by_status:
        filters.append(Job.status == bindparam("status"))
    if by_strategy:
        filters.append(Job.strategy == bindparam("strategy"))
    count = select(func.count(Job.id)).where(*filters)
    page = (select(*PUBLIC_COLUMNS).where(*filters).order_by(Job.created_at.desc(), Job.id)
            .limit(bindparam("limit")).offset(bindparam("offset")))
    return count, page


def _load_job(request: Request, job_id: str) -> Job | None:
    with request.app.state.read_sessions() as session:
        return session.get(Job, job_id, options=PUBLIC_ONLY)


async def _owned_job(job_id: str, user: CurrentUser, request: Request) -> Job:
    """The caller's job; an admin may reach anyone's (their cancellations are audited as such)."""
    # inline in the event loop: on SQLite and on a local PostgreSQL a primary-key read took less than
    # a trip to a worker thread (benchmarks/api_load.py, both databases, measured both ways)
    job = _load_job(request, job_id) if is_id(job_id) else None  # no database trip for what cannot be an id
    if job is None or (job.owner_id != user.id and not user.is_admin):
        raise HTTPException(404, f"no job {echo(job_id)}")
    return job


_ID = re.compile(r"[0-9a-f]{32}")


def is_id(value: str) -> bool:
    """Whether ``value`` has the form of a job or model id (32 hex digits). Anything else (a NUL,
    100,000 characters) is answered 404 without reaching the database."""
    return _ID.fullmatch(value) is not None


def echo(value: str, limit: int = 200) -> str:
    """A user's text quoted in an error message, cut to ``limit`` characters."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


OwnedJob = Annotated[Job, Depends(_owned_job)]


def _audit(session: Session, user: User | None, action: str, target: str | None = None, **detail) -> None:
    session.add(AuditEvent(user_id=user.id if user else None, action=action, target=target, detail=detail))


# ---------------------------------------------------------------- response schemas
class ErrorBody(BaseModel):
    """Every error answer: a message, or FastAPI-shaped [{loc, msg, type}] items."""

    detail: str | list[dict]


def _errors(*codes: int) -> dict:
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


def _iso(moment) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        from datetime import timezone

        moment = moment.replace(tzinfo=timezone.utc)
    return moment.isoformat(timespec="seconds")


def stored_bytes(session: Session, settings: Settings, user_id: int) -> int:
    """What a user keeps on the server: their uploaded models and their jobs' folders."""
    models = session.scalar(select(func.coalesce(func.sum(RegisteredModel.size_bytes), 0))
                            .where(RegisteredModel.owner_id == user_id)) or 0
    total = int(models)
    for job_id in session.scalars(select(Job.id).where(Job.owner_id == user_id)):
        for root, _dirs, files in os.walk(job_dir(settings, job_id)):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:  # a worker replaced it meanwhile
                    pass
    return total


def _json(document: dict) -> Response:
    """A response body serialised once (returning a model would make FastAPI validate it again
    against the route's response model, which documents the shape): the hot read routes use it."""
    return Response(json.dumps(document, separators=(",", ":")), media_type="application/json")


def _public(job, settings: Settings) -> JobPublic:
    return JobPublic.model_construct(**_public_fields(job, settings))


def _public_fields(job, settings: Settings) -> dict:
    """A job's public view (the fields of ``JobPublic``) from its row or ORM object."""
    ended = job.status in ("completed", "cancelled", "stopped", "failed")
    folder = job_dir(settings, job.id) if ended else None  # files are looked at only for jobs that ended
    completion = None
    if job.status in ("running", "cancelling") and job.started_at is not None:
        if job.progress and job.progress > 0:
            elapsed = job.device_seconds or 0.0
            completion = _iso(utcnow() + timedelta(seconds=elapsed * (100 - job.progress) / job.progress))
        elif job.estimated_seconds:
            completion = _iso(utcnow() + timedelta(seconds=job.estimated_seconds))
    elif job.status == "queued" and job.estimated_seconds:
        completion = _iso(utcnow() + timedelta(seconds=job.estimated_seconds))
    return dict(
        job_id=job.id, owner_id=job.owner_id, name=job.name, description=job.description, strategy=job.strategy, status=job.status,
        progress=job.progress, current_phase=job.current_phase, current_metrics=job.metrics or {},
        created_at=_iso(job.created_at), started_at=_iso(job.started_at), finished_at=_iso(job.finished_at),
        estimated_completion=completion, estimated_cost=job.estimated_cost_usd,
        device_seconds=job.device_seconds or 0.0, attempts=job.attempts,
        results_available=job.status == "completed" and (folder / "run" / "report.json").is_file(),
        partial_results_available=job.status in ("cancelled", "stopped", "failed")
        and (folder / "run.partial" / "partial.json").is_file(),
        error=job.error, stop_reason=job.stop_reason,
    )


def allowed_methods(app, path: str) -> set[str]:
    """The methods the API answers for ``path``, read from its OpenAPI paths (each template's
    ``{parameter}`` matches one path segment)."""
    if not hasattr(app.state, "path_methods"):
        app.state.path_methods = [(re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"),
                                   {method.upper() for method in operations})
                                  for template, operations in app.openapi()["paths"].items()]
    return {method for pattern, methods in app.state.path_methods if pattern.match(path) for method in methods}


# ---------------------------------------------------------------- the app
def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    private_data_dir(settings)
    # the workers' cache (trained teachers, teacher outputs), so estimates see cached teachers
    os.environ.setdefault("DISTILLAB_CACHE", str(settings.data_dir.absolute() / "cache"))
    url = settings.resolved_database_url
    write_engine = make_engine(url)
    read_engine = make_engine(url, immediate=False)
    from distillab.service.migrate import upgrade

    upgrade(write_engine)
    app = FastAPI(title="distillab", version=__version__,
                  description="Self-hosted knowledge-distillation jobs: submit, watch, cancel, fetch results.")
    app.state.settings = settings
    app.state.store = JobStore(write_engine)
    app.state.write_sessions = sessionmaker(write_engine, expire_on_commit=False)
    app.state.read_sessions = sessionmaker(read_engine, expire_on_commit=False)
    app.state.read_engine = read_engine

    app.state.auth_limiter = AuthLimiter(settings.auth_failures_per_minute)
    app.state.request_limiter = RequestLimiter(settings.requests_per_minute)
    app.state.users = UserCache()
    app.add_middleware(BodyLimit, limit_bytes=int(settings.max_body_kb * 1024), exempt=(f"{PREFIX}/models",))
    app.add_middleware(SecurityHeaders)
    app.add_exception_handler(RequestValidationError, validation_error)
    # OSError and database errors get their own handlers (answered in place, the connection
    # kept); Exception is the last resort, where Starlette answers and then re-raises to the log.
    for kind in (OSError, OperationalError, Exception):
        app.add_exception_handler(kind, storage_error(settings))
    threading.Thread(target=cost_table, name="estimate-table", daemon=True).start()  # measured once, off the requests

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, problem: StarletteHTTPException):
        headers = dict(problem.headers or {})
        if problem.status_code == 405:  # Allow lists every method of the path, not only one route's
            headers["Allow"] = ", ".join(sorted(allowed_methods(request.app, request.url.path)))
        return JSONResponse(status_code=problem.status_code, content={"detail": problem.detail}, headers=headers)

    @app.exception_handler(BodyError)
    async def _body_error(_request, problem: BodyError):
        return JSONResponse(status_code=problem.status, content={"detail": clean_errors(problem.errors)},
                            headers=problem.headers)

    @app.exception_handler(registry.UploadError)
    async def _upload_error(_request, problem: registry.UploadError):
        return JSONResponse(status_code=problem.status, content={"detail": problem.message})

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict:
        """Liveness and database reachability; the only route without an API key."""
        with app.state.read_sessions() as session:
            session.execute(select(1))
        return {"status": "ok", "version": __version__, "database": write_engine.dialect.name}

    app.include_router(_router(settings), prefix=PREFIX)
    from distillab.service.web import mount_dashboard

    mount_dashboard(app, PREFIX)
    return app


def _router(settings: Settings) -> APIRouter:
    router = APIRouter(responses=_errors(401, 413, 422, 429, 503, 507),
                       dependencies=[Depends(_known_query_parameters)])
    models_dir = settings.data_dir.resolve() / "models"

    @router.get("/strategies", tags=["registries"])
    def strategies(_user: CurrentUser) -> list[dict]:
        """The distillation strategies, with their parameters and defaults."""
        from distillab.strategies import catalog

        return catalog()

    @router.get("/model-types", tags=["registries"])
    def model_types(_user: CurrentUser) -> dict:
        """Model types, zoo architectures, teacher file formats and the installed data sets."""
        from distillab.data import DATASETS
        from distillab.data.corpora import CORPORA
        from distillab.models.hf import PRETRAINED
        from distillab.models.zoo import MODELS
        from distillab.tasks.language_modeling import LM_STUDENTS

        return {
            "model_types": [{"type": "image_classifier", "input": "(C, H, W) images", "output": "class logits"},
                            {"type": "language_model", "input": "(T,) token ids", "output": "next-token logits",
                             "task": "language_modeling"}],
            "architectures": sorted(MODELS),
            "language_model_students": sorted(LM_STUDENTS),
            "teacher_formats": [registry.SAFETENSORS, registry.ONNX, registry.GGUF, "hf (tar archive)"],
            "pretrained_teachers": {name: entry.summary for name, entry in PRETRAINED.items()},
            "datasets": sorted(name for name, info in DATASETS.items() if info.default_path or name == "digits"),
            "text_corpora": sorted(name for name in CORPORA if name != "text_folder"),
        }

    # ------------------------------------------------------------ jobs
    @router.post("/jobs", status_code=201, tags=["jobs"], responses=_errors(400, 403, 422))
    def create_job(body: JobCreate, user: CurrentUser, request: Request) -> JobCreated:
        """Create a job from the documented job shape or from ``{"spec": JobSpec}``."""
        check_body(body)
        seed_shaped = body.spec is None
        teachers = None
        if body.teacher_model_ids is not None:
            teachers = []
            with request.app.state.read_sessions() as session:
                for index, model_id in enumerate(body.teacher_model_ids):
                    model = session.get(RegisteredModel, model_id) if is_id(model_id) else None
                    if model is None or model.owner_id != user.id:
                        raise BodyError([error(["teacher_model_ids", index],
                                               f"no registered model {echo(model_id)}")])
                    path = str(registry.model_path(models_dir, model.id, model.file_format))
                    if model.file_format in registry.LANGUAGE_MODEL_FORMATS:  # its own architecture and tokenizer
                        teachers.append({"checkpoint": path, "format": model.file_format, "_dataset": ""})
                    else:
                        teachers.append({"model": model.architecture, "model_args": model.model_args,
                                         "format": model.file_format, "checkpoint": path, "_dataset": model.dataset})
        dataset_of = {i: t.pop("_dataset") for i, t in enumerate(teachers or [])}
        spec = validate_spec(build_spec(body, teachers), seed_shaped)
        for index, dataset in dataset_of.items():
            if dataset and dataset != spec.data.dataset:
                raise BodyError([error(["teacher_model_ids", index],
                                       f"model was registered for data set {dataset!r}, the job uses "
                                       f"{spec.data.dataset!r}")])
        check_limits(spec, seed_shaped, settings)
        with request.app.state.read_sessions() as session:
            _check_storage(session, user)
            _check_queue(session, user)  # early, before the estimate; checked again where the job is added
            rows = session.execute(select(Job.spec, Job.device_seconds, Job.metrics).where(
                Job.status == "completed", Job.strategy == spec.strategy.name)
                .order_by(Job.finished_at.desc()).limit(50)).all()
        history = [(old, seconds, metrics["summary"]["train_samples"]) for old, seconds, metrics in rows
                   if (metrics or {}).get("summary", {}).get("train_samples")]
        estimate = _estimate(spec, settings, history)
        if estimate.seconds > settings.max_job_device_hours * 3600:
            limit = settings.max_job_device_hours
            # the limit first: a long message is cut at the echo limit, and the cut must not hide it
            raise BodyError([error(["training"], f"estimated {estimate.seconds / 3600:.1f} device-hours; one job "
                                                 f"may take at most {limit:g} (DISTILLAB_MAX_JOB_DEVICE_HOURS); "
                                                 f"estimated from {estimate.basis.split(':')[0]}")])
        options = {**options_of(body, body.teacher_model_ids), "estimate": {
            "basis": estimate.basis, "samples_per_s": estimate.samples_per_s}}
        with request.app.state.write_sessions.begin() as session:
            # the count and the insert in one transaction, the user's row locked (PostgreSQL; SQLite's
            # BEGIN IMMEDIATE serialises writers): simultaneous submits cannot pass the cap together
            session.execute(select(User.id).where(User.id == user.id).with_for_update())
            _check_queue(session, user)
            job_id = request.app.state.store.create(
                user.id, spec.name, spec.strategy.name, spec.model_dump(mode="json"), description=body.description,
                estimated_seconds=estimate.seconds, estimated_cost_usd=estimate.cost_usd, options=options,
                session=session)
            _audit(session, user, "job.create", job_id, strategy=spec.strategy.name, name=spec.name)
        return JobCreated(job_id=job_id, name=spec.name, strategy=spec.strategy.name, status="queued",
                          estimated_duration=estimate.human, estimated_duration_seconds=round(estimate.seconds, 1),
                          estimated_cost=round(estimate.cost_usd, 6), estimate_basis=estimate.basis)

    def _check_queue(session: Session, user: User) -> None:
        """429, stating the limit, when the user already has the most queued jobs allowed."""
        queued = session.scalar(select(func.count()).select_from(Job).where(
            Job.owner_id == user.id, Job.status == "queued"))
        if queued >= settings.max_queued_jobs_per_user:
            raise BodyError([error([], f"you have {queued} queued jobs; the limit is "
                                       f"{settings.max_queued_jobs_per_user} (DISTILLAB_MAX_QUEUED_JOBS_PER_USER); "
                                       "wait for some to start")], status=429, headers={"Retry-After": "30"})

    def _check_storage(session: Session, user: User) -> None:
        """403 when the user's uploads and job folders already hold their quota."""
        used = stored_bytes(session, settings, user.id)
        limit = settings.max_stored_mb_per_user * 2**20
        if used >= limit:
            raise HTTPException(403, f"you store {used / 2**20:.1f} MB of uploads and results; the limit is "
                                     f"{settings.max_stored_mb_per_user:g} MB (DISTILLAB_MAX_STORED_MB_PER_USER); "
                                     "an admin can raise it")

    def _yaml_body(text: bytes) -> JobCreate:
        """A YAML (or JSON) spec document as the ``{"spec": ...}`` body of POST /jobs."""
        try:
            document = parse_document(text.decode("utf-8"), "yaml", "spec")
        except UnicodeDecodeError:
            raise BodyError([error(["spec"], "the spec is not UTF-8 text")]) from None
        except SpecError as problem:
            raise BodyError([error(["spec"], str(problem))]) from None
        if not isinstance(document, dict):
            raise BodyError([error(["spec"], "the spec must be a mapping of keys (data, teacher, student, ...)")])
        try:
            return JobCreate.model_validate({"spec": document})
        except ValidationError as problem:
            raise BodyError([error(list(e["loc"]), e["msg"], e["type"]) for e in problem.errors()]) from None

    @router.post("/jobs/yaml", status_code=201, tags=["jobs"], responses=_errors(400, 403, 422),
                 openapi_extra={"requestBody": {"required": True,
                                                "content": {"application/yaml": {"schema": {"type": "string"}}}}})
    async def create_job_from_yaml(request: Request, user: CurrentUser) -> JobCreated:
        """Create a job from a spec written in YAML (the dashboard's editor, or ``curl
        --data-binary @job.yaml``); errors name the spec's key paths."""
        body = _yaml_body(await request.body())
        return await asyncio.to_thread(create_job, body, user, request)

    @router.post("/specs/validate", tags=["jobs"], responses=_errors(422),
                 openapi_extra={"requestBody": {"required": True,
                                                "content": {"application/yaml": {"schema": {"type": "string"}}}}})
    async def validate_spec_text(request: Request, user: CurrentUser) -> dict:
        """Check a YAML spec as POST /jobs/yaml would, without creating a job: 200 with its
        name and strategy, or 422 with the errors at their key paths."""
        body = _yaml_body(await request.body())

        def checked():  # building the models on the meta device: off the event loop
            spec = validate_spec(body.spec, False)
            check_limits(spec, False, settings)
            return spec

        spec = await asyncio.to_thread(checked)
        return {"valid": True, "name": spec.name, "strategy": spec.strategy.name, "task": spec.task,
                "seeds": spec.training.seeds, "epochs": spec.training.epochs}

    @router.get("/jobs", tags=["jobs"], responses=_errors(403), response_model=JobPage)
    async def list_jobs(user: CurrentUser, request: Request,
                  status: Annotated[Literal["queued", "running", "cancelling", "cancelled", "stopped", "completed",
                                            "failed"] | None, Query()] = None,
                  strategy: Annotated[str | None, Query(max_length=64, pattern=NAME_PATTERN)] = None,
                  limit: Annotated[int, Query(ge=1, le=200)] = 50,
                  offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                  all_users: Annotated[bool, Query(description="every user's jobs (admins only)")] = False) -> Response:
        """The caller's jobs, newest first; filter by status and strategy. An admin's
        ``all_users=true`` lists everyone's."""
        if all_users and not user.is_admin:
            raise HTTPException(403, "all_users=true is for admins")
        count, rows_of = _listing_statements(all_users, status is not None, strategy is not None)
        values = {"owner": user.id, "status": status, "strategy": strategy, "limit": limit, "offset": offset}

        def page() -> dict:  # the JobPage shape
            with request.app.state.read_engine.connect() as connection:  # Core: no ORM session to set up
                total = connection.scalar(count, values)
                rows = connection.execute(rows_of, values).all()
            return {"items": [_public_fields(row, settings) for row in rows], "total": total, "limit": limit,
                    "offset": offset}

        return _json(page())  # inline, as the job read

    @router.get("/jobs/{job_id}", tags=["jobs"], responses=_errors(404), response_model=JobPublic)
    async def get_job(job: OwnedJob) -> Response:
        return _json(_public_fields(job, settings))

    @router.delete("/jobs/{job_id}", tags=["jobs"], responses=_errors(404, 409))
    def cancel_job(job: OwnedJob, user: CurrentUser, request: Request) -> JobPublic:
        """Cancel: a queued job at once; a running one stops at its next training step, keeping
        its checkpoints and partial results. Cancelling a finished job is a 409."""
        if job.status in TERMINAL:
            raise HTTPException(409, f"job {job.id} already ended ({job.status})")
        with request.app.state.write_sessions.begin() as session:
            status = request.app.state.store.cancel(job.id)
            if job.owner_id == user.id:
                _audit(session, user, "job.cancel", job.id, status=status)
            else:  # an admin cancelling someone else's job
                _audit(session, user, "admin.job.cancel", job.id, status=status, owner_id=job.owner_id)
        with request.app.state.read_sessions() as session:
            return _public(session.get(Job, job.id), settings)

    @router.get("/jobs/{job_id}/events", response_class=EventSourceResponse, tags=["jobs"], responses=_errors(404))
    async def job_events(job: OwnedJob, request: Request):
        """Server-Sent Events: a ``progress`` event whenever status, phase, progress or metrics
        change; an ``end`` event when the job ends."""
        last = None
        while not await request.is_disconnected():
            current = await asyncio.to_thread(_reload, request, job.id)
            state = current.model_dump(mode="json")
            if state != last:
                yield ServerSentEvent(data=state, event="progress", id=f"{current.progress:.2f}")
                last = state
            if current.status in TERMINAL:
                yield ServerSentEvent(data=state, event="end")
                return
            await asyncio.sleep(0.5)

    def _reload(request: Request, job_id: str) -> JobPublic:
        with request.app.state.read_sessions() as session:
            return _public(session.get(Job, job_id), settings)

    @router.get("/jobs/{job_id}/results", tags=["jobs"], responses=_errors(404, 409))
    def job_results_route(job: OwnedJob, session: ReadSession) -> dict:
        """Measured results of a completed job; a cancelled or stopped job returns its partial
        results (``partial: true``)."""
        options = session.scalar(select(Job.options).where(Job.id == job.id))  # not loaded with the job
        folder = job_dir(settings, job.id)
        urls = {name: f"{PREFIX}/jobs/{job.id}/artifacts/{name}" for name in artifacts(folder)}
        report_path = folder / "run" / "report.json"
        if job.status == "completed" and report_path.is_file():
            report = json.loads(report_path.read_text())
            return {"job_id": job.id, "status": job.status, "partial": False, **job_results(
                report, options or {}, job.device_seconds or 0.0, settings.price_per_device_hour,
                job.estimated_cost_usd, urls)}
        partial = folder / "run.partial" / "partial.json"
        if job.status in TERMINAL and partial.is_file():
            return {"job_id": job.id, "status": job.status, "partial": True, "stop_reason": job.stop_reason,
                    **json.loads(partial.read_text()), "artifacts": urls,
                    "cost_analysis": {"device_hours": (job.device_seconds or 0) / 3600,
                                      "total_training_cost": (job.device_seconds or 0) / 3600
                                      * settings.price_per_device_hour}}
        raise HTTPException(409, f"job {job.id} has no results yet (status {job.status})")

    @router.get("/jobs/{job_id}/artifacts/{name}", tags=["jobs"], responses=_errors(404))
    def download(job: OwnedJob, name: str, user: CurrentUser, session: WriteSession) -> FileResponse:
        """Download one artifact by its name in the results' ``artifacts`` map."""
        files = artifacts(job_dir(settings, job.id))
        if name not in files:  # names come from the listing; a request never builds a path
            raise HTTPException(404, f"job {job.id} has no artifact {echo(name)}; it has: {', '.join(files) or 'none'}")
        _audit(session, user, "artifact.download", job.id, name=name)
        media = "application/json" if name.endswith(".json") else "text/markdown" if name.endswith(".md") else None
        return FileResponse(files[name], filename=name, media_type=media)

    # ------------------------------------------------------------ models
    @router.post("/models", status_code=201, tags=["models"], responses=_errors(400, 403, 422))
    async def upload_model(request: Request, user: CurrentUser,
                           name: Annotated[str, Query(min_length=1, max_length=200)],
                           task: Annotated[Literal["image_classification", "language_modeling"],
                                           Query(description="what the teacher does")] = "image_classification",
                           architecture: Annotated[str | None, Query(description="zoo name (GET /model-types); "
                                                                                 "image classifiers")] = None,
                           dataset: Annotated[str | None, Query(description="the data set it classifies")] = None,
                           model_args: Annotated[str, Query(description="JSON object of zoo arguments")] = "{}",
                           ) -> dict:
        """Upload a teacher. An image classifier: the request body is the safetensors or ONNX
        file, with its zoo ``architecture`` and ``dataset``. A language model
        (``task=language_modeling``): a GGUF file, or a tar(.gz) of a Hugging Face folder; it
        brings its own architecture and tokenizer and serves any text corpus."""
        def within_quota():
            with request.app.state.read_sessions() as session:
                _check_storage(session, user)

        await asyncio.to_thread(within_quota)
        if task == "language_modeling":
            return await _upload_language_model(request, user, name, architecture, dataset, model_args)
        from distillab.data import DATASETS
        from distillab.models.zoo import MODELS, parameter_count_on_meta

        problems = []
        for key, value in (("architecture", architecture), ("dataset", dataset)):
            if value is None:
                problems.append({"loc": ["query", key], "msg": "Field required (image classifiers)",
                                 "type": "missing"})
        if problems:
            raise RequestValidationError(problems)
        if architecture not in MODELS:
            problems.append({"loc": ["query", "architecture"], "msg": f"unknown architecture {architecture!r}",
                             "type": "value_error"})
        if dataset not in DATASETS or not (DATASETS[dataset].default_path or dataset == "digits"):
            problems.append({"loc": ["query", "dataset"], "msg": f"unknown or unavailable data set {dataset!r}",
                             "type": "value_error"})
        if text_problem(name):
            problems.append({"loc": ["query", "name"], "msg": text_problem(name), "type": "value_error"})
        args = None
        try:
            args = parse_document(model_args, "json", "model_args")
            if not isinstance(args, dict):
                raise SpecError("model_args: must be a JSON object")
        except SpecError as problem:
            args = None
            problems.append({"loc": ["query", "model_args"], "msg": str(problem), "type": "value_error"})
        if args is not None and not problems:
            info = DATASETS[dataset]
            try:
                count = parameter_count_on_meta(architecture, info.in_shape or (3, 32, 32), info.num_classes or 10,
                                                args, "model_args")
            except SpecError as problem:
                problems.append({"loc": ["query", "model_args"], "msg": str(problem), "type": "value_error"})
            else:
                if count > settings.max_model_parameters:
                    problems.append({"loc": ["query", "model_args"], "type": "value_error",
                                     "msg": f"{architecture} has {count:,} parameters; this service builds at most "
                                            f"{settings.max_model_parameters:,} (DISTILLAB_MAX_MODEL_PARAMETERS)"})
        if problems:
            raise RequestValidationError(problems)
        tmp, sha256, size, fmt = await registry.receive(request, models_dir, int(settings.max_upload_mb * 2**20))
        try:
            if fmt in registry.LANGUAGE_MODEL_FORMATS:
                raise registry.UploadError(400, f"a {'GGUF file' if fmt == registry.GGUF else 'tar archive'} is a "
                                                "language model: upload it with task=language_modeling")
            model_id, _ = await asyncio.to_thread(registry.validate_and_store, tmp, fmt, architecture, args,
                                                  dataset, models_dir)
        finally:
            tmp.unlink(missing_ok=True)
        return _register(user, name, architecture, args, fmt, sha256, size, dataset, model_id, request)

    async def _upload_language_model(request: Request, user, name: str, architecture, dataset, model_args) -> dict:
        problems = [{"loc": ["query", key], "type": "value_error",
                     "msg": f"a language model brings its own {what}; leave {key} unset"}
                    for key, value, what in (("architecture", architecture, "architecture and tokenizer"),
                                             ("dataset", dataset, "tokenizer and serves any corpus"),
                                             ("model_args", None if model_args == "{}" else model_args, "config"))
                    if value is not None]
        if text_problem(name):
            problems.append({"loc": ["query", "name"], "msg": text_problem(name), "type": "value_error"})
        if problems:
            raise RequestValidationError(problems)
        limit = int(settings.max_upload_mb * 2**20)
        tmp, sha256, size, fmt = await registry.receive(request, models_dir, limit)
        try:
            if fmt not in registry.LANGUAGE_MODEL_FORMATS:
                raise registry.UploadError(400, f"a language model upload is a GGUF file or a tar archive of a "
                                                f"Hugging Face folder; this is {fmt}")
            model_id, _, parameters = await asyncio.to_thread(
                registry.validate_and_store_language_model, tmp, fmt, models_dir, limit,
                settings.data_dir.absolute() / "cache", settings.max_model_parameters)
        finally:
            tmp.unlink(missing_ok=True)
        return _register(user, name, "causal_lm", {"parameters": parameters}, fmt, sha256, size, "", model_id,
                         request)

    def _register(user, name, architecture, args, fmt, sha256, size, dataset, model_id, request) -> dict:
        model = RegisteredModel(id=model_id, owner_id=user.id, name=name, architecture=architecture, model_args=args,
                                file_format=fmt, sha256=sha256, size_bytes=size, dataset=dataset, created_at=utcnow())
        with request.app.state.write_sessions.begin() as session:
            session.add(model)
            _audit(session, user, "model.upload", model_id, name=name, sha256=sha256, size_bytes=size)
        return _model_public(model)

    @router.get("/models", tags=["models"])
    def list_models(user: CurrentUser, session: ReadSession) -> list[dict]:
        models = session.scalars(select(RegisteredModel).where(RegisteredModel.owner_id == user.id)
                                 .order_by(RegisteredModel.created_at.desc())).all()
        return [_model_public(m) for m in models]

    # ------------------------------------------------------------ admin
    @router.get("/analytics", tags=["admin"], responses=_errors(403))
    def analytics(user: AdminUser, session: WriteSession) -> dict:
        """Jobs, success rate, distilled-vs-scratch improvement, popular strategies and
        models, and utilisation (queue length, live workers, load)."""
        _audit(session, user, "admin.analytics")
        counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        total = sum(counts.values())
        ended = sum(counts.get(s, 0) for s in ("completed", "failed", "stopped"))
        improvements, models = [], Counter()
        for spec, metrics in session.execute(select(Job.spec, Job.metrics)):
            models[spec["student"]["model"]] += 1
            summary = (metrics or {}).get("summary")
            if summary:
                improvements.append(summary["distilled_accuracy"] - summary["scratch_accuracy"])
        strategies = dict(session.execute(select(Job.strategy, func.count()).group_by(Job.strategy)).all())
        cutoff = utcnow() - timedelta(seconds=settings.heartbeat_timeout_s)
        live = session.scalars(select(Worker).where(Worker.heartbeat_at >= cutoff, Worker.stopped_at.is_(None))).all()
        busy = sum(1 for w in live if w.job_id)
        device_seconds = session.scalar(select(func.coalesce(func.sum(Job.device_seconds), 0.0)))
        return {
            "total_jobs": total,
            "active_jobs": sum(counts.get(s, 0) for s in ACTIVE),
            "completed_jobs": counts.get("completed", 0),
            "jobs_by_status": counts,
            "success_rate": counts.get("completed", 0) / ended if ended else None,
            "average_improvement": sum(improvements) / len(improvements) if improvements else None,
            "improvement_basis": f"distilled minus scratch test accuracy, mean over {len(improvements)} completed job(s)",
            "popular_strategies": dict(sorted(strategies.items(), key=lambda kv: -kv[1])),
            "model_type_distribution": dict(models.most_common()),
            "device_hours": device_seconds / 3600,
            "training_cost_usd": device_seconds / 3600 * settings.price_per_device_hour,
            "system_utilization": {
                "queue_length": counts.get("queued", 0),
                "live_workers": len(live),
                "busy_workers": busy,
                "current_load": busy / len(live) if live else None,
            },
        }

    @router.get("/audit", tags=["admin"], responses=_errors(403))
    def audit(user: AdminUser, session: WriteSession,
              action: Annotated[str | None, Query(max_length=64, pattern=NAME_PATTERN)] = None,
              limit: Annotated[int, Query(ge=1, le=1000)] = 100,
              offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> dict:
        query = select(AuditEvent, User.name).outerjoin(User, AuditEvent.user_id == User.id)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        rows = session.execute(query.order_by(AuditEvent.id.desc()).limit(limit).offset(offset)).all()
        _audit(session, user, "admin.audit", filter_action=action)
        return {"items": [{"id": e.id, "at": _iso(e.at), "user": name, "action": e.action, "target": e.target,
                           "detail": e.detail} for e, name in rows], "limit": limit, "offset": offset}

    return router


def _model_public(model: RegisteredModel) -> dict:
    task = "language_modeling" if model.file_format in registry.LANGUAGE_MODEL_FORMATS else "image_classification"
    return {"model_id": model.id, "name": model.name, "task": task, "architecture": model.architecture,
            "model_args": model.model_args, "format": model.file_format, "dataset": model.dataset,
            "sha256": model.sha256, "size_bytes": model.size_bytes, "created_at": _iso(model.created_at)}


def _estimate(spec, settings: Settings, history):
    """Estimate without running any submitted model (MACs on the meta device, or history);
    bad data becomes a 422."""
    from distillab import data as data_module
    from distillab.data.cache import default_cache_dir
    from distillab.experiment.teacher import _trained_teacher_key
    from distillab.service.estimate import estimate, model_macs

    try:
        if spec.data.is_text:
            from distillab.data.text import text_split_sizes
            from distillab.service.estimate import lm_teacher_macs

            n_train, n_val, in_shape, classes = text_split_sizes(spec.data)
            teacher_macs = [lm_teacher_macs(teacher, in_shape[0]) for teacher in spec.teachers]
            return estimate(spec, n_train, n_val, in_shape, classes, teacher_macs, [],
                            settings.price_per_device_hour, history)
        n_train, n_val, in_shape, classes = data_module.split_sizes(spec.data)
        teacher_macs, untrained = [], []
        for index, teacher in enumerate(spec.teachers):
            if teacher.checkpoint is None:
                cached = (spec.cache.dir or default_cache_dir()) / "teachers" / _trained_teacher_key(spec, index)
                if not (cached / "teacher.safetensors").exists():
                    untrained.append(index)
            teacher_macs.append(model_macs(teacher.model, teacher.model_args, in_shape, classes)
                                if teacher.model else None)
    except DistillabError as problem:
        raise BodyError([error(["spec"], str(problem))]) from None
    return estimate(spec, n_train, n_val, in_shape, classes, teacher_macs, untrained,
                    settings.price_per_device_hour, history)
