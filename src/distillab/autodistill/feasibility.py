"""Which candidates can meet the constraints, decided before anything trains: parameters, MACs
and size are counted on the meta device, latency is predicted by the machine's latency model.
When none can, the error names the tightest constraint and the nearest candidate's figures."""

from __future__ import annotations

import math
from dataclasses import dataclass

from distillab.autodistill.latency import LatencyModel
from distillab.autodistill.space import Candidate
from distillab.errors import SpecError


@dataclass
class Verdict:
    candidate: Candidate
    latency_ms: float | None  # predicted
    violations: dict[str, float]  # constraint -> how far over, as a fraction of its limit

    @property
    def feasible(self) -> bool:
        return not self.violations


def judge(candidate: Candidate, constraints, latency: LatencyModel | None) -> Verdict:
    """The candidate's figures against every structural constraint (parameters, MACs, size, latency:
    per forward pass, or per decoded token for a language model)."""
    predicted = latency.predict(candidate) if latency is not None else None
    figures = {"max_params": (candidate.params, constraints.max_params),
               "max_macs": (candidate.macs, constraints.max_macs),
               "max_size_mb": (candidate.size_mb, constraints.max_size_mb),
               constraints.latency_name: (predicted, constraints.latency_limit_ms)}
    violations = {}
    for name, (value, limit) in figures.items():
        if limit is not None and value is not None and value > limit:
            violations[name] = value / limit - 1
    return Verdict(candidate, predicted, violations)


def feasible(verdicts: list[Verdict], constraints) -> list[Verdict]:
    """The verdicts that meet every constraint; none is a SpecError naming the tightest
    constraint (the one that rules out the most candidates) and the nearest candidate."""
    good = [v for v in verdicts if v.feasible]
    if good:
        return good
    if not verdicts:
        raise SpecError("auto.space: the search space holds no architecture that fits this data's input")
    counts: dict[str, int] = {}
    for verdict in verdicts:
        for name in verdict.violations:
            counts[name] = counts.get(name, 0) + 1
    tightest = max(counts, key=lambda name: (counts[name], name))
    nearest = min(verdicts, key=lambda v: (max(v.violations.values()), v.candidate.name))
    figures = f"{nearest.candidate.params:,} parameters, {nearest.candidate.macs:,} MACs, " \
              f"{nearest.candidate.size_mb:.3f} MB"
    if nearest.latency_ms is not None and constraints.min_decode_tokens_per_s is not None:
        figures += f", {1000 / nearest.latency_ms:.1f} decoded tokens/s predicted"
    elif nearest.latency_ms is not None:
        figures += f", {nearest.latency_ms:.3f} ms predicted"
    raise SpecError(f"auto.constraints.{tightest}: no candidate of the search space can meet it "
                    f"({getattr(constraints, tightest):g}; it rules out {counts[tightest]} of {len(verdicts)}); "
                    f"the nearest candidate, {nearest.candidate.model} {nearest.candidate.model_args}, has {figures}")


def score_floor(constraints, teacher_val: float, higher_is_better: bool) -> float:
    """The score the chosen student must reach on validation: ``min_score`` and the teacher's
    score less ``max_drop``, whichever is stricter (for a lower-is-better metric, a ceiling)."""
    sign = 1 if higher_is_better else -1
    bounds = [sign * constraints.min_score] if constraints.min_score is not None else []
    if constraints.max_drop is not None:
        bounds.append(sign * teacher_val - constraints.max_drop)
    return sign * max(bounds) if bounds else sign * -math.inf
