"""The language-model search space, and what each student costs before anything trains.

Four families share the teacher's tokenizer:

- ``gpt``: the zoo's decoder (layers × width, 64-wide heads);
- ``teacher_layers``: some of the teacher's decoder layers, copied (``keep`` N, evenly spaced);
- ``teacher_width``: the teacher's architecture, narrower and shallower, freshly initialised;
- ``teacher_pruned``: the teacher cut to its most important layers (depth) or channels, heads and
  neurons (width, to a parameter target), as ``models.lm_prune`` cuts it.

Each is counted on the meta device: its parameters, the MACs of one decoded token (every matrix
it multiplies, the output head included) and of one block of the context, and its decoder
blocks. Its speed is greedy decoding at batch 1 with a key/value cache, in ms per token, as the
report's decode column measures it (``models.lm_facts``); a decode latency model fitted on probes
of both kinds (the zoo's and transformers') predicts it for the rest.
"""

from __future__ import annotations

import copy
import json
import random
import statistics
import time

import torch
from torch import nn

from distillab.autodistill.latency import LatencyModel, fit_probes, probes_of
from distillab.autodistill.space import Candidate
from distillab.errors import SpecError
from distillab.models.lm_facts import NEW_TOKENS, PROMPT_TOKENS  # the report's decode protocol

# The grids scale with the teacher: widths are fractions of its hidden size, in heads as wide as
# its own (SmolLM2-135M, hidden 576 in 64-wide heads: gpt widths 128 to 384, teacher_width 192 and 384).
GPT_LAYERS = (2, 3, 4, 6, 8)
GPT_WIDTHS = (2 / 9, 1 / 3, 4 / 9, 5 / 9, 2 / 3)
KEEP_LAYERS = (2, 3, 4, 6, 8)  # teacher_layers, fewer than the teacher's
NARROW_WIDTHS = (1 / 3, 2 / 3)  # teacher_width
NARROW_LAYERS = (4, 8)
CUT_LAYERS = (2, 4, 8)  # teacher_pruned: depth cuts
CUT_PARAMS = (0.3,)  # teacher_pruned: width cuts to this share of the teacher's parameters


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _widths(config, fractions) -> list[int]:
    """The teacher's hidden size times each fraction, in whole heads of the teacher's width."""
    head = _head_dim(config)
    return sorted({max(1, round(config.hidden_size * f / head)) * head for f in fractions} - {config.hidden_size})


def _architectures(families, config, train_tokens: int | None = None) -> list[tuple[str, dict]]:
    """(name, model_args) of every student of ``families``; a cut ranks the teacher's units on
    the default calibration tokens, or on all of a smaller training split's."""
    from distillab.models.lm_prune import MIN_CALIBRATION_TOKENS, parameter_count, teacher_shape
    from distillab.tasks.lm_students import DEFAULT_CALIBRATION_TOKENS

    out: list[tuple[str, dict]] = []
    head = _head_dim(config)
    teacher_layers = config.num_hidden_layers
    for family in families:
        if family == "gpt":
            out += [("gpt", {"layers": layers, "dim": dim, "heads": dim // head})
                    for layers in GPT_LAYERS for dim in _widths(config, GPT_WIDTHS)]
        elif family == "teacher_layers":
            out += [("teacher_layers", {"keep": keep}) for keep in KEEP_LAYERS if keep < teacher_layers]
        elif family == "teacher_width":
            group = config.num_attention_heads // (config.num_key_value_heads or config.num_attention_heads)
            ratio = config.intermediate_size / config.hidden_size
            for hidden in _widths(config, NARROW_WIDTHS):
                heads = hidden // head
                kv_heads = heads // group if heads % group == 0 else heads
                intermediate = max(head, round(hidden * ratio / head) * head)
                out += [("teacher_width", {"hidden_size": hidden, "intermediate_size": intermediate, "heads": heads,
                                           "kv_heads": kv_heads, "layers": layers})
                        for layers in sorted({min(n, teacher_layers) for n in NARROW_LAYERS})]
        elif family == "teacher_pruned":
            calibration = {}
            if train_tokens is not None and train_tokens < DEFAULT_CALIBRATION_TOKENS:
                if train_tokens < MIN_CALIBRATION_TOKENS:
                    continue  # too little text to rank the teacher's units
                calibration = {"calibration_tokens": train_tokens}
            out += [("teacher_pruned", {"layers": layers, **calibration}) for layers in CUT_LAYERS
                    if layers < teacher_layers]
            try:
                total = parameter_count(config, teacher_shape(config))
            except (AttributeError, TypeError):
                continue
            out += [("teacher_pruned", {"params": round(share * total), "axis": "width", **calibration})
                    for share in CUT_PARAMS]
    return out


def student_config(teacher_config, name: str, args: dict):
    """The transformers config of a student made from the teacher (its shape; no weights)."""
    config = copy.deepcopy(teacher_config)
    if name == "teacher_layers":
        shape = {"layers": args["keep"]}
    elif name == "teacher_width":
        shape = dict(args)
        shape["head_dim"] = args["hidden_size"] // args["heads"]
    else:  # teacher_pruned: the cut keeps the teacher's head width
        from distillab.tasks.lm_students import cut_shape

        cut = cut_shape(config, args, "auto.space")
        shape = {"hidden_size": cut.hidden_size, "intermediate_size": cut.intermediate_size, "heads": cut.heads,
                 "kv_heads": cut.kv_heads, "layers": cut.layers,
                 "head_dim": _head_dim(config)}
    if "hidden_size" in shape:
        config.hidden_size, config.intermediate_size = shape["hidden_size"], shape["intermediate_size"]
        config.num_attention_heads, config.num_key_value_heads = shape["heads"], shape["kv_heads"]
        config.head_dim = shape["head_dim"]
    config.num_hidden_layers = shape["layers"]
    if getattr(config, "layer_types", None):
        config.layer_types = config.layer_types[: shape["layers"]]
    return config


def _costs(model: nn.Module, blocks: int, context: int, attention_width: int) -> tuple[int, int, int]:
    """(parameters, MACs of one decoded token, MACs of one block of ``context`` tokens)."""
    params = sum(p.numel() for p in model.parameters())  # a tied embedding and head count once
    token = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    attention = blocks * context * context * attention_width  # scores and weighted values, causal (half of 2)
    return params, token, token * context + attention


def count_lm(name: str, args: dict, teacher, context: int, vocabulary: int) -> Candidate:
    """The candidate with its costs counted on the meta device."""
    if name == "gpt":
        from distillab.models.zoo import meta_model

        model = meta_model("gpt", (context,), vocabulary, args)
        blocks, width, group = args["layers"], args["dim"], "zoo"
    else:
        config = student_config(teacher.model.config, name, args)
        with torch.device("meta"):
            model = type(teacher.model)(config)
        blocks, width, group = config.num_hidden_layers, config.num_attention_heads * config.head_dim, "transformers"
    params, token, block = _costs(model, blocks, context, width)
    return Candidate(name, json.dumps(args, sort_keys=True), params, block, blocks, group, token)


def lm_candidates(families, teacher, context: int, vocabulary: int, train_tokens: int | None = None) -> list[Candidate]:
    """Every architecture of ``families`` for this teacher, counted; a shape this teacher cannot be
    cut to (a teacher_pruned cut of a model that is not Llama-family) is left out."""
    out = []
    for name, args in _architectures(families, teacher.model.config, train_tokens):
        try:
            out.append(count_lm(name, args, teacher, context, vocabulary))
        except (SpecError, ValueError, AttributeError):
            continue
    return out


def random_student(candidate: Candidate, teacher, context: int, vocabulary: int) -> nn.Module:
    """A model of the candidate's shape with fresh weights: its speed does not depend on them."""
    torch.manual_seed(0)
    if candidate.model == "gpt":
        from distillab.models.zoo import build_model

        return build_model("gpt", (context,), vocabulary, candidate.args).eval()
    from distillab.models.hf import CausalLM

    config = student_config(teacher.model.config, candidate.model, candidate.args)
    return CausalLM(type(teacher.model)(config), teacher.tokenizer).eval()


@torch.no_grad()
def decode_ms_per_token(models: dict[str, nn.Module], vocabulary: int, context: int, rounds: int = 5) -> dict:
    """Median ms per token of greedy generation at batch 1 (a 16-token prompt, 32 new tokens,
    with the key/value cache; fewer in a shorter context), as the report's decode tokens/s
    measures it. The models are timed round-robin, in a shuffled order each round, so what
    disturbs the machine for a moment hits them alike rather than one of them."""
    prompt_tokens = min(PROMPT_TOKENS, context // 2)
    new_tokens = min(NEW_TOKENS, context - prompt_tokens)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocabulary, (1, prompt_tokens), generator=generator)
    for model in models.values():
        model.generate(prompt, min(4, new_tokens))  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    order, shuffle = list(models), random.Random(0)
    for _ in range(max(2, rounds)):
        shuffle.shuffle(order)
        for name in order:
            start = time.perf_counter()
            models[name].generate(prompt, new_tokens)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) / new_tokens * 1000.0 for name, seconds in times.items()}


class LMSpace:
    """The language-model search space of one teacher and corpus: candidates, the decode latency
    model, and the measurement of one candidate's speed."""

    kind = "decode"

    def __init__(self, teacher, context: int, vocabulary: int, train_tokens: int | None = None):
        self.teacher, self.context, self.vocabulary = teacher, context, vocabulary
        self.train_tokens = train_tokens

    def candidates(self, families) -> list[Candidate]:
        return lm_candidates(families, self.teacher, self.context, self.vocabulary, self.train_tokens)

    def measure(self, candidate: Candidate, repeats: int = 5) -> float:
        return self.measure_all([candidate], repeats)[candidate.name]

    def measure_all(self, candidates: list[Candidate], rounds: int = 5) -> dict[str, float]:
        """ms per decoded token of each candidate, timed together (``decode_ms_per_token``)."""
        models = {c.name: random_student(c, self.teacher, self.context, self.vocabulary) for c in candidates}
        return decode_ms_per_token(models, self.vocabulary, self.context, rounds)

    def latency_model(self, pool: list[Candidate], runtime: str, batch_size: int, probes: int = 10) -> LatencyModel:
        """Probes of each kind (zoo and transformers), spread over the MACs of their own kind,
        timed together."""
        groups = sorted({c.group for c in pool})
        chosen = []
        for group in groups:
            members = [c for c in pool if c.group == group]
            chosen += probes_of(members, max(3, probes // len(groups)))
        measured = self.measure_all(chosen)
        return fit_probes(chosen, lambda c: measured[c.name], runtime, batch_size, self.kind)

    def teacher_macs(self) -> int:
        config = self.teacher.model.config
        width = config.num_attention_heads * _head_dim(config)
        return _costs(self.teacher.model, config.num_hidden_layers, self.context, width)[2]
