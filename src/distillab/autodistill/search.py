"""``distillab auto``: constraints in, the chosen student out.

1. Every candidate of the space is counted on the meta device and its latency predicted by the
   machine's latency model (probes measured on the target runtime); those that cannot meet the
   constraints never train.
2. A multi-objective Optuna study (TPE over the feasible students, the strategy, T, alpha and the
   learning rate; objectives: validation score and predicted latency) runs successive halving:
   many configurations at few epochs, the best third promoted to three times the epochs, and so
   on up to the space's epochs. Every trial is a JobSpec trained through the experiment's phase,
   on validation only (the test split is not read), sharing one teacher-output cache fill.
3. The front (validation score against latency) is written with every trial; the chosen student
   (best validation score of the last rung that meets the score constraints) is retrained with the
   full schedule over at least three seeds against its scratch twin, by ``experiment.run``: the
   usual report, in ``OUT/run``, which ``distillab export``, ``package`` and ``serve-model`` take.

The study lives in ``OUT/study.db``: an interrupted search resumes without redoing a finished trial.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path

import optuna

from distillab.autodistill.feasibility import feasible, judge, score_floor
from distillab.autodistill.latency import LatencyModel, this_machine
from distillab.autodistill.report import write_outputs
from distillab.autodistill.shared import (POLL_S, SHARED_KEY, WORKER, Claims, create_shared, heartbeat, open_shared,
                                         publish_latency, wait_for_latency)
from distillab.autodistill.space import ImageSpace
from distillab.engine.loop import Stop
from distillab.errors import SpecError
from distillab.experiment.job import Job, spec_teachers
from distillab.experiment.phases import phase
from distillab.files import atomic_write_json
from distillab.runtime import resolve_device
from distillab.spec_auto import check_auto
from distillab.spec_io import apply_override, parse_spec, read_spec_file, resolve_spec_paths
from distillab.strategies import STRATEGIES

log = logging.getLogger("distillab")
ETA = 3  # successive halving: a third is promoted, at three times the epochs
DEFAULT_TRIALS = 20


def _spec_with(base: dict, assignments: dict):
    data = copy.deepcopy(base)
    for key, value in assignments.items():
        apply_override(data, f"{key}={json.dumps(value)}")
    return parse_spec(data)


def rungs(low: int, high: int) -> list[int]:
    """The epochs of each rung: low, low·3, ... ending at high (3..30 -> 3, 9, 30; 1..3 -> 1, 3)."""
    out = [low]
    while out[-1] * ETA < high:
        out.append(out[-1] * ETA)
    if out[-1] != high:
        if high / out[-1] >= 2:
            out.append(high)
        else:
            out[-1] = high
    return out


def plan(max_trials: int, levels: int) -> list[int]:
    """Configurations per rung: n, n/3, n/9 ... (at least 1) with their sum at most ``max_trials``."""
    n = max_trials
    while n > 1 and sum(max(1, math.ceil(n / ETA**r)) for r in range(levels)) > max_trials:
        n -= 1
    return [max(1, math.ceil(n / ETA**r)) for r in range(levels)]


def load_auto_spec(spec_path: Path | dict, overrides=()) -> tuple[dict, object]:
    """(the spec document, the validated JobSpec): a file (paths resolve against its folder) or a dict."""
    if isinstance(spec_path, dict):
        base = copy.deepcopy(spec_path)
    else:
        base = resolve_spec_paths(read_spec_file(spec_path), Path(spec_path).resolve().parent)
    for override in overrides:
        apply_override(base, override)
    spec = parse_spec(base)
    if spec.auto is None:
        raise SpecError("auto: the spec has no auto section; give at least auto.constraints (max_latency_ms, "
                        "max_params, max_size_mb, max_macs, min_score, max_drop) or auto.budget")
    check_auto(spec)
    return base, spec


def _same_search(out_dir: Path, base: dict) -> None:
    """A search resumes only the search it started: OUT records its spec (the budget aside, which a
    resumed search may extend), and another spec is refused, naming the keys that differ."""
    record = out_dir / "search.json"
    spec = copy.deepcopy(base)
    spec.get("auto", {}).pop("budget", None)
    if not record.exists():
        atomic_write_json(record, {"spec": spec})
        return
    before = json.loads(record.read_text())["spec"]
    if json.dumps(before, sort_keys=True, default=str) != json.dumps(spec, sort_keys=True, default=str):
        keys = sorted({*before, *spec} - {k for k in {*before, *spec} if before.get(k) == spec.get(k)})
        raise SpecError(f"{out_dir}: it holds a search of another spec (it differs in: {', '.join(keys)}); "
                        "resume with the same spec (only auto.budget may change), or search into another --out")


def min_trial_seconds(spec, bundle, candidate_macs: int, teacher_macs: int, epochs: int) -> float:
    """A lower estimate of one trial: the cheapest candidate trained for the first rung's epochs
    (the student's forward and backward, the teacher's forward once per cached view), from this
    machine's measured cost per MAC."""
    from distillab.service.estimate import seconds_per_sample

    per_sample = seconds_per_sample("train", candidate_macs)
    fill = seconds_per_sample("infer", teacher_macs) * spec.cache.views if isinstance(spec.cache.views, int) else 0
    return len(bundle.train) * (per_sample * epochs + fill)


def _final_run(final_spec, run_dir: Path, run_options: dict | None):
    """The chosen student's final run: run (or resumed), or read back when a finished search is
    run again -- only when it is the run of this choice; another one is refused, never reused."""
    from distillab.experiment.report import Report
    from distillab.experiment.run import run

    done = run_dir / "report.json"
    if not done.is_file():
        return run(final_spec, run_dir, resume=True, overwrite=False, **(run_options or {}))
    from distillab.experiment.folders import spec_differences

    data = json.loads(done.read_text())
    changed = spec_differences(data.get("spec") or {}, json.loads(json.dumps(Job.from_spec(final_spec).record)))
    if changed:  # the keys a resumed run may not change
        raise SpecError(f"{run_dir}: it holds the final run of another choice ({'; '.join(changed[:3])}); move it "
                        "away to retrain the chosen student there, or search into another --out")
    return Report(data, run_dir)


def budget_plan(seconds: float, epoch_seconds: float, levels: list[int]) -> list[int]:
    """The largest plan n, n/3, ... (at least one per rung) whose epochs fit in ``seconds`` at
    ``epoch_seconds`` per epoch of a trial."""
    def cost(n: int) -> float:
        return sum(max(1, math.ceil(n / ETA**r)) * epochs for r, epochs in enumerate(levels)) * epoch_seconds

    n = 1
    while n < 10_000 and cost(n + 1) <= seconds:
        n += 1
    return [max(1, math.ceil(n / ETA**r)) for r in range(len(levels))]


def search(spec_path: Path | dict | None, out_dir: Path, overrides=(), final_seeds: list[int] | None = None,
           final: bool = True, sampler: str = "tpe", multi_fidelity: bool = True, run_options: dict | None = None,
           on_progress=None, on_final=None, storage: str | None = None, study_name: str | None = None,
           join: bool = False, wait_s: float = 0.0) -> dict:
    """Run (or resume) the search; returns the summary written to ``OUT/auto.json``.
    ``sampler`` "random" and ``multi_fidelity=False`` (every trial at the full epochs) are the
    baselines the search is compared with (``benchmarks/auto.py``).

    For the job service: ``run_options`` (``callbacks``, ``on_phase``) go to every trial's training
    and to the final run (a callback's ``Stop`` ends the search, its trials and front written);
    ``on_progress(info)`` hears after each trial (trials done and planned, the best score so far,
    seconds searched); ``on_final(spec)`` hears before the chosen student's final run.

    Shared: with ``storage`` (an SQLAlchemy URL) the study lives in that database under
    ``study_name`` and records the spec, the options and the latency model; processes started
    with ``join=True`` (no spec: it comes from the study) train its trials too. Each trial is
    claimed in the database before it trains, a promotion to the next rung waits until every
    process has finished the rung below, and the budget counts the trial seconds of all of them.
    The process that created the study waits for the others, writes the front and retrains the
    chosen student; a joined process only trains trials (``final`` is ignored)."""
    if sampler not in ("tpe", "random"):
        raise SpecError(f"sampler: tpe or random, not {sampler!r}")
    if join and storage is None:
        raise SpecError("--join: give the shared study's --storage URL too")
    shared = None
    if join:
        shared = open_shared(storage, study_name, wait_s)
        record = shared.user_attrs[SHARED_KEY]
        base, spec = load_auto_spec(record["spec"])
        sampler, multi_fidelity, final = record["sampler"], record["multi_fidelity"], False
    else:
        base, spec = load_auto_spec(spec_path, overrides)
    auto = spec.auto
    constraints, budget, space = auto.constraints, auto.budget, auto.space.for_task(spec.task)
    task = Job.from_spec(spec).task
    directions = ["maximize" if task.higher_is_better else "minimize", "minimize"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if storage is not None and not join:  # made first, so that workers set up while the latency model is measured
        shared = create_shared(storage, study_name or f"auto-{spec.name}", directions,
                               {"spec": base, "sampler": sampler, "multi_fidelity": multi_fidelity})
    seed = spec.training.seeds[0]
    bundle = task.build(spec.data, seed, spec)
    device = resolve_device(spec.training.device)
    teachers = spec_teachers(spec, task, bundle)
    # several teachers: each measured on validation, and which one (or their performance-weighted
    # ensemble) is a dimension of the search; the constraints read the best of them
    teacher_vals = [task.evaluate(model, bundle, "val", spec.training.eval_batch_size, device).value
                    for model, _, _ in teachers]
    teacher_val = teacher_vals[0]
    for value in teacher_vals[1:]:
        teacher_val = value if task.better(value, teacher_val) else teacher_val
    ensembles = STRATEGIES["multi_teacher"].tasks is None or spec.task in STRATEGIES["multi_teacher"].tasks
    teacher_options = [str(i) for i in range(len(teachers))] + (["ensemble"] if ensembles else []) \
        if len(teachers) > 1 else []
    teacher_facts = [{"teacher": str(i), "source": facts.get("source"), "val_score": value}
                     for i, ((_, _, facts), value) in enumerate(zip(teachers, teacher_vals))] if teacher_options else None
    if constraints.min_score is not None and task.better(constraints.min_score, teacher_val):
        beyond = "above" if task.higher_is_better else "below"
        raise SpecError(f"auto.constraints.min_score: {constraints.min_score:g} is {beyond} the teacher's own "
                        f"validation {task.metric} ({teacher_val:.4f}); a student distilled from it will not reach it")
    floor = score_floor(constraints, teacher_val, task.higher_is_better)

    # what the constraints allow, decided before anything trains
    if spec.task == "language_modeling":
        from distillab.autodistill.lm_space import LMSpace

        space_of = LMSpace(teachers[0][0], bundle.context_length, bundle.num_classes,
                           int(bundle.train.tokens.numel()))
    else:
        space_of = ImageSpace(bundle.in_shape, bundle.num_classes, constraints.runtime, constraints.batch_size,
                              teachers[0][0], cut_from=teachers[0][0] if len(teachers) == 1 else None,
                              dynamic=space.dynamic)
    pool = space_of.candidates(space.families)
    out_dir.mkdir(parents=True, exist_ok=True)
    _same_search(out_dir, base)
    latency_path = out_dir / "latency_model.json"
    if join:  # the creator's machine is the target: every process predicts with its model
        atomic_write_json(latency_path, wait_for_latency(shared))
    if latency_path.exists():  # measured once per search: a resumed search predicts as the first did
        latency = LatencyModel.read(json.loads(latency_path.read_text()))
        here = this_machine()
        if not join and latency.machine and latency.machine != here:
            log.warning("auto: this search's latency model was measured on %s; this machine is %s. Candidates "
                        "are still judged by the first machine's latencies, but the chosen student's latency is "
                        "measured here: resume on the first kind of machine for a constraint that means one thing",
                        latency.machine, here)
    else:
        latency = space_of.latency_model(pool, constraints.runtime, constraints.batch_size)
        atomic_write_json(latency_path, latency.as_dict())
    if shared is not None and not join:
        publish_latency(shared, latency.as_dict())
    verdicts = [judge(c, constraints, latency) for c in pool]
    allowed = {v.candidate.name: v for v in feasible(verdicts, constraints)}
    log.info("auto: %d of %d candidates can meet the constraints (latency model: median error %.0f %%)",
             len(allowed), len(pool), 100 * latency.error["median_relative_error"])

    levels = rungs(*space.epochs) if multi_fidelity else [space.epochs[1]]
    per_rung = plan(budget.max_trials or DEFAULT_TRIALS, len(levels))
    cheapest = min(allowed.values(), key=lambda v: v.candidate.macs).candidate
    limit = min(budget.wall_s or math.inf, (budget.device_hours or math.inf) * 3600)
    if limit < math.inf:
        minimum = min_trial_seconds(spec, bundle, cheapest.macs, space_of.teacher_macs(), levels[0])
        if limit < minimum:
            key = "wall_s" if budget.wall_s is not None else "device_hours"
            raise SpecError(f"auto.budget.{key}: {limit:.0f} s is less than one trial; the cheapest candidate "
                            f"needs about {minimum:.0f} s for {levels[0]} epochs on this machine")
    # a budget without a cap on trials sizes the plan from the epochs it can pay for (below)
    sized_by_budget = limit < math.inf and budget.max_trials is None

    strategies = list(space.strategies)
    names = sorted(allowed)
    if shared is not None:
        study = shared
    else:
        study = optuna.create_study(study_name="auto", storage=f"sqlite:///{(out_dir / 'study.db').resolve()}",
                                    directions=directions, load_if_exists=True)
        for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)  # an interrupted run's: nobody trains them
    done: dict = {}
    sync = Claims(study, done, shared=storage is not None)
    sync()
    # a resumed search draws on from where it stopped, not from the first draws again
    study.sampler = (optuna.samplers.TPESampler if sampler == "tpe" else optuna.samplers.RandomSampler)(
        seed=len(study.trials))
    started = time.monotonic()
    # a resumed search's budget counts what earlier sessions spent: their searching time (trials and
    # what ran between them; a shared study counts every process's trial seconds instead)
    before = float(study.user_attrs.get("searched_seconds", 0.0)) if storage is None else 0.0
    spent = max(before, sum(t.user_attrs["seconds"] for t in done.values()))
    before = spent if storage is None else before  # a study that kept no searching time: its trials' seconds
    deadline = started + limit - spent if limit < math.inf else None

    def searched() -> float:
        return before + time.monotonic() - started

    def resize() -> None:
        """Size the plan from the mean seconds per epoch of the first rung's trials: as they come
        in, and again from all of them when a search resumes (so a resumed search keeps its plan)."""
        first = [t for key, t in done.items() if key[0] == 0]
        if sized_by_budget and first:
            epoch_seconds = sum(t.user_attrs["seconds"] for t in first) / sum(t.user_attrs["epochs"] for t in first)
            per_rung[:] = budget_plan(limit, epoch_seconds, levels)

    def evaluate(trial: optuna.Trial, params: dict, rung: int) -> None:
        verdict = allowed[params["student"]]
        candidate = verdict.candidate
        epochs = levels[rung]
        config = json.dumps(params, sort_keys=True)
        trial.set_user_attr("rung", rung)  # the claim, at once: other processes skip what is running
        trial.set_user_attr("config", config)
        if not sync.won(trial, rung, config):
            return
        trial_spec = _spec_with(base, {
            "student": {"model": candidate.model, "model_args": candidate.args},
            "strategy": strategy_of(params),
            "training.epochs": epochs, "training.lr": params["lr"], "training.seeds": [seed], "auto": None,
            **views_of(params), **teacher_of(params)})
        job = Job.from_spec(trial_spec)
        used = teachers_of(params)
        caches = task.teacher_caches(trial_spec, bundle, used, job.params)  # one fill per teacher, shared by trials
        trial.set_user_attr("worker", WORKER)
        trial.set_user_attr("joined", join)  # a helper's trial: its seconds are device time of the creator's job
        trial_dir = out_dir / "trials" / f"{trial.number:04d}"
        clock = time.monotonic()
        try:
            with heartbeat(study, trial):
                result = phase(job, bundle, seed, "distilled", used, caches, trial_dir, True, None,
                               (run_options or {}).get("callbacks"), test_split=False)
        except BaseException:
            if storage is not None:  # stopped or failed: its claim is free for another process at once
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("seconds", time.monotonic() - clock)
        trial.set_user_attr("candidate", candidate.facts())
        study.tell(trial, [result["val_accuracy"], verdict.latency_ms])
        if storage is None:
            study.set_user_attr("searched_seconds", searched())
        sync()
        progress(rung)
        log.info("auto: trial %d (rung %d, %d epochs) %s %s: validation %s %.4f, %.3f ms predicted", trial.number,
                 rung, epochs, candidate.model, candidate.model_args, task.metric, result["val_accuracy"],
                 verdict.latency_ms)

    def progress(rung: int) -> None:
        """Tell ``on_progress``: trials done and planned, the best score, seconds searched, and the
        trial seconds of processes that joined the search (helpers)."""
        if on_progress is None:
            return
        best = None
        for trial_done in done.values():
            if best is None or task.better(trial_done.values[0], best.values[0]):
                best = trial_done
        on_progress({"trials_done": len(done), "trials_planned": sum(per_rung), "rung": rung, "metric": task.metric,
                     "best_val_score": best.values[0] if best else None,
                     "best_student": ({k: best.user_attrs["candidate"][k] for k in ("model", "params")}
                                      if best else None),
                     "searched_seconds": round(searched(), 1), "budget_s": limit if limit < math.inf else None,
                     "helper_trial_seconds": round(sum(t.user_attrs["seconds"] for t in done.values()
                                                       if t.user_attrs.get("joined")), 1)})

    def teacher_of(params: dict) -> dict:
        """The spec's teacher entry for a trial that chose one teacher (all of them for the ensemble)."""
        choice = params.get("teacher")
        return {} if choice in (None, "ensemble") else {"teacher": [base["teacher"][int(choice)]]}

    def teachers_of(params: dict) -> list:
        choice = params.get("teacher")
        return teachers if choice in (None, "ensemble") else [teachers[int(choice)]]

    def views_of(params: dict) -> dict:
        """The trial's cached views (images): its own draw, the space's one value, or the spec's setting."""
        if spec.task != "image_classification":
            return {}
        return {"cache.views": params.get("views", space.cache_views[0] if space.cache_views else spec.cache.views)}

    def strategy_of(params: dict) -> dict:
        """The trial's strategy: its T and alpha over the spec's own settings of the same strategy
        (a language model's top_k and tail, say), or over the strategy's defaults."""
        same = base.get("strategy", {}).get("name") == params["strategy"]
        settings = dict(base.get("strategy", {}).get("params") or {}) if same else {}
        return {"name": params["strategy"],
                "params": {**settings, "temperature": params["temperature"], "alpha": params["alpha"]}}

    def out_of_budget() -> bool:
        if storage is not None and limit < math.inf:  # every process's trial seconds count
            sync()
            return sum(t.user_attrs["seconds"] for t in done.values()) >= limit
        return deadline is not None and time.monotonic() > deadline

    def draw(rung: int, fixed: dict | None) -> tuple[optuna.Trial, dict]:
        """A new trial: ``fixed`` values (a promoted configuration), or the sampler's draw; a
        configuration already trained at this rung is drawn again. A shared study does not enqueue
        (another process's ask() would take the queued trial): the promoted configuration is kept
        in the trial's attributes, which is where every reader takes it from."""
        if fixed is not None and storage is not None:
            return study.ask(), fixed
        if fixed is not None:
            study.enqueue_trial(fixed)
        for _ in range(20):
            trial = study.ask()
            params = suggest(trial)
            if (rung, json.dumps(params, sort_keys=True)) not in done:
                break
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return trial, params

    def suggest(trial: optuna.Trial) -> dict:  # an enqueued trial gets its fixed values back
        params = {"student": trial.suggest_categorical("student", names)}
        if teacher_options:
            params["teacher"] = trial.suggest_categorical("teacher", teacher_options)
        ensemble = params.get("teacher") == "ensemble"  # weighted by validation score (multi_teacher)
        dynamic = allowed[params["student"]].candidate.dynamic  # its dynamic convolution trains with adaptive_v2
        params["strategy"] = "multi_teacher" if ensemble else "adaptive_v2" if dynamic else \
            trial.suggest_categorical("strategy", strategies)
        params.update(temperature=trial.suggest_float("temperature", *space.temperature, log=True),
                      alpha=trial.suggest_float("alpha", *space.alpha),
                      lr=trial.suggest_float("lr", *space.lr, log=True))
        if space.cache_views and len(space.cache_views) > 1:  # one teacher-output fill per views value
            params["views"] = trial.suggest_categorical("views", sorted(set(space.cache_views)))
        return params

    stopped = None
    if not join:
        progress(0)  # a resumed search's trials, and what helpers had trained, before this process trains
    try:
        if sized_by_budget:
            per_rung[:] = [1] + [1] * (len(levels) - 1)  # one trial first, to measure what an epoch costs
            resize()
        for rung in range(len(levels)):
            if rung == 0:
                while sum(1 for key in set(done) | sync() if key[0] == 0) < per_rung[0]:
                    if out_of_budget():
                        stopped = "budget"
                        break
                    trial, params = draw(0, None)
                    evaluate(trial, params, 0)
                    resize()
                if stopped:
                    break
                continue
            else:
                while any(key[0] == rung - 1 for key in sync()):  # other processes still train the rung below
                    time.sleep(POLL_S)
                previous = sorted(((t.values[0], key[1]) for key, t in done.items() if key[0] == rung - 1),
                                  reverse=task.higher_is_better)
                todo = [json.loads(config) for _, config in previous[:per_rung[rung]] if (rung, config) not in done]
            for fixed in todo:
                if out_of_budget():
                    stopped = "budget"
                    break
                if (rung, json.dumps(fixed, sort_keys=True)) in set(done) | sync():  # another process has it
                    continue
                trial, params = draw(rung, fixed)
                evaluate(trial, params, rung)
            if stopped:
                break
    except (Stop, KeyboardInterrupt) as interruption:  # cancelled, or out of the job's budget: keep the front
        write_outputs(out_dir, study, done, task, levels, floor, latency, constraints,
                      searched_seconds=searched(), stopped=getattr(interruption, "reason", "interrupted"),
                      pool=len(pool), feasible=len(allowed), teacher_val=teacher_val, teachers=teacher_facts)
        raise

    if join:
        log.info("auto: this process's share of %s is done", study.study_name)
        sync()
        return {"study": study.study_name, "trials_here": sum(1 for t in done.values()
                                                              if t.user_attrs.get("worker") == WORKER)}
    while sync():  # the trials other processes are still training
        time.sleep(POLL_S)
    # measured once per student and kept: a search run again decides as it did, not by a new measurement's noise
    measured_path = out_dir / "latency_measured.json"
    measured_ms: dict[str, float] = json.loads(measured_path.read_text()) if measured_path.is_file() else {}

    def measured(row: dict) -> tuple[bool, float]:
        """(meets the latency constraint, ms) of a trained configuration, measured on the runtime."""
        name = row["params"]["student"]
        if name not in measured_ms:
            measured_ms[name] = space_of.measure(allowed[name].candidate)
            atomic_write_json(measured_path, measured_ms)
        return measured_ms[name] <= constraints.latency_limit_ms, measured_ms[name]

    summary = write_outputs(out_dir, study, done, task, levels, floor, latency, constraints,
                            searched_seconds=searched(), stopped=stopped,
                            pool=len(pool), feasible=len(allowed), teacher_val=teacher_val, teachers=teacher_facts,
                            measured=measured if constraints.latency_limit_ms is not None else None)
    if final and summary["chosen"] is not None:
        chosen = summary["chosen"]
        seeds = final_seeds or (spec.training.seeds if len(spec.training.seeds) >= 3 else [0, 1, 2])
        final_spec = _spec_with(base, {
            "student": {"model": chosen["candidate"]["model"], "model_args": chosen["candidate"]["model_args"]},
            "strategy": strategy_of(chosen["params"]),
            "training.epochs": levels[-1], "training.lr": chosen["params"]["lr"], "training.seeds": seeds,
            "auto": None, **views_of(chosen["params"]), **teacher_of(chosen["params"])})
        if on_final is not None:
            on_final(final_spec)
        report = _final_run(final_spec, out_dir / "run", run_options)
        latency_ms = chosen["latency_ms_measured"]
        if latency_ms is None:  # no latency constraint: measured for the record
            latency_ms = space_of.measure(allowed[chosen["params"]["student"]].candidate)
        limit = constraints.latency_limit_ms
        summary["final"] = {"run": str(out_dir / "run"), "seeds": seeds, "verdict": report.verdict,
                            "latency_ms_measured": latency_ms, "latency_met": limit is None or latency_ms <= limit}
        atomic_write_json(out_dir / "auto.json", summary)
    return summary
