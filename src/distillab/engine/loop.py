"""The one training loop. Every strategy, the teacher's own training, the CLI, the API
and the service go through ``fit``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from distillab.engine.callbacks import Callback, JsonlLogger, TensorBoardLogger
from distillab.engine import distributed
from distillab.files import atomic_torch_save, atomic_write_bytes
from distillab.engine.checkpoint import load_training_checkpoint
from distillab.runtime import channels_last_fault, resolve_device
from distillab.engine.optim import build_optimizer, build_scheduler
from distillab.runtime import autocast, requested_precision, resolve_precision
from distillab.errors import DistillabError, TrainingDiverged

log = logging.getLogger("distillab")

CHECKPOINT = "checkpoint.pt"


class TimeBudgetExceeded(DistillabError):
    """constraints.max_duration_s ran out."""


class Stop(Exception):
    """Raised by a callback to end training early (a cancelled job, a spent budget); not an
    error. ``fit`` keeps its epoch checkpoint and saves the best student so far; ``run``
    then writes ``partial.json`` and re-raises."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class FitResult:
    best_epoch: int
    best_val_score: float  # the task's primary validation metric (accuracy; bits per character; Spearman)
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0


def _to_device(batch: dict, device: torch.device, layout: torch.memory_format | None) -> dict:
    """``batch`` on ``device``, its image inputs in ``layout`` (None: as they come). A clone, not
    ``contiguous()``, for the contiguous layout: a one-channel batch in channels-last strides counts
    as contiguous, yet convolutions follow its strides into channels-last kernels."""
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if layout is not None and out["inputs"].dim() == 4:
        inputs = out["inputs"]
        if layout == torch.channels_last:
            out["inputs"] = inputs.contiguous(memory_format=layout)
        elif inputs.stride() != torch.empty(inputs.shape, device="meta").stride():
            out["inputs"] = inputs.clone(memory_format=torch.contiguous_format)
    return out


def fit(
    strategy,
    bundle,
    training,
    seed: int,
    run_dir: Path,
    *,
    task,
    caches: Sequence = (),
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    deadline: float | None = None,
    tensorboard: bool = True,
    description: str = "train",
) -> FitResult:
    """Train ``strategy``'s trainable parameters on ``bundle`` (any data object of the task:
    ``train_batches``, ``eval_batches``, ``steps_per_epoch``); keep the student with the best
    validation score on the task's primary metric (never test). Writes ``checkpoint.pt`` every
    epoch, ``metrics.jsonl``, a TensorBoard log, and ``student.safetensors`` (the selected
    weights) to ``run_dir``. ``task`` (a ``tasks.Task``) says what a batch is and how a model is
    measured; the engine names no task itself."""
    device = resolve_device(training.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    strategy.prepare(bundle)
    strategy.to(device)
    layout = torch.channels_last if training.channels_last else None
    fault = channels_last_fault(strategy, device) if training.channels_last else None
    if fault:  # a layout, not a result: the weights differ by rounding only
        log.warning("%s: training in contiguous layout, not channels-last: this CPU's oneDNN kernels corrupt memory "
                    "computing the weight gradient of %s in channels-last", description, fault)
        layout = torch.contiguous_format
    if layout is not None:
        strategy.to(memory_format=layout)
    optimizer = build_optimizer(strategy.trainable_parameters(), training)
    steps_per_epoch = bundle.steps_per_epoch(training.batch_size)
    scheduler = build_scheduler(optimizer, training, steps_per_epoch)
    precision = resolve_precision(requested_precision(training), device)

    start_epoch, history = 0, []
    best = {"epoch": -1, "val_accuracy": None, "state": None}
    checkpoint_path = run_dir / CHECKPOINT
    if resume and checkpoint_path.exists():
        state = load_training_checkpoint(checkpoint_path)
        strategy.load_trainable_state_dict(state["strategy"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, history = state["epoch"], state["history"]
        best = {"epoch": state["best_epoch"], "val_accuracy": state["best_val_accuracy"], "state": state["best_state"]}
        log.info("%s: resumed after epoch %d from %s", description, start_epoch, checkpoint_path)
    (run_dir / "metrics.jsonl").write_text("".join(_json_line(h) for h in history))

    callbacks = list(callbacks) + [JsonlLogger(run_dir / "metrics.jsonl")]
    if tensorboard:
        callbacks.append(TensorBoardLogger(run_dir / "tensorboard"))
    try:
        for epoch in range(start_epoch, training.epochs):
            metrics = _train_epoch(
                strategy, bundle, training, seed, epoch, optimizer, scheduler, caches, device, precision,
                callbacks, steps_per_epoch, deadline, description, task, layout,
            )
            val = task.evaluate(strategy.student, bundle, "val", training.eval_batch_size, device)
            metrics = {"epoch": epoch + 1, **metrics, **{f"val_{k}": v for k, v in val.metrics.items()},
                       "primary": task.metric, "lr": scheduler.get_last_lr()[0]}
            history.append(metrics)
            if strategy.selectable(epoch, training.epochs) and task.better(val.value, best["val_accuracy"]):
                best = {"epoch": epoch, "val_accuracy": val.value, "state": _cpu_state(strategy.student)}
            atomic_torch_save(
                {
                    "epoch": epoch + 1,
                    "strategy": strategy.trainable_state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": history,
                    "best_epoch": best["epoch"],
                    "best_val_accuracy": best["val_accuracy"],
                    "best_state": best["state"],
                },
                checkpoint_path,
            )
            for callback in callbacks:
                callback.on_epoch_end(epoch, metrics)
    except Stop:
        if best["state"] is not None:  # the best student of the finished epochs stays readable
            atomic_write_bytes(run_dir / "student.safetensors", safetensors_bytes(best["state"]))
        raise
    finally:
        for callback in callbacks:
            callback.close()

    strategy.student.load_state_dict(best["state"])
    strategy.student.to(memory_format=torch.contiguous_format)
    atomic_write_bytes(run_dir / "student.safetensors", safetensors_bytes(_cpu_state(strategy.student)))
    seconds = sum(h["epoch_seconds"] for h in history)
    return FitResult(best["epoch"] + 1, best["val_accuracy"], history, seconds, seconds / max(1, len(history)))


def _json_line(metrics: dict) -> str:
    return json.dumps(metrics) + "\n"


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def _train_epoch(
    strategy, bundle, training, seed, epoch, optimizer, scheduler, caches, device, precision,
    callbacks, steps_per_epoch, deadline, description, task, layout,
) -> dict:
    strategy.train()
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # resume replays the same epoch
    for callback in callbacks:
        callback.on_epoch_start(epoch, steps_per_epoch)
    total_loss = total_correct = counted_total = seen = 0
    extra: dict[str, float] = {}
    started = time.perf_counter()
    order = strategy.sample_order(epoch, training.epochs, generator)
    rank, processes = distributed.world()
    for step, batch in enumerate(bundle.train_batches(training.batch_size, generator, caches, order)):
        global_count = len(batch["targets"])
        if processes > 1:  # every process drew the same global batch; each trains on its share
            batch = distributed.shard(batch, rank, processes)
        batch = _to_device(batch, device, layout)
        batch["epoch"], batch["epochs"] = epoch, training.epochs  # for warm-ups and schedules inside losses
        with autocast(device, precision):
            out = strategy.loss(batch)
        if not torch.isfinite(out.loss):
            raise TrainingDiverged(
                f"{description}: the loss became {out.loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                "lower training.lr or set training.grad_clip"
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if processes > 1:
            distributed.sync_gradients(strategy.trainable_parameters(), len(batch["targets"]), global_count)
        if training.grad_clip:
            torch.nn.utils.clip_grad_norm_(strategy.trainable_parameters(), training.grad_clip)
        optimizer.step()
        scheduler.step()
        if processes > 1:
            distributed.broadcast_buffers(strategy.student)
        b = len(batch["targets"])
        seen += b
        total_loss += out.loss.item() * b
        if out.scored:  # an on-policy step's logits are of the student's own samples, not the batch
            right, counted = task.correct(out.student_logits, batch)
            total_correct += right
            counted_total += counted
        for key, value in out.logs.items():
            extra[key] = extra.get(key, 0.0) + value * b
        elapsed = time.perf_counter() - started
        running = {"loss": total_loss / seen, "accuracy": total_correct / max(1, counted_total),
                   "samples_per_s": seen / elapsed}
        for callback in callbacks:
            callback.on_step(epoch, step, running)
        if deadline is not None and time.time() > deadline:
            raise TimeBudgetExceeded(f"{description}: constraints.max_duration_s ran out during epoch {epoch + 1}")
    elapsed = time.perf_counter() - started
    if processes > 1:  # the epoch's figures over the whole batches, as one process would log them
        keys = sorted(extra)
        summed = distributed.all_sum([total_loss, total_correct, counted_total, seen, *(extra[k] for k in keys)])
        total_loss, total_correct, counted_total, seen = summed[:4]
        extra = dict(zip(keys, summed[4:]))
    return {
        "train_loss": total_loss / max(1, seen),
        "train_accuracy": total_correct / max(1, counted_total),  # of the counted positions
        "samples_per_s": seen / elapsed,
        "epoch_seconds": elapsed,
        **{key: value / max(1, seen) for key, value in extra.items()},
    }

