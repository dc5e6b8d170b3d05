"""Language modelling: next-token logits (B, T, V) against the next tokens (B, T), counted
where ``mask`` is true. The primary metric is bits per character on held-out text (lower is
better): the summed negative log-likelihood in bits over the characters the predicted tokens
cover, which compares models with different tokenizers fairly. Also perplexity (per token),
next-token accuracy and the mean cross-entropy.

The teacher is a pretrained causal LM (a GGUF file, a Hugging Face folder, a registered
``pretrained`` model or a hub id); its tokenizer tokenises the corpus, and the students share
it. The teacher cache stores its top-k log-probabilities with a tail bucket (``data.text_cache``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from distillab.errors import DataError, SpecError
from distillab.tasks.base import Evaluation, Task

LOGIT_BYTES_PER_CHUNK = 1 << 28  # evaluation holds at most ~256 MB of fp32 logits at once

# Students built from the teacher or a folder, beside the zoo's "gpt" (name -> what model_args take).
# A literal allow-list (design rule 2).
LM_STUDENTS = {
    "teacher_layers": "some of the teacher's layers, copied (DistilBERT-style): layers [indices] or keep N",
    "teacher_width": "the teacher's architecture and tokenizer, narrower, freshly initialised: hidden_size, "
                     "intermediate_size, heads, kv_heads, layers, head_dim",
    "teacher_pruned": "the teacher cut to its most important heads, neurons, channels and layers (Minitron): "
                      "hidden_size, intermediate_size, heads, kv_heads, layers, or params (+ axis width|depth); "
                      "calibration_tokens, layer_metric; for an image classifier, a zoo resnet or cnn teacher's "
                      "channels and blocks: keep, blocks, importance, round_to",
    "hf": "a Hugging Face causal LM folder (path); it must share the teacher's tokenizer",
}


def _source(teacher_spec, cache_dir):
    from distillab.models.hf import resolve_source

    folder, gguf_file, local_only = resolve_source(teacher_spec.checkpoint, teacher_spec.pretrained, teacher_spec.hub)
    return str(folder), gguf_file, local_only, str(cache_dir) if cache_dir else None


@lru_cache(maxsize=2)
def _load(folder: str, gguf_file: str | None, local_only: bool, cache_dir: str | None, where: str):
    from distillab.models.hf import load_causal_lm

    model = load_causal_lm(folder if not local_only else Path(folder), gguf_file, local_only, where,
                           Path(cache_dir) if cache_dir else None)
    return model.eval()


@lru_cache(maxsize=2)
def _skeleton(folder: str, gguf_file: str | None, local_only: bool, cache_dir: str | None, where: str):
    from distillab.models.hf import load_causal_lm_skeleton

    return load_causal_lm_skeleton(folder if not local_only else Path(folder), gguf_file, local_only, where,
                                   Path(cache_dir) if cache_dir else None)


_WEIGHTLESS: ContextVar[bool] = ContextVar("weightless_teachers", default=False)


@contextmanager
def weightless_teachers():
    """Inside it, language-model teachers load without their weights (the architecture on the
    meta device, and the tokenizer): enough to tokenise the corpus and to check a spec, as
    ``distillab validate`` does, without reading 100s of MB."""
    token = _WEIGHTLESS.set(True)
    try:
        yield
    finally:
        _WEIGHTLESS.reset(token)


def teachers_weightless() -> bool:
    """Whether teachers load without their weights here (inside ``weightless_teachers()``)."""
    return _WEIGHTLESS.get()


def load_lm_teacher(teacher_spec, cache_dir=None, where: str = "teacher"):
    """The teacher ``CausalLM`` of a spec (loaded once per process; weightless inside
    ``weightless_teachers()``)."""
    return (_skeleton if _WEIGHTLESS.get() else _load)(*_source(teacher_spec, cache_dir), where)


def lm_checksum(teacher_spec) -> str:
    """What identifies the teacher's weights: the GGUF file's hash, the folder's weight files', or the hub id."""
    from distillab.models.hf import resolve_source
    from distillab.models.loading import file_checksum

    folder, gguf_file, local_only = resolve_source(teacher_spec.checkpoint, teacher_spec.pretrained, teacher_spec.hub)
    if not local_only:
        return f"hub:{folder}"
    if gguf_file:
        return file_checksum(Path(folder) / gguf_file)
    weights = sorted(p for p in Path(folder).glob("*") if p.suffix in (".safetensors", ".bin"))
    return "+".join(file_checksum(p)[:16] for p in weights) or f"folder:{folder}"


class LanguageModeling(Task):
    name = "language_modeling"
    summary = ("next-token prediction on a text corpus: bits per character (lower is better), perplexity, "
               "next-token accuracy; the cache stores top-k log-probabilities with a tail bucket")
    metric = "bits_per_character"
    higher_is_better = False
    cache_unit = "blocks"
    cache_kind = "topk_logprobs"

    def build(self, data_spec, seed: int, spec=None):
        from distillab.data.text import build_text

        if spec is None:
            raise SpecError("language_modeling: the corpus is tokenised with the teacher's tokenizer; give a teacher")
        teacher_spec = spec.teachers[0]
        teacher = load_lm_teacher(teacher_spec, spec.cache.dir)
        name = str(teacher_spec.pretrained or teacher_spec.hub or teacher_spec.checkpoint)
        return build_text(data_spec, teacher.tokenizer, name, teacher.context_length)

    def build_student(self, spec, data):
        from distillab.data.text import tokenizer_fingerprint
        from distillab.models import hf
        from distillab.models.zoo import build_model

        name, args = spec.student.model, dict(spec.student.model_args)
        if name not in LM_STUDENTS:
            return build_model(name, data.in_shape, data.num_classes, args, "student")
        if name == "hf":
            if not isinstance(args.get("path"), str):
                raise SpecError("student.model_args.path: give the Hugging Face folder of the student")
            student = hf.load_causal_lm(Path(args["path"]), where="student")
            if tokenizer_fingerprint(student.tokenizer) != tokenizer_fingerprint(data.tokenizer):
                raise SpecError(f"student.model_args.path: the student's tokenizer ({len(student.tokenizer)} tokens) "
                                f"differs from the teacher's ({len(data.tokenizer)}); token-level distillation needs "
                                "one tokenizer")
            return student
        if name == "teacher_pruned":
            from distillab.tasks.lm_students import pruned_student

            return pruned_student(spec.teachers[0], spec.cache.dir, data, args, _WEIGHTLESS.get())
        if name == "teacher_layers":  # copies the teacher's weights: load them, even for a validation
            teacher = _load(*_source(spec.teachers[0], spec.cache.dir), "teacher")
        else:  # the teacher's architecture only
            teacher = load_lm_teacher(spec.teachers[0], spec.cache.dir)
        try:
            if name == "teacher_layers":
                return hf.teacher_subset(teacher, **args)
            return hf.reduced_width(teacher, **args)
        except TypeError as error:
            raise SpecError(f"student.model_args: {name}: {error}") from None

    def load_teachers(self, spec, data, resume: bool = False, callbacks=None) -> list[tuple]:
        from distillab.data.text import tokenizer_fingerprint

        out = []
        for index, teacher_spec in enumerate(spec.teachers):
            where = "teacher" if len(spec.teachers) == 1 else f"teacher.{index}"
            model = load_lm_teacher(teacher_spec, spec.cache.dir, where)
            if tokenizer_fingerprint(model.tokenizer) != tokenizer_fingerprint(data.tokenizer):
                raise SpecError(f"{where}: its tokenizer differs from the first teacher's (which tokenised the "
                                "corpus); token-level distillation needs one tokenizer")
            source = teacher_spec.pretrained or teacher_spec.hub or str(teacher_spec.checkpoint)
            out.append((model, lm_checksum(teacher_spec), {"source": source}))
        return out

    @torch.no_grad()
    def evaluate(self, model, data, split: str, batch_size: int, device) -> Evaluation:
        was_training = getattr(model, "training", False)
        model.eval()
        nll_sum = chars = tokens = right = 0.0
        rows = max(1, min(batch_size, LOGIT_BYTES_PER_CHUNK // (4 * data.context_length * data.num_classes)))
        for batch in data.eval_batches(split, rows):
            logits = model(batch["inputs"].to(device)).float()  # (B, T, V)
            targets, mask = batch["targets"].to(device), batch["mask"].to(device)
            nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T) nats
            nll_sum += float((nll * mask).sum())
            right += float(((logits.argmax(-1) == targets) & mask).sum())
            tokens += float(mask.sum())
            chars += float(batch["chars"].sum())
        model.train(was_training)
        if tokens == 0:
            raise DataError(f"the {split} text has no tokens to predict")
        metrics = {
            "bits_per_character": nll_sum / math.log(2) / max(chars, 1.0),
            "perplexity": math.exp(nll_sum / tokens),
            "accuracy": right / tokens,  # next-token accuracy
            "loss": nll_sum / tokens,  # mean cross-entropy per token, nats
        }
        return Evaluation(metrics, self.metric)

    def finish_run(self, job, data, teachers, phases: dict, folder, device) -> dict:
        """The cut's zero-shot score, the student as a Hugging Face folder, and its use as the teacher's draft model."""
        from distillab.tasks.lm_report import finish_lm_run

        return finish_lm_run(job, data, teachers, phases, folder, device)

    def correct(self, student_outputs: torch.Tensor, batch: dict) -> tuple[int, int]:
        mask = batch["mask"]
        right = (student_outputs.detach().argmax(-1) == batch["targets"]) & mask
        return int(right.sum()), int(mask.sum())

    def model_facts(self, models: dict, data, repeats: int) -> dict[str, dict]:
        from distillab.models.lm_facts import lm_facts

        return lm_facts(models, data.context_length, data.num_classes, repeats)

    def teacher_caches(self, settings, data, teachers, params, progress=None) -> list:
        """The first teacher's top-k log-probabilities at the strategy's temperature, when the
        strategy reads a top-k (``params.top_k``) and the cache is on."""
        from distillab.data.text_cache import teacher_topk
        from distillab.runtime import requested_precision, resolve_device, resolve_precision

        k = getattr(params, "top_k", None)
        if not settings.cache.enabled or k is None:
            return []
        model, checksum, _ = teachers[0]
        device = resolve_device(settings.training.device)
        rows = max(1, min(settings.training.eval_batch_size,
                          LOGIT_BYTES_PER_CHUNK // (4 * data.context_length * data.num_classes)))
        return [teacher_topk(model, checksum, data, k=k, temperature=params.temperature, cache_dir=settings.cache.dir,
                             batch_size=rows, device=device,
                             precision=resolve_precision(requested_precision(settings.training), device),
                             max_gb=settings.cache.max_gb, progress=progress,
                             selection=getattr(params, "selection", "top_k"))]
