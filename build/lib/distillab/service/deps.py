"""The job service's request dependencies: database sessions, the caller (API key, limits),
the caller's job, query-parameter checks, and the audit trail."""

from __future__ import annotations

import functools
import os
import re
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import APIKeyHeader
from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session, defer

from distillab.service.auth import hash_key, user_by_key_hash
from distillab.service.db import AuditEvent, JobRecord, RegisteredModel, User
from distillab.service.settings import Settings
from distillab.service.worker import job_dir

PREFIX = "/api/v1/distillation"
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"  # strategy and audit-action filters: registry names only
MAX_OFFSET = 1_000_000_000  # beyond any table here, and inside every database's integer range


def read_session(request: Request):
    with request.app.state.read_sessions() as session:
        yield session


def write_session(request: Request):
    with request.app.state.write_sessions.begin() as session:
        yield session


def _query_names(dependant) -> set[str]:
    """The query parameters a route declares, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def known_query_parameters(request: Request) -> None:
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


ReadSession = Annotated[Session, Depends(read_session)]
WriteSession = Annotated[Session, Depends(write_session)]
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
PUBLIC_ONLY = (defer(JobRecord.spec, raiseload=False), defer(JobRecord.options, raiseload=False))
PUBLIC_COLUMNS = (JobRecord.id, JobRecord.owner_id, JobRecord.name, JobRecord.description, JobRecord.strategy, JobRecord.status, JobRecord.progress,
                  JobRecord.current_phase, JobRecord.metrics, JobRecord.created_at, JobRecord.started_at, JobRecord.finished_at,
                  JobRecord.estimated_seconds, JobRecord.estimated_cost_usd, JobRecord.device_seconds, JobRecord.attempts, JobRecord.error,
                  JobRecord.stop_reason)


@functools.lru_cache(maxsize=8)
def listing_statements(all_users: bool, by_status: bool, by_strategy: bool):
    """(count, page) statements of GET /jobs for one combination of filters, built once: the
    public columns only, as rows (no ORM objects), the values bound at execution."""
    filters = [] if all_users else [JobRecord.owner_id == bindparam("owner")]
    if by_status:
        filters.append(JobRecord.status == bindparam("status"))
    if by_strategy:
        filters.append(JobRecord.strategy == bindparam("strategy"))
    count = select(func.count(JobRecord.id)).where(*filters)
    page = (select(*PUBLIC_COLUMNS).where(*filters).order_by(JobRecord.created_at.desc(), JobRecord.id)
            .limit(bindparam("limit")).offset(bindparam("offset")))
    return count, page


def _load_job(request: Request, job_id: str) -> JobRecord | None:
    with request.app.state.read_sessions() as session:
        return session.get(JobRecord, job_id, options=PUBLIC_ONLY)


async def _owned_job(job_id: str, user: CurrentUser, request: Request) -> JobRecord:
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


OwnedJob = Annotated[JobRecord, Depends(_owned_job)]


def audit_event(session: Session, user: User | None, action: str, target: str | None = None, **detail) -> None:
    session.add(AuditEvent(user_id=user.id if user else None, action=action, target=target, detail=detail))


def stored_bytes(session: Session, settings: Settings, user_id: int) -> int:
    """What a user keeps on the server: their uploaded models and their jobs' folders."""
    models = session.scalar(select(func.coalesce(func.sum(RegisteredModel.size_bytes), 0))
                            .where(RegisteredModel.owner_id == user_id)) or 0
    total = int(models)
    for job_id in session.scalars(select(JobRecord.id).where(JobRecord.owner_id == user_id)):
        for root, _dirs, files in os.walk(job_dir(settings, job_id)):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:  # a worker replaced it meanwhile
                    pass
    return total


def check_storage(session: Session, settings: Settings, user: User) -> None:
    """403 when the user's uploads and job folders already hold their quota."""
    used = stored_bytes(session, settings, user.id)
    limit = settings.max_stored_mb_per_user * 2**20
    if used >= limit:
        raise HTTPException(403, f"you store {used / 2**20:.1f} MB of uploads and results; the limit is "
                                 f"{settings.max_stored_mb_per_user:g} MB (DISTILLAB_MAX_STORED_MB_PER_USER); "
                                 "an admin can raise it")
