"""The shipped examples run from a clean clone (on a small slice of the data)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_keras_style_example_runs_and_reports_three_models(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "keras_style_example.py"), "--limit", "600", "--epochs", "1",
         "--seeds", "0", "1", "--out", str(tmp_path), "--threads", "1", "--latency-repeats", "2"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "comparison" / "report.json").read_text())
    assert [m["role"] for m in report["models"]] == ["teacher", "scratch", "distilled"]
    assert report["strategy"] == {"name": "response", "params": {"temperature": 10.0, "alpha": 0.9}}
    assert report["spec"]["training"]["batch_size"] == 64 and report["spec"]["training"]["weight_decay"] == 0.0
    assert report["models"][1]["params"] < report["models"][0]["params"] / 50
    assert "scratch:" in result.stdout and "distilled:" in result.stdout
