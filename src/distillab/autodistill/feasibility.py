"""Which candidates can meet the constraints, decided before anything trains: parameters, MACs
and size are counted on the meta device, latency is predicted by the machine's latency model.
When none can, the error names the tightest constraint and the nearest candidate's figures."""

from __future__ import annotations

from dataclasses import dataclass

from distillab.autodistill.latency import LatencyModel, layer_count
from distillab.autodistill.space import Candidate
from distillab.errors import SpecError
from distillab.models.zoo import meta_model


@dataclass
class Verdict:
    candidate: Candidate
    latency_ms: float | None  # predicted
    violations: dict[str, float]  # constraint -> how far over, as a fraction of its limit

    @property
    def feasible(self) -> bool:
        return not self.violations


def judge(candidate: Candidate, constraints, latency: LatencyModel | None, in_shape, num_classes: int) -> Verdict:
    """The candidate's figures against every structural constraint (parameters, MACs, size, latency)."""
    predicted = None
    if latency is not None:
        layers = layer_count(meta_model(candidate.model, tuple(in_shape), num_classes, candidate.args))
        predicted = latency.predict(candidate.macs, layers)
    figures = {"max_params": candidate.params, "max_macs": candidate.macs, "max_size_mb": candidate.size_mb,
               "max_latency_ms": predicted}
    violations = {}
    for name, value in figures.items():
        limit = getattr(constraints, name)
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
    if nearest.latency_ms is not None:
        figures += f", {nearest.latency_ms:.3f} ms predicted"
    raise SpecError(f"auto.constraints.{tightest}: no candidate of the search space can meet it "
                    f"({getattr(constraints, tightest):g}; it rules out {counts[tightest]} of {len(verdicts)}); "
                    f"the nearest candidate, {nearest.candidate.model} {nearest.candidate.model_args}, has {figures}")
