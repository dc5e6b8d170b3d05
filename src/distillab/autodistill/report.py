"""What a search writes: every trial (``trials.md``), the front of validation score against
predicted latency (``front.json``, ``front.md``, ``front.png`` with the feasible region shaded and
the chosen point marked), and the summary (``auto.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from distillab.autodistill.pareto import pareto_front
from distillab.files import atomic_write_bytes, atomic_write_json, atomic_write_text


def _row(key, trial) -> dict:
    return {"trial": trial.number, "rung": key[0], "epochs": trial.user_attrs["epochs"],
            "params": json.loads(key[1]), "candidate": trial.user_attrs["candidate"],
            "val_score": trial.values[0], "latency_ms_predicted": trial.values[1],
            "seconds": round(trial.user_attrs["seconds"], 2)}


def choose(rows: list[dict], higher_is_better: bool, floor: float, measured=None, checks: int = 10) -> dict | None:
    """The best validation score of the last rung reached (ties: the faster) whose latency,
    measured on the runtime by ``measured(row)`` (None: no latency constraint), meets the
    constraint: the model's prediction let it train, the measurement decides. When none of the
    ``checks`` best does, the best is returned, flagged. A score under ``floor`` (min_score, or the
    teacher's score less max_drop) is flagged too, never hidden."""
    if not rows:
        return None
    sign = 1 if higher_is_better else -1
    ranked = sorted(rows, key=lambda row: (-row["rung"], -sign * row["val_score"], row["latency_ms_predicted"]))
    seen, chosen = set(), None
    for row in ranked:
        config = json.dumps(row["params"], sort_keys=True)
        if config in seen:  # a configuration at a lower rung than its best
            continue
        seen.add(config)
        met, latency = (True, None) if measured is None else measured(row)
        if chosen is None:
            chosen = {**row, "latency_ms_measured": latency, "latency_met": met}
        if met:
            chosen = {**row, "latency_ms_measured": latency, "latency_met": met}
            break
        if len(seen) >= checks:
            break
    return {**chosen, "meets_score": sign * chosen["val_score"] >= sign * floor}


def front_of(rows: list[dict], higher_is_better: bool) -> tuple[list[dict], list[dict]]:
    """(the non-dominated configurations, every configuration) with each at the highest rung it reached."""
    latest = {}
    for row in rows:
        config = json.dumps(row["params"], sort_keys=True)
        if config not in latest or row["rung"] > latest[config]["rung"]:
            latest[config] = row
    points = list(latest.values())
    indices = pareto_front([(p["val_score"], p["latency_ms_predicted"]) for p in points],
                           ["max" if higher_is_better else "min", "min"])
    return [points[i] for i in indices], points


def latency_label(constraints, kind: str) -> str:
    if kind == "decode":
        return "predicted ms per decoded token (greedy, batch 1, torch)"
    return f"predicted latency (ms, batch {constraints.batch_size}, {constraints.runtime})"


def _plot(points, front, chosen, constraints, metric: str, path: Path, kind: str) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    axes.scatter([p["latency_ms_predicted"] for p in points], [p["val_score"] for p in points], s=18, c="#999",
                 label="configurations (highest rung reached)")
    ordered = sorted(front, key=lambda p: p["latency_ms_predicted"])
    axes.plot([p["latency_ms_predicted"] for p in ordered], [p["val_score"] for p in ordered], "o-", c="#1f77b4",
              label="Pareto front")
    if constraints.latency_limit_ms is not None:
        axes.axvspan(0, constraints.latency_limit_ms, color="#2ca02c", alpha=0.08, label="feasible latency")
    if chosen is not None:
        axes.scatter([chosen["latency_ms_predicted"]], [chosen["val_score"]], s=140, marker="*", c="#d62728",
                     zorder=5, label="chosen")
    axes.set_xlabel(latency_label(constraints, kind))
    axes.set_ylabel(f"validation {metric}")
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _strategy(params: dict) -> str:
    """The strategy, and which teacher it learned from when the search chose among several."""
    teacher = params.get("teacher")
    if teacher is None:
        return params["strategy"]
    return f"{params['strategy']} ({'the ensemble' if teacher == 'ensemble' else 'teacher ' + teacher})"


def write_outputs(out_dir: Path, study, done: dict, task, levels, floor, latency, constraints, *,
                  searched_seconds: float, stopped, pool: int, feasible: int, teacher_val: float,
                  measured=None, teachers: list | None = None) -> dict:
    rows = sorted((_row(key, trial) for key, trial in done.items()), key=lambda row: row["trial"])
    chosen = choose(rows, task.higher_is_better, floor, measured)
    front, points = front_of(rows, task.higher_is_better) if rows else ([], [])
    epochs_trained = sum(row["epochs"] for row in rows)
    speed = "decode ms/token (predicted)" if latency.kind == "decode" else "latency ms (predicted)"
    lines = [f"| trial | rung | epochs | student | strategy | T | alpha | lr | validation {task.metric} | "
             f"{speed} | s |", "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        c, p = row["candidate"], row["params"]
        lines.append(f"| {row['trial']} | {row['rung']} | {row['epochs']} | {c['model']} "
                     f"{json.dumps(c['model_args'])} ({c['params']:,}) | {_strategy(p)} | {p['temperature']:.2f} | "
                     f"{p['alpha']:.2f} | {p['lr']:.2e} | {row['val_score']:.4f} | "
                     f"{row['latency_ms_predicted']:.3f} | {row['seconds']} |")
    atomic_write_text(out_dir / "trials.md", "\n".join(lines) + "\n")
    atomic_write_json(out_dir / "front.json", front)
    front_lines = [f"| student | params | strategy | validation {task.metric} | {speed} |",
                   "|---|---:|---|---:|---:|"]
    for row in sorted(front, key=lambda r: r["latency_ms_predicted"]):
        c = row["candidate"]
        front_lines.append(f"| {c['model']} {json.dumps(c['model_args'])} | {c['params']:,} | "
                           f"{_strategy(row['params'])} | {row['val_score']:.4f} | {row['latency_ms_predicted']:.3f} |")
    atomic_write_text(out_dir / "front.md", "\n".join(front_lines) + "\n")
    if points:
        _plot(points, front, chosen, constraints, task.metric, out_dir / "front.png", latency.kind)
    summary = {
        "constraints": constraints.model_dump(), "teacher_val_score": teacher_val, "score_floor": floor,
        "candidates": pool, "feasible_candidates": feasible, "rungs_epochs": levels,
        "trials": len(rows), "epochs_trained": epochs_trained,
        "configurations": len(points), "full_schedule_epochs": len(points) * levels[-1],
        "searched_seconds": round(searched_seconds, 1), "stopped": stopped,
        "trial_seconds": round(sum(row["seconds"] for row in rows), 1),  # every session and process together
        "latency_model": {"kind": latency.kind, "coefficients": latency.coefficients, "error": latency.error},
        "chosen": chosen, "front": front, **({"teachers": teachers} if teachers else {}),
    }
    atomic_write_json(out_dir / "auto.json", summary)
    return summary
