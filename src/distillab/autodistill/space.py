"""The students a search may choose from, and what each costs before anything trains: its
parameters, MACs and fp32 size, counted on the meta device (no memory is allocated).

The default space for image classification spans the zoo's families from a few thousand to a
few hundred thousand parameters: VGG-style CNNs of two or three stages, CIFAR ResNets, narrow
WideResNets and MLPs. A spec's ``auto.space.families`` narrows it."""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field

from distillab.models.facts import macs_per_sample
from distillab.models.zoo import meta_model

CNN_WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96)


@dataclass(frozen=True)
class Candidate:
    """One student architecture: a zoo model and its arguments, with its costs once counted."""

    model: str
    model_args: str  # JSON, sorted keys: hashable, and the same text for the same arguments
    params: int = field(default=0, compare=False)
    macs: int = field(default=0, compare=False)

    @property
    def args(self) -> dict:
        return json.loads(self.model_args)

    @property
    def size_mb(self) -> float:
        """fp32 weights, in MB (what the report's size column counts before compression)."""
        return self.params * 4 / 1e6

    @property
    def name(self) -> str:
        return f"{self.model}{self.model_args}"

    def facts(self) -> dict:
        return {"model": self.model, "model_args": self.args, "params": self.params, "macs": self.macs,
                "size_mb": round(self.size_mb, 4)}


def _cnn_args() -> list[dict]:
    out = []
    for depth in (2, 3):
        for widths in itertools.combinations_with_replacement(CNN_WIDTHS, depth):
            if list(widths) != sorted(widths):
                continue
            out.append({"stages": [[w] for w in widths]})
            if depth == 3:  # a second convolution in the last stage, as cnn_small has
                out.append({"stages": [[w] for w in widths[:-1]] + [[widths[-1], widths[-1]]]})
    return out


def architectures(families) -> list[tuple[str, dict]]:
    """(zoo name, model_args) of every architecture of the image-classification space."""
    grid = {
        "cnn": [("cnn", args) for args in _cnn_args()],
        "resnet": [("resnet", {"depth": d, "width": w}) for d in (8, 14, 20) for w in (4, 8, 12, 16)],
        "wrn": [("wrn", {"depth": d, "widen_factor": 1}) for d in (10, 16)],
        "mlp": [("mlp", {"hidden": list(h)}) for h in ((64,), (128,), (256,), (128, 64), (256, 128), (512, 256))],
    }
    return [item for family in families for item in grid[family]]


def count(name: str, args: dict, in_shape, num_classes: int) -> Candidate:
    """The candidate with its parameters and MACs counted on the meta device (once per process)."""
    return _count(name, json.dumps(args, sort_keys=True), tuple(in_shape), num_classes)


@functools.lru_cache(maxsize=4096)
def _count(name: str, args: str, in_shape: tuple, num_classes: int) -> Candidate:
    model = meta_model(name, in_shape, num_classes, json.loads(args))
    return Candidate(name, args, sum(p.numel() for p in model.parameters()), int(macs_per_sample(model, in_shape) or 0))


def candidates(families, in_shape, num_classes: int) -> list[Candidate]:
    """Every architecture of ``families`` for this input, counted; those whose structure cannot
    fit the input (more poolings than its resolution allows) are left out."""
    from distillab.errors import SpecError

    out = []
    for name, args in architectures(families):
        try:
            out.append(count(name, args, in_shape, num_classes))
        except (SpecError, RuntimeError, ValueError):
            continue
    return out
