"""The model zoo: small, readable image classifiers written in plain torch.

Every builder takes ``in_shape`` (C, H, W) and ``num_classes`` plus its own keyword
arguments, so a spec can name a model and pass ``model_args``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn
import torch.nn.functional as F

from distillab.errors import SpecError, close_matches
from distillab.models.gpt import GPT


class GlobalAvgPool(nn.Module):
    """Mean over H and W, keeping (B, C, 1, 1): AdaptiveAvgPool2d(1) written as a mean, which
    torch.func.vmap batches natively (the adaptive student runs the zoo models under vmap)."""

    def forward(self, x):  # (B, C, H, W) -> (B, C, 1, 1)
        return x.mean(dim=(-2, -1), keepdim=True)


class MLP(nn.Module):
    """Flatten, then Linear-ReLU layers with dropout."""

    def __init__(self, in_shape, num_classes, hidden=(256, 128), dropout=0.1):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(in_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):  # (B, C, H, W) -> (B, num_classes)
        return self.classifier(self.features(x))


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """VGG-style stages of 3x3 conv-BN-ReLU, max-pooling between stages, global
    average pooling and one linear classifier.

    ``stages`` is a list of stages, each a list of channel counts.
    """

    def __init__(self, in_shape, num_classes, stages=((16,), (32,), (64,)), dropout=0.0):
        super().__init__()
        blocks = []
        c_in = in_shape[0]
        for i, stage in enumerate(stages):
            layers = []
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for c_out in stage:
                layers.append(conv_bn_relu(c_in, c_out))
                c_in = c_out
            blocks.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*blocks)
        self.pool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):  # (B, C, H, W)
        x = self.stages(x)  # (B, C', H', W')
        x = self.pool(x).flatten(1)  # (B, C')
        return self.classifier(self.dropout(x))  # (B, num_classes)


class BasicBlock(nn.Module):
    """conv-BN-ReLU, conv-BN, plus the shortcut, then ReLU. ``inner``: the width between the two
    convolutions (default ``c_out``; a block cut from a wider one keeps fewer)."""

    def __init__(self, c_in: int, c_out: int, stride: int, inner: int | None = None):
        super().__init__()
        inner = inner or c_out
        self.conv1 = nn.Conv2d(c_in, inner, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): depth = 6n + 2, three stages of n basic
    blocks with widths (w, 2w, 4w); stages 2 and 3 halve the resolution.

    Or every width given (a ResNet cut from a wider one, ``models.cut``): ``streams``, the
    residual stream's width in each of the three stages, and ``inner``, each stage's list of
    its blocks' inner widths (one entry per block, so stages may differ in depth)."""

    def __init__(self, in_shape, num_classes, depth=None, width=None, streams=None, inner=None):
        super().__init__()
        if streams is None and inner is None:
            depth, width = depth or 20, width or 16
            if (depth - 2) % 6 != 0:
                raise ValueError(f"depth must be 6n+2 (8, 14, 20, 32, 56 ...), got {depth}")
            n = (depth - 2) // 6
            streams, inner = [width, 2 * width, 4 * width], [[c] * n for c in (width, 2 * width, 4 * width)]
        elif depth is not None or width is not None:
            raise ValueError("give depth and width, or streams and inner, not both")
        elif streams is None or inner is None or len(streams) != 3 or len(inner) != 3 or not all(inner):
            raise ValueError("streams (3 widths) and inner (3 lists of block widths, at least one block each) "
                             "go together")
        self.stem = nn.Sequential(
            nn.Conv2d(in_shape[0], streams[0], 3, 1, 1, bias=False), nn.BatchNorm2d(streams[0]),
            nn.ReLU(inplace=True)
        )
        stages = []
        c_in = streams[0]
        for i, (c_out, widths) in enumerate(zip(streams, inner)):
            blocks = []
            for j, width_j in enumerate(widths):
                blocks.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1, inner=width_j))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):  # (B, C, H, W)
        x = self.stem(x)  # (B, w, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 4w, H/4, W/4)
        return self.classifier(self.pool(x).flatten(1))  # (B, num_classes)


class WideBlock(nn.Module):
    """Pre-activation block of a WideResNet, with dropout between the convolutions."""

    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


class WideResNet(nn.Module):
    """WRN-d-k (Zagoruyko & Komodakis 2016): depth = 6n + 4, widths (16k, 32k, 64k)."""

    def __init__(self, in_shape, num_classes, depth=16, widen_factor=4, dropout=0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n+4 (10, 16, 22, 28 ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.stem = nn.Conv2d(in_shape[0], 16, 3, 1, 1, bias=False)
        c_in = 16
        stages = []
        for i, c_out in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(WideBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1, dropout))
                c_in = c_out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(c_in)
        self.pool = GlobalAvgPool()
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):  # (B, C, H, W)
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))  # (B, 64k, H/4, W/4)
        x = F.relu(self.bn(x))
        return self.classifier(self.pool(x).flatten(1))  # (B, num_classes)


def _cnn(stages):
    def build(in_shape, num_classes, dropout=0.0):
        return SmallCNN(in_shape, num_classes, stages=stages, dropout=dropout)

    return build


# name -> builder(in_shape, num_classes, **model_args). A literal allow-list (design rule 2).
MODELS = {
    "mlp": MLP,
    "cnn_tiny": _cnn(((16,), (32,), (64,))),  # ~25k parameters on 1x28x28
    "cnn_small": _cnn(((16,), (32, 32), (64, 96))),  # ~89k parameters on 1x28x28
    "cnn": SmallCNN,
    "resnet": ResNet,
    "wrn": WideResNet,
    "gpt": GPT,
}

MODEL_SUMMARIES = {
    "mlp": "multi-layer perceptron (hidden=(256, 128))",
    "cnn_tiny": "3-stage conv-BN-ReLU CNN, ~25k parameters on 1x28x28",
    "cnn_small": "5-conv VGG-style CNN, ~89k parameters on 1x28x28",
    "cnn": "VGG-style CNN with configurable stages",
    "resnet": "CIFAR-style ResNet, depth 6n+2 and width w (or streams and inner: every stage's and block's width)",
    "wrn": "WideResNet WRN-d-k, depth 6n+4 and widen_factor k",
    "gpt": "decoder-only language model (layers=4, dim=256, heads=4; RoPE, RMSNorm, tied embeddings)",
}


# Bounds on a zoo model's structure, checked before anything is built: each layer is a module
# to construct, so a long list (or a huge depth) costs time and memory however narrow it is.
MAX_LAYERS = 64  # mlp hidden layers, cnn convolutions in all, gpt blocks
MAX_STAGES = 8  # cnn stages (each after the first halves the resolution)
MAX_DEPTH = {"resnet": 200, "wrn": 202}  # past ResNet-164 / WRN-40: hundreds of layers cost seconds to build
MAX_WIDTH = 2**31 - 1  # channels, hidden units, dim: the parameter limit is what bounds a wide model


def check_structure(name: str, in_shape, model_args: dict | None, where: str | None = None) -> None:
    """Refuse a zoo model whose structure cannot work or is too large to build: a zero or
    negative width, a layer list or depth over the bounds above, more poolings than the input's
    resolution allows. Cheap (nothing is built); a SpecError names ``where``."""
    args = dict(model_args or {})
    prefix = f"{where}.model_args" if where else "model_args"

    def count(key: str, value, low: int = 1, high: int = MAX_WIDTH) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{prefix}.{key}: {name} needs a whole number, got {str(value)[:50]!r}")
        if not low <= value <= high:
            raise SpecError(f"{prefix}.{key}: {value} is out of range for {name}; it must be {low} to {high:,}")
        return value

    def widths(key: str, value) -> list:
        if not isinstance(value, (list, tuple)):
            raise SpecError(f"{prefix}.{key}: {name} needs a list, got {type(value).__name__}")
        if len(value) > MAX_LAYERS:
            raise SpecError(f"{prefix}.{key}: {len(value):,} entries; at most {MAX_LAYERS} layers are allowed")
        return list(value)

    if name == "mlp" and "hidden" in args:
        for index, size in enumerate(widths("hidden", args["hidden"])):
            count(f"hidden[{index}]", size)
    elif name == "cnn" and "stages" in args:
        stages = widths("stages", args["stages"])
        if not 1 <= len(stages) <= MAX_STAGES:
            raise SpecError(f"{prefix}.stages: {len(stages)} stages; cnn takes 1 to {MAX_STAGES}")
        convs = 0
        for i, stage in enumerate(stages):
            stage = widths(f"stages[{i}]", stage)
            if not stage:
                raise SpecError(f"{prefix}.stages[{i}]: a stage needs at least one convolution")
            for j, channels in enumerate(stage):
                count(f"stages[{i}][{j}]", channels)
            convs += len(stage)
        if convs > MAX_LAYERS:
            raise SpecError(f"{prefix}.stages: {convs} convolutions; at most {MAX_LAYERS} are allowed")
        shape = tuple(in_shape)
        if len(shape) == 3 and min(shape[1:]) >> (len(stages) - 1) < 1:
            raise SpecError(f"{prefix}.stages: {len(stages)} stages pool {len(stages) - 1} times, which leaves "
                            f"nothing of a {shape[1]}x{shape[2]} input; use at most "
                            f"{min(shape[1:]).bit_length()} stages")
    elif name == "resnet" and ("streams" in args or "inner" in args):
        for i, size in enumerate(widths("streams", args.get("streams", []))):
            count(f"streams[{i}]", size)
        for i, stage in enumerate(widths("inner", args.get("inner", []))):
            for j, size in enumerate(widths(f"inner[{i}]", stage)):
                count(f"inner[{i}][{j}]", size)
    elif name in ("resnet", "wrn"):
        if "depth" in args:
            count("depth", args["depth"], 1, MAX_DEPTH[name])
        key = "width" if name == "resnet" else "widen_factor"
        if key in args:
            count(key, args[key])
    elif name == "gpt":
        for key in ("layers",):
            if key in args:
                count(key, args[key], 1, MAX_LAYERS)
        for key in ("dim", "heads"):
            if key in args:
                count(key, args[key])


def build_model(name: str, in_shape, num_classes: int, model_args: dict | None = None,
                where: str | None = None) -> nn.Module:
    """Build a zoo model; bad ``model_args`` are a SpecError that names ``where`` (a spec key)."""
    if name not in MODELS:
        raise SpecError(f"unknown model {name!r}{close_matches(name, MODELS)}")
    check_structure(name, in_shape, model_args, where)
    try:
        return MODELS[name](tuple(in_shape), num_classes, **(model_args or {}))
    except (TypeError, ValueError, RuntimeError, OverflowError) as error:  # e.g. a negative size in nn.Linear
        prefix = f"{where}.model_args: " if where else ""
        raise SpecError(f"{prefix}model {name!r}: {str(error)[:300]}") from None


def parameter_count_on_meta(name: str, in_shape, num_classes: int, model_args: dict | None = None,
                            where: str | None = None) -> int:
    """Parameters of a zoo model built on the meta device: checks ``model_args`` without
    allocating a byte, however large the model they describe."""
    return sum(p.numel() for p in meta_model(name, in_shape, num_classes, model_args, where).parameters())


def meta_model(name: str, in_shape, num_classes: int, model_args: dict | None = None,
               where: str | None = None) -> nn.Module:
    """A zoo model on the meta device (no memory), built once per process for the same
    arguments: a request's validation, limits and MAC count share one build. Read it; do not
    train or modify it."""
    import json

    try:
        args = json.dumps(model_args or {}, sort_keys=True)
    except (TypeError, ValueError):  # not JSON (a Python caller's objects): build it uncached
        with torch.device("meta"):
            return build_model(name, in_shape, num_classes, model_args, where)
    return _meta_model(name, tuple(in_shape), num_classes, args, where)


@lru_cache(maxsize=16)
def _meta_model(name: str, in_shape: tuple, num_classes: int, args: str, where: str | None) -> nn.Module:
    import json

    with torch.device("meta"):
        return build_model(name, in_shape, num_classes, json.loads(args), where)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


