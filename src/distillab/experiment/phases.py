"""The phases of a run: one student (scratch, distilled, or a stage of a multi-stage strategy)
trained for one seed, resumable from its folder; their summaries."""

from __future__ import annotations

import json
import logging


from distillab.files import atomic_write_json
from distillab.runtime import precision_record, resolve_device
from distillab.engine.loop import fit
from distillab.experiment.job import Job, as_job
from distillab.models.loading import load_state_into
from distillab.strategies import STRATEGIES

log = logging.getLogger("distillab")


def trained_student(job: Job, bundle, seed, summary, phase_dir):
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
        log.info("%s: validation %s %.4f", label, job.task.metric, result.best_val_score)
        measured = {"test_score": None, "test_accuracy": None, "test_metrics": {}}
    return {
        **measured,
        "val_accuracy": result.best_val_score,
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": result.seconds_per_epoch,
        "extra_training_params": strategy.extra_parameter_count(),
        "history": result.history,
        # where it trained: a run resumed on another machine may hold phases of both
        "precision": precision_record(spec.training, device),
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


def phase(job: Job, bundle, seed, role, teachers, caches, phase_dir, resume, deadline, callbacks, scratch=None,
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
