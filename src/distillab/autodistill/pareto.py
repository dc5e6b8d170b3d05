"""The Pareto front of a search: the points no other point beats on every objective."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    """Whether ``a`` is at least as good as ``b`` on every objective and better on one
    (``senses``: "max" or "min" per objective)."""
    at_least = all((x >= y) if s == "max" else (x <= y) for x, y, s in zip(a, b, senses))
    better = any((x > y) if s == "max" else (x < y) for x, y, s in zip(a, b, senses))
    return at_least and better


def pareto_front(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in their order (equal points are all kept)."""
    if any(s not in ("max", "min") for s in senses):
        raise ValueError(f"senses must be 'max' or 'min', got {list(senses)}")
    return [i for i, p in enumerate(points)
            if not any(dominates(q, p, senses) for j, q in enumerate(points) if j != i)]
