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


def show_progress() -> None:
    """Make distillab's INFO lines visible when nothing else will: from Python, where the
    application has configured no logging, one plain handler on stderr for the "distillab"
    logger. A program that configured logging (a handler of its own, or on the root logger) is
    left as it is; the CLI and the service configure their own."""
    if log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s distillab: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)


class ProgressBar(Callback):
    """One log line per epoch, and on a terminal a live bar with loss, accuracy and samples/s
    (outside a terminal -- a log file, a notebook, a pipe -- the lines only)."""

    def __init__(self, description: str, epochs: int, live: bool | None = None):
        self.description, self.epochs = description, epochs
        self.live = sys.stderr.isatty() if live is None else live
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
        if not self.live:
            return
        if self.task is None:
            self.progress.start()
        else:
            self.progress.remove_task(self.task)
        label = f"{self.description} epoch {epoch + 1}/{self.epochs}"
        self.task = self.progress.add_task(label, total=steps, loss=0.0, acc=0.0, rate=0.0)

    def on_step(self, epoch, step, metrics):
        if not self.live:
            return
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
        if self.live:
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
    info line every tenth of the fill otherwise (a log file, the service's worker). ``unit``
    names what is counted: an image's views, a text's blocks, prompts."""

    def __init__(self, description: str, unit: str = "views"):
        self.description, self.unit = description, unit
        self.progress = None
        self.task = None
        self.logged = 0

    def __call__(self, done: int, total: int) -> None:
        if sys.stderr.isatty():
            if self.progress is None:
                self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                         TextColumn(self.unit), TimeRemainingColumn(), transient=True)
                self.progress.start()
                self.task = self.progress.add_task(self.description, total=total)
            self.progress.update(self.task, completed=done)
            if done >= total:
                self.progress.stop()
        elif done == total or done * 10 // total > self.logged:
            self.logged = done * 10 // total
            log.info("%s: %d of %d %s", self.description, done, total, self.unit)
