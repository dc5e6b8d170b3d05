"""What stands between a careless or hostile client and the service: a body-size limit, error
bodies that are always JSON and never echo a large input back, a 507 for a full disk, and a
limit on wrong API keys per client, and one on requests per user."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from distillab.errors import is_disk_full

log = logging.getLogger("distillab.service")

ECHO_LIMIT = 200  # characters of a rejected input an error body may repeat


class BodyLimit:
    """ASGI middleware: a request body over ``limit_bytes`` is answered 413 before it is read
    whole (by its Content-Length, or by counting a chunked body). Paths in ``exempt`` (the
    model upload, which streams to disk under its own limit) pass through."""

    def __init__(self, app, limit_bytes: int, exempt: tuple[str, ...] = ()):
        self.app, self.limit, self.exempt = app, limit_bytes, exempt

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in self.exempt:
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self._too_large(scope, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._too_large(scope, send)

    async def _too_large(self, scope, send):
        response = JSONResponse(status_code=413, content={
            "detail": f"request body over the limit of {self.limit} bytes (DISTILLAB_MAX_BODY_KB)"})
        await response(scope, None, send)


class _BodyTooLarge(Exception):
    pass


def _clean(value):
    """A JSON-safe copy: strings without lone surrogates and cut to ECHO_LIMIT characters,
    non-finite numbers as strings."""
    if isinstance(value, str):
        text = value.encode("utf-8", "backslashreplace").decode("utf-8")
        return text if len(text) <= ECHO_LIMIT else text[:ECHO_LIMIT] + f"... ({len(text)} characters)"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {_clean(str(k)): _clean(v) for k, v in list(value.items())[:20]}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in list(value)[:20]]
    return value


def _short_input(value):
    """The rejected input, or a note of its size when it is large."""
    text = repr(value)
    if len(text) <= ECHO_LIMIT:
        return _clean(value)
    return f"{type(value).__name__} of {len(text)} characters (not echoed)"


def clean_errors(errors: list[dict]) -> list[dict]:
    out = []
    for item in errors:
        item = dict(item)
        if "input" in item:
            item["input"] = _short_input(item["input"])
        if "ctx" in item:
            item["ctx"] = {k: str(v)[:ECHO_LIMIT] for k, v in item["ctx"].items()}
        item.pop("url", None)
        out.append(_clean(jsonable_encoder(item, custom_encoder={float: lambda f: f if math.isfinite(f) else str(f)})))
    return out


async def validation_error(_request: Request, problem: RequestValidationError) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": clean_errors(list(problem.errors()))})


def storage_error(settings):
    """Handler for exceptions no route handled: a full disk is a 507 with a JSON body; a
    database that cannot be reached a 503; anything else our bug, a JSON 500 (the
    traceback goes to the log)."""

    async def handler(request: Request, problem: Exception) -> JSONResponse:
        if is_disk_full(problem, settings.data_dir) or "database or disk is full" in str(problem):
            log.error("%s %s: the disk is full: %s", request.method, request.url.path, problem)
            return JSONResponse(status_code=507, content={
                "detail": "the server's disk is full; nothing was stored. Try again later."})
        if isinstance(problem, OperationalError):
            log.error("%s %s: database error: %s", request.method, request.url.path, problem)
            return JSONResponse(status_code=503, headers={"Retry-After": "5"}, content={
                "detail": "the database is unavailable; try again later"})
        log.error("%s %s: internal error", request.method, request.url.path, exc_info=problem)
        return JSONResponse(status_code=500, content={"detail": "internal error; the server log has the details"})

    return handler


class AuthLimiter:
    """At most ``per_minute`` wrong API keys per client address in a sliding minute; past
    that, wrong keys from the address get 429 until the window has room again. Callers check a
    key before asking, so a valid key is never refused by it."""

    def __init__(self, per_minute: int, window_s: float = 60.0):
        self.per_minute, self.window = per_minute, window_s
        self.failures: dict[str, deque] = {}
        self.lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque:
        times = self.failures.setdefault(client, deque())
        while times and now - times[0] > self.window:
            times.popleft()
        return times

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None when it is not limited."""
        now = time.monotonic()
        with self.lock:
            times = self._recent(client, now)
            if len(times) < self.per_minute:
                return None
            return max(1, math.ceil(self.window - (now - times[0])))

    def failed(self, client: str) -> None:
        with self.lock:
            self._recent(client, time.monotonic()).append(time.monotonic())
            if len(self.failures) > 10_000:  # forget idle clients, so the table stays small
                for key in [k for k, v in self.failures.items() if not v][:5_000]:
                    del self.failures[key]


class RequestLimiter:
    """At most ``per_minute`` API requests per user in a sliding minute (the ``limits``
    library's sliding-window counter, in this process's memory: with several API processes
    each counts its own share)."""

    def __init__(self, per_minute: int):
        from limits import RateLimitItemPerMinute, storage, strategies

        self.item = RateLimitItemPerMinute(per_minute)
        self.limiter = strategies.SlidingWindowCounterRateLimiter(storage.MemoryStorage())

    def retry_after(self, user_id: int) -> int | None:
        """Count one request; None when it is within the limit, else the seconds to wait."""
        if self.limiter.hit(self.item, "user", str(user_id)):
            return None
        reset = self.limiter.get_window_stats(self.item, "user", str(user_id)).reset_time
        return max(1, math.ceil(reset - time.time()))


DASHBOARD_POLICY = ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
                    "form-action 'self'; frame-ancestors 'none'")


class SecurityHeaders:
    """Headers on every answer: ``X-Content-Type-Options: nosniff``; on the dashboard's pages
    also a Content-Security-Policy (its own script and styles only, no inline code, plots from
    blob: URLs) and ``X-Frame-Options: DENY`` (no framing, so no clickjacking). Pure ASGI, so
    the job's event stream passes through unbuffered."""

    def __init__(self, app, dashboard_prefix: str = "/ui"):
        self.app, self.prefix = app, dashboard_prefix

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        page = scope["path"] == self.prefix or scope["path"].startswith(self.prefix + "/")

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if page:
                    headers += [(b"content-security-policy", DASHBOARD_POLICY.encode()),
                                (b"x-frame-options", b"DENY")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)

