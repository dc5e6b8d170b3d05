"""Data-parallel training: 2 processes (gloo, started by `distillab run --nproc 2` through
torchrun) on the same global batches follow the single process's loss trajectory and end with
its weights; a bad --nproc is a clear error."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import tiny_spec
from distillab import run
from distillab.cli import app
from distillab.engine.distributed import shard

CLI = [sys.executable, "-m", "distillab.cli"]


def _metrics(run_dir, role):
    return [json.loads(line) for line in (run_dir / "seed_0" / role / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two processes need two cores")
def test_two_processes_follow_the_single_process_trajectory(tmp_path, blobs, tiny_teacher):
    # no dropout: its masks are drawn per process, for the process's share of the batch
    spec = tiny_spec(blobs, tiny_teacher, training={"epochs": 3, "seeds": [0], "batch_size": 32, "precision": "fp32"},
                     student={"model": "mlp", "model_args": {"hidden": [16], "dropout": 0.0}})
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    one = run(spec, tmp_path / "one").out_dir
    done = subprocess.run([*CLI, "run", str(tmp_path / "spec.json"), "--out", str(tmp_path / "two"), "--nproc", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    two = tmp_path / "two"
    for role in ("scratch", "distilled"):
        single, double = _metrics(one, role), _metrics(two, role)
        assert len(single) == len(double) == 3
        for a, b in zip(single, double):
            for key in ("train_loss", "val_loss", "val_accuracy"):
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (role, key, a[key], b[key])
        weights_one = load_file(str(one / "seed_0" / role / "student.safetensors"))
        weights_two = load_file(str(two / "seed_0" / role / "student.safetensors"))
        for name, value in weights_one.items():
            torch.testing.assert_close(weights_two[name], value, atol=1e-5, rtol=1e-4)
    assert not list(tmp_path.glob("two.rank*"))  # only rank 0 wrote a run folder


def test_a_shard_takes_every_nth_sample_and_the_teacher_dimension_second():
    batch = {"inputs": torch.arange(6).view(6, 1), "targets": torch.arange(6),
             "teacher_logits": torch.arange(12).view(2, 6), "epoch": 1}
    first, second = shard(batch, 0, 2), shard(batch, 1, 2)
    assert first["targets"].tolist() == [0, 2, 4] and second["targets"].tolist() == [1, 3, 5]
    assert first["teacher_logits"].tolist() == [[0, 2, 4], [6, 8, 10]]
    assert first["epoch"] == 1


def test_more_processes_than_cores_is_refused(tmp_path, blobs, tiny_teacher):
    (tmp_path / "spec.json").write_text(json.dumps(tiny_spec(blobs, tiny_teacher)))
    result = CliRunner().invoke(app, ["run", str(tmp_path / "spec.json"), "--nproc", str((os.cpu_count() or 1) + 1)])
    assert result.exit_code == 2 and "CPU cores" in result.output
    result = CliRunner().invoke(app, ["run", str(tmp_path / "spec.json"), "--nproc", "2", "--resume"])
    assert result.exit_code == 2 and "--resume with --nproc" in result.output
