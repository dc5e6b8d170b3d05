"""The dashboard in a real headless Chromium (Debian's, driven by Playwright) against a real
server and worker: log in, submit a digits job from the YAML editor (after a spec with errors
shown at their key paths), watch it complete live, open the report, download the student, and
check that another user sees none of it; a refused key goes back to the login page.

Set DISTILLAB_SCREENSHOTS=docs to write each page's screenshot (the README's)."""

import os
import shutil
import time
from pathlib import Path

import pytest

from service_databases import postgres_server  # noqa: F401  (fixture)
from service_processes import running_service

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup installs it)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (make setup installs it)")

GOOD_SPEC = """name: digits-dashboard
data:
  dataset: digits
teacher:
  model: mlp
  model_args: {hidden: [64]}
  training: {epochs: 4}
student:
  model: mlp
  model_args: {hidden: [16]}
strategy:
  name: response
training:
  epochs: 3
  seeds: [0, 1]
output:
  tensorboard: false
  latency_repeats: 2
"""
BAD_SPEC = GOOD_SPEC.replace("epochs: 3", "epochs: -1").replace("name: response", "name: responze")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def service(request, tmp_path_factory):
    with running_service(request, tmp_path_factory) as running:
        running.start_worker()
        yield running


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield launched
        launched.close()


def _shot(page, name: str) -> None:
    folder = os.environ.get("DISTILLAB_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"dashboard-{name}.png"), full_page=True)


def _login(page, service, key: str) -> None:
    page.goto(service.url + "/ui/login")
    page.fill("#key", key)
    page.click("#login-form button[type=submit]")


def _until(check, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while not check():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_a_user_submits_watches_reads_and_downloads_and_another_user_sees_none(service, browser, tmp_path):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.goto(service.url + "/ui/jobs")  # no key yet: back to the login page
    page.wait_for_url("**/ui/login**")
    assert "Log in with your API key" in page.inner_text("#message")
    _login(page, service, "dk_not-a-key")
    page.wait_for_selector("#message:not([hidden])")
    assert "Unknown API key" in page.inner_text("#message")
    _shot(page, "login")
    _login(page, service, service.keys["alice"])
    page.wait_for_url("**/ui/jobs")

    page.goto(service.url + "/ui/submit")
    page.fill("#spec", BAD_SPEC)
    page.click("#validate")
    page.wait_for_selector("#spec-errors li")
    errors = page.inner_text("#spec-errors")
    assert "spec.training.epochs" in errors and "spec.strategy.name" in errors, errors
    _shot(page, "submit-errors")
    page.fill("#spec", GOOD_SPEC)
    page.click("#validate")
    page.wait_for_selector("#spec-ok:not([hidden])")
    page.click("#submit-form button[type=submit]")
    page.wait_for_url("**/ui/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]

    # (no wait_for_function: its polling evaluates strings, which the dashboard's CSP forbids)
    page.wait_for_selector("#job-status:text-is('completed')", timeout=240_000)
    page.wait_for_selector("#results:not([hidden]) #report-table tbody tr")
    roles = page.eval_on_selector_all("#report-table tbody tr td:nth-child(2)", "cells => cells.map(c => c.textContent)")
    assert {"teacher", "scratch", "distilled"} <= set(roles), roles
    page.wait_for_selector("#plots img")
    _until(lambda: page.eval_on_selector_all("#plots img", "images => images.every(i => i.complete && i.naturalWidth > 0)"))
    assert "%" in page.inner_text("#report-table") and page.inner_text("#verdict")
    _shot(page, "job")
    with page.expect_download() as download:
        page.click("#artifacts button:text-is('student.safetensors')")
    saved = tmp_path / "student.safetensors"
    download.value.save_as(saved)
    from safetensors.torch import load_file

    assert load_file(str(saved))  # the downloaded student is the real file

    page.goto(service.url + "/ui/jobs")
    page.wait_for_selector(f"#jobs-table tr[data-job='{job_id}']")
    assert "completed" in page.inner_text(f"#jobs-table tr[data-job='{job_id}'] .status")
    _shot(page, "jobs")
    page.goto(service.url + "/ui/catalog")
    page.wait_for_selector("#strategies-table tbody tr")
    assert "response" in page.inner_text("#strategies-table")
    _shot(page, "catalog")
    page.goto(service.url + "/ui/admin")
    page.wait_for_selector("#message:not([hidden])")
    assert "for admins" in page.inner_text("#message")  # alice is not an admin

    other = browser.new_context().new_page()  # bob, in his own browser session
    _login(other, service, service.keys["bob"])
    other.wait_for_url("**/ui/jobs")
    other.wait_for_selector("#jobs-empty:not([hidden])")
    assert other.locator("#jobs-table tbody tr").count() == 0
    other.goto(service.url + f"/ui/jobs/{job_id}")
    other.wait_for_selector("#message:not([hidden])")
    assert f"No job {job_id}" in other.inner_text("#message")
    other.evaluate("sessionStorage.setItem('distillab-key', 'dk_expired')")  # a key the server no longer knows
    other.goto(service.url + "/ui/jobs")
    other.wait_for_url("**/ui/login**")
    assert "refused" in other.inner_text("#message")

    admin = browser.new_context(viewport={"width": 1200, "height": 900}).new_page()
    _login(admin, service, service.keys["admin"])
    admin.wait_for_url("**/ui/jobs")
    admin.goto(service.url + "/ui/admin")
    admin.wait_for_selector("#audit-table tbody tr")
    assert "job.create" in admin.inner_text("#audit-table") and "artifact.download" in admin.inner_text("#audit-table")
    _shot(admin, "admin")
    context.close()
