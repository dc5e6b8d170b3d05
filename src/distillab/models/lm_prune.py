"""Students cut from a language-model teacher: importance-based width and depth pruning of a
Llama-family causal LM (the Minitron recipe: score, cut, then distil).

Importance is measured with forward passes only, on calibration tokens of the training split:

- **attention head**: the L2 norm of the head's contribution to the residual stream (its context
  vector through its own slice of ``o_proj``). Minitron norms the context vector alone; through
  ``o_proj``, a head whose output weights are zero scores zero, as it contributes nothing;
- **MLP neuron**: the magnitude of its activation (the input of ``down_proj``: act(gate) * up);
- **embedding channel**: the magnitude of the channel at the output of every RMSNorm that feeds
  a layer (``input_layernorm`` and ``post_attention_layernorm``), summed over those norms;
- **layer**: block influence, 1 - the mean cosine similarity between the layer's input and
  output hidden states (Men et al. 2024, used by Minitron), and optionally the increase of the
  calibration loss when the layer is skipped (one pass per layer, over at most 4,096 of the
  calibration tokens).

Aggregation (Minitron compares several): a per-token magnitude is averaged over the positions of
a calibration block, then the blocks are combined by their L2 norm.

The cut keeps, for every axis, the highest-scoring units in their original order, so a cut that
keeps everything is the teacher itself. Grouped-query attention is respected: whole key/value
groups are kept or dropped (a group scores the sum of its query heads), and every kept group
keeps the same number of its best query heads. The tied embedding and LM head, the norms and
every projection are cut along the same channels.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from distillab.errors import SpecError

# Architectures whose modules are laid out as Llama's (embed_tokens, layers[i].self_attn.{q,k,v,o}_proj,
# mlp.{gate,up,down}_proj, input/post_attention RMSNorms, norm, lm_head). A literal allow-list.
LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
MIN_CALIBRATION_TOKENS = 256
LAYER_METRICS = ("block_influence", "perplexity")
PERPLEXITY_TOKENS = 4096  # the skip-a-layer passes (one per layer) read at most this many calibration tokens


@dataclass
class Importance:
    """Scores of every unit of a Llama-family model (higher: more important)."""

    heads: torch.Tensor  # (L, H)
    neurons: torch.Tensor  # (L, I)
    channels: torch.Tensor  # (D,)
    block_influence: torch.Tensor  # (L,)
    tokens: int
    loss_increase: torch.Tensor | None = None  # (L,) nats per token when the layer is skipped
    extra: dict = field(default_factory=dict)

    def layer_scores(self, metric: str) -> torch.Tensor:
        if metric == "perplexity":
            if self.loss_increase is None:
                raise ValueError("the perplexity metric was not measured")
            return self.loss_increase
        return self.block_influence


def check_llama_family(model: nn.Module, where: str = "teacher") -> None:
    """Refuse a model whose layout the cut does not know, naming the ones it does."""
    kind = getattr(getattr(model, "config", None), "model_type", None)
    if kind not in LLAMA_FAMILY:
        raise SpecError(f"{where}: a {kind or type(model).__name__} model cannot be cut; teacher_pruned works on "
                        f"Llama-family causal LMs ({', '.join(LLAMA_FAMILY)})")


def _decoder(model: nn.Module):
    return model.model  # LlamaForCausalLM.model: embed_tokens, layers, norm


@torch.no_grad()
def estimate_importance(model: nn.Module, blocks: torch.Tensor, batch_size: int = 8,
                        layer_metric: str = "block_influence") -> Importance:
    """Scores from forward passes over ``blocks`` (N, T) token ids. ``layer_metric="perplexity"``
    also measures each layer's loss increase when skipped (one more pass per layer)."""
    check_llama_family(model)
    config = model.config
    layers = _decoder(model).layers
    heads, head_dim = config.num_attention_heads, _head_dim(config)
    L = len(layers)
    sums = {"heads": torch.zeros(L, heads, dtype=torch.float64),
            "neurons": torch.zeros(L, config.intermediate_size, dtype=torch.float64),
            "channels": torch.zeros(2 * L, config.hidden_size, dtype=torch.float64),
            "cos": torch.zeros(L, dtype=torch.float64)}
    positions = [0]

    def per_block(x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (C,) sum over blocks of (mean over T)^2
        return x.float().mean(1).double().pow(2).sum(0)

    hooks = []
    for index, layer in enumerate(layers):
        def on_heads(module, args, index=index):
            x = args[0].float().reshape(*args[0].shape[:-1], heads, head_dim)  # (B, T, H, hd) context vectors
            weight = module.weight.float().reshape(-1, heads, head_dim)  # (D, H, hd): each head's slice of o_proj
            norms = torch.stack([(x[..., h, :] @ weight[:, h, :].T).norm(dim=-1) for h in range(heads)], -1)
            sums["heads"][index] += per_block(norms)  # (B, T, H): each head's contribution to the residual stream

        def on_neurons(module, args, index=index):
            sums["neurons"][index] += per_block(args[0].abs())

        def on_norm(slot):
            def hook(module, args, output):
                sums["channels"][slot] += per_block(output.abs())
            return hook

        def on_layer(module, args, kwargs, output, index=index):
            before = args[0] if args else kwargs["hidden_states"]
            after = output[0] if isinstance(output, tuple) else output
            sums["cos"][index] += F.cosine_similarity(before.float(), after.float(), dim=-1).double().sum()

        hooks += [layer.self_attn.o_proj.register_forward_pre_hook(on_heads),
                  layer.mlp.down_proj.register_forward_pre_hook(on_neurons),
                  layer.input_layernorm.register_forward_hook(on_norm(2 * index)),
                  layer.post_attention_layernorm.register_forward_hook(on_norm(2 * index + 1)),
                  layer.register_forward_hook(on_layer, with_kwargs=True)]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(blocks), batch_size):
            chunk = blocks[start:start + batch_size]
            model(input_ids=chunk, use_cache=False)
            positions[0] += chunk.numel()
    finally:
        for hook in hooks:
            hook.remove()
    importance = Importance(
        heads=sums["heads"].sqrt().float(), neurons=sums["neurons"].sqrt().float(),
        channels=sums["channels"].sqrt().sum(0).float(),
        block_influence=(1 - sums["cos"] / positions[0]).float(), tokens=positions[0])
    if layer_metric == "perplexity":  # one pass per layer: on at most PERPLEXITY_TOKENS of the blocks
        rows = max(1, min(len(blocks), PERPLEXITY_TOKENS // blocks.shape[1]))
        importance.loss_increase = _loss_increase(model, blocks[torch.linspace(0, len(blocks) - 1, rows).long()],
                                                  batch_size)
    model.train(was_training)
    return importance


def _loss(model: nn.Module, blocks: torch.Tensor, batch_size: int) -> float:
    total = count = 0.0
    for start in range(0, len(blocks), batch_size):
        chunk = blocks[start:start + batch_size]
        logits = model(input_ids=chunk[:, :-1], use_cache=False).logits.float()
        total += float(F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="sum"))
        count += chunk[:, 1:].numel()
    return total / count


def _loss_increase(model: nn.Module, blocks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Per layer: the calibration loss with that layer skipped (its output replaced by its input), minus the full model's."""
    base = _loss(model, blocks, batch_size)
    out = []
    for layer in _decoder(model).layers:
        def skip(module, args, kwargs, output):
            before = args[0] if args else kwargs["hidden_states"]
            return (before, *output[1:]) if isinstance(output, tuple) else before

        hook = layer.register_forward_hook(skip, with_kwargs=True)
        try:
            out.append(_loss(model, blocks, batch_size) - base)
        finally:
            hook.remove()
    return torch.tensor(out)


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


@dataclass(frozen=True)
class CutShape:
    hidden_size: int
    intermediate_size: int
    heads: int
    kv_heads: int
    layers: int


def teacher_shape(config) -> CutShape:
    return CutShape(config.hidden_size, config.intermediate_size, config.num_attention_heads,
                    config.num_key_value_heads or config.num_attention_heads, config.num_hidden_layers)


def check_shape(config, shape: CutShape, where: str = "student.model_args") -> None:
    """A clear error for a shape the teacher cannot be cut to."""
    full = teacher_shape(config)
    for name in ("hidden_size", "intermediate_size", "heads", "kv_heads", "layers"):
        value, limit = getattr(shape, name), getattr(full, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SpecError(f"{where}.{name}: {value!r} must be a whole number of at least 1")
        if value > limit:
            raise SpecError(f"{where}.{name}: {value} is larger than the teacher's {limit}; a cut can only remove")
    if shape.hidden_size % shape.heads:
        raise SpecError(f"{where}: hidden_size ({shape.hidden_size}) must be a multiple of heads ({shape.heads}); "
                        "transformers refuses other Llama configs")
    if shape.heads % shape.kv_heads:
        raise SpecError(f"{where}: heads ({shape.heads}) must divide into kv_heads ({shape.kv_heads}) equal groups")
    group = full.heads // full.kv_heads
    if shape.heads // shape.kv_heads > group:
        raise SpecError(f"{where}: {shape.heads // shape.kv_heads} query heads per key/value group is more than the "
                        f"teacher's {group} (it has {full.heads} heads in {full.kv_heads} groups); give heads <= "
                        f"{group} * kv_heads")


def shaped_config(config, shape: CutShape):
    out = copy.deepcopy(config)
    out.head_dim = _head_dim(config)  # heads keep their width: the cut removes whole heads
    out.hidden_size, out.intermediate_size = shape.hidden_size, shape.intermediate_size
    out.num_attention_heads, out.num_key_value_heads = shape.heads, shape.kv_heads
    out.num_hidden_layers = shape.layers
    if getattr(out, "layer_types", None):
        out.layer_types = out.layer_types[:shape.layers]
    return out


def parameter_count(config, shape: CutShape) -> int:
    """Parameters of the cut model, counted on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shaped_config(config, shape))
    seen, total = set(), 0
    for parameter in model.parameters():  # tied tensors once
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def shape_for_params(config, params: float, axis: str = "width", where: str = "student.model_args") -> CutShape:
    """The default split of a parameter target. ``width``: the hidden size and the MLP shrink by
    one factor, heads and layers stay (the widest hidden size, a multiple of 4 and of the heads,
    that fits with the MLP shrunk in proportion; then the widest MLP, a multiple of 32, that
    still fits). ``depth``: the most layers that fit, widths unchanged."""
    full = teacher_shape(config)
    total = parameter_count(config, full)
    if params >= total:
        raise SpecError(f"{where}.params: {params:,.0f} is not smaller than the teacher's {total:,} parameters")
    if axis == "depth":
        for layers in range(full.layers - 1, 0, -1):
            shape = CutShape(full.hidden_size, full.intermediate_size, full.heads, full.kv_heads, layers)
            if parameter_count(config, shape) <= params:
                return shape
    elif axis == "width":
        step = math.lcm(full.heads, 4)  # transformers wants the hidden size a multiple of the heads
        mlp_step = 32 if full.intermediate_size >= 512 else 4
        for hidden in range(full.hidden_size - full.hidden_size % step, step - 1, -step):
            intermediate = max(mlp_step, int(full.intermediate_size * hidden / full.hidden_size) // mlp_step * mlp_step)
            shape = CutShape(hidden, intermediate, full.heads, full.kv_heads, full.layers)
            if parameter_count(config, shape) <= params:
                while shape.intermediate_size + mlp_step <= full.intermediate_size:  # the widest MLP that still fits
                    wider = CutShape(hidden, shape.intermediate_size + mlp_step, full.heads, full.kv_heads, full.layers)
                    if parameter_count(config, wider) > params:
                        break
                    shape = wider
                return shape
    else:
        raise SpecError(f"{where}.axis: {axis!r} is not width or depth")
    raise SpecError(f"{where}.params: {params:,.0f} parameters is too few for any {axis} cut of this teacher")


def _kept(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores, in their original order."""
    return scores.topk(count).indices.sort().values


def _rows(units: torch.Tensor, width: int) -> torch.Tensor:
    """Row indices of whole units (heads) of ``width`` rows each."""
    return (units[:, None] * width + torch.arange(width)).reshape(-1)


@torch.no_grad()
def cut(model: nn.Module, importance: Importance, shape: CutShape, layer_metric: str = "block_influence") -> nn.Module:
    """A new model of the teacher's architecture and ``shape`` holding its most important weights."""
    from transformers import AutoModelForCausalLM

    config = model.config
    full = teacher_shape(config)
    check_shape(config, shape)
    head_dim, group = _head_dim(config), full.heads // full.kv_heads
    per_group = shape.heads // shape.kv_heads
    layers = _kept(importance.layer_scores(layer_metric), shape.layers).tolist()
    channels = _kept(importance.channels, shape.hidden_size)
    student = AutoModelForCausalLM.from_config(shaped_config(config, shape), dtype=torch.float32)
    source, target = _decoder(model), _decoder(student)
    target.embed_tokens.weight.copy_(source.embed_tokens.weight[:, channels])
    target.norm.weight.copy_(source.norm.weight[channels])
    if not getattr(config, "tie_word_embeddings", False):
        student.lm_head.weight.copy_(model.lm_head.weight[:, channels])
        if getattr(model.lm_head, "bias", None) is not None:
            student.lm_head.bias.copy_(model.lm_head.bias)
    for new_index, old_index in enumerate(layers):
        old, new = source.layers[old_index], target.layers[new_index]
        scores = importance.heads[old_index].reshape(full.kv_heads, group)
        groups = _kept(scores.sum(1), shape.kv_heads)
        query_heads = torch.cat([g * group + _kept(scores[g], per_group) for g in groups.tolist()])
        q_rows, kv_rows = _rows(query_heads, head_dim), _rows(groups, head_dim)
        neurons = _kept(importance.neurons[old_index], shape.intermediate_size)
        attention, new_attention = old.self_attn, new.self_attn
        for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            _copy_linear(getattr(attention, name), getattr(new_attention, name), rows, channels)
        _copy_linear(attention.o_proj, new_attention.o_proj, channels, q_rows)
        for name in ("q_norm", "k_norm"):  # per-head-dim norms (Qwen3) keep their width
            if hasattr(attention, name):
                getattr(new_attention, name).load_state_dict(getattr(attention, name).state_dict())
        _copy_linear(old.mlp.gate_proj, new.mlp.gate_proj, neurons, channels)
        _copy_linear(old.mlp.up_proj, new.mlp.up_proj, neurons, channels)
        _copy_linear(old.mlp.down_proj, new.mlp.down_proj, channels, neurons)
        new.input_layernorm.weight.copy_(old.input_layernorm.weight[channels])
        new.post_attention_layernorm.weight.copy_(old.post_attention_layernorm.weight[channels])
    student.tie_weights()
    student.cut_layers = layers  # which of the teacher's layers the student holds
    return student.eval()


def _copy_linear(old: nn.Linear, new: nn.Linear, rows: torch.Tensor, columns: torch.Tensor) -> None:
    new.weight.copy_(old.weight[rows][:, columns])
    if old.bias is not None:
        new.bias.copy_(old.bias[rows])


def summary(importance: Importance, shape: CutShape, full: CutShape, layers: list[int], metric: str) -> dict:
    """What the report records of a cut."""
    out = {"shape": asdict(shape), "teacher_shape": asdict(full),
           "calibration_tokens": importance.tokens, "layer_metric": metric, "kept_layers": layers,
           "block_influence": [round(float(v), 5) for v in importance.block_influence]}
    if importance.loss_increase is not None:
        out["loss_increase"] = [round(float(v), 5) for v in importance.loss_increase]
    if not all(math.isfinite(float(v)) for v in importance.block_influence):
        out["warning"] = "non-finite block influence: the calibration pass produced NaN or inf"
    return out
