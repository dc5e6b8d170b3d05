"""A callback that raises Stop ends a run early with its checkpoints and a partial summary;
resume then finishes it."""

import json

import pytest
from conftest import StopAt, tiny_spec

from distillab.engine.loop import Stop
from distillab.experiment.run import run


def test_stop_keeps_checkpoints_and_writes_partial_summary_then_resume_finishes(tmp_path, blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": [0], "epochs": 3})
    phases = []
    out = tmp_path / "run"

    def callbacks(role, seed):
        return [StopAt(1)] if role == "distilled" else []

    with pytest.raises(Stop, match="asked to stop"):
        run(spec, out, callbacks=callbacks, on_phase=lambda name, info: phases.append((name, info.get("done"))))
    assert phases[:3] == [("teacher", None), ("teacher_outputs", None), ("scratch", False)]
    assert phases[-1] == ("distilling", False)
    partial = out.with_name("run.partial")
    summary = json.loads((partial / "partial.json").read_text())
    assert summary["stopped"] == "asked to stop"
    scratch, distilled = summary["phases"]
    assert scratch["complete"] and 0 <= scratch["test_accuracy"] <= 1 and scratch["epochs"] == 3
    assert not distilled["complete"] and distilled["epochs_done"] == 1
    assert (partial / distilled["student"]).is_file()
    assert (partial / "seed_0" / "distilled" / "checkpoint.pt").is_file()
    assert not out.exists()

    phases.clear()
    report = run(spec, out, resume=True, on_phase=lambda name, info: phases.append((name, info.get("done"))))
    assert ("scratch", True) in phases and ("distilling", False) in phases and phases[-1] == ("evaluating", None)
    distilled_model = report.model("distilled")
    assert len(distilled_model["curves"]["0"]) == 3  # epochs 1 (kept) + 2, 3 (resumed)


def test_finished_phases_resume_on_another_machine_from_their_results_alone(tmp_path, blobs, tiny_teacher):
    """A run stopped in its second seed, carried to a fresh machine with its results but not its
    weights or checkpoints (what a repository keeps): the finished phases stand, and the rest train."""
    spec = tiny_spec(blobs, tiny_teacher, training={"seeds": [0, 1], "epochs": 2},
                     strategy={"name": "self", "params": {"generations": 1}})
    out = tmp_path / "run"

    def callbacks(role, seed):
        return [StopAt(1)] if seed == 1 and role == "scratch" else []

    with pytest.raises(Stop):
        run(spec, out, callbacks=callbacks)
    partial = out.with_name("run.partial")
    before = json.loads((partial / "seed_0" / "distilled" / "result.json").read_text())
    assert before["precision"]["used"] in ("fp32", "bf16")  # each phase says how it trained
    for path in [*partial.rglob("*.safetensors"), *partial.rglob("checkpoint.pt")]:
        path.unlink()
    report = run(spec, out, resume=True)
    distilled = report.model("distilled")
    assert distilled["accuracy"]["per_seed"][0] == before["test_accuracy"]  # seed 0 was not trained again
    assert len(distilled["accuracy"]["per_seed"]) == 2
