"""Summaries and paired comparisons over seeds."""

from __future__ import annotations

import math
import statistics

from scipy import stats


def summarize(values: list[float]) -> dict:
    """{mean, std, per_seed}; std is the sample standard deviation (0 for one seed)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "per_seed": list(values),
    }


def paired_comparison(a_name: str, a: list[float], b_name: str, b: list[float], metric: str = "accuracy",
                      higher_is_better: bool = True) -> dict:
    """Paired t-test of a - b over seeds, on ``metric``. p_value is None with fewer than two
    seeds or when every difference is the same (the test is undefined then). ``relative_diff``
    is the mean difference over b's mean."""
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    p_value = None
    if len(diffs) > 1 and statistics.pstdev(diffs) > 0:
        p = float(stats.ttest_rel(a, b).pvalue)
        p_value = None if math.isnan(p) else p
    return {
        "a": a_name,
        "b": b_name,
        "mean_diff": statistics.fmean(diffs),
        "relative_diff": statistics.fmean(diffs) / statistics.fmean(b) if statistics.fmean(b) else None,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "p_value": p_value,
        "n": len(diffs),
        "test": "paired t-test over seeds",
    }


def p_value_text(comparison: dict) -> str:
    """'paired t-test p = 0.012', or why there is no p-value."""
    p = comparison.get("p_value")
    if p is not None:
        return f"paired t-test p = {p:.3g}"
    if comparison.get("n", 0) < 2:
        return "no p-value with one seed"
    return "no p-value: every seed gave the same difference, so the t-test is undefined"


def verdict(comparison: dict, strategy: str, alpha: float = 0.05) -> str:
    """One plain sentence: did distillation help, and by how much? Accuracy differences are in
    points; other metrics (bits per character, lower is better) in percent of the scratch twin's."""
    if comparison.get("metric", "accuracy") != "accuracy":
        return _metric_verdict(comparison, strategy, alpha)
    points = comparison["mean_diff"] * 100
    n, p = comparison["n"], comparison["p_value"]
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    p_text = p_value_text(comparison)
    if p is None and n < 2:
        direction = "higher" if points > 0 else "lower" if points < 0 else "the same"
        return (f"Inconclusive: with one seed the {strategy}-distilled student scored {abs(points):.2f} points "
                f"{direction} than its scratch twin ({p_text}); run more seeds for a verdict.")
    if p is not None and p < alpha and points > 0:
        return (f"Distillation helped: the {strategy}-distilled student beat its scratch twin by "
                f"{points:.2f} points on average ({p_text}, {seeds}).")
    if p is not None and p < alpha and points < 0:
        return (f"Distillation hurt: the {strategy}-distilled student scored {-points:.2f} points below its "
                f"scratch twin on average ({p_text}, {seeds}).")
    return (f"Distillation did not measurably help: the difference from the scratch twin is {points:+.2f} points "
            f"on average, not significant ({p_text}, {seeds}).")


def _metric_verdict(comparison: dict, strategy: str, alpha: float) -> str:
    metric = comparison["metric"].replace("_", " ")
    n, p = comparison["n"], comparison["p_value"]
    percent = (comparison["relative_diff"] or 0.0) * 100
    better = percent > 0 if comparison["higher_is_better"] else percent < 0
    change = f"{abs(percent):.2f} % {'higher' if percent > 0 else 'lower'}"
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    p_text = p_value_text(comparison)
    if p is None and n < 2:
        return (f"Inconclusive: with one seed the {strategy}-distilled student's {metric} was {change} than its "
                f"scratch twin's ({p_text}); run more seeds for a verdict.")
    if p is not None and p < alpha and percent != 0:
        word = "helped" if better else "hurt"
        return (f"Distillation {word}: the {strategy}-distilled student's {metric} was {change} than its scratch "
                f"twin's on average ({p_text}, {seeds}).")
    return (f"Distillation did not measurably help: the {metric} differs from the scratch twin's by "
            f"{percent:+.2f} % on average, not significant ({p_text}, {seeds}).")
