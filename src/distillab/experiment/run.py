"""``run(spec)``: the one entry point. For every seed it trains the student from scratch
and distils its twin (same initial weights), then writes report.json, report.md and plots.

The run folder is built as ``OUT.partial`` and renamed to ``OUT`` when complete, so a
failed run never leaves a half-written result; an interrupted one can ``resume``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from distillab.data.cache import resolve_views, teacher_outputs
from distillab.engine.callbacks import FillBar, ProgressBar, show_progress
from distillab.files import atomic_write_json
from distillab.runtime import resolve_device
from distillab.runtime import precision_record, requested_precision, resolve_precision
from distillab.engine.loop import Stop, fit
from distillab.errors import DiskFull, DistillabError, SpecError, is_disk_full
from distillab.experiment.job import Job, as_job
from distillab.experiment.folders import check_out_dir, check_resume, default_out_dir, publish, start_partial
from distillab.experiment.stats import paired_comparison, summarize, verdict
from distillab.experiment.teacher_check import cached_evaluation, check_teachers
from distillab.models.loading import load_state_into
from distillab.spec import JobSpec, parse_spec
from distillab.strategies import STRATEGIES

log = logging.getLogger("distillab")


@dataclass
class Report:
    """The result of a run: the parsed ``report.json`` and the folder it lives in."""

    data: dict
    out_dir: Path | None

    @property
    def models(self) -> list[dict]:
        return self.data["models"]

    def model(self, role: str) -> dict:
        return next(m for m in self.models if m["role"] == role)

    @property
    def verdict(self) -> str:
        return self.data["verdict"]


def environment() -> dict:
    from distillab.runtime import bf16_path

    return {
        "bf16_path": bf16_path(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


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


def _trained_student(job: Job, bundle, seed, summary, phase_dir):
    """The scratch student of this seed: in memory, or (after --resume) from its folder."""
    job = as_job(job)
    if "student" in summary:
        return summary["student"]
    return load_state_into(job.student_for(seed, bundle), phase_dir / "student.safetensors", f"{phase_dir} (resume)")


def _fit_one(job: Job, bundle, seed, strategy, caches, run_dir, resume, deadline, callbacks, label,
             test_split: bool = True) -> dict:
    """Train one strategy with the engine and measure its student on the test split (not in a
    sweep, which chooses on validation and never looks at test)."""
    spec = job.settings
    result = fit(
        strategy, bundle, spec.training, seed, run_dir, caches=caches, resume=resume,
        callbacks=callbacks or (), deadline=deadline, tensorboard=spec.output.tensorboard, description=label,
        task=job.task,
    )
    device = resolve_device(spec.training.device)
    if test_split:
        test = job.task.evaluate(strategy.student, bundle, "test", spec.training.eval_batch_size, device)
        log.info("%s: test %s %.4f", label, job.task.metric, test.value)
        measured = {"test_score": test.value,  # the task's primary metric
                    "test_accuracy": test.metrics.get("accuracy", test.value), "test_metrics": test.metrics}
    else:
        log.info("%s: validation %s %.4f", label, job.task.metric, result.best_val_accuracy)
        measured = {"test_score": None, "test_accuracy": None, "test_metrics": {}}
    return {
        **measured,
        "val_accuracy": result.best_val_accuracy,
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": result.seconds_per_epoch,
        "extra_training_params": strategy.extra_parameter_count(),
        "history": result.history,
    }


def _untrained(job: Job, bundle, seed, phase_dir) -> dict:
    """The scratch twin of a task without labels: the student as initialised, measured."""
    from safetensors.torch import save as safetensors_bytes

    from distillab.files import atomic_write_bytes

    spec = job.settings
    device = resolve_device(spec.training.device)
    student = job.student_for(seed, bundle).to(device)
    val = job.task.evaluate(student, bundle, "val", spec.training.eval_batch_size, device)
    test = job.task.evaluate(student, bundle, "test", spec.training.eval_batch_size, device)
    phase_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(phase_dir / "student.safetensors", safetensors_bytes(
        {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}))
    log.info("seed %d scratch: the student as initialised (the task has no labels): test %s %.4f", seed,
             job.task.metric, test.value)
    return {"test_score": test.value, "test_accuracy": test.metrics.get("accuracy", test.value),
            "test_metrics": test.metrics, "val_accuracy": val.value, "best_epoch": 0, "seconds_per_epoch": 0.0,
            "extra_training_params": 0, "history": [], "student": student, "untrained": True}


def _stage_teachers(stage, teachers, caches, previous, scratch_student):
    """(teacher models, caches) for one stage of a multi-stage strategy."""
    if stage.teacher == "spec":
        return [t for t, _, _ in teachers], caches
    source = previous if stage.teacher == "previous" else scratch_student
    if source is None:
        raise ValueError(f"stage {stage.name}: no {stage.teacher} model to learn from")
    return [source.eval()], ()  # a model trained in this run: its outputs are computed online


def _phase(job: Job, bundle, seed, role, teachers, caches, phase_dir, resume, deadline, callbacks, scratch=None,
           notify=lambda name, info: None, test_split: bool = True) -> dict:
    """Train one student (role 'scratch' or 'distilled'); results are saved in phase_dir.
    ``scratch`` is this seed's trained scratch student (born-again starts from it)."""
    job = as_job(job)
    spec = job.settings
    done = phase_dir / "result.json"
    strategy_name = "none" if role == "scratch" else job.strategy_name
    strategy_cls = STRATEGIES["none"] if role == "scratch" else job.strategy_cls
    params = strategy_cls.Params() if role == "scratch" else job.params
    stages = strategy_cls.stages(params)
    phase = "scratch" if role == "scratch" else "distilling"
    if resume and done.exists():
        log.info("seed %d %s: already done, skipping", seed, role)
        notify(phase, {"seed": seed, "stages": max(1, len(stages or ())), "done": True})
        return json.loads(done.read_text())
    notify(phase, {"seed": seed, "stages": max(1, len(stages or ())), "done": False})
    use_cache = strategy_cls.uses_teacher and strategy_cls.logits_only and spec.cache.enabled and bundle.cacheable
    if strategy_cls.uses_teacher and not use_cache:
        reason = ("cache disabled in the spec" if not spec.cache.enabled else f"{strategy_name} reads teacher features"
                  if not strategy_cls.logits_only else "the data has no stable rows to cache by (a Dataset or DataLoader)")
        log.info("teacher outputs: running the teacher online (%s)", reason)
    cbs = callbacks(role, seed) if callbacks else ()
    label = f"seed {seed} {role}"
    if role == "scratch" and not job.task.trains_scratch:
        summary = _untrained(job, bundle, seed, phase_dir)
    elif not stages:
        student = job.student_for(seed, bundle)
        teacher_models = [t for t, _, _ in teachers] if strategy_cls.uses_teacher else []
        strategy = strategy_cls(teacher_models, student, params, in_shape=bundle.in_shape)
        summary = _fit_one(job, bundle, seed, strategy, caches if use_cache else (), phase_dir, resume, deadline,
                           cbs, label, test_split)
        summary["student"] = strategy.student
    else:
        previous, stage_results = None, []
        for stage in stages:
            stage_teachers, stage_caches = _stage_teachers(stage, teachers, caches if use_cache else (), previous, scratch)
            model = job.stage_model(stage, bundle, seed)
            strategy = strategy_cls(stage_teachers, model, params, in_shape=bundle.in_shape)
            result = _fit_one(job, bundle, seed, strategy, stage_caches, phase_dir / stage.name, resume, deadline,
                              cbs, f"{label} {stage.name}", test_split)
            stage_results.append({"stage": stage.name, "model": stage.model or job.student_name,
                                  "params": sum(p.numel() for p in model.parameters()), **result})
            previous = strategy.student
        summary = {**stage_results[-1], "stages": stage_results, "student": previous}
        summary["extra_training_params"] = sum(r["params"] for r in stage_results[:-1])
    summary.update(seed=seed, role=role, strategy=strategy_name)
    atomic_write_json(done, {k: v for k, v in summary.items() if k != "student"})
    return summary


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
            scratch = _phase(job, bundle, seed, "scratch", teachers, caches, partial / f"seed_{seed}" / "scratch",
                             resume, deadline, callbacks, notify=notify)
            distilled = _phase(job, bundle, seed, "distilled", teachers, caches,
                               partial / f"seed_{seed}" / "distilled", resume, deadline, callbacks, notify=notify,
                               scratch=_trained_student(job, bundle, seed, scratch, partial / f"seed_{seed}" / "scratch"))
            phases["scratch"].append(scratch)
            phases["distilled"].append(distilled)
        notify("evaluating", {})
        report = _assemble(job, first, teachers, teacher_accuracy, phases, time.time() - started)
        report["teacher_check"] = teacher_check
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


def partial_summary(folder: Path, reason: str) -> dict:
    """What a stopped run finished: per seed and role, the test accuracy of complete phases,
    and for the interrupted one the epochs done, the best validation accuracy so far and its
    saved student (paths relative to ``folder``)."""
    phases = []
    for seed_dir in sorted(folder.glob("seed_*"), key=lambda p: int(p.name.removeprefix("seed_"))):
        for role in ("scratch", "distilled"):
            phase_dir = seed_dir / role
            if not phase_dir.is_dir():
                continue
            entry: dict = {"seed": int(seed_dir.name.removeprefix("seed_")), "role": role}
            done = phase_dir / "result.json"
            if done.exists():
                result = json.loads(done.read_text())
                entry.update(complete=True, test_accuracy=result["test_accuracy"],
                             val_accuracy=result["val_accuracy"], epochs=len(result["history"]))
            else:
                history = [json.loads(line) for path in sorted(phase_dir.rglob("metrics.jsonl"))
                           for line in path.read_text().splitlines() if line.strip()]
                students = sorted(phase_dir.rglob("student.safetensors"))
                entry.update(complete=False, epochs_done=len(history),
                             best_val_accuracy=max((h["val_accuracy"] for h in history if "val_accuracy" in h),
                                                   default=None),
                             student=str(students[-1].relative_to(folder)) if students else None)
            phases.append(entry)
    return {"stopped": reason, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "phases": phases}


def _assemble(job: Job, bundle, teachers, teacher_accuracy, phases, seconds) -> dict:
    spec = job.settings
    seeds = spec.training.seeds
    student = job.student_for(seeds[0], bundle)
    deployed = _deployed_model(job, bundle, teachers)
    # Every model is timed in one interleaved measurement; the scratch and distilled students
    # are one network unless the strategy deploys something else (adaptive adds a generator).
    timed = {f"teacher_{index}": model.cpu() for index, (model, _, _) in enumerate(teachers)}
    timed["scratch"] = student
    if not _same_network(student, deployed):
        timed["distilled"] = deployed
    measured = job.task.model_facts(timed, bundle, spec.output.latency_repeats)
    facts = {"scratch": measured["scratch"], "distilled": measured.get("distilled", measured["scratch"])}
    models = []
    task = job.task
    for index, ((model, checksum, source), evaluation) in enumerate(zip(teachers, teacher_accuracy)):
        models.append({
            "name": "teacher" if len(teachers) == 1 else f"teacher_{index}",
            "role": "teacher",
            "strategy": None,
            "model": job.teacher_names[index],
            "accuracy": summarize([evaluation.metrics.get("accuracy", evaluation.value)] * len(seeds)),
            "score": summarize([evaluation.value] * len(seeds)),
            "metrics": {key: summarize([value] * len(seeds)) for key, value in evaluation.metrics.items()},
            **measured[f"teacher_{index}"],
            "checksum": checksum,
            "source": source["source"],
        })
    for role in ("scratch", "distilled"):
        runs = phases[role]
        models.append({
            "name": f"student_{role}",
            "role": role,
            "strategy": runs[0]["strategy"],
            "model": job.student_name,
            "accuracy": summarize([r["test_accuracy"] for r in runs]),
            "score": summarize([r.get("test_score", r["test_accuracy"]) for r in runs]),
            "metrics": {key: summarize([r["test_metrics"][key] for r in runs]) for key in runs[0]["test_metrics"]},
            **facts[role],
            "val_accuracy": summarize([r["val_accuracy"] for r in runs]),
            "seconds_per_epoch": float(np.mean([r["seconds_per_epoch"] for r in runs])),
            "extra_training_params": runs[0]["extra_training_params"],
            "curves": {str(r["seed"]): [h[f"val_{task.metric}"] for h in r["history"]] for r in runs},
            **({"stages": _stage_summary(runs)} if "stages" in runs[0] else {}),
            "train_loss_curves": {str(r["seed"]): [h["train_loss"] for h in r["history"]] for r in runs},
        })
    distilled = [r.get("test_score", r["test_accuracy"]) for r in phases["distilled"]]
    scratch = [r.get("test_score", r["test_accuracy"]) for r in phases["scratch"]]
    comparisons = [paired_comparison("student_distilled", distilled, "student_scratch", scratch,
                                     metric=task.metric, higher_is_better=task.higher_is_better)]
    teacher_mean = models[0]["accuracy"]["mean"]
    distilled_mean = float(np.mean([r["test_accuracy"] for r in phases["distilled"]]))
    constraints = []
    if spec.constraints.min_accuracy is not None:
        constraints.append({"name": "min_accuracy", "limit": spec.constraints.min_accuracy,
                            "value": distilled_mean, "met": distilled_mean >= spec.constraints.min_accuracy})
    if spec.constraints.max_accuracy_drop is not None:
        drop = teacher_mean - distilled_mean
        constraints.append({"name": "max_accuracy_drop", "limit": spec.constraints.max_accuracy_drop,
                            "value": drop, "met": drop <= spec.constraints.max_accuracy_drop})
    return {
        "name": spec.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "task": {"name": job.task.name, "metric": job.task.metric, "higher_is_better": job.task.higher_is_better},
        "dataset": bundle.describe() if hasattr(bundle, "describe") else _dataset_facts(bundle, teachers),
        "seeds": seeds,
        "strategy": {"name": job.strategy_name, "params": job.params.model_dump(mode="json")},
        "augmentation": _augmentation(job, bundle),
        "models": models,
        "comparisons": comparisons,
        "constraints": constraints,
        "verdict": verdict(comparisons[0], job.strategy_name),
        "precision": precision_record(spec.training, resolve_device(spec.training.device)),
        "environment": environment(),
        "spec": job.record,
    }


def _dataset_facts(bundle, teachers) -> dict:
    """Sizes and shapes of the splits (None where a user's DataLoader has no length)."""
    if bundle.cacheable:
        sizes = {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test)}
        num_classes = bundle.num_classes
    else:
        sizes = {split: bundle.size(split) for split in ("train", "val", "test")}
        with torch.no_grad():
            model = teachers[0][0]
            device = next(model.parameters(), torch.empty(0)).device
            num_classes = int(model(bundle.example_inputs(2).to(device)).shape[-1])
    normalize = bundle.normalize
    return {"name": bundle.name, **sizes, "num_classes": num_classes, "in_shape": list(bundle.in_shape),
            "normalize": {"mean": list(normalize.mean), "std": list(normalize.std), "scale": normalize.scale}}


def _augmentation(job: Job, bundle) -> dict:
    """The augmentation policy both students train under, and how each one draws it."""
    spec = job.settings
    augment = bundle.augment
    strategy_cls = job.strategy_cls
    cached = strategy_cls.uses_teacher and strategy_cls.logits_only and spec.cache.enabled and bundle.cacheable
    if not bundle.cacheable:
        return {"policy": "the user's data as given", "scratch": "the batches of the user's data",
                "distilled": "the same batches, the teacher run online on each"}
    if not augment.enabled:
        return {"policy": "none", "scratch": "no augmentation", "distilled": "no augmentation"}
    views = resolve_views(augment, spec.cache.views)
    kind = "every distinct crop and flip" if spec.cache.views == "all" else "seeded draws"
    return {
        "policy": augment.describe(),
        "scratch": "a fresh random draw of the policy at every step",
        "distilled": (f"one of {views} cached views per sample and step ({kind}), the teacher's outputs stored "
                      "per view" if cached else "a fresh random draw at every step, the teacher run online on it"),
    }


def _same_network(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Same class and the same tensor names and shapes: one network, one latency."""
    if type(a) is not type(b):
        return False
    shapes_a = {k: tuple(v.shape) for k, v in a.state_dict().items()}
    return shapes_a == {k: tuple(v.shape) for k, v in b.state_dict().items()}


def _deployed_model(job: Job, bundle, teachers):
    """An untrained instance of what the distilled run serves (the student, or for
    ``adaptive`` the generator plus student), for size, MACs and latency."""
    student = job.student_for(job.settings.training.seeds[0], bundle)
    if job.strategy_cls.stages(job.params):
        return student
    teacher_models = [t for t, _, _ in teachers] if job.strategy_cls.uses_teacher else []
    return job.make_strategy(teacher_models, student, bundle).deployed_model()


def _stage_summary(runs: list[dict]) -> list[dict]:
    """Per stage (assistant, each born-again generation): model, params, accuracy over seeds."""
    out = []
    for index, stage in enumerate(runs[0]["stages"]):
        out.append({
            "stage": stage["stage"], "model": stage["model"], "params": stage["params"],
            "accuracy": summarize([r["stages"][index]["test_accuracy"] for r in runs]),
        })
    return out
