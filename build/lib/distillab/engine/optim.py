"""Optimisers and learning-rate schedules (stepped once per batch)."""

from __future__ import annotations

import math

import torch


def build_optimizer(parameters, training) -> torch.optim.Optimizer:
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay, nesterov=True
        )
    return torch.optim.AdamW(parameters, lr=training.lr, weight_decay=training.weight_decay)


def lr_factor(step: int, total_steps: int, warmup_steps: int, training) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): linear warm-up, then the schedule."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if training.schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if training.schedule == "step":
        steps_per_epoch = total_steps / training.epochs
        return training.gamma ** int(step / steps_per_epoch // training.step_size)
    return 1.0


def build_scheduler(optimizer, training, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = training.epochs * steps_per_epoch
    warmup = round(training.warmup_epochs * steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, training))
