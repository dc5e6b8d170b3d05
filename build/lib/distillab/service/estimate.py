"""Duration and cost estimates for a job, from measured throughput and the configured price.

No submitted model is ever run to estimate it: a user's model may be huge or slow, and the
estimate runs in the request path. The throughput comes from, in order of preference:

1. *history*: the device time of completed jobs on this service with the same student,
   strategy, data set and batch size, per sample processed;
2. *MACs x a measured cost table*: every model's multiply-accumulates per sample are counted
   on the meta device (nothing is allocated or computed), and this server's cost per
   sample is measured once per process on two reference models of our own (a tiny MLP and
   ``cnn_small``): seconds per sample = overhead + MACs x seconds per MAC, for training
   steps (forward, backward, AdamW) and for inference.

The estimate sums, per seed, the scratch and distilled epochs (training + validation
passes), the teacher-output cache pass, and teacher training when the teacher must be
trained. Cost = estimated device-hours x ``price_per_device_hour``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

import torch

from distillab.models.facts import macs_per_sample
from distillab.models.zoo import build_model, meta_model
from distillab.strategies import STRATEGIES
from distillab.tasks.language_modeling import LM_STUDENTS

_LOCK = threading.Lock()
_TABLE: dict[str, tuple[float, float]] = {}  # "train" / "infer" -> (seconds per sample, seconds per MAC)


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


def _timed(fn, budget_s: float = 0.2, max_reps: int = 20) -> float:
    fn()  # warm-up
    reps, started = 0, time.perf_counter()
    while reps < max_reps and (reps < 2 or time.perf_counter() - started < budget_s):
        fn()
        reps += 1
    return (time.perf_counter() - started) / reps


def _measure_reference(batch: int = 128) -> dict[str, tuple[float, float]]:
    """Seconds per sample of a training step and of inference for two reference models,
    fitted as overhead + seconds per MAC (two points, one line)."""
    points = {"train": [], "infer": []}
    torch.manual_seed(0)
    for name, in_shape, args in (("mlp", (1, 8, 8), {"hidden": [16]}), ("cnn_small", (1, 28, 28), {})):
        model = build_model(name, in_shape, 10, args)
        macs = macs_per_sample(model, in_shape)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        inputs, targets = torch.randn(batch, *in_shape), torch.randint(0, 10, (batch,))

        def step():
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(inputs), targets).backward()
            optimizer.step()

        model.train()
        points["train"].append((macs, _timed(step) / batch))
        model.eval()
        with torch.inference_mode():
            points["infer"].append((macs, _timed(lambda: model(inputs)) / batch))
    table = {}
    for kind, ((macs_a, s_a), (macs_b, s_b)) in points.items():
        per_mac = max((s_b - s_a) / max(macs_b - macs_a, 1), 1e-15)
        table[kind] = (max(s_a - per_mac * macs_a, 0.0), per_mac)
    return table


def cost_table() -> dict[str, tuple[float, float]]:
    """This server's (overhead s/sample, s/MAC) for "train" and "infer", measured once."""
    with _LOCK:
        if not _TABLE:
            _TABLE.update(_measure_reference())
        return dict(_TABLE)


def lm_teacher_macs(teacher_spec, context: int) -> int | None:
    """MACs of a language-model teacher on one block of ``context`` tokens, about one per
    weight per token: from the registered parameter count, or a Hugging Face folder's
    config built on the meta device; None (not counted) for a GGUF file or a hub id."""
    from distillab.models.hf import PRETRAINED

    if teacher_spec.pretrained:
        return PRETRAINED[teacher_spec.pretrained].parameters * context
    if teacher_spec.resolved_format != "hf":
        return None
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(teacher_spec.checkpoint, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as problem:
        from distillab.errors import CheckpointError

        raise CheckpointError(f"teacher.checkpoint: {teacher_spec.checkpoint} is not a causal LM folder "
                              f"({str(problem)[:200]})") from None
    return sum(p.numel() for p in model.parameters()) * context


def model_macs(name: str, model_args: dict, in_shape, num_classes: int) -> int:
    """MACs per sample of a zoo model, counted on the meta device (a language model's sample
    is a block of token ids); counted once per process for the same arguments."""
    if name in LM_STUDENTS:  # built from the teacher: not counted before it is loaded
        return 0
    try:
        args = json.dumps(model_args or {}, sort_keys=True)
    except (TypeError, ValueError):
        return macs_per_sample(meta_model(name, tuple(in_shape), num_classes, model_args), in_shape)
    return _macs(name, args, tuple(in_shape), num_classes)


@lru_cache(maxsize=64)
def _macs(name: str, args: str, in_shape: tuple, num_classes: int) -> int:
    return macs_per_sample(meta_model(name, in_shape, num_classes, json.loads(args)), in_shape)


def seconds_per_sample(kind: str, macs: int) -> float:
    overhead, per_mac = cost_table()[kind]
    return overhead + per_mac * macs


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


def estimate(spec, n_train: int, n_val: int, in_shape, classes: int, teacher_macs: list[int | None],
             untrained_teachers: list[int], price_per_device_hour: float, history=()) -> Estimate:
    """``teacher_macs``: MACs per sample of every teacher (None when unknown: not counted);
    ``untrained_teachers``: indices of teachers the job must train first; ``history``:
    (spec, device seconds, training samples) of completed jobs."""
    rate = _history_rate(spec, n_train, list(history))
    if rate is not None:
        seconds = rate[0] * work_units(spec.model_dump(mode="json"), n_train)
        return Estimate(seconds=seconds, cost_usd=seconds / 3600 * price_per_device_hour,
                        basis=f"history: device time of {rate[1]} completed job(s) with this student, strategy, "
                              "data set and batch size, scaled by seeds x epochs x samples",
                        samples_per_s={"all_phases": round(1 / rate[0], 1)})
    training = spec.training
    strategy_cls = STRATEGIES[spec.strategy.name]
    stages = len(strategy_cls.stages(strategy_cls.Params.model_validate(spec.strategy.params)) or ()) or 1
    student_macs = model_macs(spec.student.model, spec.student.model_args, in_shape, classes)
    student_train = seconds_per_sample("train", student_macs)
    student_eval = seconds_per_sample("infer", student_macs)
    teacher_forward = sum(seconds_per_sample("infer", macs) for macs in teacher_macs if macs is not None)
    online = strategy_cls.uses_teacher and not (strategy_cls.logits_only and spec.cache.enabled)
    distilled_train = student_train + (teacher_forward if online else 0.0)
    teacher_seconds = 0.0
    if strategy_cls.uses_teacher and not online:  # one cache pass of every view, shared by the seeds
        teacher_seconds += spec.cache.views * n_train * teacher_forward
    for index in untrained_teachers:
        teacher_spec = spec.teachers[index]
        teacher_training = teacher_spec.training or training
        macs = model_macs(teacher_spec.model, teacher_spec.model_args, in_shape, classes)
        teacher_seconds += teacher_training.epochs * (n_train * seconds_per_sample("train", macs)
                                                      + n_val * seconds_per_sample("infer", macs))
    per_seed = training.epochs * (n_train * student_train + n_val * student_eval) + stages * training.epochs * (
        n_train * distilled_train + n_val * student_eval)
    seconds = teacher_seconds + len(training.seeds) * per_seed
    unknown = sum(macs is None for macs in teacher_macs)
    basis = ("MACs per sample (counted on the meta device) x this server's measured cost per MAC; "
             "no submitted model is run" + (f"; {unknown} teacher(s) of unknown MACs not counted" if unknown else ""))
    return Estimate(seconds=seconds, cost_usd=seconds / 3600 * price_per_device_hour, basis=basis,
                    samples_per_s={"scratch": round(1 / student_train, 1), "distilled": round(1 / distilled_train, 1)})
