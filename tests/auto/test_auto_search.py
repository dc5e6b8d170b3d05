"""The search end to end on the blobs: candidates over a constraint never train, successive
halving trains fewer epochs than every configuration at the full schedule, selection never reads
the test split, a finished search resumes without retraining, and the bad-input errors come
before anything trains."""

from __future__ import annotations

import json
import logging

import numpy as np
import optuna
import pytest
import yaml
from typer.testing import CliRunner

from distillab.autodistill.search import plan, rungs, search
from distillab.cli import app
from distillab.errors import SpecError

from conftest import tiny_spec

runner = CliRunner()


def auto_spec(tmp_path, npz, teacher, **auto) -> object:
    spec = tiny_spec(npz, teacher, training={"epochs": 3, "batch_size": 32, "seeds": [0], "eval_batch_size": 256})
    spec["auto"] = {"constraints": {"max_params": 20_000}, "budget": {"max_trials": 5},
                    "space": {"families": ["mlp"], "epochs": [1, 3], "strategies": ["response"]}, **auto}
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "auto.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def trials_of(out) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="auto", storage=f"sqlite:///{out / 'study.db'}")
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


def test_rungs_and_plan():
    assert rungs(3, 30) == [3, 9, 30] and rungs(1, 3) == [1, 3] and rungs(5, 5) == [5] and rungs(2, 10) == [2, 10]
    assert plan(20, 3) == [13, 5, 2] and sum(plan(5, 2)) <= 5 and plan(1, 3) == [1, 1, 1]


def test_a_search_trains_only_feasible_students_with_fewer_epochs_and_writes_its_front(tmp_path, blobs, tiny_teacher):
    out = tmp_path / "search"
    summary = search(auto_spec(tmp_path, blobs, tiny_teacher), out, final=False)
    trained = trials_of(out)
    assert trained and all(t.user_attrs["candidate"]["params"] <= 20_000 for t in trained)  # never over the cap
    assert summary["feasible_candidates"] < summary["candidates"]  # the cap ruled some out
    assert summary["epochs_trained"] < summary["configurations"] * 3  # multi-fidelity: not every config at 3
    assert {t.user_attrs["rung"] for t in trained} == {0, 1}
    assert summary["chosen"]["rung"] == 1 and summary["chosen"]["candidate"]["params"] <= 20_000
    assert (out / "front.png").stat().st_size > 0 and json.loads((out / "front.json").read_text())
    assert "| trial | rung | epochs |" in (out / "trials.md").read_text()
    assert summary["latency_model"]["error"]["probes"] >= 3
    # resumed: nothing is trained again
    again = search(auto_spec(tmp_path, blobs, tiny_teacher), out, final=False)
    assert len(trials_of(out)) == len(trained) and again["chosen"]["params"] == summary["chosen"]["params"]


def test_the_choice_never_reads_the_test_split(tmp_path, blobs, tiny_teacher):
    data = dict(np.load(blobs))
    poisoned = tmp_path / "poisoned.npz"
    np.savez(poisoned, **{**data, "y_test": (data["y_test"] + 1) % 3})
    first = search(auto_spec(tmp_path / "a", blobs, tiny_teacher), tmp_path / "clean", final=False)
    second = search(auto_spec(tmp_path / "b", poisoned, tiny_teacher), tmp_path / "poisoned", final=False)
    assert first["chosen"]["params"] == second["chosen"]["params"]
    # the same validation scores trial by trial (latency is measured afresh, so only the scores are compared)
    clean, poisoned = trials_of(tmp_path / "clean"), trials_of(tmp_path / "poisoned")
    assert [t.values[0] for t in clean] == [t.values[0] for t in poisoned]


def test_the_chosen_student_is_retrained_against_its_scratch_twin(tmp_path, blobs, tiny_teacher):
    summary = search(auto_spec(tmp_path, blobs, tiny_teacher, budget={"max_trials": 2}), tmp_path / "s",
                     final_seeds=[0, 1])
    report = json.loads((tmp_path / "s" / "run" / "report.json").read_text())
    assert report["seeds"] == [0, 1] and {m["role"] for m in report["models"]} == {"teacher", "scratch", "distilled"}
    assert report["spec"]["student"]["model_args"] == summary["chosen"]["candidate"]["model_args"]
    assert summary["final"]["latency_ms_measured"] > 0 and summary["final"]["verdict"] == report["verdict"]
    again = search(auto_spec(tmp_path, blobs, tiny_teacher, budget={"max_trials": 2}), tmp_path / "s",
                   final_seeds=[0, 1])  # a finished search run again reads its final run back
    assert again["final"]["verdict"] == report["verdict"]
    with pytest.raises(SpecError, match="holds the final run of another choice"):
        search(auto_spec(tmp_path, blobs, tiny_teacher, budget={"max_trials": 2}), tmp_path / "s", final_seeds=[0, 2])


@pytest.mark.parametrize("auto, message", [
    ({"constraints": {"max_params": 50}}, r"^auto.constraints.max_params: no candidate of the search space can meet"),
    ({"constraints": {"min_score": 1.5}}, r"^auto.constraints.min_score: 1.5 is above the teacher's own validation"),
    ({"budget": {"wall_s": 0.001}}, r"^auto.budget.wall_s: 0 s is less than one trial; the cheapest candidate needs"),
])
def test_impossible_searches_are_refused_before_anything_trains(tmp_path, blobs, tiny_teacher, auto, message):
    out = tmp_path / "search"
    with pytest.raises(SpecError, match=message):
        search(auto_spec(tmp_path, blobs, tiny_teacher, **auto), out, final=False)
    assert not (out / "trials").exists() and not (out / "study.db").exists()


def test_the_cli_says_what_is_wrong_with_exit_code_2(tmp_path, blobs, tiny_teacher):
    spec = auto_spec(tmp_path, blobs, tiny_teacher, constraints={"max_params": 50})
    result = runner.invoke(app, ["auto", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "auto.constraints.max_params" in result.output
    spec.write_text(spec.read_text().replace("max_params: 50", "runtime: tensorrt"))
    result = runner.invoke(app, ["auto", str(spec), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "auto.constraints.runtime" in result.output
    no_auto = tmp_path / "plain.yaml"
    no_auto.write_text(yaml.safe_dump(tiny_spec(blobs, tiny_teacher)))
    result = runner.invoke(app, ["auto", str(no_auto), "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "auto: the spec has no auto section" in result.output


def test_an_interrupted_search_resumes_and_completes_its_plan(tmp_path, blobs, tiny_teacher, monkeypatch,
                                                              caplog):
    """Killed in its third trial, the search run again finishes the plan: every rung holds its
    planned count of distinct configurations, and the two finished trials are not trained again."""
    import distillab.autodistill.search as search_module

    spec = auto_spec(tmp_path, blobs, tiny_teacher)
    real_phase, calls = search_module.phase, []

    def killed_in_the_third(*args, **kwargs):
        calls.append(args[6])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_phase(*args, **kwargs)

    monkeypatch.setattr(search_module, "phase", killed_in_the_third)
    with pytest.raises(KeyboardInterrupt):
        search(spec, tmp_path / "s", final=False)
    assert len(trials_of(tmp_path / "s")) == 2
    first = optuna.load_study(study_name="auto", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}").user_attrs[
        "searched_seconds"]  # trials and what ran between them, kept for a resumed budget
    assert first >= sum(t.user_attrs["seconds"] for t in trials_of(tmp_path / "s"))
    monkeypatch.setattr(search_module, "phase", lambda *a, **k: (calls.append(a[6]), real_phase(*a, **k))[1])
    record = json.loads((tmp_path / "s" / "latency_model.json").read_text())
    assert record["machine"]["cpu"]  # resumed as if on another machine: said, not silent
    record["machine"]["cpu"] = "another CPU"
    (tmp_path / "s" / "latency_model.json").write_text(json.dumps(record))
    with caplog.at_level(logging.WARNING, logger="distillab"):
        summary = search(spec, tmp_path / "s", final=False)
    assert any("measured on" in r.message and "another CPU" in r.message for r in caplog.records)
    trained = trials_of(tmp_path / "s")
    per_rung = [sum(1 for t in trained if t.user_attrs["rung"] == r) for r in (0, 1)]
    assert per_rung == plan(5, 2) and summary["trials"] == sum(per_rung)
    configs = [(t.user_attrs["rung"], t.user_attrs["config"]) for t in trained]
    assert len(set(configs)) == len(configs)  # no configuration trained twice at one rung
    assert len(calls) == 3 + sum(per_rung) - 2  # the two finished trials were not run again
    assert summary["searched_seconds"] >= first  # the first session's searching counts
    import sqlite3

    with sqlite3.connect(tmp_path / "s" / "study.db") as db:  # a study from before the searching time was kept,
        db.execute("DELETE FROM study_user_attributes WHERE key = 'searched_seconds'")  # with long trials
        db.execute("UPDATE trial_user_attributes SET value_json = '1000.0' WHERE key = 'seconds'")
    again = search(spec, tmp_path / "s", final=False)  # finished: read back
    assert again["searched_seconds"] >= 1000.0 * len(trained)  # at least its trials' seconds


def test_the_python_entry_point_is_the_same_search(tmp_path, blobs, tiny_teacher):
    import distillab
    from distillab.autodistill import search as search_module  # the package is imported: the function stays

    assert search_module.search is search
    with pytest.raises(SpecError, match=r"^auto.constraints.max_params: no candidate"):
        distillab.auto(auto_spec(tmp_path, blobs, tiny_teacher, constraints={"max_params": 50}), tmp_path / "s")
    assert callable(distillab.auto)


def test_an_auto_spec_is_never_run_as_a_plain_job(tmp_path, blobs, tiny_teacher):
    """distillab run would train the spec's own student and drop the constraints without a word:
    it refuses the auto section instead (the job service runs it as a search)."""
    import distillab

    spec = auto_spec(tmp_path, blobs, tiny_teacher)
    with pytest.raises(SpecError, match=r"^auto: the spec has an auto section, which distillab run does not search"):
        distillab.run(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.partial").exists()


def test_a_budget_without_a_trial_cap_sizes_the_plan_from_what_an_epoch_costs():
    from distillab.autodistill.search import budget_plan

    assert budget_plan(100, 1.0, [1, 3]) == [49, 17]  # 49·1 + 17·3 = 100 epoch-seconds
    assert budget_plan(0.5, 1.0, [1, 3]) == [1, 1]  # never less than one trial per rung
    assert budget_plan(1000, 0.5, [30]) == [66]


def test_the_baselines_random_search_and_no_multi_fidelity(tmp_path, blobs, tiny_teacher):
    summary = search(auto_spec(tmp_path, blobs, tiny_teacher, budget={"max_trials": 3}), tmp_path / "s",
                     final=False, sampler="random", multi_fidelity=False)
    assert summary["rungs_epochs"] == [3] and summary["trials"] == 3 and summary["epochs_trained"] == 9
    with pytest.raises(SpecError, match="sampler"):
        search(auto_spec(tmp_path, blobs, tiny_teacher), tmp_path / "t", final=False, sampler="grid")


def test_cached_views_are_a_dimension_of_the_search(tmp_path, blobs, tiny_teacher):
    space = {"families": ["mlp"], "epochs": [1, 1], "strategies": ["response"], "cache_views": [1, 2]}
    summary = search(auto_spec(tmp_path, blobs, tiny_teacher, space=space, budget={"max_trials": 6}),
                     tmp_path / "s", final=False)
    views = {t.params["views"] for t in trials_of(tmp_path / "s")}
    assert views <= {1, 2} and summary["chosen"]["params"]["views"] in (1, 2)
    with pytest.raises(SpecError, match=r"auto.space.cache_views.0: Input should be greater than or equal to 1"):
        search(auto_spec(tmp_path / "bad", blobs, tiny_teacher, space={**space, "cache_views": [0]}), tmp_path / "t",
               final=False)


def test_a_search_folder_resumes_only_its_own_spec(tmp_path, blobs, tiny_teacher):
    out = tmp_path / "s"
    search(auto_spec(tmp_path, blobs, tiny_teacher, budget={"max_trials": 2}), out, final=False)
    # more budget: the same search, resumed
    summary = search(auto_spec(tmp_path, blobs, tiny_teacher, budget={"max_trials": 3}), out, final=False)
    assert summary["trials"] >= 2
    before = len(trials_of(out))
    with pytest.raises(SpecError, match=r"it holds a search of another spec \(it differs in: auto\)"):
        search(auto_spec(tmp_path, blobs, tiny_teacher, constraints={"max_params": 10_000}), out, final=False)
    assert len(trials_of(out)) == before  # nothing trained, nothing mixed in


def test_several_teachers_make_the_teacher_a_dimension_of_the_search(tmp_path, blobs, tiny_teacher):
    from conftest import blobs_teacher

    other = blobs_teacher(tmp_path / "other.safetensors", "mlp", {"hidden": [8]}, seed=3)
    path = auto_spec(tmp_path, blobs, tiny_teacher, budget={"max_trials": 9})
    spec = yaml.safe_load(path.read_text())
    spec["teacher"] = [spec["teacher"], {"model": "mlp", "model_args": {"hidden": [8]}, "checkpoint": str(other)}]
    path.write_text(yaml.safe_dump(spec))
    summary = search(path, tmp_path / "s", final_seeds=[0, 1, 2])
    assert [t["teacher"] for t in summary["teachers"]] == ["0", "1"]
    assert all(0 < t["val_score"] <= 1 for t in summary["teachers"])
    trials = trials_of(tmp_path / "s")
    assert {t.params["teacher"] for t in trials} <= {"0", "1", "ensemble"} and len(trials) >= 6
    for trial in trials:  # the ensemble trains with multi_teacher, one teacher with the strategies searched
        config = json.loads(trial.user_attrs["config"])
        assert (config["strategy"] == "multi_teacher") == (config["teacher"] == "ensemble")
    chosen = summary["chosen"]["params"]["teacher"]
    report = json.loads((tmp_path / "s" / "run" / "report.json").read_text())
    expected = 2 if chosen == "ensemble" else 1
    assert sum(1 for m in report["models"] if m["role"] == "teacher") == expected


def test_students_cut_from_the_teacher_are_searched_and_the_chosen_one_exports(tmp_path, blobs, tiny_teacher):
    from distillab.compress import export_run

    space = {"families": ["teacher_pruned"], "epochs": [1, 2], "strategies": ["response"]}
    summary = search(auto_spec(tmp_path, blobs, tiny_teacher, space=space, budget={"max_trials": 3}),
                     tmp_path / "s", final_seeds=[0, 1])
    assert summary["candidates"] == 4  # the cnn teacher's channels at 4 shares
    trained = trials_of(tmp_path / "s")
    assert trained
    for trial in trained:  # counted and timed as the zoo model each cut is
        candidate = trial.user_attrs["candidate"]
        assert candidate["model"] == "teacher_pruned" and candidate["architecture"]["model"] == "cnn"
    chosen = summary["chosen"]["candidate"]
    run_dir = tmp_path / "s" / "run"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["student_cut"]["params"] == chosen["params"]
    assert report["student_cut"]["architecture"] == chosen["architecture"]
    tiny_teacher.unlink()  # the chosen student exports from its run folder alone
    assert export_run(run_dir, tmp_path / "onnx")["parity"]["argmax_agreement"] == 1.0


def test_a_cut_family_needs_one_teacher_that_can_be_cut(tmp_path, blobs, tiny_teacher):
    path = auto_spec(tmp_path, blobs, tiny_teacher, space={"families": ["teacher_pruned"]})
    spec = yaml.safe_load(path.read_text())
    spec["teacher"] = [spec["teacher"], dict(spec["teacher"])]
    path.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["auto", str(path), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "auto.space.families: teacher_pruned cuts one zoo" in result.output
    assert not (tmp_path / "s" / "trials").exists()


def test_dynamic_students_are_counted_timed_and_trained_as_adaptive_v2_makes_them(tmp_path, blobs, tiny_teacher):
    from distillab.autodistill.space import ImageSpace
    from distillab.compress import export_run
    from distillab.strategies import STRATEGIES

    space = ImageSpace((1, 8, 8), 3, "torch", 1, dynamic=[False, True])
    pool = space.candidates(["resnet", "mlp"])
    twins = [c for c in pool if c.dynamic]
    assert twins and all(c.model == "resnet" for c in twins)  # an mlp has no convolution to make dynamic
    for twin in twins:  # only those adaptive_v2 accepts (its MAC budget: 1.1x the static student's)
        static = next(c for c in pool if not c.dynamic and c.model_args == twin.model_args)
        assert twin.macs <= 1.1 * static.macs
    twin = twins[0]
    static = next(c for c in pool if not c.dynamic and c.model_args == twin.model_args)
    strategy = STRATEGIES["adaptive_v2"]([], static.build((1, 8, 8), 3), STRATEGIES["adaptive_v2"].Params(),
                                         in_shape=(1, 8, 8))  # the trial's student: static, made dynamic
    built = sum(p.numel() for p in strategy.student.parameters())
    assert twin.params == built > static.params  # counted as the strategy builds it

    summary = search(auto_spec(tmp_path, blobs, tiny_teacher, constraints={"max_params": 30_000},
                               space={"families": ["resnet"], "epochs": [1, 2], "strategies": ["response"],
                                      "dynamic": [True]}, budget={"max_trials": 3}),
                     tmp_path / "s", final_seeds=[0, 1])
    latency = json.loads((tmp_path / "s" / "latency_model.json").read_text())
    assert latency["kind"] == "forward_dynamic" and latency["features"][-1] == "dynamic"
    for trial in trials_of(tmp_path / "s"):
        assert trial.user_attrs["candidate"]["dynamic"] and json.loads(trial.user_attrs["config"])["strategy"] \
            == "adaptive_v2"
    report = json.loads((tmp_path / "s" / "run" / "report.json").read_text())
    assert report["strategy"]["name"] == "adaptive_v2" and summary["chosen"]["candidate"]["dynamic"]
    assert export_run(tmp_path / "s" / "run", tmp_path / "onnx")["parity"]["argmax_agreement"] >= 0.99


def test_dynamic_students_are_refused_where_they_cannot_be_trained(tmp_path, blobs, tiny_teacher):
    path = auto_spec(tmp_path, blobs, tiny_teacher, space={"families": ["cnn"], "dynamic": [True]})
    spec = yaml.safe_load(path.read_text())
    spec["strategy"] = {"name": "adaptive_v2", "params": {"experts": 8}}
    path.write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["auto", str(path), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2 and "auto.space.dynamic: dynamic students are counted and timed" in result.output


def test_the_python_entry_point_shows_its_progress_where_nothing_configured_logging(tmp_path, blobs, tiny_teacher):
    import subprocess
    import sys

    spec = auto_spec(tmp_path, blobs, tiny_teacher, budget={"wall_s": 0.001})
    code = ("import sys, distillab, torch\nfrom distillab.errors import SpecError\ntorch.set_num_threads(1)\n"
            f"try:\n    distillab.auto({str(spec)!r}, {str(tmp_path / 's')!r})\n"
            "except SpecError as error:\n    print(error, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert " distillab: auto: " in done.stderr and "candidates can meet the constraints" in done.stderr
    assert "auto.budget.wall_s: 0 s is less than one trial" in done.stderr  # and then refused, as before
