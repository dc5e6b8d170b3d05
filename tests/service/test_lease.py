"""A job never runs in two workers: the lease is many heartbeats long, and a worker whose
lease is not renewed (a starved heartbeat, a lost database) stops the job by itself before the
lease can lapse, writing nothing more into the job folder."""

import time

import pytest
from conftest import tiny_spec

from distillab.experiment.run import run
from distillab.service.settings import Settings
from distillab.service.worker import LEASE_HEARTBEATS, UNRENEWED, Budget, JobProgress, LeaseLost, Worker
from distillab.spec_io import parse_spec


def _progress(spec_dict, fence_after_s):
    progress = JobProgress(parse_spec(spec_dict), time.monotonic(), 0.0, Budget({}, 0.5))
    progress.fence_after_s = fence_after_s
    return progress


def test_a_lease_shorter_than_ten_heartbeats_is_refused(tmp_path):
    settings = Settings(data_dir=tmp_path, heartbeat_timeout_s=3.0)
    with pytest.raises(ValueError, match=f"at least {LEASE_HEARTBEATS} heartbeats"):
        Worker(settings, heartbeat_s=1.0)
    Worker(settings, heartbeat_s=0.3)  # 10 heartbeats fit


def test_an_unrenewed_lease_stops_the_run_without_writing(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": [0], "epochs": 2})
    progress = _progress(spec, fence_after_s=30.0)

    def on_phase(name, info):
        if name == "distilling":  # from here on, the heartbeat has not renewed the lease for a minute
            progress.renewed_at = time.monotonic() - 60
        progress.on_phase(name, info)

    with pytest.raises(LeaseLost, match=UNRENEWED):
        run(spec, tmp_path / "run", callbacks=progress, on_phase=on_phase)
    partial = tmp_path / "run.partial"
    assert (partial / "seed_0" / "scratch" / "result.json").is_file()  # the finished phase is kept
    assert not (partial / "partial.json").exists()  # and nothing is written on the way out
    assert not (partial / "seed_0" / "distilled").exists() or not any((partial / "seed_0" / "distilled").iterdir())


def test_a_renewed_lease_lets_the_run_finish(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": [0], "epochs": 1})
    progress = _progress(spec, fence_after_s=30.0)
    report = run(spec, tmp_path / "run", callbacks=progress, on_phase=progress.on_phase)
    assert report.out_dir.is_dir()
