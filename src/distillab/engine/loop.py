"""The one training loop. Every strategy, the teacher's own training, the CLI, the API
and the service go through ``fit``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes

from distillab.data.transforms import augmented, draw_augment_params, draw_mix_params
from distillab.engine.callbacks import Callback, JsonlLogger, TensorBoardLogger
from distillab.engine.checkpoint import atomic_torch_save, atomic_write_bytes, load_training_checkpoint
from distillab.engine.evaluate import evaluate, resolve_device
from distillab.engine.optim import build_optimizer, build_scheduler
from distillab.engine.precision import autocast, requested_precision, resolve_precision
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
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    seconds_per_epoch: float = 0.0


def train_batches(
    bundle, batch_size: int, generator: torch.Generator, caches: Sequence, order: torch.Tensor | None = None
) -> Iterator[dict]:
    """One epoch of shuffled, augmented, normalised batches, in ``order`` when given
    (rows of bundle.train, e.g. a curriculum), else a random permutation.

    With caches, each sample is shown as one of the cached views (drawn per sample from
    ``generator``) with exactly that view's augmentation, and carries the cached logits.
    When the augmentation mixes, a batch also carries ``mix_targets`` (the partners' labels)
    and ``mix_lam`` (B,) (the share of each image's own label); partners are always
    training rows of this split (cached views whose partner is a validation row are not drawn).
    """
    n = len(bundle.train)
    if order is None:
        order = torch.randperm(n, generator=generator)
    augment = bundle.augment
    in_train = None
    if augment.mixing:
        in_train = torch.zeros(len(bundle.full_train), dtype=torch.bool)
        in_train[bundle.train_index] = True
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2 and n >= 2:
            continue  # a batch of one breaks BatchNorm in training mode
        rows = bundle.train_index[idx]  # rows of the full training file
        images = bundle.train.images[idx]
        batch = {"targets": bundle.train.labels[idx], "index": rows}
        partners = partner_params = mix = None
        if caches:
            views = torch.randint(0, caches[0].views, (len(idx),), generator=generator)
            if augment.mixing:
                views = _views_with_training_partners(caches[0], views, rows, in_train, generator)
                partners, mix = caches[0].partner_rows(views, rows), caches[0].mix_params(views, rows)
                partner_params = caches[0].augment_params(views, partners)
            params = caches[0].augment_params(views, rows)
            batch["teacher_logits"] = torch.stack([cache.lookup(views, rows) for cache in caches])  # (T, B, K)
        elif augment.enabled:
            params = draw_augment_params(augment, len(idx), generator)
            if augment.mixing:  # the scratch twin mixes the same way, with partners from its split
                partners = bundle.train_index[torch.randint(0, n, (len(idx),), generator=generator)]
                partner_params = draw_augment_params(augment, len(idx), generator)
                mix = draw_mix_params(augment, len(idx), images.shape[-2], images.shape[-1], generator)
        else:
            params = None
        if params is not None:
            partner_images = bundle.full_train.images[partners] if partners is not None else None
            images = augmented(augment, images, params, partner_images, partner_params, mix)
        if partners is not None:
            batch["mix_targets"] = bundle.full_train.labels[partners]
            batch["mix_lam"] = mix[:, 0]
        batch["inputs"] = bundle.normalize(images)
        yield batch


def _views_with_training_partners(cache, views: torch.Tensor, rows: torch.Tensor, in_train: torch.Tensor,
                                  generator: torch.Generator, rounds: int = 16) -> torch.Tensor:
    """Redraw the views whose cached partner is not a training row of this split (a cache is
    shared by seeds, whose validation rows differ), so no validation image is trained on."""
    for _ in range(rounds):
        bad = ~in_train[cache.partner_rows(views, rows)]
        if not bad.any():
            break
        views = views.clone()
        views[bad] = torch.randint(0, cache.views, (int(bad.sum()),), generator=generator)
    return views


def _to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if channels_last and out["inputs"].dim() == 4:
        out["inputs"] = out["inputs"].contiguous(memory_format=torch.channels_last)
    return out


def fit(
    strategy,
    bundle,
    training,
    seed: int,
    run_dir: Path,
    *,
    caches: Sequence = (),
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    deadline: float | None = None,
    tensorboard: bool = True,
    description: str = "train",
) -> FitResult:
    """Train ``strategy``'s trainable parameters; keep the student with the best validation
    accuracy (never test). Writes ``checkpoint.pt`` every epoch, ``metrics.jsonl``, a
    TensorBoard log, and ``student.safetensors`` (the selected weights) to ``run_dir``."""
    device = resolve_device(training.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    strategy.prepare(bundle)
    strategy.to(device)
    if training.channels_last:
        strategy.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(strategy.trainable_parameters(), training)
    steps_per_epoch = max(1, sum(1 for _ in range(0, len(bundle.train), training.batch_size)))
    scheduler = build_scheduler(optimizer, training, steps_per_epoch)
    precision = resolve_precision(requested_precision(training), device)

    start_epoch, history = 0, []
    best = {"epoch": -1, "val_accuracy": -1.0, "state": None}
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
                callbacks, steps_per_epoch, deadline, description,
            )
            val = evaluate(strategy.student, bundle.val, bundle.normalize, training.eval_batch_size, device)
            metrics = {"epoch": epoch + 1, **metrics, "val_accuracy": val.accuracy, "val_loss": val.loss,
                       "lr": scheduler.get_last_lr()[0]}
            history.append(metrics)
            if strategy.selectable(epoch, training.epochs) and val.accuracy > best["val_accuracy"]:
                best = {"epoch": epoch, "val_accuracy": val.accuracy, "state": _cpu_state(strategy.student)}
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
    callbacks, steps_per_epoch, deadline, description,
) -> dict:
    strategy.train()
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # resume replays the same epoch
    for callback in callbacks:
        callback.on_epoch_start(epoch, steps_per_epoch)
    total_loss = total_correct = seen = 0
    extra: dict[str, float] = {}
    started = time.perf_counter()
    order = strategy.sample_order(epoch, training.epochs, generator)
    for step, batch in enumerate(train_batches(bundle, training.batch_size, generator, caches, order)):
        batch = _to_device(batch, device, training.channels_last)
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
        if training.grad_clip:
            torch.nn.utils.clip_grad_norm_(strategy.trainable_parameters(), training.grad_clip)
        optimizer.step()
        scheduler.step()
        b = len(batch["targets"])
        seen += b
        total_loss += out.loss.item() * b
        total_correct += (out.student_logits.argmax(-1) == batch["targets"]).sum().item()
        for key, value in out.logs.items():
            extra[key] = extra.get(key, 0.0) + value * b
        elapsed = time.perf_counter() - started
        running = {"loss": total_loss / seen, "accuracy": total_correct / seen, "samples_per_s": seen / elapsed}
        for callback in callbacks:
            callback.on_step(epoch, step, running)
        if deadline is not None and time.time() > deadline:
            raise TimeBudgetExceeded(f"{description}: constraints.max_duration_s ran out during epoch {epoch + 1}")
    elapsed = time.perf_counter() - started
    return {
        "train_loss": total_loss / max(1, seen),
        "train_accuracy": total_correct / max(1, seen),
        "samples_per_s": seen / elapsed,
        "epoch_seconds": elapsed,
        **{key: value / max(1, seen) for key, value in extra.items()},
    }

