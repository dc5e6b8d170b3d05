"""Schemathesis against a real ``distillab serve`` on loopback (SQLite): generated requests,
valid and invalid, for every operation of the OpenAPI document. Any 5xx, undocumented status,
wrong content type or response that breaks its schema fails the test."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from service_processes import running_service, upload_teacher

# ~15 operations: a few hundred requests, well under two minutes (benchmarks/reliability.py asks for more)
EXAMPLES_PER_OPERATION = int(os.environ.get("DISTILLAB_FUZZ_EXAMPLES", "25"))
# "Schema-valid data must be accepted" cannot hold for this API: a body can match the schema
# and still name a model id that does not exist, an unknown architecture or an impossible
# model, which only the server can know (422 with the reason). Every other check stays on.
SEMANTIC = [schemathesis.checks.positive_data_acceptance]


@pytest.fixture(scope="module")
def live(request, tmp_path_factory):
    sqlite = SimpleNamespace(param="sqlite", getfixturevalue=request.getfixturevalue)
    limits = {"DISTILLAB_MAX_QUEUED_JOBS_PER_USER": "1000", "DISTILLAB_AUTH_FAILURES_PER_MINUTE": "100000",
              "DISTILLAB_REQUESTS_PER_MINUTE": "10000000"}
    with running_service(sqlite, tmp_path_factory, limits) as running:
        upload_teacher(running, "admin")  # so that generated job bodies can meet a real model id now and then
        yield running


def operations(live):
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    for result in schema.get_all_operations():
        yield result.ok()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_every_operation_answers_within_its_documented_contract(live, mode):
    """One Hypothesis run per operation (schemathesis's own pytest fixture loader does not
    run on pytest 9, so the operations are walked here)."""
    headers = {"X-API-Key": live.keys["admin"]}
    checked, statuses = [], {}
    for operation in operations(live):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # The real key replaces a generated one; an invalid case that leaves the header out on
            # purpose keeps it out (adding it back would make the request valid, and a 2xx "wrong").
            if mode is GenerationMode.POSITIVE or "X-API-Key" in (case.headers or {}):
                case.headers = {**(case.headers or {}), **headers}
            response = case.call_and_validate(timeout=60, excluded_checks=SEMANTIC)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            check()
        except Unsatisfiable:  # an operation without parameters has no invalid input to make
            assert mode is GenerationMode.NEGATIVE
            continue
        checked.append(operation.label)
    assert len(checked) >= (14 if mode is GenerationMode.POSITIVE else 8), checked
    assert "POST /api/v1/distillation/jobs" in checked, checked
    assert not any(status >= 500 for status in statuses), statuses
    if os.environ.get("DISTILLAB_FUZZ_LOG"):  # benchmarks/reliability.py collects the counts
        with open(os.environ["DISTILLAB_FUZZ_LOG"], "a") as log:
            log.write(json.dumps({"mode": mode.value, "operations": len(checked), "statuses": statuses}) + "\n")
