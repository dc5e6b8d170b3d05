"""``teacher_pruned``: a language-model student cut from its teacher (``models.lm_prune``).

``student.model_args`` take the cut's shape -- ``hidden_size``, ``intermediate_size``,
``heads``, ``kv_heads``, ``layers`` (each defaults to the teacher's) -- or ``params`` (a target
count) with ``axis: width`` (default: hidden size and MLP shrink together) or ``depth`` (the
least important layers go). ``calibration_tokens`` (default 16,384) of the training split
score the units; ``layer_metric`` ranks layers by ``block_influence`` (default) or by the
``perplexity`` increase when each is skipped.

The cut does not depend on the seed: it is computed once per process and copied for every
seed, so the scratch twin and the distilled student start from the same weights.
"""

from __future__ import annotations

import copy
import json
import logging
import math

import torch

from distillab.errors import SpecError

log = logging.getLogger("distillab")

WHERE = "student.model_args"
DEFAULT_CALIBRATION_TOKENS = 16_384
KNOWN_ARGS = {"hidden_size", "intermediate_size", "heads", "kv_heads", "layers", "params", "axis",
              "calibration_tokens", "layer_metric"}

_CUTS: dict[tuple, object] = {}  # (teacher, data, args) -> the cut CausalLM, computed once per process


def cut_shape(config, args: dict, where: str = WHERE):
    """The shape ``args`` ask for, checked against the teacher's ``config`` (errors name ``where``)."""
    from distillab.models.lm_prune import CutShape, check_shape, shape_for_params, teacher_shape

    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown:
        raise SpecError(f"{where}: teacher_pruned takes {', '.join(sorted(KNOWN_ARGS))}; not {', '.join(unknown)}")
    sizes = {"hidden_size", "intermediate_size", "heads", "kv_heads", "layers"} & set(args)
    if "params" in args:
        if sizes:
            raise SpecError(f"{where}: give params or the sizes ({', '.join(sorted(sizes))}), not both")
        params = args["params"]
        if isinstance(params, str):  # YAML reads 40e6 (no dot) as a string: it is meant as a number
            try:
                params = float(params)
            except ValueError:
                pass
        if isinstance(params, bool) or not isinstance(params, (int, float)) or not math.isfinite(params) \
                or params <= 0:
            raise SpecError(f"{where}.params: {params!r} must be a positive number of parameters")
        return shape_for_params(config, float(params), args.get("axis", "width"), where)
    if "axis" in args:
        raise SpecError(f"{where}.axis: goes with params (the sizes say the cut themselves)")
    full = teacher_shape(config)
    shape = CutShape(args.get("hidden_size", full.hidden_size), args.get("intermediate_size", full.intermediate_size),
                     args.get("heads", full.heads), args.get("kv_heads", full.kv_heads),
                     args.get("layers", full.layers))
    check_shape(config, shape, where)
    return shape


def calibration_blocks(data, tokens: int, where: str = WHERE) -> torch.Tensor:
    """Evenly spaced blocks of the training split holding at least ``tokens`` tokens."""
    from distillab.models.lm_prune import MIN_CALIBRATION_TOKENS

    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < MIN_CALIBRATION_TOKENS:
        raise SpecError(f"{where}.calibration_tokens: {tokens!r} is too few to rank the teacher's units; give at "
                        f"least {MIN_CALIBRATION_TOKENS}")
    blocks = data.train.tokens  # (N, T + 1)
    available = blocks.numel()
    if tokens > available:
        raise SpecError(f"{where}.calibration_tokens: {tokens:,} is more than the training split's {available:,} "
                        "tokens; give fewer")
    rows = -(-tokens // blocks.shape[1])
    index = torch.linspace(0, len(blocks) - 1, rows).round().long().unique()
    return blocks[index]


def pruned_student(teacher_spec, cache_dir, data, args: dict, weightless: bool):
    """The cut student of a spec (a ``CausalLM``); in a validation (``weightless``), an untrained
    model of the cut's shape, from the teacher's config."""
    from distillab.models.hf import CausalLM
    from distillab.models.lm_prune import check_llama_family, shaped_config
    from distillab.tasks.language_modeling import _load, _source, lm_checksum, load_lm_teacher

    skeleton = load_lm_teacher(teacher_spec, cache_dir)
    check_llama_family(skeleton.model, "teacher")
    if weightless:
        from transformers import AutoModelForCausalLM

        shape, _ = _checked(skeleton.model.config, data, args, WHERE)
        return CausalLM(AutoModelForCausalLM.from_config(shaped_config(skeleton.model.config, shape)),
                        skeleton.tokenizer)
    return cut_student(lambda: _load(*_source(teacher_spec, cache_dir), "teacher"), skeleton.model.config, data,
                       args, lm_checksum(teacher_spec), WHERE)


def _checked(config, data, args: dict, where: str):
    from distillab.models.lm_prune import LAYER_METRICS

    shape = cut_shape(config, args, where)
    metric = args.get("layer_metric", "block_influence")
    if metric not in LAYER_METRICS:
        raise SpecError(f"{where}.layer_metric: {metric!r} is not one of {', '.join(LAYER_METRICS)}")
    return shape, calibration_blocks(data, args.get("calibration_tokens", DEFAULT_CALIBRATION_TOKENS), where)


def cut_student(load_teacher, config, data, args: dict, teacher_key: str | None, where: str = WHERE):
    """The teacher (``load_teacher()``, a ``CausalLM``) cut as ``args`` say, scored on ``data``'s
    training split; computed once per process for a (teacher, data, args) and copied for each call
    (``teacher_key`` None: a teacher that cannot be identified, cut afresh every time)."""
    from distillab.models.hf import CausalLM
    from distillab.models.lm_prune import check_llama_family, cut, estimate_importance, summary, teacher_shape

    shape, blocks = _checked(config, data, args, where)
    metric = args.get("layer_metric", "block_influence")
    key = (teacher_key, data.source, json.dumps(args, sort_keys=True, default=str))
    if teacher_key is None or key not in _CUTS:
        teacher = load_teacher()
        check_llama_family(teacher.model, "teacher")
        log.info("scoring the teacher's heads, neurons, channels and layers on %d calibration tokens",
                 blocks.numel())
        importance = estimate_importance(teacher.model, blocks, layer_metric=metric)
        model = cut(teacher.model, importance, shape, metric)
        facts = summary(importance, shape, teacher_shape(teacher.model.config), model.cut_layers, metric)
        _CUTS.clear()  # one cut kept: a model of 100s of MB
        _CUTS[key] = (CausalLM(model, teacher.tokenizer), facts)
    student, facts = _CUTS[key]
    if teacher_key is None:
        _CUTS.clear()
    out = copy.deepcopy(student)
    out.cut = facts  # the report records it
    return out
