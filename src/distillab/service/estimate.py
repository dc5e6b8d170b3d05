"""Duration and cost estimates for a job, from measured throughput and the configured price.

The throughput comes from, in order of preference:

1. *history*: the device time of completed jobs on this service with the same student,
   strategy, data set and batch size, per sample processed;
2. *micro-benchmark*: a few timed training steps of the student (forward, backward, AdamW)
   and timed teacher forward passes, on random inputs of the data set's shape, on this
   server (cached per model and shape for the life of the process).

The estimate sums, per seed, the scratch and distilled epochs (training + validation
passes), the teacher-output cache pass, and teacher training when the teacher must be
trained. Cost = estimated device-hours x ``price_per_device_hour``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import torch

from distillab.models.zoo import build_model
from distillab.strategies import STRATEGIES

_CACHE: dict[tuple, float] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class Estimate:
    seconds: float
    cost_usd: float
    basis: str
    samples_per_s: dict

    @property
    def human(self) -> str:
        s = self.seconds
        if s < 90:
            return f"about {max(1, round(s))} s"
        if s < 5400:
            return f"about {round(s / 60)} min"
        return f"about {s / 3600:.1f} h"


def _timed(fn, budget_s: float = 0.25, max_reps: int = 20) -> float:
    fn()  # warm-up
    reps, started = 0, time.perf_counter()
    while reps < max_reps and (reps < 2 or time.perf_counter() - started < budget_s):
        fn()
        reps += 1
    return (time.perf_counter() - started) / reps


def train_rate(model_name: str, model_args: dict, in_shape: tuple, num_classes: int, batch: int) -> float:
    """Measured training samples/s of a fresh model (forward, backward, AdamW step)."""
    key = ("train", model_name, json.dumps(model_args, sort_keys=True), tuple(in_shape), num_classes, batch)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        torch.manual_seed(0)
        model = build_model(model_name, tuple(in_shape), num_classes, model_args).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        inputs, targets = torch.randn(batch, *in_shape), torch.randint(0, num_classes, (batch,))

        def step():
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()

        _CACHE[key] = batch / _timed(step)
        return _CACHE[key]


def forward_rate(model: torch.nn.Module, key: tuple, in_shape: tuple, batch: int) -> float:
    """Measured inference samples/s of ``model`` at ``batch``."""
    key = ("forward", *key, tuple(in_shape), batch)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        inputs = torch.randn(batch, *in_shape)
        with torch.inference_mode():
            _CACHE[key] = batch / _timed(lambda: model(inputs))
        return _CACHE[key]


def work_units(spec: dict, n_train: int) -> float:
    """Training samples a job processes: seeds x epochs x (scratch + distilled stages) x train."""
    strategy_cls = STRATEGIES[spec["strategy"]["name"]]
    stages = len(strategy_cls.stages(strategy_cls.Params.model_validate(spec["strategy"]["params"])) or ()) or 1
    return len(spec["training"]["seeds"]) * spec["training"]["epochs"] * (1 + stages) * n_train


def _history_rate(spec, n_train: int, history: list[tuple[dict, float, int]]) -> tuple[float, int] | None:
    """Device seconds per work unit of finished jobs with this student, strategy, data set
    and batch size (their device time includes teacher passes, evaluation and reporting)."""
    mine = spec.model_dump(mode="json")
    rates = []
    for old, device_seconds, old_train in history:
        if (old["student"] == mine["student"] and old["strategy"]["name"] == mine["strategy"]["name"]
                and old["data"]["dataset"] == mine["data"]["dataset"]
                and old["training"]["batch_size"] == mine["training"]["batch_size"] and device_seconds > 0):
            rates.append(device_seconds / work_units(old, old_train))
    return (sum(rates) / len(rates), len(rates)) if rates else None


def estimate(spec, bundle, teachers: list[tuple[torch.nn.Module, str]], untrained_teachers: list[int],
             price_per_device_hour: float, history=()) -> Estimate:
    """``teachers``: (loaded model, identity) of every teacher with a checkpoint;
    ``untrained_teachers``: indices of teachers the job must train first; ``history``:
    (spec, device seconds, training samples) of completed jobs."""
    in_shape, classes = tuple(bundle.in_shape), bundle.num_classes
    n_train, n_val = len(bundle.train), len(bundle.val)
    training = spec.training
    strategy_cls = STRATEGIES[spec.strategy.name]
    stages = len(strategy_cls.stages(strategy_cls.Params.model_validate(spec.strategy.params)) or ()) or 1
    eval_batch = min(training.eval_batch_size, 512)
    student = build_model(spec.student.model, in_shape, classes, spec.student.model_args).eval()
    student_key = (spec.student.model, json.dumps(spec.student.model_args, sort_keys=True), classes)
    student_eval = forward_rate(student, student_key, in_shape, eval_batch)

    rate = _history_rate(spec, n_train, list(history))
    if rate is not None:
        seconds = rate[0] * work_units(spec.model_dump(mode="json"), n_train)
        return Estimate(seconds=seconds, cost_usd=seconds / 3600 * price_per_device_hour,
                        basis=f"history: device time of {rate[1]} completed job(s) with this student, strategy, "
                              "data set and batch size, scaled by seeds x epochs x samples",
                        samples_per_s={"all_phases": round(1 / rate[0], 1)})
    teacher_seconds = 0.0
    scratch_rate = train_rate(spec.student.model, spec.student.model_args, in_shape, classes,
                              training.batch_size)
    teacher_rates = [forward_rate(model, (identity,), in_shape, eval_batch) for model, identity in teachers]
    per_sample_teacher = sum(1 / rate for rate in teacher_rates)
    online = strategy_cls.uses_teacher and not (strategy_cls.logits_only and spec.cache.enabled)
    distilled_rate = 1 / (1 / scratch_rate + (per_sample_teacher if online else 0.0))
    if strategy_cls.uses_teacher and not online:  # one cache pass of every view, shared by the seeds
        teacher_seconds += spec.cache.views * n_train * per_sample_teacher
    basis = "micro-benchmark on the API server: timed training steps and teacher forward passes"
    for index in untrained_teachers:
        teacher_spec = spec.teachers[index]
        teacher_training = teacher_spec.training or training
        rate = train_rate(teacher_spec.model, teacher_spec.model_args, in_shape, classes, teacher_training.batch_size)
        teacher_seconds += teacher_training.epochs * (n_train / rate + n_val / student_eval)
    per_seed = training.epochs * (n_train / scratch_rate + n_val / student_eval) + stages * training.epochs * (
        n_train / distilled_rate + n_val / student_eval)
    seconds = teacher_seconds + len(training.seeds) * per_seed
    return Estimate(seconds=seconds, cost_usd=seconds / 3600 * price_per_device_hour, basis=basis,
                    samples_per_s={"scratch": round(scratch_rate, 1), "distilled": round(distilled_rate, 1)})
