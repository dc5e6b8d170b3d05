"""The schemathesis walk shared by the fuzz tests of every server we ship: one Hypothesis run
per operation of a live server's OpenAPI document, valid or invalid requests; any 5xx,
undocumented status, wrong content type or response that breaks its schema fails."""

from __future__ import annotations

import json
import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

EXAMPLES_PER_OPERATION = int(os.environ.get("DISTILLAB_FUZZ_EXAMPLES", "25"))
# "Schema-valid data must be accepted" cannot hold here: a body can match the schema and still
# name a model id that does not exist, or hold numbers of the wrong shape, which only the server
# can know (a 4xx with the reason). Every other check stays on.
SEMANTIC = [schemathesis.checks.positive_data_acceptance]


def fuzz(url: str, mode: GenerationMode, key_header: str, key: str) -> tuple[list[str], dict[int, int]]:
    """(operations checked, status counts) of a schemathesis walk over the server at ``url``.
    The real key replaces a generated one; an invalid case that leaves the header out on
    purpose keeps it out (adding it back would make the request valid, and a 2xx "wrong")."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    checked, statuses = [], {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            if mode is GenerationMode.POSITIVE or key_header in (case.headers or {}):
                case.headers = {**(case.headers or {}), key_header: key}
            response = case.call_and_validate(timeout=60, excluded_checks=SEMANTIC)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        try:
            check()
        except Unsatisfiable:  # an operation without parameters has no invalid input to make
            assert mode is GenerationMode.NEGATIVE
            continue
        checked.append(operation.label)
    return checked, statuses


def log_counts(server: str, mode: GenerationMode, checked: list[str], statuses: dict) -> None:
    """benchmarks/reliability.py collects the counts through DISTILLAB_FUZZ_LOG."""
    if os.environ.get("DISTILLAB_FUZZ_LOG"):
        with open(os.environ["DISTILLAB_FUZZ_LOG"], "a") as log:
            log.write(json.dumps({"server": server, "mode": mode.value, "operations": len(checked),
                                  "statuses": statuses}) + "\n")
