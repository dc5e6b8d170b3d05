"""What the Python API (``distillab.api``) needs for text: language models and sentence encoders.

- ``as_text_model`` wraps a ``transformers`` model the way a spec loads one: a causal LM as
  ``CausalLM`` (ids (B, T) -> logits (B, T, V) cut to its tokenizer), an encoder as
  ``SentenceEncoder`` (ids (B, T) -> mean-pooled, normalised embeddings (B, D)).
- ``text_data`` builds the splits from the user's documents (a list of strings), a registered
  corpus name or a spec's ``data`` section, cut by position inside each document exactly as a
  spec's corpus is, and tokenised by the teacher's tokenizer.
"""

from __future__ import annotations

from pydantic import ValidationError
from torch import nn

from distillab.errors import DataError, SpecError
from distillab.tasks import TASKS

TEXT_TASKS = ("language_modeling", "text_embedding")


def task_of(name: str):
    if name not in TASKS:
        raise SpecError(f"task: unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def as_text_model(model: nn.Module, tokenizer, where: str, task: str) -> nn.Module:
    """A ``transformers`` model wrapped for ``task``; any other module is taken as it is."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is in the lock
        return model
    if not isinstance(model, PreTrainedModel):
        return model
    if tokenizer is None:
        raise SpecError(f"{where}: a transformers model needs its tokenizer; pass tokenizer=...")
    from distillab.models.hf import CausalLM, SentenceEncoder

    if task == "language_modeling":
        if model.get_output_embeddings() is None:
            raise SpecError(f"{where}: {type(model).__name__} has no language-model head; load it with "
                            "AutoModelForCausalLM")
        return CausalLM(model, tokenizer)
    return SentenceEncoder(model, tokenizer)


TEACHER_STUDENTS = ("teacher_pruned", "teacher_layers", "teacher_width")  # students made from the teacher


def teacher_student(name: str, teacher: nn.Module, args: dict, data):
    """A language-model student made from the (first) teacher: cut from it (``teacher_pruned``,
    scored on ``data``'s training text), some of its layers, or its architecture narrower."""
    from distillab.models.hf import CausalLM, reduced_width, teacher_subset

    if not isinstance(teacher, CausalLM):
        raise SpecError(f"student: {name} is made from a transformers causal LM teacher (passed with its "
                        f"tokenizer); this teacher is a {type(teacher).__name__}")
    try:
        if name == "teacher_layers":
            return teacher_subset(teacher, **args, where="student_args")
        if name == "teacher_width":
            return reduced_width(teacher, **args, where="student_args")
    except TypeError as error:
        raise SpecError(f"student_args: {name}: {error}") from None
    from distillab.tasks.lm_students import cut_student

    from distillab.models.identity import python_teacher_key

    # keyed by what the teacher is (class, weights, outputs), never by the object's id, which Python reuses
    return cut_student(lambda: teacher, teacher.model.config, data, dict(args), python_teacher_key(teacher, data),
                       "student_args")


def image_cut_student(teacher: nn.Module, args: dict, data) -> nn.Module:
    """An image student cut from a zoo ResNet or CNN teacher module (``models.cut``), its blocks
    ranked and its BatchNorm statistics re-estimated on ``data``'s training inputs."""
    from distillab.models.cut import calibration_images, checked_args, cut

    images = calibration_images(data, checked_args(args, "student_args")["calibration_images"])
    student, facts = cut(teacher, args, images, "student_args")
    student.cut = facts
    return student.train()


def tokenizer_of(teachers: list[nn.Module], tokenizer):
    """The tokenizer of the text: the argument, else the first teacher's own."""
    tokenizer = tokenizer if tokenizer is not None else getattr(teachers[0], "tokenizer", None)
    if tokenizer is None or not callable(tokenizer) or not hasattr(tokenizer, "__len__"):
        raise SpecError("tokenizer: text is tokenised with the teacher's tokenizer; pass tokenizer=... "
                        "(a transformers tokenizer)")
    return tokenizer


def name_of(model: nn.Module) -> str:
    """The class name a report shows: a wrapped transformers model's own (LlamaForCausalLM)."""
    from distillab.models.hf import CausalLM, SentenceEncoder

    return type(model.model if isinstance(model, (CausalLM, SentenceEncoder)) else model).__name__


def context_of(teachers: list[nn.Module]) -> int | None:
    lengths = [getattr(t, "context_length", None) for t in teachers]
    return min((n for n in lengths if n), default=None)


def text_data(task: str, train_data, tokenizer, context_length: int | None, val_size: float, test_size: float,
              limit: int | None, teachers: list[nn.Module], eval_limit: int | None = None):
    """TextData (language models) or SentenceData (encoders, ``data.teacher`` set to the first
    teacher) from documents, a corpus name or a spec's data section. ``limit``: training tokens,
    or training sentences; ``eval_limit``: validation and test tokens each (language models)."""
    from distillab.data.corpora import CORPORA
    from distillab.data.text import checked_context
    from distillab.spec import DataSpec

    embedding = task == "text_embedding"
    if embedding and eval_limit is not None:
        raise SpecError("eval_limit: a text encoder is evaluated on every validation and test sentence; "
                        "eval_limit applies to language models")
    max_context = context_of(teachers)
    if context_length is None:  # 128 tokens, or the teacher's whole context when it is shorter
        context_length = min(128, max_context or 128)
    if isinstance(train_data, (list, tuple)) and any(isinstance(item, str) for item in train_data):
        context = checked_context(context_length, max_context, "context_length")
        if embedding:
            from distillab.data.sentences import sentences_from_documents

            data = sentences_from_documents(list(train_data), tokenizer, context, val_size, test_size, limit)
        else:
            from distillab.data.text import text_from_documents

            data = text_from_documents(list(train_data), tokenizer, context, val_size, test_size, limit, eval_limit)
    elif isinstance(train_data, (str, dict)):
        section = train_data if isinstance(train_data, dict) else {
            "dataset": train_data, "context_length": context_length, "val_size": val_size, "test_size": test_size,
            ("limit_train" if embedding else "limit_tokens"): limit,
            **({} if embedding else {"limit_eval_tokens": eval_limit})}
        try:
            data_spec = DataSpec.model_validate(section)
        except ValidationError as error:
            first = error.errors()[0]
            raise SpecError(f"train_data.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
        if not data_spec.is_text:
            raise SpecError(f"train_data: {data_spec.dataset!r} is not a text corpus; known: {', '.join(CORPORA)}, "
                            "or a list of documents")
        checked_context(data_spec.context_length, max_context,
                        "train_data.context_length" if isinstance(train_data, dict) else "context_length")
        name = f"python:{type(tokenizer).__name__}"
        if embedding:
            from distillab.data.sentences import build_sentences

            data = build_sentences(data_spec, tokenizer, name)
        else:
            from distillab.data.text import build_text

            data = build_text(data_spec, tokenizer, name)
    else:
        kind = type(train_data).__name__
        if isinstance(train_data, (list, tuple)):
            kind = f"a {kind} of {', '.join(type(item).__name__ for item in train_data[:3]) or 'nothing'}"
        raise DataError(f"train_data: {'a text encoder' if embedding else 'a language model'} trains on text: a list "
                        f"of documents (strings), a corpus name or a spec's data section; got {kind}")
    if embedding:
        data.teacher = teachers[0]  # the reference every evaluation compares with
    return data
