"""Image students cut from their teacher: a copy of a zoo ResNet or VGG-style CNN teacher with
fewer channels (and, for a ResNet, fewer blocks), its weights taken from the teacher's most
important channels and rebuilt as a smaller dense zoo model (Minitron's "prune, then distil",
for image classifiers; channels are ranked as the pruner ranks them, by filter L1 norm or |BN scale|).

``student: {model: teacher_pruned, model_args: ...}`` for an image classifier takes:

- ``keep``: the share of channels each layer keeps, 0 < keep <= 1 (default 0.5): a ResNet's
  residual stream in each stage and each block's inner width, every convolution of a CNN;
- ``blocks`` (ResNet only): how many blocks each of the three stages keeps (default: all). A
  block with a projection shortcut (the first of a stage that halves the resolution) is always
  kept; the others are ranked by their influence on calibration images, 1 - the cosine
  similarity between the block's input and output (the least influential go);
- ``importance``: ``l1`` (default) or ``bn``;
- ``round_to``: channel counts rounded to a multiple of this (default 1);
- ``calibration_images``: training images that rank the blocks (default 512).

A ResNet's residual stream is cut consistently. One stream channel of a stage is written by the
stem (or the stage's projection shortcut) and by every block's second convolution, and read by
every block's first convolution, the next stage's projection and the classifier: it stays or
goes in all of them together. Its importance is the sum, over the layers that write it, of each
layer's score divided by that layer's mean score.

The cut's shape depends only on the teacher's architecture and these arguments, so a run's
student is rebuilt from its spec without the teacher's weights (export, package, serve).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from distillab.models.channels import IMPORTANCE, PruneError, channel_importance, channel_targets, channels_to_keep
from distillab.models.channels import conv_blocks, rebuild
from distillab.errors import SpecError
from distillab.models.zoo import BasicBlock, ResNet, SmallCNN

CUTTABLE = ("resnet", "cnn", "cnn_small", "cnn_tiny")  # the zoo teachers an image student is cut from
KNOWN_ARGS = ("keep", "blocks", "importance", "round_to", "calibration_images")
DEFAULT_KEEP = 0.5
DEFAULT_CALIBRATION_IMAGES = 512
WHERE = "student.model_args"


@dataclass
class ResNetPlan:
    """What a ResNet cut keeps: per stage, the teacher's blocks and stream channels; per kept
    block (stage, index), its inner channels; and each block's measured influence."""

    blocks: list[list[int]]
    streams: list[torch.Tensor]
    inner: dict[tuple[int, int], torch.Tensor]
    influence: list[list[float]] | None = None


def checked_args(args: dict, where: str = WHERE) -> dict:
    """``args`` with their defaults, each checked (a SpecError names the key)."""
    unknown = sorted(set(args) - set(KNOWN_ARGS))
    if unknown:
        raise SpecError(f"{where}: an image teacher_pruned student takes {', '.join(KNOWN_ARGS)}; "
                        f"not {', '.join(unknown)}")
    out = {"keep": args.get("keep", DEFAULT_KEEP), "blocks": args.get("blocks"),
           "importance": args.get("importance", "l1"), "round_to": args.get("round_to", 1),
           "calibration_images": args.get("calibration_images", DEFAULT_CALIBRATION_IMAGES)}
    keep = out["keep"]
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not math.isfinite(keep) or not 0 < keep <= 1:
        raise SpecError(f"{where}.keep: {keep!r} must be a share of the channels, above 0 and at most 1")
    if out["importance"] not in IMPORTANCE:
        raise SpecError(f"{where}.importance: {out['importance']!r} is not one of {', '.join(IMPORTANCE)}")
    for key in ("round_to", "calibration_images"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SpecError(f"{where}.{key}: {value!r} must be a whole number of at least 1")
    blocks = out["blocks"]
    if blocks is not None and (not isinstance(blocks, (list, tuple)) or len(blocks) != 3
                               or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in blocks)):
        raise SpecError(f"{where}.blocks: {blocks!r} must be three whole numbers of at least 1, the blocks each "
                        "stage keeps")
    return out


def _stages(model: ResNet) -> list[nn.Sequential]:
    return [model.layer1, model.layer2, model.layer3]


def _droppable(block: BasicBlock) -> bool:
    """A block whose shortcut is the identity: without it, its input passes on unchanged."""
    return len(block.shortcut) == 0


def _width(channels: int, keep: float, round_to: int) -> int:
    return channel_targets([channels], [0], 1.0 - keep, None, round_to)[0]


def cut_shape(teacher: nn.Module, args: dict, where: str = WHERE) -> tuple[str, dict]:
    """(zoo name, model_args) of the cut ``args`` ask of ``teacher`` (any device, meta included)."""
    args = checked_args(args, where)
    keep, round_to = args["keep"], args["round_to"]
    if isinstance(teacher, SmallCNN):
        if args["blocks"] is not None:
            raise SpecError(f"{where}.blocks: a VGG-style cnn teacher has no residual blocks to drop; cut its "
                            "channels with keep")
        blocks = conv_blocks(teacher)
        targets = [_width(conv.out_channels, keep, round_to) for _, conv, _ in blocks]
        stages: list[list[int]] = [[] for _ in teacher.stages]
        for (stage, _, _), target in zip(blocks, targets):
            stages[stage].append(target)
        return "cnn", {"stages": stages, "dropout": teacher.dropout.p}
    if not isinstance(teacher, ResNet):
        raise SpecError(f"{where}: an image teacher_pruned student is cut from a zoo {', '.join(CUTTABLE)} "
                        f"teacher; this teacher is a {type(teacher).__name__}")
    counts = [len(stage) for stage in _stages(teacher)]
    wanted = list(args["blocks"] or counts)
    inner = []
    for i, (stage, count, n) in enumerate(zip(_stages(teacher), counts, wanted)):
        fixed = sum(not _droppable(block) for block in stage)
        if not max(fixed, 1) <= n <= count:
            raise SpecError(f"{where}.blocks[{i}]: {n}; stage {i + 1} of the teacher has {count} blocks"
                            + (f", {fixed} of them with a projection that must stay" if fixed else "")
                            + f", so it keeps {max(fixed, 1)} to {count}")
        widths = {block.conv1.out_channels for block in stage}
        if n < count and len(widths) > 1:
            raise SpecError(f"{where}.blocks[{i}]: the teacher's blocks in stage {i + 1} differ in width, so the "
                            "shape of a cut that drops some would depend on which; keep all of its blocks")
        inner.append([_width(block.conv1.out_channels, keep, round_to) for block in stage][:n])
    streams = [_width(stage[0].conv2.out_channels, keep, round_to) for stage in _stages(teacher)]
    return "resnet", {"streams": streams, "inner": inner}


@torch.no_grad()
def _run_over(model: nn.Module, images: torch.Tensor, batch_size: int, training: bool) -> None:
    """``model`` over ``images`` in batches, in train or eval mode (its mode restored after)."""
    was_training = model.training
    model.train(training)
    try:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    finally:
        model.train(was_training)


@torch.no_grad()
def block_influence(model: ResNet, images: torch.Tensor, batch_size: int = 128) -> list[list[float]]:
    """Per stage, each block's mean 1 - cos(input, output) over ``images`` (normalised inputs);
    None for a block with a projection (its output has another shape, and it is never dropped)."""
    sums: dict[nn.Module, float] = {}

    def hook(block, inputs, output):
        x, y = inputs[0].flatten(1).float(), output.flatten(1).float()
        sums[block] = sums.get(block, 0.0) + float((1 - nn.functional.cosine_similarity(x, y, dim=1)).sum())

    handles = [block.register_forward_hook(hook) for stage in _stages(model) for block in stage if _droppable(block)]
    try:
        _run_over(model, images, batch_size, training=False)
    finally:
        for handle in handles:
            handle.remove()
    return [[sums[block] / max(1, len(images)) if block in sums else None for block in stage]
            for stage in _stages(model)]


def _normalised(scores: torch.Tensor) -> torch.Tensor:
    return scores / scores.mean().clamp_min(1e-12)


def resnet_plan(teacher: ResNet, args: dict, calibration: torch.Tensor | None, where: str = WHERE) -> ResNetPlan:
    """Which blocks and channels a cut of ``teacher`` keeps (``calibration``: normalised training
    images, needed when blocks are dropped)."""
    _, shape = cut_shape(teacher, args, where)
    kind = checked_args(args, where)["importance"]
    stages = _stages(teacher)
    dropping = any(len(kept) < len(stage) for kept, stage in zip(shape["inner"], stages))
    influence = None
    if dropping:
        if calibration is None or not len(calibration):
            raise PruneError("a cut that drops blocks ranks them on calibration images; none were given")
        influence = block_influence(teacher, calibration)
    blocks = []
    for i, (stage, widths) in enumerate(zip(stages, shape["inner"])):
        fixed = [j for j, block in enumerate(stage) if not _droppable(block)]
        ranked = sorted((j for j in range(len(stage)) if j not in fixed),
                        key=lambda j: -influence[i][j] if influence else j)
        blocks.append(sorted(fixed + ranked[:len(widths) - len(fixed)]))
    streams, inner = [], {}
    for i, (stage, kept) in enumerate(zip(stages, blocks)):
        writers = [(teacher.stem[0], teacher.stem[1])] if i == 0 else []
        writers += [(stage[j].shortcut[0], stage[j].shortcut[1]) for j in kept if not _droppable(stage[j])]
        writers += [(stage[j].conv2, stage[j].bn2) for j in kept]
        score = sum(_normalised(channel_importance(conv, bn, kind)) for conv, bn in writers)
        streams.append(torch.sort(torch.topk(score, shape["streams"][i]).indices).values)
        for j, width in zip(kept, shape["inner"][i]):
            scores = channel_importance(stage[j].conv1, stage[j].bn1, kind)
            inner[(i, j)] = torch.sort(torch.topk(scores, width).indices).values
    return ResNetPlan(blocks, streams, inner, influence)


def _take_bn(target: nn.BatchNorm2d, source: nn.BatchNorm2d, index: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(target, name).copy_(getattr(source, name)[index])
    target.num_batches_tracked.copy_(source.num_batches_tracked)


@torch.no_grad()
def rebuild_resnet(teacher: ResNet, plan: ResNetPlan) -> ResNet:
    """The dense ResNet holding what ``plan`` keeps, with the teacher's weights."""
    stages = _stages(teacher)
    shape = {"streams": [len(s) for s in plan.streams],
             "inner": [[len(plan.inner[(i, j)]) for j in kept] for i, kept in enumerate(plan.blocks)]}
    stem = teacher.stem[0]
    student = ResNet((stem.in_channels, 1, 1), teacher.classifier.out_features, **shape).to(stem.weight.device)
    student.stem[0].weight.copy_(stem.weight[plan.streams[0]])
    _take_bn(student.stem[1], teacher.stem[1], plan.streams[0])
    previous = plan.streams[0]
    for i, (stage, new_stage, kept) in enumerate(zip(stages, _stages(student), plan.blocks)):
        current = plan.streams[i]
        for position, (j, new) in enumerate(zip(kept, new_stage)):
            old, inner = stage[j], plan.inner[(i, j)]
            reads = previous if position == 0 else current  # a stage's first block reads the stream before it
            new.conv1.weight.copy_(old.conv1.weight[inner][:, reads])  # (inner', C_in', 3, 3)
            _take_bn(new.bn1, old.bn1, inner)
            new.conv2.weight.copy_(old.conv2.weight[current][:, inner])  # (C_out', inner', 3, 3)
            _take_bn(new.bn2, old.bn2, current)
            if len(old.shortcut):
                new.shortcut[0].weight.copy_(old.shortcut[0].weight[current][:, reads])
                _take_bn(new.shortcut[1], old.shortcut[1], current)
        previous = current
    student.classifier.weight.copy_(teacher.classifier.weight[:, previous])
    student.classifier.bias.copy_(teacher.classifier.bias)
    return student


@torch.no_grad()
def masked_resnet(teacher: ResNet, plan: ResNetPlan) -> ResNet:
    """A copy of ``teacher`` that computes what the cut computes, at the teacher's size: the
    stream and inner channels the plan removes output zero (their BN scale and shift zeroed), and
    a dropped block's residual branch is zero, so it passes its (non-negative) input on."""
    out = copy.deepcopy(teacher)

    def zero(bn: nn.BatchNorm2d, kept: torch.Tensor | None) -> None:
        drop = torch.ones(bn.num_features, dtype=torch.bool)
        if kept is not None:
            drop[kept] = False
        bn.weight[drop] = 0.0
        bn.bias[drop] = 0.0

    zero(out.stem[1], plan.streams[0])
    for i, (stage, kept) in enumerate(zip(_stages(out), plan.blocks)):
        for j, block in enumerate(stage):
            if j not in kept:
                zero(block.bn2, None)
                continue
            zero(block.bn1, plan.inner[(i, j)])
            zero(block.bn2, plan.streams[i])
            if len(block.shortcut):
                zero(block.shortcut[1], plan.streams[i])
    return out


@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> None:
    """Re-estimate every BatchNorm's running mean and variance on ``images``: the teacher's
    statistics were measured with the channels and blocks the cut removed, which shift what
    reaches each layer. The weights are not changed."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average over the batches
    try:
        _run_over(model, images, batch_size, training=True)  # train mode: BatchNorm updates its statistics
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum


def cut(teacher: nn.Module, args: dict, calibration: torch.Tensor | None = None,
        where: str = WHERE) -> tuple[nn.Module, dict]:
    """(the cut student with the teacher's weights, what the report keeps of the cut). With
    ``calibration`` images, its BatchNorm statistics are re-estimated on them (``recalibrate_bn``)."""
    name, shape = cut_shape(teacher, args, where)
    settings = checked_args(args, where)
    if calibration is not None:  # where the teacher is
        calibration = calibration.to(next(teacher.parameters()).device)
    if isinstance(teacher, SmallCNN):
        keep = channels_to_keep(teacher, [c for stage in shape["stages"] for c in stage], settings["importance"])
        student, _ = rebuild(teacher, keep)
        kept = None
        influence = None
    else:
        plan = resnet_plan(teacher, args, calibration, where)
        student = rebuild_resnet(teacher, plan)
        kept, influence = plan.blocks, plan.influence
    params = sum(p.numel() for p in student.parameters())
    teacher_params = sum(p.numel() for p in teacher.parameters())
    recalibrated = calibration is not None and len(calibration) > 0 and params < teacher_params
    if recalibrated:
        recalibrate_bn(student, calibration)
    facts = {"architecture": {"model": name, "model_args": shape}, "keep": settings["keep"],
             "importance": settings["importance"], "blocks_kept": kept,
             "block_influence": [[None if v is None else round(v, 5) for v in stage] for stage in influence]
             if influence else None,
             "bn_recalibrated_on": len(calibration) if recalibrated else 0,
             "teacher_params": teacher_params, "params": params}
    return student, facts


def uncuttable(teachers) -> str | None:
    """Why an image student cannot be cut from a spec's ``teachers`` (TeacherSpecs), or None."""
    if len(teachers) != 1:
        return f"teacher_pruned is cut from one teacher; the spec has {len(teachers)}"
    teacher = teachers[0]
    if teacher.model not in CUTTABLE or teacher.resolved_format not in (None, "safetensors"):
        return (f"an image teacher_pruned student is cut from a zoo {', '.join(CUTTABLE)} teacher (safetensors or "
                f"trained by the run); the teacher is {teacher.model or teacher.resolved_format or 'not a zoo model'}")
    if teacher.input_convention != "normalized":
        return ("teacher_pruned copies the teacher's first layer, so the teacher must take the dataset's "
                "normalised inputs (teacher.input: normalized)")
    return None


def check_cut_spec(spec) -> None:
    """Refuse, before anything loads, an image ``teacher_pruned`` student whose teacher cannot be
    cut or whose arguments do not fit it (a SpecError names the key)."""
    from distillab.data import DATASETS
    from distillab.models.zoo import meta_model

    problem = uncuttable(spec.teachers)
    if problem:
        raise SpecError(f"student.model: {problem}")
    teacher = spec.teachers[0]
    info = DATASETS[spec.data.dataset]
    cut_shape(meta_model(teacher.model, info.in_shape or (3, 32, 32), info.num_classes or 10, teacher.model_args),
              spec.student.model_args)


def calibration_images(data, count: int) -> torch.Tensor:
    """The first ``count`` training inputs, un-augmented and normalised."""
    from distillab.data.batches import batches_of

    taken = batches_of(data, "train", count, 256)
    return torch.cat(taken) if taken else torch.zeros(0)
