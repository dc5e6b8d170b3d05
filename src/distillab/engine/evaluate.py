"""Evaluation: accuracy and loss of a model on one split, in eval mode, without gradients."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distillab.errors import SpecError


@dataclass
class Evaluation:
    accuracy: float
    loss: float
    logits: torch.Tensor  # (N, K) on the CPU


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError("training.device: cuda was asked for but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def predict(model, images: torch.Tensor, normalize, batch_size: int = 1024, device="cpu") -> torch.Tensor:
    """(N, K) float32 logits for raw (N, C, H, W) images."""
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
    from distillab.tasks.image_classification import classification_metrics  # the task's one metric code

    logits = predict(model, split.images, normalize, batch_size, device)
    metrics = classification_metrics(logits, split.labels)
    return Evaluation(metrics["accuracy"], metrics["loss"], logits)
