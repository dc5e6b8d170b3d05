"""The reliability table (docs/reliability.md): bad inputs tried on the CLI and over HTTP, the fuzzed
requests, and the faults, each counted from a real pytest run of the hardening tests.

    .venv/bin/python benchmarks/reliability.py     # writes benchmarks/results/reliability.{json,md}

Every case is a test that asserts the clean outcome (exit 2 and one line; a 4xx JSON body;
no 5xx and no schema violation; the job failed or completed as it should), so "handled
cleanly" is the number of cases that passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from pathlib import Path

from distillab.files import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]

GROUPS = {  # row -> (test files, which test-name prefixes belong to it)
    "CLI: bad specs, flags, files and data": (["tests/cli/test_cli_hardening.py", "tests/cli/test_cli_errors.py"],
                                              None),
    "HTTP: bad bodies, queries, ids, uploads and limits (SQLite + PostgreSQL)": (
        ["tests/service/test_hardening.py"], ("test_bad_", "test_json_", "test_a_large_body", "test_queued",
                                              "test_wrong_keys", "test_ids_that", "test_security_headers")),
    "concurrency: 40 simultaneous submits against the queue cap; 12 jobs on two workers, CPU loaded": (
        ["tests/service/test_hardening.py", "tests/service/test_api.py"],
        ("test_the_queue_cap", "test_two_workers_run_")),
    "uploads: language models (giant configs, crafted GGUF, tar escapes)": (
        ["tests/text/test_text_service.py"], ("test_bad_language_model", "test_a_giant_language_model",
                                              "test_a_language_model_over")),
    "serve-model and serve-teacher: hostile bodies, keys, signatures": (
        ["tests/deploy/test_package_server.py", "tests/deploy/test_served_teacher.py"],
        ("test_the_package_server_predicts", "test_a_signed_package", "test_a_tampered", "test_the_teacher_server",
         "test_only_top_k")),
    "faults: kill -9 of the server mid-job, a disk that fills mid-job and under uploads": (
        ["tests/service/test_hardening.py"], ("test_a_killed_server", "test_a_full_disk")),
    "teacher cache: two processes training the same teacher": (["tests/experiment/test_teacher_cache_race.py"], None),
}
FUZZ_FILES = ["tests/service/test_schemathesis.py", "tests/deploy/test_server_fuzz.py"]


def run_pytest(files: list[str], junit: Path, env: dict) -> None:
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *files],
                   cwd=ROOT, env=env, check=False)


def cases(junit: Path) -> list[tuple[str, str, str]]:
    """(file, test name, outcome) of every test case in a JUnit XML report."""
    out = []
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped":
                outcome = "skipped"
        out.append((case.get("classname", ""), case.get("name", ""), outcome))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reliability"))
    parser.add_argument("--fuzz-examples", type=int, default=200,
                        help="schemathesis examples per operation and mode (the test suite uses 25)")
    args = parser.parse_args()

    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        junit, fuzz_log = Path(scratch) / "junit.xml", Path(scratch) / "fuzz.jsonl"
        files = sorted({f for group, _ in GROUPS.values() for f in group} | set(FUZZ_FILES))
        run_pytest(files, junit, {**os.environ, "DISTILLAB_FUZZ_LOG": str(fuzz_log),
                                  "DISTILLAB_FUZZ_EXAMPLES": str(args.fuzz_examples)})
        results = cases(junit)
        fuzz = [json.loads(line) for line in fuzz_log.read_text().splitlines()] if fuzz_log.exists() else []

    rows = []
    for label, (group_files, prefixes) in GROUPS.items():
        modules = {f.removesuffix(".py").replace("/", ".") for f in group_files}
        mine = [(name, outcome) for module, name, outcome in results
                if module in modules and (prefixes is None or name.startswith(prefixes))]
        counts = Counter(outcome for _, outcome in mine)
        rows.append({"inputs": label, "cases": len(mine), "handled_cleanly": counts["passed"],
                     "failed": counts["failed"], "skipped": counts["skipped"]})
    for server, module_end, label in [
            ("service", "test_schemathesis", "fuzz: schemathesis, every operation of the service (SQLite)"),
            ("serve-model", "test_server_fuzz", "fuzz: schemathesis, serve-model (with an API key)"),
            ("serve-teacher", "test_server_fuzz", "fuzz: schemathesis, serve-teacher")]:
        fuzz_cases = [(name, outcome) for module, name, outcome in results
                      if module.endswith(module_end) and (server == "service" or server.replace("-", "_") in name)]
        statuses = Counter()
        for entry in fuzz:
            if entry.get("server", "service") == server:
                statuses.update({int(k): v for k, v in entry["statuses"].items()})
        requests = sum(statuses.values())
        rows.append({"inputs": label, "cases": requests,
                     "handled_cleanly": requests if fuzz_cases and all(o == "passed" for _, o in fuzz_cases) else 0,
                     "failed": sum(o == "failed" for _, o in fuzz_cases), "skipped": 0,
                     "statuses": dict(sorted(statuses.items()))})
    result = {"rows": rows, "seconds": round(time.time() - started, 1), "fuzz_examples": args.fuzz_examples,
              "command": f"python benchmarks/reliability.py --fuzz-examples {args.fuzz_examples}"}
    out = Path(args.out)
    atomic_write_json(out.with_suffix(".json"), result)
    lines = ["| inputs tried | cases | handled cleanly | failed | skipped |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['inputs']} | {r['cases']} | {r['handled_cleanly']} | {r['failed']} | {r['skipped']} |"
              for r in rows]
    lines += ["", *[f"Fuzz status codes, {r['inputs'].split(', ', 1)[1]}: "
                    f"{', '.join(f'{k}: {v}' for k, v in r['statuses'].items())}." for r in rows if "statuses" in r],
              f"Measured by `{result['command']}` in {result['seconds']:.0f} s."]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
