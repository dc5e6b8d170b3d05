"""``run(spec)``: the one entry point. For every seed it trains the student from scratch
and distils its twin (same initial weights), then writes report.json, report.md and plots.

The run folder is built as ``OUT.partial`` and renamed to ``OUT`` when complete, so a
failed run never leaves a half-written result; an interrupted one can ``resume``.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path


from distillab.engine.callbacks import FillBar, ProgressBar, show_progress
from distillab.files import atomic_write_json
from distillab.runtime import resolve_device
from distillab.runtime import requested_precision, resolve_precision
from distillab.engine.loop import Stop
from distillab.errors import DiskFull, DistillabError, SpecError, is_disk_full
from distillab.experiment.job import Job, as_job
from distillab.experiment.folders import check_out_dir, check_resume, default_out_dir, publish, start_partial
from distillab.experiment.teacher_check import cached_evaluation, check_teachers
from distillab.spec import JobSpec
from distillab.spec_io import parse_spec

from distillab.experiment.phases import phase, trained_student
from distillab.experiment.report import Report, assemble, partial_summary
log = logging.getLogger("distillab")


def check_precision(spec: JobSpec) -> None:
    """A precision this machine cannot run natively fails before anything starts."""
    resolve_precision(requested_precision(spec.training), resolve_device(spec.training.device))
    for index, teacher in enumerate(spec.teachers):
        if teacher.training is not None:
            where = "teacher" if len(spec.teachers) == 1 else f"teacher.{index}"
            resolve_precision(requested_precision(teacher.training), resolve_device(teacher.training.device),
                              f"{where}.training.precision")


def check_strategy(job: Job, bundle, teachers) -> None:
    """Build the distillation strategy once on throw-away students, so bad strategy
    parameters (a layer name that does not exist, a weight list of the wrong length) fail
    before anything is trained or written."""
    job = as_job(job)
    strategy_cls = job.strategy_cls
    if strategy_cls.tasks is not None and job.task.name not in strategy_cls.tasks:
        raise SpecError(f"strategy.name: {job.strategy_name} serves the task(s) {', '.join(strategy_cls.tasks)}, "
                        f"not {job.task.name}")
    if bundle.augment.mixing and not strategy_cls.supports_mix:
        raise SpecError(f"data.augment.mix: {job.strategy_name} uses each sample's one true class, which a mixed "
                        f"image ({bundle.augment.mix}) does not have; use mix: none or another strategy")
    teacher_models = [t for t, _, _ in teachers] if strategy_cls.uses_teacher else []
    for stage in strategy_cls.stages(job.params) or [None]:
        model = job.stage_model(stage, bundle, 0) if stage else job.student_for(0, bundle)
        if stage is not None and stage.teacher != "spec":
            continue  # its teacher is trained in this run
        job.make_strategy(teacher_models, model, bundle)


def run(
    spec: JobSpec | dict,
    out_dir: Path | str | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks=None,
    on_phase=None,
    progress: bool = True,
) -> Report:
    """Run the job. ``callbacks(role, seed)`` may return engine callbacks (progress, cancel);
    role is "teacher" (seed = the teacher's index), "scratch" or "distilled". Without them,
    ``progress`` logs the start-up phases and one line per epoch (``progress=False``: quiet).
    ``on_phase(name, info)`` is told when a phase begins: "teacher", "teacher_outputs",
    "scratch", "distilling" (info: seed, stages, done = skipped on resume), "evaluating".

    A callback that raises ``engine.loop.Stop`` ends the run early: the epoch checkpoints
    stay in ``OUT.partial`` (``resume`` continues from them) beside ``partial.json``, a
    summary of what finished, and the ``Stop`` propagates."""
    spec = parse_spec(spec)
    if spec.auto is not None:  # running the spec's own student would silently ignore the constraints
        raise SpecError("auto: the spec has an auto section, which distillab run does not search; run it with "
                        "distillab auto, or remove auto to train the spec's own student")
    check_precision(spec)
    job = Job.from_spec(spec)
    if callbacks is None and progress:
        show_progress()
        callbacks = progress_bars(job)
    return run_job(job, out_dir, resume=resume, overwrite=overwrite, callbacks=callbacks, on_phase=on_phase)


def progress_bars(job: Job):
    """``callbacks(role, seed)`` giving each training its ProgressBar (a log line per epoch)."""
    def bars(role: str, seed: int) -> list:
        if role == "teacher":  # seed is the teacher's index
            teachers = job.spec.teachers if job.spec is not None else []
            epochs = (teachers[seed].training or job.settings.training).epochs if seed < len(teachers) \
                else job.settings.training.epochs
            return [ProgressBar(f"teacher[{seed}]", epochs)]
        return [ProgressBar(f"seed {seed} {role}", job.settings.training.epochs)]
    return bars


def run_job(job: Job, out_dir: Path | str | None = None, *, resume: bool = False, overwrite: bool = False,
            callbacks=None, on_phase=None, discard_unfinished: bool | None = None) -> Report:
    """``run`` from a Job: a spec's, or one the Python API built from the user's objects.
    ``overwrite`` replaces a finished run and discards an unfinished one, unless
    ``discard_unfinished`` says otherwise for the unfinished one."""
    out_dir, partial = check_out_dir(out_dir if out_dir is not None else default_out_dir(job.settings.name),
                                     overwrite=overwrite, resume=resume,
                                     discard_unfinished=overwrite if discard_unfinished is None else discard_unfinished)
    try:
        return _run(job, out_dir, partial, resume, callbacks, on_phase or (lambda name, info: None))
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error, partial.parent):
            raise
        if resume:  # what earlier runs finished stays; only this run's own start would be removed
            raise DiskFull(f"the disk is full: a write under {partial.parent} failed ({error}); the unfinished run "
                           f"in {partial} was kept. Free some space and resume it with --resume.") from None
        shutil.rmtree(partial, ignore_errors=True)  # frees the space; a resume would not fit either
        raise DiskFull(f"the disk is full: a write under {partial.parent} failed ({error}); "
                       "the unfinished run was removed. Free some space and run again.") from None


def _run(job: Job, out_dir: Path, partial: Path, resume: bool, callbacks, notify) -> Report:
    # Everything that can fail on bad input happens before the run folder exists.
    spec = job.settings
    seeds = spec.training.seeds
    first = job.build_data(seeds[0])
    notify("teacher", {})
    log.info("loading the teacher(s)")
    teachers = job.load_teachers(first, resume=resume, callbacks=callbacks)
    check_strategy(job, first, teachers)
    device = resolve_device(spec.training.device)
    teacher_check = check_teachers(job.task, first, teachers, batch_size=spec.training.eval_batch_size,
                                   device=device, cache_dir=spec.cache.dir,
                                   accept=getattr(spec, "accept_weak_teacher", False))
    started = time.time()
    deadline = started + spec.constraints.max_duration_s if spec.constraints.max_duration_s else None

    if resume:
        check_resume(partial, job.record)
    start_partial(partial, resume=resume)
    try:
        atomic_write_json(partial / "spec.json", job.record)
        log.info("measuring the teacher(s) on the test split")
        teacher_accuracy = [
            cached_evaluation(job.task, model, key, first, "test", spec.training.eval_batch_size, device,
                              spec.cache.dir)
            for model, key, _ in teachers
        ]
        strategy_cls = job.strategy_cls
        stages = strategy_cls.stages(job.params)
        needs_cache = (strategy_cls.uses_teacher and strategy_cls.logits_only and spec.cache.enabled
                       and (not stages or any(stage.teacher == "spec" for stage in stages))
                       and all(key is not None for _, key, _ in teachers))  # None: a teacher that cannot be identified
        phases: dict[str, list[dict]] = {"scratch": [], "distilled": []}
        for seed in seeds:
            bundle = first if seed == seeds[0] else job.build_data(seed)
            caches = []
            if needs_cache:
                notify("teacher_outputs", {"seed": seed})
                caches = job.task.teacher_caches(spec, bundle, teachers, job.params,
                                                 progress=FillBar(f"seed {seed} teacher outputs",
                                                                  job.task.cache_unit))
            scratch = phase(job, bundle, seed, "scratch", teachers, caches, partial / f"seed_{seed}" / "scratch",
                             resume, deadline, callbacks, notify=notify)
            distilled_dir = partial / f"seed_{seed}" / "distilled"
            # a multi-stage strategy may learn from the trained scratch student: loaded only when
            # its phase still has to train (a finished phase's results stand without any weights)
            finished = resume and (distilled_dir / "result.json").exists()
            needs_scratch = bool(job.strategy_cls.stages(job.params)) and not finished
            distilled = phase(job, bundle, seed, "distilled", teachers, caches, distilled_dir, resume, deadline,
                              callbacks, notify=notify,
                              scratch=trained_student(job, bundle, seed, scratch, partial / f"seed_{seed}" / "scratch")
                              if needs_scratch else None)
            phases["scratch"].append(scratch)
            phases["distilled"].append(distilled)
        notify("evaluating", {})
        report = assemble(job, first, teachers, teacher_accuracy, phases, time.time() - started)
        report["teacher_check"] = teacher_check
        report.update(job.task.finish_run(job, first, teachers, phases, partial, device))
        atomic_write_json(partial / "report.json", report)
        from distillab.experiment.render import render

        render(partial)
    except Stop as stop:
        atomic_write_json(partial / "partial.json", partial_summary(partial, stop.reason))
        raise
    except KeyboardInterrupt:
        atomic_write_json(partial / "partial.json", partial_summary(partial, "interrupted"))
        raise
    except BaseException as error:
        if isinstance(error, DistillabError) and not resume:
            shutil.rmtree(partial, ignore_errors=True)  # a user mistake in a new run leaves nothing behind
        raise
    publish(partial, out_dir)
    log.info("report: %s", out_dir / "report.md")
    return Report(report, out_dir)
