"""Callbacks around the training loop: progress display, JSONL metrics, TensorBoard."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

log = logging.getLogger("distillab")


class Callback:
    def on_epoch_start(self, epoch: int, steps: int) -> None: ...
    def on_step(self, epoch: int, step: int, metrics: dict) -> None: ...
    def on_epoch_end(self, epoch: int, metrics: dict) -> None: ...
    def close(self) -> None: ...


class ProgressBar(Callback):
    """A live bar with loss, accuracy and samples/s; one log line per epoch."""

    def __init__(self, description: str, epochs: int):
        self.description, self.epochs = description, epochs
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} {task.fields[rate]:.0f} samples/s"),
            TimeRemainingColumn(),
            transient=True,
        )
        self.task = None

    def on_epoch_start(self, epoch, steps):
        if self.task is None:
            self.progress.start()
        else:
            self.progress.remove_task(self.task)
        label = f"{self.description} epoch {epoch + 1}/{self.epochs}"
        self.task = self.progress.add_task(label, total=steps, loss=0.0, acc=0.0, rate=0.0)

    def on_step(self, epoch, step, metrics):
        self.progress.update(
            self.task, completed=step + 1, loss=metrics["loss"], acc=metrics["accuracy"], rate=metrics["samples_per_s"]
        )

    def on_epoch_end(self, epoch, metrics):
        primary = metrics.get("primary", "accuracy")  # the task's metric, selected on validation
        log.info(
            "%s epoch %d/%d  loss %.4f  train acc %.4f  val %s %.4f  %.0f samples/s  %.1f s",
            self.description, epoch + 1, self.epochs, metrics["train_loss"], metrics["train_accuracy"],
            "acc" if primary == "accuracy" else primary.replace("_", " "), metrics[f"val_{primary}"],
            metrics["samples_per_s"], metrics["epoch_seconds"],
        )

    def close(self):
        self.progress.stop()
        self.task = None


class JsonlLogger(Callback):
    """Appends one JSON line per epoch to ``metrics.jsonl``."""

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, epoch, metrics):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write(json.dumps(metrics) + "\n")


class TensorBoardLogger(Callback):
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def on_epoch_end(self, epoch, metrics):
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, epoch + 1)
        self.writer.flush()

    def close(self):
        self.writer.close()


class FillBar:
    """``progress(done, total)`` for a teacher-output cache fill: a live bar on a terminal, an
    info line every tenth of the views otherwise (a log file, the service's worker)."""

    def __init__(self, description: str):
        self.description = description
        self.progress = None
        self.task = None
        self.logged = 0

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self.progress is None:
                self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn("views"), TimeRemainingColumn(), transient=True)
                self.progress.start()
                self.task = self.progress.add_task(self.description, total=total)
            self.progress.update(self.task, completed=done)
            if done >= total:
                self.progress.stop()
        elif done == total or done * 10 // total > self.logged:
            self.logged = done * 10 // total
            log.info("%s: %d of %d views", self.description, done, total)
