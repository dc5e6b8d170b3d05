"""Classification: logits (B, K) against class targets (B,), or per position (B, T, K)
against (B, T) with a ``mask``. Images from the registered readers, and a user's tensors,
Dataset or DataLoader, all come in through it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillab import data as data_module
from distillab.errors import DataError
from distillab.tasks.base import Evaluation, Task


def _flat(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None):
    """(N, K) logits and (N,) targets of the counted positions: (..., K) flattened, masked."""
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if mask is not None:
        keep = mask.reshape(-1).bool()
        logits, targets = logits[keep], targets[keep]
    return logits, targets


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Accuracy and mean cross-entropy over the counted positions."""
    logits, targets = _flat(logits.float(), targets, mask)
    if len(targets) == 0:
        return {"accuracy": float("nan"), "loss": float("nan")}
    return {"accuracy": (logits.argmax(-1) == targets).float().mean().item(),
            "loss": F.cross_entropy(logits, targets).item()}


@torch.no_grad()
def predict(model, images: torch.Tensor, normalize, batch_size: int = 1024, device="cpu") -> torch.Tensor:
    """(N, K) float32 logits for raw (N, C, H, W) images, in eval mode (the mode is restored)."""
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        inputs = normalize(images[start : start + batch_size]).to(device)
        outputs.append(model(inputs).float().cpu())
    if was_training:
        model.train()
    return torch.cat(outputs) if outputs else torch.zeros(0, 0)


def evaluate(model, split, normalize, batch_size: int = 1024, device="cpu") -> Evaluation:
    """Accuracy and loss of ``model`` on one split of images (``split.images``, ``split.labels``)."""
    logits = predict(model, split.images, normalize, batch_size, device)
    return Evaluation(classification_metrics(logits, split.labels), "accuracy", logits)


class ImageClassification(Task):
    name = "image_classification"
    summary = "classes from inputs (images, or any tensors): accuracy, cross-entropy; the cache stores dense logits"
    metric = "accuracy"
    higher_is_better = True
    cache_kind = "dense_logits"

    def build(self, data_spec, seed: int, spec=None):
        return data_module.build(data_spec, seed)

    def finish_run(self, job, data, teachers, phases: dict, folder, device) -> dict:
        """A student cut from the teacher: the cut, and its accuracy before any training."""
        if job.spec is None or job.spec.student.model != "teacher_pruned":
            return {}
        fresh = job.student_for(job.spec.training.seeds[0], data).to(device)
        cut = getattr(fresh, "cut", None)
        if not cut:
            return {}
        batch = job.spec.training.eval_batch_size
        zero_shot = {f"{split}_accuracy": self.evaluate(fresh, data, split, batch, device).value
                     for split in ("val", "test")}
        return {"student_cut": {**cut, "zero_shot": zero_shot}}

    @torch.no_grad()
    def evaluate(self, model, data, split: str, batch_size: int, device) -> Evaluation:
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        outputs, targets, masks = [], [], []
        for batch in data.eval_batches(split, batch_size):
            logits = model(_to(batch["inputs"], device))
            if not isinstance(logits, torch.Tensor):
                raise DataError(f"the model returned {type(logits).__name__}, not a tensor of logits")
            outputs.append(logits.float().cpu())
            targets.append(batch["targets"])
            if "mask" in batch:
                masks.append(batch["mask"])
        if was_training:
            model.train()
        if not outputs:
            raise DataError(f"the {split} data is empty")
        logits = torch.cat(outputs)
        mask = torch.cat(masks) if masks else None
        return Evaluation(classification_metrics(logits, torch.cat(targets), mask), self.metric, logits)

    def correct(self, student_outputs: torch.Tensor, batch: dict) -> tuple[int, int]:
        logits, targets = _flat(student_outputs.detach(), batch["targets"], batch.get("mask"))
        return int((logits.argmax(-1) == targets).sum()), len(targets)


def _to(inputs, device):
    return inputs.to(device, non_blocking=True)
