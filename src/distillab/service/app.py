"""``create_app(settings)``: the REST API under ``/api/v1/distillation`` (OpenAPI at /docs),
assembled from the routes of each resource (``service.routes``).

Every route but ``/healthz`` needs an ``X-API-Key``. Users see and touch only their own jobs
and models (another user's ids answer 404); ``/analytics`` and ``/audit`` are for admins.
Job creation, cancellation, artifact downloads, model uploads and admin reads are written
to the audit table in the same transaction as the change they record.
"""

from __future__ import annotations

import logging
import os
import re
import threading

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker
from starlette.exceptions import HTTPException as StarletteHTTPException

from distillab import __version__
from distillab.service import registry
from distillab.service.db import make_engine
from distillab.service.deps import PREFIX, UserCache, known_query_parameters
from distillab.service.estimate import cost_table
from distillab.service.guards import (AuthLimiter, BodyLimit, RequestLimiter, SecurityHeaders, clean_errors,
                                      storage_error, validation_error)
from distillab.service.jobs import BodyError
from distillab.service.routes import admin, jobs, models, registries
from distillab.service.schemas import errors
from distillab.service.settings import Settings, private_data_dir
from distillab.service.store import JobStore

log = logging.getLogger("distillab.service")


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

    for routes in (registries, jobs, models, admin):
        app.include_router(routes.router(settings), prefix=PREFIX,
                           responses=errors(401, 413, 422, 429, 503, 507),
                           dependencies=[Depends(known_query_parameters)])
    from distillab.service.web import mount_dashboard

    mount_dashboard(app, PREFIX)
    return app



def allowed_methods(app, path: str) -> set[str]:
    """The methods the API answers for ``path``, read from its OpenAPI paths (each template's
    ``{parameter}`` matches one path segment)."""
    if not hasattr(app.state, "path_methods"):
        app.state.path_methods = [(re.compile(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"),
                                   {method.upper() for method in operations})
                                  for template, operations in app.openapi()["paths"].items()]
    return {method for pattern, methods in app.state.path_methods if pattern.match(path) for method in methods}
