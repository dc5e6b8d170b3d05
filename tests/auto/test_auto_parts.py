"""The parts of automated distillation that decide before anything trains: the search space and
its costs on the meta device, the latency model, the feasibility of each candidate under the
constraints (and the error when none can meet them), the Pareto front, and the spec section."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from distillab.autodistill.feasibility import feasible, judge
from distillab.autodistill.latency import LatencyModel, build_latency_model, fit, probes_of
from distillab.autodistill.pareto import dominates, pareto_front
from distillab.autodistill.space import Candidate, candidates, count, layer_count
from distillab.errors import SpecError
from distillab.models.facts import macs_per_sample
from distillab.models.zoo import build_model
from distillab.spec_auto import AutoConstraints, AutoSpec

SHAPE, CLASSES = (1, 28, 28), 10


def test_the_pareto_front_of_known_points():
    # (score, latency): maximise the score, minimise the latency
    points = [(0.90, 1.0), (0.92, 2.0), (0.91, 3.0), (0.85, 0.5), (0.92, 2.0), (0.80, 0.9)]
    assert pareto_front(points, ["max", "min"]) == [0, 1, 3, 4]  # 2 is beaten by 1; 5 by 0 and 3
    assert dominates((0.92, 2.0), (0.91, 3.0), ["max", "min"]) and not dominates((0.9, 1.0), (0.9, 1.0), ["max", "min"])
    assert pareto_front([], ["max"]) == []
    with pytest.raises(ValueError, match="senses"):
        pareto_front(points, ["up", "min"])


def test_candidates_are_counted_on_the_meta_device_as_the_real_models_are():
    space = candidates(["cnn", "resnet", "mlp", "wrn"], SHAPE, CLASSES)
    assert len(space) > 50 and len({c.name for c in space}) == len(space)
    assert {c.model for c in space} == {"cnn", "resnet", "mlp", "wrn"}
    for candidate in (space[0], space[len(space) // 2], space[-1]):
        real = build_model(candidate.model, SHAPE, CLASSES, candidate.args)
        assert candidate.params == sum(p.numel() for p in real.parameters())
        assert candidate.macs == macs_per_sample(real, SHAPE)
        assert candidate.size_mb == pytest.approx(candidate.params * 4 / 1e6)
    # an input too small for three poolings leaves those CNNs out instead of failing
    tiny = candidates(["cnn"], (1, 2, 2), CLASSES)
    assert tiny and all(len(c.args["stages"]) < 3 for c in tiny)


def test_the_latency_fit_recovers_a_known_linear_law():
    truth = [0.05, 0.2, 0.01]  # ms, ms per MMAC, ms per layer
    points = [([1.0, macs / 1e6, layers], truth[0] + truth[1] * macs / 1e6 + truth[2] * layers)
              for macs, layers in [(1e5, 3), (1e6, 5), (5e6, 8), (2e6, 12), (8e6, 20)]]
    assert fit(points) == pytest.approx(truth, rel=1e-6, abs=1e-9)


def test_no_layer_or_mac_makes_a_network_faster():
    # probes timed on ONNX Runtime on a 2-core AVX2 machine: (MMACs, layers, ms); least squares
    # gave -0.011 ms per layer, and a deep, narrow cut of a ResNet (measured at 0.51 ms) was
    # predicted at 0.001 ms, under a 0.16 ms constraint
    timed = [(0.05, 2, 0.0206), (0.57, 4, 0.0564), (1.07, 4, 0.0601), (1.78, 5, 0.0809), (2.77, 4, 0.1367),
             (4.63, 4, 0.1928), (7.56, 5, 0.2974), (31.0, 22, 0.9432)]
    plain, *_ = np.linalg.lstsq(np.array([[1.0, m, n] for m, n, _ in timed]), np.array([t for *_, t in timed]),
                                rcond=None)
    assert plain[2] < 0  # what a plain least-squares fit says
    probes = [Candidate("cnn", f'{{"probe": {i}}}', macs=int(m * 1e6), layers=n) for i, (m, n, _) in enumerate(timed)]
    ms = {c.name: t for c, (_, _, t) in zip(probes, timed)}
    from distillab.autodistill.latency import fit_probes

    model = fit_probes(probes, lambda c: ms[c.name], "onnx", 1, "forward")
    assert all(c >= 0 for c in model.coefficients)
    deep_narrow = Candidate("resnet", '{"cut": true}', macs=3_000_000, layers=21)
    assert model.predict(deep_narrow) >= model.predict(probes[3])  # not faster than a shallower net of fewer MACs


def test_every_family_gets_probes_of_its_own(monkeypatch):
    from distillab.autodistill import latency

    space = candidates(["cnn", "mlp", "resnet"], SHAPE, CLASSES)
    timed = []
    monkeypatch.setattr(latency, "measure", lambda c, *a, **k: (timed.append(c), 0.01 + c.macs / 1e8)[1])
    build_latency_model(space, SHAPE, CLASSES, "onnx", batch_size=1, probes=2)
    assert {c.model for c in timed} == {"cnn", "mlp", "resnet"}  # 2 probes by MACs alone miss one
    assert {c.model for c in probes_of(space, 2)} == {"mlp", "resnet"}


def test_probes_span_the_space_and_the_model_reports_its_leave_one_out_error():
    space = candidates(["cnn", "mlp"], SHAPE, CLASSES)
    probes = probes_of(space, 5)
    assert len(probes) == 5 and probes[0].macs == min(c.macs for c in space)
    assert probes[-1].macs == max(c.macs for c in space)
    model = build_latency_model(space, SHAPE, CLASSES, "torch", batch_size=1, probes=5, repeats=5)
    assert len(model.probes) == 5 and all(p["measured_ms"] > 0 for p in model.probes)
    error = model.as_dict()["error"]
    assert error["probes"] == 5 and 0 <= error["median_relative_error"] <= error["max_relative_error"]
    assert model.predict(probes[-1]) > 0
    from distillab.runtime import bf16_path

    machine = model.as_dict()["machine"]  # what the latencies are true for
    assert machine["bf16_path"] == (bf16_path() or "none") and machine["threads"] == torch.get_num_threads()


def test_the_onnx_runtime_is_measured_through_onnx_runtime():
    space = candidates(["mlp"], SHAPE, CLASSES)
    model = build_latency_model(space, SHAPE, CLASSES, "onnx", batch_size=4, probes=4, repeats=3)
    assert model.runtime == "onnx" and all(p["measured_ms"] > 0 for p in model.probes)


def _latency(coefficients) -> LatencyModel:
    return LatencyModel("torch", 1, coefficients, [])


def test_a_candidate_over_a_constraint_is_ruled_out_before_training():
    small = count("mlp", {"hidden": [64]}, SHAPE, CLASSES)
    large = count("mlp", {"hidden": [512, 256]}, SHAPE, CLASSES)
    constraints = AutoConstraints(max_params=100_000, max_latency_ms=1.0)
    latency = _latency([0.1, 1.0, 0.0])  # 0.1 ms + 1 ms per MMAC
    verdicts = [judge(c, constraints, latency) for c in (small, large)]
    assert verdicts[0].feasible and not verdicts[1].feasible
    assert set(verdicts[1].violations) == {"max_params"}
    assert [v.candidate for v in feasible(verdicts, constraints)] == [small]
    assert layer_count(build_model("mlp", SHAPE, CLASSES, {"hidden": [64]})) == 2


def test_constraints_no_candidate_can_meet_name_the_tightest_and_the_nearest():
    space = candidates(["cnn", "mlp"], SHAPE, CLASSES)
    constraints = AutoConstraints(max_params=500, max_macs=10**9)
    verdicts = [judge(c, constraints, None) for c in space]
    with pytest.raises(SpecError, match=r"^auto.constraints.max_params: no candidate of the search space can meet it "
                                        r"\(500; it rules out \d+ of \d+\); the nearest candidate, \w+ .* has [\d,]+ "
                                        r"parameters"):
        feasible(verdicts, constraints)


def test_the_auto_section_is_checked_by_key():
    spec = AutoSpec.model_validate({"constraints": {"max_latency_ms": 0.5, "runtime": "onnx-int8"},
                                    "budget": {"wall_s": 3600}, "space": {"families": ["cnn"]}})
    assert spec.constraints.runtime == "onnx-int8" and spec.space.families == ["cnn"]
    with pytest.raises(ValidationError, match="runtime"):
        AutoSpec.model_validate({"constraints": {"runtime": "tensorrt"}})
    with pytest.raises(ValidationError, match="runs backwards"):
        AutoSpec.model_validate({"space": {"epochs": [10, 2]}})
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        AutoSpec.model_validate({"constraints": {"max_latency": 1}})
    assert Candidate("mlp", '{"hidden": [64]}') == Candidate("mlp", '{"hidden": [64]}', params=5)


def test_the_choice_is_the_best_score_whose_measured_latency_meets_the_constraint():
    from distillab.autodistill.report import choose

    def row(rung, score, student, predicted=0.1):
        return {"rung": rung, "val_score": score, "latency_ms_predicted": predicted,
                "params": {"student": student, "lr": 0.001}}

    rows = [row(0, 0.70, "a"), row(0, 0.80, "b"), row(0, 0.75, "c"), row(1, 0.90, "b"), row(1, 0.85, "c")]
    latencies = {"a": 0.05, "b": 0.30, "c": 0.08}  # b was predicted under 0.1 ms but measures over it

    def measured(r):
        return latencies[r["params"]["student"]] <= 0.1, latencies[r["params"]["student"]]

    assert choose(rows, True, 0.0)["params"]["student"] == "b"  # no latency constraint: the best score
    chosen = choose(rows, True, 0.0, measured)
    assert chosen["params"]["student"] == "c" and chosen["rung"] == 1 and chosen["latency_ms_measured"] == 0.08
    assert chosen["latency_met"] and chosen["meets_score"]
    flagged = choose(rows, True, 0.95, lambda r: (False, 1.0))  # nothing meets: the best, flagged twice
    assert flagged["params"]["student"] == "b" and not flagged["latency_met"] and not flagged["meets_score"]
