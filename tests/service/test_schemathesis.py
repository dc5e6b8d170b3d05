"""Schemathesis against a real ``distillab serve`` on loopback (SQLite): generated requests,
valid and invalid, for every operation of the OpenAPI document. Any 5xx, undocumented status,
wrong content type or response that breaks its schema fails the test."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fuzzing import fuzz, log_counts
from schemathesis import GenerationMode
from service_processes import running_service, upload_teacher


@pytest.fixture(scope="module")
def live(request, tmp_path_factory):
    sqlite = SimpleNamespace(param="sqlite", getfixturevalue=request.getfixturevalue)
    limits = {"DISTILLAB_MAX_QUEUED_JOBS_PER_USER": "1000", "DISTILLAB_AUTH_FAILURES_PER_MINUTE": "100000",
              "DISTILLAB_REQUESTS_PER_MINUTE": "10000000"}
    with running_service(sqlite, tmp_path_factory, limits) as running:
        upload_teacher(running, "admin")  # so that generated job bodies can meet a real model id now and then
        yield running


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_operation_answers_within_its_documented_contract(live, mode):
    """One Hypothesis run per operation (schemathesis's own pytest fixture loader does not
    run on pytest 9, so the operations are walked here)."""
    checked, statuses = fuzz(live.url, mode, "X-API-Key", live.keys["admin"])
    assert len(checked) >= (14 if mode is GenerationMode.POSITIVE else 8), checked
    assert "POST /api/v1/distillation/jobs" in checked, checked
    assert not any(status >= 500 for status in statuses), statuses
    log_counts("service", mode, checked, statuses)
