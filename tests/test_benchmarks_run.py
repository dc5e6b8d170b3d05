"""The benchmarks that reach into the experiment's phases still run after engine changes
(tiny data, one epoch: behaviour, not numbers; their numbers live in benchmarks/results)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_spec

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, spec_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--spec", str(spec_path), "--epochs", "1",
         "--seeds", "0", "1", "--limit-train", "200", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture
def spec_file(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, student={"model": "cnn_tiny", "model_args": {}})
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_strategy_table_runs_every_row(tmp_path, spec_file):
    result = run_benchmark("strategy_table", spec_file, tmp_path / "table", "--strategies", "response", "feature", "dkd")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = {row["strategy"]: row for row in json.loads((tmp_path / "table.json").read_text())["rows"]}
    assert set(rows) == {"none", "response", "feature", "dkd"}
    assert all(row["vs_scratch"]["n"] == 2 for row in rows.values())


def test_which_layers_runs_every_pair(tmp_path, spec_file):
    result = run_benchmark("which_layers", spec_file, tmp_path / "layers")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "layers.json").read_text())["rows"]
    assert rows[-1]["pairs"] == "all pairs" and len(rows) >= 2
