"""Pruning. Structured: whole output channels of the conv-BN layers of the zoo's VGG-style CNNs
(``cnn_tiny``, ``cnn_small``, ``cnn``), ranked by the L1 norm of their filters or by |BN scale|
(Liu et al. 2017, "network slimming"), removed and the model physically rebuilt as a smaller
dense ``cnn`` (fewer MACs, real latency; the surgery is ``models.channels``). Unstructured:
weights by magnitude with ``torch.nn.utils.prune``; the tensors stay dense, so on a CPU it saves
no time.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune as torch_prune

from distillab.models.channels import (IMPORTANCE, PRUNABLE_MODELS, PruneError, channel_importance,  # noqa: F401
                                       channel_targets, channels_to_keep, conv_blocks, masked, rebuild)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(module, "weight") for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def magnitude_prune(model: nn.Module, sparsity: float) -> None:
    """Zero the smallest-magnitude weights of all conv and linear layers together (global
    L1), so that ``sparsity`` of them are zero; the masks stay attached (training keeps the
    zeros) until :func:`make_permanent`."""
    if not 0.0 <= sparsity < 1.0:
        raise PruneError(f"sparsity {sparsity}: must be in [0, 1)")
    parameters = prunable_weights(model)
    if not parameters:
        raise PruneError(f"{type(model).__name__} has no conv or linear weights to prune")
    for module, name in parameters:  # re-prune from the current weights: masks compose
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, name)
    torch_prune.global_unstructured(parameters, pruning_method=torch_prune.L1Unstructured, amount=sparsity)


def make_permanent(model: nn.Module) -> None:
    for module, name in prunable_weights(model):
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, name)


def sparsity(model: nn.Module) -> float:
    weights = [getattr(module, name) for module, name in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def cubic_schedule(step: int, steps: int, final: float) -> float:
    """The share removed after ``step`` of ``steps``: fast early, gentle late (Zhu & Gupta 2017)."""
    return final * (1.0 - (1.0 - step / steps) ** 3)
