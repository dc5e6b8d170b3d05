"""The students a search may choose from, and what each costs before anything trains: its
parameters, MACs and fp32 size, counted on the meta device (no memory is allocated).

The default space for image classification spans the zoo's families from a few thousand to a
few hundred thousand parameters: VGG-style CNNs of two or three stages, CIFAR ResNets, narrow
WideResNets and MLPs, and students cut from a zoo ResNet or CNN teacher (``teacher_pruned``: a
quarter to three quarters of its channels, and for a ResNet 1 to all of its blocks per stage).
A spec's ``auto.space.families`` narrows it."""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field

from distillab.models.facts import macs_per_sample
from distillab.models.zoo import meta_model

CNN_WIDTHS = (8, 12, 16, 24, 32, 48, 64, 96)
CUT_KEEP = (0.25, 0.375, 0.5, 0.75)  # teacher_pruned: the shares of the teacher's channels kept


@dataclass(frozen=True)
class Candidate:
    """One student architecture: a zoo model and its arguments, with its costs once counted."""

    model: str
    model_args: str  # JSON, sorted keys: hashable, and the same text for the same arguments
    params: int = field(default=0, compare=False)
    macs: int = field(default=0, compare=False)  # one forward pass of one sample (a block of tokens for text)
    layers: int = field(default=0, compare=False)  # what the latency model counts: kernels, or decoder blocks
    group: str = field(default="", compare=False)  # language models: "zoo" or "transformers" (their overheads differ)
    token_macs: int = field(default=0, compare=False)  # language models: MACs of one decoded token
    # an image student cut from the teacher: the zoo model it is (JSON [name, args]), for timing it
    architecture: str = field(default="", compare=False)
    # its last spatial convolution dynamic (adaptive_v2's per-input mixture of kernels): another
    # student than the static one, trained with adaptive_v2
    dynamic: bool = False

    @property
    def zoo(self) -> tuple[str, dict]:
        """(zoo name, model_args) that build this student's architecture."""
        if self.architecture:
            name, args = json.loads(self.architecture)
            return name, args
        return self.model, self.args

    @property
    def args(self) -> dict:
        return json.loads(self.model_args)

    @property
    def size_mb(self) -> float:
        """fp32 weights, in MB (what the report's size column counts before compression)."""
        return self.params * 4 / 1e6

    @property
    def name(self) -> str:
        return f"{self.model}{self.model_args}" + (" dynamic" if self.dynamic else "")

    def facts(self) -> dict:
        out = {"model": self.model, "model_args": self.args, "params": self.params, "macs": self.macs,
               "size_mb": round(self.size_mb, 4)}
        if self.architecture:
            name, args = self.zoo
            out["architecture"] = {"model": name, "model_args": args}
        if self.dynamic:
            out["dynamic"] = True
        return out

    def build(self, in_shape, num_classes: int):
        """This student, untrained (its dynamic convolution made as adaptive_v2 makes it)."""
        from distillab.models.zoo import build_model

        name, args = self.zoo
        model = build_model(name, tuple(in_shape), num_classes, args)
        if self.dynamic:
            from distillab.adaptive.dynamic import make_dynamic

            make_dynamic(model)
        return model


def layer_count(model) -> int:
    """Convolutions and linear layers: each is at least one kernel launch on any runtime."""
    from torch import nn

    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


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
    return Candidate(name, args, sum(p.numel() for p in model.parameters()), int(macs_per_sample(model, in_shape) or 0),
                     layer_count(model))


def cut_candidates(teacher, in_shape, num_classes: int) -> list[Candidate]:
    """The students cut from ``teacher`` (a zoo resnet or cnn; ``models.cut``): each share of
    channels kept, and for a ResNet each number of blocks kept per stage (the same in every
    stage); [] for a teacher that cannot be cut."""
    from distillab.models.cut import cut_shape
    from distillab.errors import SpecError
    from distillab.models.zoo import ResNet, SmallCNN

    if not isinstance(teacher, (ResNet, SmallCNN)):
        return []
    depths = [None]
    if isinstance(teacher, ResNet):
        most = max(len(stage) for stage in (teacher.layer1, teacher.layer2, teacher.layer3))
        depths = [[b] * 3 for b in range(1, most + 1)]
    out = []
    for keep, blocks in itertools.product(CUT_KEEP, depths):
        args = {"keep": keep} if blocks is None else {"keep": keep, "blocks": blocks}
        try:
            name, shape = cut_shape(teacher, args, "auto.space")
        except SpecError:  # more blocks than a stage of this teacher has
            continue
        counted = count(name, shape, in_shape, num_classes)
        out.append(Candidate("teacher_pruned", json.dumps(args, sort_keys=True), counted.params, counted.macs,
                             counted.layers, architecture=json.dumps([name, shape], sort_keys=True)))
    return out


DYNAMIC_FAMILIES = ("cnn", "resnet", "wrn", "teacher_pruned")  # students with spatial convolutions


def dynamic_twin(candidate: Candidate, in_shape, num_classes: int) -> Candidate:
    """``candidate`` with its last spatial convolution dynamic, counted (adaptive_v2's default)."""
    import dataclasses

    import torch

    with torch.device("meta"):
        model = dataclasses.replace(candidate, dynamic=True).build(in_shape, num_classes)
    return dataclasses.replace(candidate, dynamic=True, params=sum(p.numel() for p in model.parameters()),
                               macs=int(macs_per_sample(model, in_shape) or 0), layers=layer_count(model))


def candidates(families, in_shape, num_classes: int, teacher=None) -> list[Candidate]:
    """Every architecture of ``families`` for this input, counted; those whose structure cannot
    fit the input (more poolings than its resolution allows) are left out. ``teacher_pruned``
    cuts ``teacher`` (none when there is no single zoo resnet or cnn teacher)."""
    from distillab.errors import SpecError

    out = cut_candidates(teacher, in_shape, num_classes) if "teacher_pruned" in families else []
    for name, args in architectures([family for family in families if family != "teacher_pruned"]):
        try:
            out.append(count(name, args, in_shape, num_classes))
        except (SpecError, RuntimeError, ValueError):
            continue
    return out


class ImageSpace:
    """The image-classification search space of one input shape: candidates, the forward-pass
    latency model on the constraint's runtime, and the measurement of one candidate."""

    kind = "forward"

    def __init__(self, in_shape, num_classes: int, runtime: str, batch_size: int, teacher=None, cut_from=None,
                 dynamic=(False,)):
        self.in_shape, self.num_classes = tuple(in_shape), num_classes
        self.runtime, self.batch_size, self.teacher = runtime, batch_size, teacher
        self.cut_from = cut_from  # the one teacher that teacher_pruned students are cut from, if any
        self.dynamic = tuple(dynamic)  # static students, dynamic ones (adaptive_v2), or both

    def candidates(self, families) -> list[Candidate]:
        from distillab.strategies.adaptive_v2 import AdaptiveV2Params

        pool = candidates(families, self.in_shape, self.num_classes, self.cut_from)
        twins = [(c, dynamic_twin(c, self.in_shape, self.num_classes)) for c in pool
                 if c.model in DYNAMIC_FAMILIES] if True in self.dynamic else []
        # those within adaptive_v2's MAC budget (on small inputs the router can cost more)
        budget = AdaptiveV2Params().max_macs_ratio
        return (pool if False in self.dynamic else []) + [twin for c, twin in twins
                                                          if c.macs and twin.macs <= budget * c.macs]

    def measure(self, candidate: Candidate) -> float:
        from distillab.autodistill.latency import measure

        return measure(candidate, self.in_shape, self.num_classes, self.runtime, self.batch_size)

    def latency_model(self, pool: list[Candidate], runtime: str, batch_size: int):
        from distillab.autodistill.latency import build_latency_model

        return build_latency_model(pool, self.in_shape, self.num_classes, runtime, batch_size)

    def teacher_macs(self) -> int:
        return int(macs_per_sample(self.teacher, self.in_shape) or 0) if self.teacher is not None else 0
