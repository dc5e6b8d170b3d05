"""Hyper-parameter sweeps with Optuna: a grid (GridSampler) or ranges (TPE), selected on the
validation split only. The study lives in SQLite, so an interrupted sweep resumes and
skips finished trials."""

from __future__ import annotations

import copy
import json
import logging
import statistics
import time
from pathlib import Path

import optuna
import yaml

from distillab.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from distillab.errors import SpecError
from distillab.experiment.job import Job, spec_teachers
from distillab.experiment.phases import phase, trained_student
from distillab.spec_io import apply_override, parse_spec, read_spec_file, resolve_spec_paths

log = logging.getLogger("distillab")


def parse_grid(items: list[str]) -> dict[str, list]:
    """``key=v1,v2,...`` -> {key: [values parsed as YAML]}."""
    grid = {}
    for item in items:
        key, _, raw = item.partition("=")
        if not key or not raw:
            raise SpecError(f"--grid {item!r}: expected key.path=v1,v2,...")
        values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
        if not values:
            raise SpecError(f"--grid {key}: no values")
        grid[key.strip()] = values
    return grid


def parse_ranges(items: list[str]) -> dict[str, tuple[float, float, bool]]:
    """``key=low:high`` (uniform) or ``key=low:high:log`` -> {key: (low, high, log)}."""
    ranges = {}
    for item in items:
        key, _, raw = item.partition("=")
        parts = raw.split(":")
        try:
            low, high = float(parts[0]), float(parts[1])
        except (ValueError, IndexError):
            raise SpecError(f"--range {item!r}: expected key.path=low:high[:log]") from None
        if not low < high:
            raise SpecError(f"--range {key}: low must be below high")
        ranges[key.strip()] = (low, high, len(parts) > 2 and parts[2] == "log")
    return ranges


def _spec_with(base: dict, assignments: dict):
    data = copy.deepcopy(base)
    for key, value in assignments.items():
        apply_override(data, f"{key}={json.dumps(value)}")
    return parse_spec(data)


def sweep(spec_path: Path, out_dir: Path, grid: dict[str, list], ranges: dict, trials: int | None = None,
          overrides: list[str] | tuple = (), storage: str | None = None, study_name: str | None = None) -> dict:
    """Run (or resume) the study; write study.db, trials.md, best.json and, for two grid
    parameters, heatmap.png. Returns the best trial's parameters and validation score (the
    task's primary metric: accuracy, or bits per character for a language model).
    ``overrides`` ("key.path=value") change the spec file for the whole sweep.

    With ``storage`` (an SQLAlchemy URL, e.g. PostgreSQL) the study is shared: it records the
    spec, grid and ranges, so that ``join_sweep`` processes on other machines run its
    remaining trials (see :func:`join_sweep`)."""
    base = resolve_spec_paths(read_spec_file(spec_path), Path(spec_path).resolve().parent)
    for override in overrides:
        apply_override(base, override)
    if not grid and not ranges:
        raise SpecError("give at least one --grid or --range")
    for key in [*grid, *ranges]:
        if key.split(".")[0] in ("teacher", "teachers") or key == "training.seeds":
            raise SpecError(f"--grid/--range {key}: the teachers and the seeds are fixed for a whole sweep")
    for key, values in grid.items():  # an unknown parameter fails here, naming the key
        _spec_with(base, {key: values[0]})
    for key, (low, _, _) in ranges.items():
        _spec_with(base, {key: low})
    spec = _spec_with(base, {})
    out_dir.mkdir(parents=True, exist_ok=True)
    task = Job.from_spec(spec).task
    total = _grid_size(grid) if grid and not ranges else (trials or 20)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = "maximize" if task.higher_is_better else "minimize"
    if storage is not None:
        config = {"spec": base, "grid": grid, "ranges": {k: list(v) for k, v in ranges.items()}, "total": total}
        study = _shared_study(storage, study_name or spec.name, direction, config)
        return _run_shared(study, config, out_dir)

    study = optuna.create_study(study_name=spec.name, storage=f"sqlite:///{(out_dir / 'study.db').resolve()}",
                                sampler=optuna.samplers.GridSampler(grid, seed=0) if grid and not ranges
                                else optuna.samplers.TPESampler(seed=0),
                                direction=direction, load_if_exists=True)
    _requeue_unfinished(study)
    finished = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    remaining = max(0, total - finished)
    log.info("sweep: %d trial(s) finished, %d to run", finished, remaining)
    if remaining:
        study.optimize(_objective(base, grid, ranges, out_dir), n_trials=remaining)
    return _write_outputs(study, grid, out_dir, task.metric)


def _grid_size(grid: dict[str, list]) -> int:
    total = 1
    for values in grid.values():
        total *= len(values)
    return total


def _objective(base: dict, grid: dict[str, list], ranges: dict, out_dir: Path):
    """The trial function: the spec with the trial's values, trained per seed; returns the
    mean validation score. Data and teachers are built once, here."""
    spec = _spec_with(base, {})
    seeds = spec.training.seeds
    task = Job.from_spec(spec).task
    bundles = {seed: task.build(spec.data, seed, spec) for seed in seeds}
    teachers = spec_teachers(spec, task, bundles[seeds[0]])

    def objective(trial: optuna.Trial) -> float:
        values = {key: trial.suggest_categorical(key, vals) for key, vals in grid.items()}
        for key, (low, high, log_scale) in ranges.items():
            values[key] = trial.suggest_float(key, low, high, log=log_scale)
        trial_spec = _spec_with(base, values)
        # a trial that changes the data gets its own splits; the teacher outputs are looked up
        # (computed once) for the trial's data, cache and strategy (a text cache depends on T and k)
        trial_bundles = bundles
        if trial_spec.data != spec.data:
            trial_bundles = {seed: task.build(trial_spec.data, seed, trial_spec) for seed in seeds}
        job = Job.from_spec(trial_spec)
        trial_caches = {seed: task.teacher_caches(trial_spec, trial_bundles[seed], teachers, job.params)
                        for seed in seeds}
        accuracies = []
        for seed in seeds:
            trial_dir = out_dir / "trials" / f"{trial.number:04d}" / f"seed_{seed}"
            scratch = None
            if job.strategy_cls.stages(job.params):
                summary = phase(job, trial_bundles[seed], seed, "scratch", teachers, trial_caches[seed],
                                 trial_dir / "scratch", True, None, None, test_split=False)
                scratch = trained_student(job, trial_bundles[seed], seed, summary, trial_dir / "scratch")
            result = phase(job, trial_bundles[seed], seed, "distilled", teachers, trial_caches[seed],
                            trial_dir / "distilled", True, None, None, scratch=scratch, test_split=False)
            accuracies.append(result["val_accuracy"])
        return statistics.fmean(accuracies)

    return objective


# ---------------------------------------------------------------- shared (distributed) studies
CONFIG_KEY = "distillab_sweep"


def _rdb(storage: str):
    """Optuna's database storage with heartbeats: a trial whose process stops beating for two
    minutes is failed and queued again with the same parameters (RetryFailedTrialCallback),
    so a machine that dies does not lose its grid point, and a live one is never re-run."""
    import inspect

    from optuna import storages

    # Optuna 4.9 renamed the argument and the callback (the old names go in 6.0); older ones know the old names
    if "heartbeat_stale_trial_callback" in inspect.signature(storages.RDBStorage).parameters:
        return open_storage(storage, heartbeat_stale_trial_callback=storages.RetryHeartbeatStaleTrialCallback(
            max_retry=3))
    return open_storage(storage, failed_trial_callback=storages.RetryFailedTrialCallback(max_retry=3))


def open_storage(url: str, **options):
    """Optuna's database storage at ``url`` with heartbeats (two minutes' grace). Processes that
    open a new database at the same moment race to create its tables; the loser waits and opens
    what the winner made. Any other failure is a SpecError naming the URL (without its password)."""
    from optuna.storages import RDBStorage

    for attempt in range(RACE_RETRIES + 1):
        try:
            return RDBStorage(url, heartbeat_interval=30, grace_period=120, **options)
        except Exception as problem:  # a bad URL, a missing driver or an unreachable server
            racing = any(text in str(problem) for text in ("UNIQUE constraint", "already exists", "locked"))
            if racing and attempt < RACE_RETRIES:
                time.sleep(0.5 + attempt)
                continue
            raise SpecError(f"--storage {_safe_url(url)}: cannot open the study database "
                            f"({type(problem).__name__}: {str(problem).splitlines()[0][:200]})") from None


RACE_RETRIES = 4


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "(unparsable URL)"


def _shared_study(storage: str, name: str, direction: str, config: dict) -> optuna.Study:
    """Create the shared study (or open it again, when its configuration is the same), with
    every grid point queued as a waiting trial: waiting trials are handed out atomically by
    the database, so no grid point runs twice however many processes join."""
    rdb = _rdb(storage)
    study = optuna.create_study(study_name=name, storage=rdb, direction=direction, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=None))
    stored = study.user_attrs.get(CONFIG_KEY)
    if stored is None:
        study.set_user_attr(CONFIG_KEY, config)
        if config["grid"] and not config["ranges"]:
            import itertools

            keys = list(config["grid"])
            for values in itertools.product(*config["grid"].values()):
                study.enqueue_trial(dict(zip(keys, values)))
    elif stored != json.loads(json.dumps(config)):
        raise SpecError(f"study {name!r} in {_safe_url(storage)} was created with another spec or grid; join it "
                        f"with --join {name}, or name a new study with --study")
    else:
        _requeue_failed_grid_points(study)
    return study


def join_sweep(study_name: str, storage: str, out_dir: Path) -> dict:
    """Run trials of a shared study created by ``sweep(..., storage=...)`` on another machine
    until none are left: grid points still waiting, or TPE trials up to the study's total."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = _rdb(storage)
    names = [summary.study_name for summary in optuna.get_all_study_summaries(rdb)]
    if study_name not in names:
        raise SpecError(f"--join {study_name}: no such study in {_safe_url(storage)}"
                        f"{'; it has: ' + ', '.join(sorted(names)[:20]) if names else ' (it has none)'}")
    study = optuna.load_study(study_name=study_name, storage=rdb, sampler=optuna.samplers.TPESampler(seed=None))
    config = study.user_attrs.get(CONFIG_KEY)
    if config is None:
        raise SpecError(f"--join {study_name}: the study was not made by distillab sweep --storage")
    out_dir.mkdir(parents=True, exist_ok=True)
    return _run_shared(study, config, out_dir)


def _run_shared(study: optuna.Study, config: dict, out_dir: Path) -> dict:
    """Run this process's share: waiting grid points until none is left (the database hands
    each to one process), or TPE trials until the study holds its total. ``study.optimize``
    keeps the trial's heartbeat, so a dead process's trial is retried elsewhere."""
    import os
    import socket

    grid = config["grid"]
    ranges = {k: tuple(v) for k, v in config["ranges"].items()}
    objective = _objective(config["spec"], grid, ranges, out_dir)
    states = optuna.trial.TrialState
    is_grid = bool(grid) and not ranges
    ran = []

    def guarded(trial: optuna.Trial) -> float:
        if is_grid and "fixed_params" not in _frozen(study, trial).system_attrs:
            study.stop()  # no grid point was waiting: this process is done; the empty trial is pruned
            raise optuna.TrialPruned()
        trial.set_user_attr("process", f"{socket.gethostname()}:{os.getpid()}")
        ran.append(trial.number)
        return objective(trial)

    if is_grid:
        if study.get_trials(deepcopy=False, states=(states.WAITING,)):
            study.optimize(guarded, n_trials=None)
    elif len(study.get_trials(deepcopy=False, states=(states.COMPLETE, states.RUNNING))) < config["total"]:
        from optuna.study import MaxTrialsCallback

        study.optimize(guarded, callbacks=[MaxTrialsCallback(config["total"], states=(states.COMPLETE,
                                                                                      states.RUNNING))])
    log.info("sweep: this process ran trial(s) %s", ran)
    task = Job.from_spec(_spec_with(config["spec"], {})).task
    return _write_outputs(study, grid, out_dir, task.metric)


def _frozen(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    return next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)


def _requeue_failed_grid_points(study: optuna.Study) -> None:
    """Grid points whose trial failed (an error, an interrupted process) are queued again by
    the process that (re)starts the sweep; running ones may be alive elsewhere and are left to
    the heartbeat."""
    states = optuna.trial.TrialState
    held = [t.params for t in study.get_trials(deepcopy=False, states=(states.COMPLETE, states.WAITING,
                                                                        states.RUNNING))]
    for trial in study.get_trials(deepcopy=False, states=(states.FAIL,)):
        if "fixed_params" in trial.system_attrs and trial.params and trial.params not in held:
            study.enqueue_trial(trial.params)
            held.append(trial.params)


def _requeue_unfinished(study: optuna.Study) -> None:
    """Trials an interrupted sweep left failed or running are queued again (once), so the
    grid is completed instead of skipped."""
    states = optuna.trial.TrialState
    done = [t.params for t in study.get_trials(deepcopy=False, states=(states.COMPLETE, states.WAITING))]
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING, states.FAIL)):
        if trial.state == states.RUNNING:  # its process died: it will never finish
            study._storage.set_trial_state_values(trial._trial_id, states.FAIL)
        if trial.params and trial.params not in done:
            # a copy that keeps the system attributes (GridSampler's grid_id), as Optuna's
            # RetryFailedTrialCallback does, so the grid point runs again
            study.add_trial(optuna.trial.create_trial(state=states.WAITING, system_attrs=dict(trial.system_attrs)))
            done.append(trial.params)


def _write_outputs(study: optuna.Study, grid: dict, out_dir: Path, metric: str = "accuracy") -> dict:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    keys = sorted({k for t in complete for k in t.params})
    percent = metric == "accuracy"
    label = "val accuracy (%)" if percent else f"val {metric.replace('_', ' ')}"
    lines = ["| trial | " + " | ".join(keys) + f" | {label} |", "|---:|" + "---|" * len(keys) + "---:|"]
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    for trial in sorted(complete, key=lambda t: -t.value if maximize else t.value):
        cells = " | ".join(f"{trial.params.get(k)}" for k in keys)
        lines.append(f"| {trial.number} | {cells} | {trial.value * 100:.2f} |" if percent
                     else f"| {trial.number} | {cells} | {trial.value:.4f} |")
    atomic_write_text(out_dir / "trials.md", "\n".join(lines) + "\n")
    best = {"params": study.best_trial.params, f"val_{metric}": study.best_value, "metric": metric,
            "trial": study.best_trial.number, "trials": len(complete), "selected_on": "validation split"}
    atomic_write_json(out_dir / "best.json", best)
    if len(grid) == 2:
        _heatmap(complete, list(grid.items()), out_dir / "heatmap.png", 100 if percent else 1, label)
    return best


def _heatmap(trials, axes, path: Path, scale: float = 100, label: str = "validation accuracy (%)") -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    (y_key, y_values), (x_key, x_values) = axes
    grid = np.full((len(y_values), len(x_values)), np.nan)
    for trial in trials:
        grid[y_values.index(trial.params[y_key]), x_values.index(trial.params[x_key])] = trial.value * scale
    fig, ax = plt.subplots(figsize=(1.2 * len(x_values) + 2, 0.9 * len(y_values) + 1.5))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(x_values)), [str(v) for v in x_values])
    ax.set_yticks(range(len(y_values)), [str(v) for v in y_values])
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}" if scale == 100 else f"{value:.3f}", ha="center", va="center", color="w",
                    fontsize=8)
    fig.colorbar(image, label=label)
    ax.set_title("sweep (validation split)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
