"""The report of a run: ``report.json``'s document assembled from its phases, the environment it
ran in, and the summary of an unfinished run."""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from distillab.data.cache import resolve_views
from distillab.runtime import resolve_device
from distillab.runtime import precision_record
from distillab.experiment.job import Job
from distillab.experiment.stats import paired_comparison, summarize, verdict

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


def assemble(job: Job, bundle, teachers, teacher_accuracy, phases, seconds) -> dict:
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
