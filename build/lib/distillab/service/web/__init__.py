"""The dashboard: server-rendered page shells (Jinja2) and one small script, no build step.

The pages hold no data and need no key: the script reads the user's API key from the browser's
sessionStorage (set at login, gone when the tab closes; never a cookie, so there is nothing to
forge across sites) and calls the same JSON API as any client, so authorisation, isolation,
quotas and audit are the API's. Live progress comes from the job's Server-Sent Events route,
read with fetch (EventSource cannot send the key header).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
PAGES = {"login": "Log in", "jobs": "Jobs", "job": "Job", "submit": "New job", "catalog": "Catalogue",
         "admin": "Admin"}


def mount_dashboard(app, api_prefix: str) -> None:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    router = APIRouter(prefix="/ui", include_in_schema=False)

    def page(request: Request, name: str, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, f"{name}.html", {
            "page": name, "title": PAGES[name], "api": api_prefix, **context})

    @router.get("")
    def home() -> RedirectResponse:
        return RedirectResponse("/ui/jobs")

    def simple(name: str):
        def show(request: Request) -> HTMLResponse:
            return page(request, name)
        return show

    for name in ("login", "jobs", "submit", "catalog", "admin"):
        router.add_api_route(f"/{name}", simple(name), methods=["GET"], response_class=HTMLResponse)

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job(request: Request, job_id: str):
        return page(request, "job", job_id=job_id[:64])

    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=str(HERE / "static")), name="dashboard-static")
