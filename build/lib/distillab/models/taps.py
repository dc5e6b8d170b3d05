"""Intermediate outputs ("taps"): the only forward-hook code in distillab.

    with Taps(model, ["layer2", "layer3"]) as taps:
        logits = model(x)
        features = taps.outputs        # {"layer2": (B, C, H, W), ...}

``tappable_layers`` lists a model's modules with their output shapes, so users can write
teacher/student layer mappings (`distillab layers MODEL`).
"""

from __future__ import annotations

import torch
from torch import nn

from distillab.errors import SpecError, close_matches


def named_module(model: nn.Module, name: str, where: str = "layer") -> nn.Module:
    modules = {key: module for key, module in model.named_modules() if key}  # "" is the model itself
    if name not in modules:
        raise SpecError(f"{where}: no layer named {name!r} in {type(model).__name__}{close_matches(name, modules)}")
    return modules[name]


class Taps:
    """Record the outputs of named modules during forward passes (until closed)."""

    def __init__(self, model: nn.Module, names: list[str], where: str = "layer", detach: bool = False):
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = []
        for name in names:
            module = named_module(model, name, where)
            self._handles.append(module.register_forward_hook(self._hook(name, detach)))

    def _hook(self, name: str, detach: bool):
        def record(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.outputs[name] = output.detach() if detach else output

        return record

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> Taps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tappable_layers(model: nn.Module, in_shape, leaf_blocks_only: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """[(module name, output shape without the batch)] in forward order, for modules that
    return a tensor. Containers are listed too (a whole ResNet stage is a useful tap)."""
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name or (leaf_blocks_only and list(module.children())):
            continue

        def record(module, inputs, output, name=name):
            if isinstance(output, torch.Tensor) and name not in shapes:
                shapes[name] = tuple(output.shape[1:])
                order.append(name)

        handles.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *in_shape))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return [(name, shapes[name]) for name in order]


def stage_outputs(model: nn.Module, in_shape) -> list[tuple[str, tuple[int, ...]]]:
    """The outputs worth matching by default: the last module at each spatial resolution
    among the model's top-level-ish blocks (4-D outputs), in forward order."""
    layers = tappable_layers(model, in_shape)
    depth = {name: name.count(".") for name, _ in layers}
    candidates = [(n, s) for n, s in layers if len(s) == 3 and s[1] * s[2] > 1 and depth[n] <= 1]
    chosen: dict[tuple[int, int], tuple[str, tuple[int, ...]]] = {}
    for name, shape in candidates:
        previous = chosen.get(shape[1:])
        if previous and previous[0].startswith(name + "."):
            continue  # a container ending with the chosen block returns the same tensor
        chosen[shape[1:]] = (name, shape)  # later modules at the same resolution win
    return list(chosen.values())
