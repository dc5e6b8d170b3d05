"""Before any student trains: is the teacher worth learning from, and is it fed what it expects?

Each image-classification teacher is measured on the validation split. A teacher given as a
file is also measured under the other input conventions (``teacher.input``): one that scores
clearly better there was trained on other inputs, and the run stops with the setting to use.
A teacher near chance stops the run too. ``accept_weak_teacher`` proceeds anyway; the report
records the check either way.

Evaluations are cached by the teacher's key and the split's contents, so a second run of the
same teacher on the same data does not repeat them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from distillab.data.cache import default_cache_dir
from distillab.files import atomic_write_json
from distillab.errors import SpecError
from distillab.models.teacher_input import TeacherInputs, with_input_convention
from distillab.tasks.base import Evaluation

log = logging.getLogger("distillab")

NEAR_CHANCE = 0.1  # weak: within this share of the way from chance (the majority class) to 100 %
CLEARLY_BETTER = 0.05  # another input convention scoring this much higher (accuracy) is the right one


def _split_digest(data, split: str) -> str | None:
    """sha256 of a split's inputs and labels (images) or token blocks, mask and characters per
    target (text), or None for data without addressable splits."""
    part = getattr(data, split, None)
    if hasattr(data, "full_train"):
        tensors = (data.split(split).images, data.split(split).labels)
    elif all(hasattr(part, name) for name in ("tokens", "mask", "chars")):
        tensors = (part.tokens, part.mask, part.chars)
    else:
        return None
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def evaluation_key(teacher_key: str | None, task, data, split: str) -> str | None:
    """What decides a teacher's evaluation: the teacher, the task, the split's contents and how
    they are prepared. None when any part cannot be established (then nothing is cached)."""
    contents = _split_digest(data, split)
    if teacher_key is None or contents is None:
        return None
    prepared = data.normalize.describe() if hasattr(data, "normalize") else "token ids"
    parts = [f"teacher={teacher_key}", f"task={task.name}", f"split={split}", f"contents={contents}",
             f"normalize={prepared}"]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def cached_evaluation(task, model, teacher_key: str | None, data, split: str, batch_size: int, device,
                      cache_dir: Path | None) -> Evaluation:
    """``task.evaluate`` of a teacher, read from the cache when this teacher was measured on this split."""
    key = evaluation_key(teacher_key, task, data, split)
    path = (cache_dir or default_cache_dir()) / "teacher_eval" / f"{key}.json" if key else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            return Evaluation(stored["metrics"], stored["primary"])
        except (OSError, ValueError, KeyError):
            log.warning("teacher evaluation: cache entry %s unreadable, measuring again", path)
    evaluation = task.evaluate(model.to(device), data, split, batch_size, device)
    if path is not None:
        try:
            atomic_write_json(path, {"metrics": evaluation.metrics, "primary": evaluation.primary})
        except OSError as error:  # a read-only cache only costs the next run the same evaluation
            log.warning("teacher evaluation: not cached (%s)", error.strerror or error)
    return evaluation


def _chance(data) -> float:
    """The accuracy of always answering the validation split's most common class."""
    labels = data.val.labels
    return float(labels.bincount().max()) / len(labels)


def check_teachers(task, data, teachers, *, batch_size: int, device, cache_dir: Path | None, accept: bool,
                   where_of=None) -> list[dict]:
    """Measure each teacher on validation; stop (SpecError) when one is near chance or was given
    the wrong inputs, unless ``accept``. Returns one record per teacher for the report."""
    if task.name != "image_classification" or not hasattr(data, "full_train"):
        return []
    chance = _chance(data)
    records, problems = [], []
    for index, (model, key, facts) in enumerate(teachers):
        where = where_of(index) if where_of else ("teacher" if len(teachers) == 1 else f"teacher.{index}")
        log.info("%s: measuring it on the validation split", where)
        accuracy = cached_evaluation(task, model, key, data, "val", batch_size, device, cache_dir).metrics["accuracy"]
        record = {"teacher": where, "val_accuracy": accuracy, "chance": chance, "input": facts.get("input")}
        if facts.get("format") is not None:  # a file: try the other input conventions
            inner = model.teacher if isinstance(model, TeacherInputs) else model
            current = facts.get("input", "normalized")
            tried = {}
            for convention in ("normalized", "raw"):
                if convention != current:
                    alternative = with_input_convention(inner, data.normalize, convention)
                    tried[convention] = task.evaluate(alternative, data, "val", batch_size, device).metrics["accuracy"]
            record["other_inputs"] = tried
            best = max(tried, key=tried.get, default=None)
            if best is not None and tried[best] >= accuracy + CLEARLY_BETTER:
                problems.append(f"{where} scores {100 * tried[best]:.1f} % on {best} inputs and {100 * accuracy:.1f} % "
                                f"on {current} ones (validation): set {where}.input: {best}")
                records.append(record)
                continue
        if accuracy <= chance + NEAR_CHANCE * (1 - chance):
            problems.append(f"{where} scores {100 * accuracy:.1f} % on the validation split, near chance "
                            f"({100 * chance:.1f} % for always answering the most common class): it has little to "
                            "teach (a wrong checkpoint, or inputs it was not trained on: see teacher.input)")
        records.append(record)
    if problems:
        if not accept:
            raise SpecError("; ".join(problems) + ". Nothing was trained. To train anyway, pass "
                            "--accept-weak-teacher (accept_weak_teacher: true in the spec)")
        for problem in problems:
            log.warning("%s; training anyway (accept_weak_teacher)", problem)
        for record in records:
            record["accepted_weak"] = True
    return records
