"""Automated distillation of a language model: the space (the zoo's gpt and students made from the
teacher) counted on the meta device as the real students are, the decode-speed constraint
deciding before anything trains, bits per character (lower is better) as the score, and the
errors of a search that cannot be."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_tiny_lm, text_spec, write_corpus
from distillab.autodistill.lm_space import LMSpace, decode_ms_per_token, random_student
from distillab.autodistill.feasibility import score_floor
from distillab.autodistill.search import load_auto_spec, search
from distillab.cli import app
from distillab.errors import SpecError
from distillab.spec_auto import LM_FAMILIES, AutoConstraints
from distillab.spec_io import parse_spec
from distillab.tasks import TASKS


@pytest.fixture(scope="module")
def deep_lm(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("deep_lm"), layers=4)


@pytest.fixture(scope="module")
def lm_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("lm_corpus") / "corpus")


def lm_auto_spec(corpus, teacher, **auto) -> dict:
    spec = text_spec(corpus, teacher, training={"epochs": 2, "batch_size": 8, "seeds": [0], "eval_batch_size": 16,
                                                "lr": 0.01})
    spec["auto"] = {"budget": {"max_trials": 3},
                    "space": {"families": ["gpt", "teacher_layers"], "epochs": [1, 2], "lr": [0.003, 0.02]}, **auto}
    return spec


def test_language_model_candidates_are_counted_as_the_real_students_are(deep_lm, lm_corpus):
    spec = parse_spec(text_spec(lm_corpus, deep_lm))
    task = TASKS["language_modeling"]
    data = task.build(spec.data, 0, spec)
    teacher = task.load_teachers(spec, data)[0][0]
    space = LMSpace(teacher, data.context_length, data.num_classes, int(data.train.tokens.numel()))
    pool = space.candidates(LM_FAMILIES)
    assert {c.model for c in pool} == set(LM_FAMILIES)
    assert {c.group for c in pool if c.model == "gpt"} == {"zoo"} and all(
        c.group == "transformers" for c in pool if c.model != "gpt")
    for family in LM_FAMILIES:
        candidate = max((c for c in pool if c.model == family), key=lambda c: c.params)
        real = task.build_student(parse_spec(text_spec(lm_corpus, deep_lm, student={
            "model": candidate.model, "model_args": candidate.args})), data)
        assert candidate.params == sum(p.numel() for p in real.parameters()), candidate.name
        assert candidate.token_macs > 0 and candidate.macs > candidate.token_macs * (data.context_length - 1)
    # fewer of the teacher's layers are fewer blocks to decode
    kept = sorted((c for c in pool if c.model == "teacher_layers"), key=lambda c: c.layers)
    assert [c.args["keep"] for c in kept] == [2, 3] and kept[0].token_macs < kept[1].token_macs
    # the speed is the report's: greedy decoding at batch 1, per token
    gpt = next(c for c in pool if c.model == "gpt")
    timed = decode_ms_per_token({"gpt": random_student(gpt, teacher, data.context_length, data.num_classes)},
                                data.num_classes, data.context_length, rounds=2)
    assert set(timed) == {"gpt"} and 0 < timed["gpt"] < 1000


def fake_speed(candidate) -> float:
    """ms per decoded token: transformers students are slow here, zoo students fast by their blocks."""
    return (5.0 if candidate.group == "transformers" else 0.2) + 0.1 * candidate.layers


def test_a_language_model_search_keeps_to_the_decode_speed_and_lowers_bits_per_char(tmp_path, deep_lm, lm_corpus,
                                                                                    monkeypatch):
    monkeypatch.setattr(LMSpace, "measure_all", lambda self, candidates, rounds=5: {
        c.name: fake_speed(c) for c in candidates})
    spec = lm_auto_spec(lm_corpus, deep_lm, constraints={"min_decode_tokens_per_s": 1000 / 1.5})  # ≤ 1.5 ms/token
    spec["training"]["seeds"] = [0, 1, 2]
    spec_path, out = tmp_path / "lm_auto.yaml", tmp_path / "search"
    spec_path.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["auto", str(spec_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "validation bits_per_character" in result.output
    assert "tokens/s measured (within the constraint)" in result.output
    summary = json.loads((out / "auto.json").read_text())
    study = optuna.load_study(study_name="auto", storage=f"sqlite:///{out / 'study.db'}")
    trained = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert trained and all(t.user_attrs["candidate"]["model"] == "gpt" for t in trained)  # the slow never trained
    assert summary["feasible_candidates"] < summary["candidates"]
    model = json.loads((out / "latency_model.json").read_text())
    assert model["kind"] == "decode" and {p["features"][1] for p in model["probes"]} == {0.0, 1.0}  # both kinds
    for probe in model["probes"]:  # the law is linear in the features: the fit recovers it
        assert probe["predicted_ms"] == pytest.approx(probe["measured_ms"], rel=1e-6)
    scores = [t.values[0] for t in trained]
    best_last_rung = min(t.values[0] for t in trained if t.user_attrs["rung"] == max(
        u.user_attrs["rung"] for u in trained))
    assert summary["chosen"]["val_score"] == best_last_rung and all(math.isfinite(s) and s > 0 for s in scores)
    assert summary["chosen"]["latency_met"] and summary["chosen"]["latency_ms_measured"] <= 1.5
    assert summary["score_floor"] == math.inf  # no score constraint: every bits/char is under the ceiling
    report = json.loads((out / "run" / "report.json").read_text())
    assert report["spec"]["student"]["model"] == "gpt" and report["spec"]["strategy"]["params"]["top_k"] == 4
    assert summary["final"]["latency_met"] and (out / "front.png").stat().st_size > 0
    assert "decode ms/token" in (out / "front.md").read_text()


def test_two_language_model_teachers_are_a_choice_not_an_ensemble(tmp_path, deep_lm, lm_corpus, monkeypatch):
    """multi_teacher serves classifiers: a language-model search chooses one teacher of several."""
    monkeypatch.setattr(LMSpace, "measure_all", lambda self, candidates, rounds=5: {
        c.name: fake_speed(c) for c in candidates})
    other = make_tiny_lm(tmp_path / "other_lm", layers=4, seed=1)
    spec = lm_auto_spec(lm_corpus, deep_lm, budget={"max_trials": 4})
    spec["teacher"] = [{"checkpoint": str(deep_lm)}, {"checkpoint": str(other)}]
    spec["auto"]["space"] = {**spec["auto"]["space"], "families": ["gpt"], "epochs": [1, 1]}
    summary = search(spec, tmp_path / "search", final=False)
    assert [t["teacher"] for t in summary["teachers"]] == ["0", "1"]
    study = optuna.load_study(study_name="auto", storage=f"sqlite:///{tmp_path / 'search' / 'study.db'}")
    choices = {t.params.get("teacher") for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert choices and choices <= {"0", "1"}
    assert study.trials[0].distributions["teacher"].choices == ("0", "1")


@pytest.mark.parametrize("auto, message", [
    ({"constraints": {"max_latency_ms": 5}}, r"^auto.constraints.max_latency_ms: a language model's speed is its "
                                             r"decoding; give min_decode_tokens_per_s"),
    ({"constraints": {"runtime": "onnx"}}, r"decoding is measured on torch at batch 1, not onnx"),
    ({"space": {"families": ["cnn"]}}, r"^auto.space.families: cnn are not language_modeling students; this task "
                                       r"searches gpt, teacher_layers, teacher_width, teacher_pruned"),
])
def test_a_language_model_search_that_cannot_be_is_refused_before_anything_loads(lm_corpus, deep_lm, auto, message):
    with pytest.raises(SpecError, match=message):
        load_auto_spec(lm_auto_spec(lm_corpus, deep_lm, **auto))


def test_a_score_target_beyond_the_teacher_and_constraints_no_student_meets_are_refused(tmp_path, lm_corpus,
                                                                                       deep_lm):
    with pytest.raises(SpecError, match=r"^auto.constraints.min_score: 0.01 is below the teacher's own validation "
                                        r"bits_per_character"):
        search(lm_auto_spec(lm_corpus, deep_lm, constraints={"min_score": 0.01}), tmp_path / "a")
    with pytest.raises(SpecError, match=r"^auto.budget.wall_s: 0 s is less than one trial; the cheapest candidate "
                                        r"needs about \d+ s for 1 epochs"):
        search(lm_auto_spec(lm_corpus, deep_lm, budget={"wall_s": 0.001}), tmp_path / "c")
    with pytest.raises(SpecError, match=r"^auto.constraints.max_params: no candidate .* the nearest candidate, gpt"):
        search(lm_auto_spec(lm_corpus, deep_lm, constraints={"max_params": 100}), tmp_path / "b")
    assert not (tmp_path / "b" / "study.db").exists()  # nothing trained


def test_the_score_floor_is_a_ceiling_when_lower_is_better():
    both = AutoConstraints(min_score=0.8, max_drop=0.05)
    assert score_floor(both, 0.9, True) == pytest.approx(0.85)  # the stricter: 0.9 - 0.05
    assert score_floor(AutoConstraints(min_score=1.9, max_drop=0.5), 1.4, False) == pytest.approx(1.9)
    assert score_floor(AutoConstraints(max_drop=0.2), 1.4, False) == pytest.approx(1.6)
    assert score_floor(AutoConstraints(), 1.4, False) == math.inf
    assert score_floor(AutoConstraints(), 0.9, True) == -math.inf
    assert AutoConstraints(min_decode_tokens_per_s=200).latency_limit_ms == pytest.approx(5.0)
    with pytest.raises(SpecError, match="min_decode_tokens_per_s: goes with a language model"):
        load_auto_spec({"name": "x", "task": "image_classification", "data": {"dataset": "digits"},
                        "teacher": {"model": "mlp"}, "student": {"model": "mlp"},
                        "auto": {"constraints": {"min_decode_tokens_per_s": 10}}})
