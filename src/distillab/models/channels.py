"""Structured channel surgery on the zoo's VGG-style CNNs (``cnn_tiny``, ``cnn_small``, ``cnn``):
rank each conv-BN layer's output channels by the L1 norm of their filters or by |BN scale|
(Liu et al. 2017, "network slimming"), and rebuild the model as a smaller dense ``cnn`` holding
the kept channels (fewer MACs, real latency). Pruning (``compress.prune``) and students cut from
their teacher (``models.cut``) are built on it.

A removed channel is exactly a channel whose BN output is zero: :func:`masked` zeroes them in a
copy of the model, and :func:`rebuild` gives the same outputs with the channels gone.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from distillab.errors import DistillabError
from distillab.models.zoo import SmallCNN

IMPORTANCE = ("l1", "bn")
PRUNABLE_MODELS = ("cnn_tiny", "cnn_small", "cnn")


class PruneError(DistillabError):
    """A model or setting the pruner cannot handle."""


def conv_blocks(model: nn.Module) -> list[tuple[int, nn.Conv2d, nn.BatchNorm2d]]:
    """(stage, conv, bn) of every conv-BN-ReLU block, in forward order."""
    if not isinstance(model, SmallCNN):
        raise PruneError(f"channel pruning rebuilds the zoo's VGG-style CNNs ({', '.join(PRUNABLE_MODELS)}); "
                         f"got {type(model).__name__}")
    blocks = []
    for stage, layers in enumerate(model.stages):
        for layer in layers:
            if isinstance(layer, nn.Sequential) and isinstance(layer[0], nn.Conv2d):
                blocks.append((stage, layer[0], layer[1]))
    return blocks


def channel_importance(conv: nn.Conv2d, bn: nn.BatchNorm2d, kind: str) -> torch.Tensor:
    """(C_out,) how much each output channel matters: its filter's L1 norm, or |BN gamma|."""
    if kind == "l1":
        return conv.weight.detach().abs().sum(dim=(1, 2, 3))
    if kind == "bn":
        return bn.weight.detach().abs()
    raise PruneError(f"importance {kind!r}: choose from {', '.join(IMPORTANCE)}")


def channels_to_keep(model: nn.Module, targets: list[int], kind: str = "l1") -> list[torch.Tensor]:
    """For each conv block, the sorted indices of its ``targets[i]`` most important channels."""
    blocks = conv_blocks(model)
    if len(targets) != len(blocks):
        raise PruneError(f"{len(targets)} channel targets for {len(blocks)} conv layers")
    keep = []
    for (_, conv, bn), target in zip(blocks, targets):
        if not 1 <= target <= conv.out_channels:
            raise PruneError(f"a layer of {conv.out_channels} channels cannot keep {target}")
        scores = channel_importance(conv, bn, kind)
        keep.append(torch.sort(torch.topk(scores, target).indices).values)
    return keep


def channel_targets(channels: list[int], stages: list[int], fraction: float, prune_stages=None,
                    round_to: int = 1) -> list[int]:
    """How many channels each layer keeps when ``fraction`` of them is removed from the layers
    of ``prune_stages`` (default: every stage), rounded to a multiple of ``round_to`` (vector
    kernels run whole multiples of 8 or 16 fastest); at least ``round_to`` (or all) stay."""
    if not 0.0 <= fraction < 1.0:
        raise PruneError(f"ratio {fraction}: must be in [0, 1)")
    if round_to < 1:
        raise PruneError(f"round_to {round_to}: must be >= 1")
    targets = []
    for c, stage in zip(channels, stages):
        if prune_stages is not None and stage not in prune_stages:
            targets.append(c)
            continue
        kept = round(c * (1.0 - fraction) / round_to) * round_to
        targets.append(min(c, max(round_to, kept, 1)))
    return targets


def rebuild(model: SmallCNN, keep: list[torch.Tensor]) -> tuple[SmallCNN, dict]:
    """A dense ``cnn`` holding only the kept channels, and its ``model_args``."""
    blocks = conv_blocks(model)
    stages: list[list[int]] = [[] for _ in model.stages]
    for (stage, _, _), indices in zip(blocks, keep):
        stages[stage].append(len(indices))
    first = blocks[0][1]
    in_shape = (first.in_channels, 1, 1)  # the builder reads only the channel count
    args = {"stages": [list(stage) for stage in stages], "dropout": model.dropout.p}
    pruned = SmallCNN(in_shape, model.classifier.out_features, stages=args["stages"], dropout=args["dropout"])
    previous = torch.arange(first.in_channels)
    with torch.no_grad():
        for (_, conv, bn), (_, new_conv, new_bn), indices in zip(blocks, conv_blocks(pruned), keep):
            new_conv.weight.copy_(conv.weight[indices][:, previous])  # (C_out', C_in', k, k)
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(new_bn, name).copy_(getattr(bn, name)[indices])
            new_bn.num_batches_tracked.copy_(bn.num_batches_tracked)
            previous = indices
        pruned.classifier.weight.copy_(model.classifier.weight[:, previous])  # (K, C_last')
        pruned.classifier.bias.copy_(model.classifier.bias)
    return pruned.to(first.weight.device), args


def masked(model: SmallCNN, keep: list[torch.Tensor]) -> SmallCNN:
    """A copy of ``model`` whose removed channels output exactly zero (filters, BN scale and
    shift zeroed): what :func:`rebuild` computes, at the original size."""
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for (_, conv, bn), indices in zip(conv_blocks(copy_), keep):
            drop = torch.ones(conv.out_channels, dtype=torch.bool)
            drop[indices] = False
            conv.weight[drop] = 0.0
            bn.weight[drop] = 0.0
            bn.bias[drop] = 0.0
    return copy_
