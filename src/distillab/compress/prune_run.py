"""``distillab prune RUN_DIR --out DIR``: prune a run's distilled student on a gradual schedule,
fine-tuning between steps with the training loop, with the teacher's KD loss (Hinton, the run's
temperature and alpha, from the run's teacher cache) or with labels only (``--no-kd``).

Each step removes more of the original channels (channels: the cubic schedule of Zhu & Gupta
2017, physically rebuilding the model) or weights (magnitude), then trains ``epochs_per_step``
epochs and keeps the best epoch on validation. The output is a run folder (``report.json``,
``seed_N/distilled/student.safetensors``) whose spec names the pruned architecture, so
``distillab export`` and ``distillab package`` take it as they take any run; ``prune.json``
holds the history: params, MACs, latency and accuracy after every step.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from distillab.compress.prune import (PRUNABLE_MODELS, PruneError, channel_targets, channels_to_keep,
                                      conv_blocks, cubic_schedule, magnitude_prune, make_permanent, rebuild,
                                      sparsity)
from distillab.compress.runs import run_student
from distillab.engine.checkpoint import atomic_write_json, refuse_used_folder, staged_folder

log = logging.getLogger("distillab")
METHODS = ("channels", "magnitude")


def _measure(model, data, task, training, device) -> dict:
    from distillab.models.facts import macs_per_sample, model_facts

    val = task.evaluate(model, data, "val", training.eval_batch_size, device)
    test = task.evaluate(model, data, "test", training.eval_batch_size, device)
    facts = model_facts(model.cpu(), data.in_shape, repeats=20)
    return {"val_accuracy": val.value, "test_accuracy": test.value, "params": facts["params"],
            "macs": macs_per_sample(model, data.in_shape), "latency_ms": facts["latency_ms"],
            "latency_ms_batch256": facts["latency_ms_batch256"], "sparsity": sparsity(model)}


def prune_run(run_dir: Path | str, out: Path | str, *, method: str = "channels", ratio: float = 0.5, steps: int = 4,
              epochs_per_step: int = 2, kd: bool = True, importance: str = "l1", stages: list[int] | None = None,
              seed: int | None = None, lr: float | None = None, round_to: int = 1, overwrite: bool = False) -> dict:
    """Prune the run's student; returns the history written to ``prune.json``."""

    from distillab.engine.loop import fit
    from distillab.engine.evaluate import resolve_device
    from distillab.experiment.job import Job
    from distillab.spec import parse_spec
    from distillab.strategies import STRATEGIES

    if method not in METHODS:
        raise PruneError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    if steps < 1 or epochs_per_step < 0:
        raise PruneError("--steps must be >= 1 and --epochs-per-step >= 0")
    if not 0.0 < ratio < 1.0:
        raise PruneError(f"--ratio {ratio}: the share to remove must be in (0, 1)")
    out = Path(out)
    refuse_used_folder(out, overwrite, PruneError)
    student = run_student(run_dir, seed)
    spec = parse_spec(student.report["spec"])
    if method == "channels" and spec.student.model not in PRUNABLE_MODELS:
        raise PruneError(f"{run_dir}: channel pruning rebuilds {', '.join(PRUNABLE_MODELS)}; the student is "
                         f"{spec.student.model!r} (use --method magnitude)")
    model, data, seed = student.model, student.data, student.seed
    blocks = conv_blocks(model) if method == "channels" else []
    if stages is not None:
        known = sorted({stage for stage, _, _ in blocks})
        if method != "channels" or not set(stages) <= set(known):
            raise PruneError(f"--stage {stages}: the student's stages are {known} (channel pruning only)")
    job = Job.from_spec(spec)
    task = job.task
    training = spec.training.model_copy(update={"epochs": max(1, epochs_per_step), "warmup_epochs": 0.0,
                                                "lr": lr if lr is not None else spec.training.lr / 4})
    device = resolve_device(training.device)
    teachers, caches, response = [], (), STRATEGIES["response"]
    if kd:
        teachers = job.load_teachers(data)
        caches = task.teacher_caches(spec, data, teachers, response.Params()) if spec.cache.enabled else ()
    params = response.Params.model_validate(
        {k: v for k, v in spec.strategy.params.items() if k in ("temperature", "alpha")}
        if spec.strategy.name == "response" else {})
    original = [conv.out_channels for _, conv, _ in blocks]
    history = [{"step": 0, "removed": 0.0, "channels": original or None,
                **_measure(model, data, task, training, device)}]
    log.info("before pruning: val %.4f test %.4f, %s MACs", history[0]["val_accuracy"], history[0]["test_accuracy"],
             history[0]["macs"])
    model_args = dict(spec.student.model_args)
    with tempfile.TemporaryDirectory(prefix="distillab-prune-") as scratch:
        for step in range(1, steps + 1):
            fraction = cubic_schedule(step, steps, ratio)
            if method == "channels":
                targets = channel_targets(original, [stage for stage, _, _ in blocks], fraction, stages, round_to)
                model, model_args = rebuild(model.cpu(), channels_to_keep(model.cpu(), targets, importance))
            else:
                magnitude_prune(model.cpu(), fraction)
            if epochs_per_step:
                strategy = (response([t for t, _, _ in teachers], model, params, in_shape=data.in_shape) if kd
                            else STRATEGIES["none"]([], model, STRATEGIES["none"].Params(), in_shape=data.in_shape))
                fit(strategy, data, training, seed * 1000 + step, Path(scratch) / f"step_{step}",
                    caches=caches if kd else (), tensorboard=False, description=f"prune step {step}/{steps}", task=task)
                model = strategy.student
            measured = _measure(model, data, task, training, device)
            history.append({"step": step, "removed": fraction,
                            "channels": [c.out_channels for _, c, _ in conv_blocks(model)] if blocks else None,
                            **measured})
            log.info("prune step %d/%d: removed %.0f %%, val %.4f test %.4f, %s MACs", step, steps, 100 * fraction,
                     measured["val_accuracy"], measured["test_accuracy"], measured["macs"])
    if method == "magnitude":
        make_permanent(model)
    record = {"method": method, "ratio": ratio, "round_to": round_to, "steps": steps,
              "epochs_per_step": epochs_per_step, "kd": kd,
              "importance": importance if method == "channels" else "magnitude", "stages": stages, "seed": seed,
              "lr": training.lr, "source": str(Path(run_dir).resolve()), "history": history}
    _write_run(out, student, spec, model, model_args, record, kd, params)
    return record


def _write_run(out: Path, student, spec, model, model_args: dict, record: dict, kd: bool, params) -> None:
    """The pruned student as a one-seed run folder that export and package read like any run."""
    from safetensors.torch import save_file

    seed, last = record["seed"], record["history"][-1]
    pruned_spec = spec.model_dump(mode="json")
    pruned_spec["name"] = f"{spec.name}-pruned"
    pruned_spec["student"] = {"model": "cnn" if record["method"] == "channels" else spec.student.model,
                              "model_args": model_args}
    pruned_spec["training"]["seeds"] = [seed]
    report = student.report
    teachers = [entry for entry in report["models"] if entry["role"] == "teacher"]
    summary = lambda value: {"mean": value, "std": 0.0, "per_seed": [value]}  # noqa: E731 - one seed
    pruned = {"name": "student_pruned", "role": "distilled", "strategy": "response" if kd else "none",
              "model": pruned_spec["student"]["model"], "accuracy": summary(last["test_accuracy"]),
              "val_accuracy": summary(last["val_accuracy"]), "params": last["params"], "macs": last["macs"],
              "latency_ms": last["latency_ms"]}
    before = record["history"][0]
    unpruned = {"name": "student_unpruned", "role": "unpruned", "strategy": report["strategy"]["name"],
                "model": spec.student.model, "accuracy": summary(before["test_accuracy"]),
                "val_accuracy": summary(before["val_accuracy"]), "params": before["params"], "macs": before["macs"],
                "latency_ms": before["latency_ms"]}
    verdict = (f"Pruning ({record['method']}, {100 * record['ratio']:.0f} % removed, "
               f"{'with' if kd else 'without'} KD) changed test accuracy by "
               f"{100 * (last['test_accuracy'] - before['test_accuracy']):+.2f} points and MACs "
               f"{before['macs']} -> {last['macs']} (one seed)")
    new_report = {"name": pruned_spec["name"], "created": report.get("created"), "dataset": report["dataset"],
                  "seeds": [seed], "strategy": {"name": "response" if kd else "none",
                                                "params": params.model_dump() if kd else {}},
                  "models": [*teachers, unpruned, pruned], "comparisons": [], "verdict": verdict,
                  "spec": pruned_spec, "pruning": record}
    with staged_folder(out, "prune") as staging:
        phase = staging / f"seed_{seed}" / "distilled"
        phase.mkdir(parents=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(phase / "student.safetensors"))
        atomic_write_json(phase / "result.json", {"val_accuracy": last["val_accuracy"],
                                                  "test_accuracy": last["test_accuracy"], "seed": seed})
        atomic_write_json(staging / "prune.json", record)
        atomic_write_json(staging / "report.json", new_report)
        (staging / "spec.json").write_text(json.dumps(pruned_spec, indent=2))
