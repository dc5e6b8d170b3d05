"""Jobs: create (from the documented job shape, a spec, or YAML), validate a spec, list, read,
cancel, follow (Server-Sent Events), results and artifacts."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from distillab.errors import DistillabError, SpecError
from distillab.inputs import parse_document
from distillab.service import registry
from distillab.service.db import JobRecord, RegisteredModel, User
from distillab.service.deps import (MAX_OFFSET, NAME_PATTERN, PREFIX, CurrentUser, OwnedJob, ReadSession, WriteSession,
                                    audit_event, check_storage, echo, is_id, listing_statements)
from distillab.service.jobs import (BodyError, JobCreate, build_spec, check_body, check_limits, error, options_of,
                                    validate_spec)
from distillab.service.results import artifacts, job_results
from distillab.service.schemas import JobCreated, JobPage, JobPublic, errors, json_response, public, public_fields
from distillab.service.settings import Settings
from distillab.service.store import TERMINAL
from distillab.service.worker import job_dir


def router(settings: Settings) -> APIRouter:
    router = APIRouter()
    models_dir = settings.data_dir.resolve() / "models"

    @router.post("/jobs", status_code=201, tags=["jobs"], responses=errors(400, 403, 422))
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
            check_storage(session, settings, user)
            _check_queue(session, user)  # early, before the estimate; checked again where the job is added
            rows = session.execute(select(JobRecord.spec, JobRecord.device_seconds, JobRecord.metrics).where(
                JobRecord.status == "completed", JobRecord.strategy == spec.strategy.name)
                .order_by(JobRecord.finished_at.desc()).limit(50)).all()
        history = [(old, seconds, metrics["summary"]["train_samples"]) for old, seconds, metrics in rows
                   if (metrics or {}).get("summary", {}).get("train_samples")]
        estimate = _estimate(spec, settings, history)
        if spec.auto is not None:
            estimate = _search_estimate(spec, estimate, settings)
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
            audit_event(session, user, "job.create", job_id, strategy=spec.strategy.name, name=spec.name)
        return JobCreated(job_id=job_id, name=spec.name, strategy=spec.strategy.name, status="queued",
                          estimated_duration=estimate.human, estimated_duration_seconds=round(estimate.seconds, 1),
                          estimated_cost=round(estimate.cost_usd, 6), estimate_basis=estimate.basis)

    def _check_queue(session: Session, user: User) -> None:
        """429, stating the limit, when the user already has the most queued jobs allowed."""
        queued = session.scalar(select(func.count()).select_from(JobRecord).where(
            JobRecord.owner_id == user.id, JobRecord.status == "queued"))
        if queued >= settings.max_queued_jobs_per_user:
            raise BodyError([error([], f"you have {queued} queued jobs; the limit is "
                                       f"{settings.max_queued_jobs_per_user} (DISTILLAB_MAX_QUEUED_JOBS_PER_USER); "
                                       "wait for some to start")], status=429, headers={"Retry-After": "30"})

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

    @router.post("/jobs/yaml", status_code=201, tags=["jobs"], responses=errors(400, 403, 422),
                 openapi_extra={"requestBody": {"required": True,
                                                "content": {"application/yaml": {"schema": {"type": "string"}}}}})
    async def create_job_from_yaml(request: Request, user: CurrentUser) -> JobCreated:
        """Create a job from a spec written in YAML (the dashboard's editor, or ``curl
        --data-binary @job.yaml``); errors name the spec's key paths."""
        body = _yaml_body(await request.body())
        return await asyncio.to_thread(create_job, body, user, request)

    @router.post("/specs/validate", tags=["jobs"], responses=errors(422),
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

    @router.get("/jobs", tags=["jobs"], responses=errors(403), response_model=JobPage)
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
        count, rows_of = listing_statements(all_users, status is not None, strategy is not None)
        values = {"owner": user.id, "status": status, "strategy": strategy, "limit": limit, "offset": offset}

        def page() -> dict:  # the JobPage shape
            with request.app.state.read_engine.connect() as connection:  # Core: no ORM session to set up
                total = connection.scalar(count, values)
                rows = connection.execute(rows_of, values).all()
            return {"items": [public_fields(row, settings) for row in rows], "total": total, "limit": limit,
                    "offset": offset}

        return json_response(page())  # inline, as the job read

    @router.get("/jobs/{job_id}", tags=["jobs"], responses=errors(404), response_model=JobPublic)
    async def get_job(job: OwnedJob) -> Response:
        return json_response(public_fields(job, settings))

    @router.delete("/jobs/{job_id}", tags=["jobs"], responses=errors(404, 409))
    def cancel_job(job: OwnedJob, user: CurrentUser, request: Request) -> JobPublic:
        """Cancel: a queued job at once; a running one stops at its next training step, keeping
        its checkpoints and partial results. Cancelling a finished job is a 409."""
        if job.status in TERMINAL:
            raise HTTPException(409, f"job {job.id} already ended ({job.status})")
        with request.app.state.write_sessions.begin() as session:
            status = request.app.state.store.cancel(job.id)
            if job.owner_id == user.id:
                audit_event(session, user, "job.cancel", job.id, status=status)
            else:  # an admin cancelling someone else's job
                audit_event(session, user, "admin.job.cancel", job.id, status=status, owner_id=job.owner_id)
        with request.app.state.read_sessions() as session:
            return public(session.get(JobRecord, job.id), settings)

    @router.get("/jobs/{job_id}/events", response_class=EventSourceResponse, tags=["jobs"], responses=errors(404))
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
            return public(session.get(JobRecord, job_id), settings)

    @router.get("/jobs/{job_id}/results", tags=["jobs"], responses=errors(404, 409))
    def job_results_route(job: OwnedJob, session: ReadSession) -> dict:
        """Measured results of a completed job; a cancelled or stopped job returns its partial
        results (``partial: true``)."""
        options = session.scalar(select(JobRecord.options).where(JobRecord.id == job.id))  # not loaded with the job
        folder = job_dir(settings, job.id)
        urls = {name: f"{PREFIX}/jobs/{job.id}/artifacts/{name}" for name in artifacts(folder)}
        report_path = folder / "run" / "report.json"
        search = _search_results(folder)  # an automated search's trials, front and choice
        if job.status == "completed" and report_path.is_file():
            report = json.loads(report_path.read_text())
            quantized = folder / "run" / "quantized.json"  # a search's chosen student, measured in int8
            return {"job_id": job.id, "status": job.status, "partial": False, **job_results(
                report, options or {}, job.device_seconds or 0.0, settings.price_per_device_hour,
                job.estimated_cost_usd, urls, json.loads(quantized.read_text()) if quantized.is_file() else None),
                **search}
        partial = folder / "run.partial" / "partial.json"
        if job.status in TERMINAL and (partial.is_file() or search):
            return {"job_id": job.id, "status": job.status, "partial": True, "stop_reason": job.stop_reason,
                    **(json.loads(partial.read_text()) if partial.is_file() else {}), "artifacts": urls,
                    "cost_analysis": {"device_hours": (job.device_seconds or 0) / 3600,
                                      "total_training_cost": (job.device_seconds or 0) / 3600
                                      * settings.price_per_device_hour}, **search}
        raise HTTPException(409, f"job {job.id} has no results yet (status {job.status})")

    @router.get("/jobs/{job_id}/artifacts/{name}", tags=["jobs"], responses=errors(404))
    def download(job: OwnedJob, name: str, user: CurrentUser, session: WriteSession) -> FileResponse:
        """Download one artifact by its name in the results' ``artifacts`` map."""
        files = artifacts(job_dir(settings, job.id))
        if name not in files:  # names come from the listing; a request never builds a path
            raise HTTPException(404, f"job {job.id} has no artifact {echo(name)}; it has: {', '.join(files) or 'none'}")
        audit_event(session, user, "artifact.download", job.id, name=name)
        media = "application/json" if name.endswith(".json") else "text/markdown" if name.endswith(".md") else None
        return FileResponse(files[name], filename=name, media_type=media)

    return router


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


def _search_results(folder) -> dict:
    """``{"auto": ...}``: the search's summary (constraints, trials, latency model, front, chosen),
    or nothing for a job that names its student."""
    summary = folder / "auto.json"
    if not summary.is_file():
        return {}
    document = json.loads(summary.read_text())
    keep = ("constraints", "teacher_val_score", "candidates", "feasible_candidates", "rungs_epochs", "trials",
            "epochs_trained", "searched_seconds", "stopped", "latency_model", "chosen", "front", "final")
    return {"auto": {key: document[key] for key in keep if key in document}}


def _search_estimate(spec, final, settings: Settings):
    """An automated search: its wall-clock budget when it has one, else its plan's epochs (20
    trials by default, each at most the space's epochs) at the speed of the spec's own student;
    plus the chosen student's final run (``final``, the spec's own job)."""
    from dataclasses import replace

    from distillab.autodistill.search import DEFAULT_TRIALS

    budget = spec.auto.budget
    per_epoch = final.seconds / max(1, spec.training.epochs * len(spec.training.seeds) * 2)
    if budget.wall_s is not None:
        searching, how = budget.wall_s, f"its budget of {budget.wall_s:.0f} s"
    else:
        trials = budget.max_trials or DEFAULT_TRIALS
        searching = trials * spec.auto.space.for_task(spec.task).epochs[1] * per_epoch
        how = f"{trials} trials of at most {spec.auto.space.for_task(spec.task).epochs[1]} epochs"
    seconds = searching + final.seconds
    return replace(final, seconds=seconds, cost_usd=seconds / 3600 * settings.price_per_device_hour,
                   basis=f"an automated search ({how}) and the chosen student's final run; {final.basis}")
