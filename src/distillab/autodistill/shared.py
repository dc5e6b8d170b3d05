"""A search shared by several processes or machines: one Optuna study in a database
(``distillab auto --storage URL``; others ``--join`` it). The study records the spec, the
options and the creator's latency model; every trial is claimed in it before it trains."""

from __future__ import annotations

import copy
import datetime
import json
import os
import socket
import time
import warnings
from contextlib import contextmanager

import optuna

from distillab.errors import SpecError

# Optuna's heartbeats are marked experimental and meant for Study.optimize; a shared search beats
# for its trials itself (``heartbeat``), so these notices say nothing to its users.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", message=r"(Argument ``heartbeat_interval``|.*fail_stale_trials) is experimental")

SHARED_KEY = "distillab_auto"  # the study attribute that holds a shared search's spec, options and latency model
POLL_S = 2.0  # how often a process looks at what the others are training
SETTLE_S = 30.0  # the longest a claim waits for lower-numbered trials to write theirs
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _storage(url: str):
    """The shared study's database, with heartbeats: a trial whose process stops beating for two
    minutes is failed, and its claim released for another process."""
    from distillab.experiment.sweep import open_storage

    return open_storage(url)


def create_shared(url: str, name: str, directions: list[str], record: dict) -> optuna.Study:
    """The shared study (created, or opened again when it holds the same search)."""
    from distillab.experiment.sweep import _safe_url

    study = optuna.create_study(study_name=name, storage=_storage(url), directions=directions, load_if_exists=True)
    stored = study.user_attrs.get(SHARED_KEY)
    record = json.loads(json.dumps(record, default=str))
    if stored is None:
        study.set_user_attr(SHARED_KEY, record)
    elif _without_budget(stored["spec"]) != _without_budget(record["spec"]) or \
            (stored["sampler"], stored["multi_fidelity"]) != (record["sampler"], record["multi_fidelity"]):
        raise SpecError(f"study {name!r} in {_safe_url(url)} holds another search; join it with --join {name}, "
                        "or name a new one with --study")
    return study


def open_shared(url: str, name: str | None, wait_s: float = 0.0) -> optuna.Study:
    """The shared study ``name``; with ``wait_s``, waits that long for its creator to make it (so
    workers may start first)."""
    from distillab.experiment.sweep import _safe_url

    storage = _storage(url)
    deadline = time.monotonic() + wait_s
    while True:
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        if name in names and SHARED_KEY in optuna.load_study(study_name=name, storage=storage).user_attrs:
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(min(POLL_S, max(0.1, deadline - time.monotonic())))
    if name not in names:
        raise SpecError(f"--join {name}: no such study in {_safe_url(url)}"
                        f"{'; it has: ' + ', '.join(sorted(names)[:20]) if names else ' (it has none)'}")
    study = optuna.load_study(study_name=name, storage=storage)
    if SHARED_KEY not in study.user_attrs:
        raise SpecError(f"--join {name}: the study was not made by distillab auto --storage")
    return study


LATENCY_KEY = "distillab_auto_latency"  # the creator's latency model, once measured
LATENCY_WAIT_S = 3600.0


def publish_latency(study: optuna.Study, model: dict) -> None:
    if LATENCY_KEY not in study.user_attrs:
        study.set_user_attr(LATENCY_KEY, json.loads(json.dumps(model)))


def wait_for_latency(study: optuna.Study) -> dict:
    """The creator's latency model, waiting while the creator measures it."""
    deadline = time.monotonic() + LATENCY_WAIT_S
    while True:
        attrs = study.user_attrs  # read from the database at every access
        if LATENCY_KEY in attrs:
            return attrs[LATENCY_KEY]
        if time.monotonic() > deadline:
            raise SpecError(f"study {study.study_name!r}: its creator has not measured its latency model in "
                            f"{LATENCY_WAIT_S:.0f} s; is `distillab auto SPEC --storage ...` running?")
        time.sleep(POLL_S)


def _without_budget(spec: dict) -> str:
    spec = copy.deepcopy(spec)
    spec.get("auto", {}).pop("budget", None)
    return json.dumps(spec, sort_keys=True, default=str)


class Claims:
    """What the study has finished (into ``done``, by (rung, configuration)) and what is running
    (returned by a call): a process claims a trial by recording its rung and configuration before
    it trains, and other processes skip it."""

    def __init__(self, study: optuna.Study, done: dict, shared: bool):
        self.study, self.done, self.shared = study, done, shared

    def __call__(self) -> set:
        states = optuna.trial.TrialState
        if self.shared:
            optuna.storages.fail_stale_trials(self.study)  # a dead process's trials free their claims
        trials = self.study.get_trials(deepcopy=False, states=(states.COMPLETE, states.RUNNING))
        self.done.clear()
        claimed = [t for t in trials if "rung" in t.user_attrs and "config" in t.user_attrs]
        self.done.update({(t.user_attrs["rung"], t.user_attrs["config"]): t for t in claimed
                          if t.state == states.COMPLETE})
        return {(t.user_attrs["rung"], t.user_attrs["config"]) for t in claimed if t.state == states.RUNNING}

    def won(self, trial: optuna.Trial, rung: int, config: str, settle_s: float = SETTLE_S) -> bool:
        """Whether ``trial`` holds the claim on (rung, configuration): the lower trial number keeps
        it (the other is pruned). A trial number is taken (``ask``) before its claim is written, so
        first every lower-numbered trial still running without a claim is waited for (at most
        ``settle_s``: a process that died there is not waited for longer) -- otherwise a process
        could check before a lower-numbered rival wrote its claim, and both would train."""
        if not self.shared:
            return True
        states = optuna.trial.TrialState
        deadline = time.monotonic() + settle_s
        while True:
            trials = self.study.get_trials(deepcopy=False, states=(states.COMPLETE, states.RUNNING))
            now = datetime.datetime.now()  # Optuna stamps trials with the local time
            unclaimed = [t for t in trials if t.number < trial.number and t.state == states.RUNNING
                         and "config" not in t.user_attrs and t.datetime_start is not None
                         and (now - t.datetime_start).total_seconds() < settle_s]
            if not unclaimed or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        rivals = [t.number for t in trials
                  if t.user_attrs.get("rung") == rung and t.user_attrs.get("config") == config]
        if min(rivals) != trial.number:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return False
        return True


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial):
    """Beat for ``trial`` while it trains, when the storage keeps heartbeats (a shared study)."""
    try:
        from optuna.storages._heartbeat import get_heartbeat_thread
    except ImportError:  # another Optuna: no beats, and a dead process's claim is never released
        yield
        return
    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield
