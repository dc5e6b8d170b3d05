"""Getting a teacher: load its checkpoint, or train it once with the one training loop
and keep it in the cache (keyed by the spec parts that decide its weights)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import shlex
import sys
from contextlib import contextmanager
from pathlib import Path

from distillab import data as data_module
from distillab.data.cache import default_cache_dir
from distillab.files import atomic_write_json
from distillab.tasks.image_classification import evaluate
from distillab.runtime import resolve_device
from distillab.engine.loop import fit
from distillab.errors import SpecError
from distillab.models.identity import file_teacher_key
from distillab.models.loading import file_checksum, load_state_into, load_teacher, save_model
from distillab.models.teacher_input import with_input_convention
from distillab.models.zoo import build_model
from distillab.strategies import STRATEGIES
from distillab.tasks import TASKS

log = logging.getLogger("distillab")


def train_teacher(spec, index: int, out_path: Path, work_dir: Path, *, resume: bool = False, callbacks=()) -> dict:
    """Train teacher ``index`` of the spec from scratch; write safetensors + a JSON sidecar.

    Returns the facts recorded in the sidecar (test accuracy, command, seed ...).
    """
    teacher_spec = spec.teachers[index]
    training = teacher_spec.training or spec.training
    seed = training.seeds[0]
    bundle = data_module.build(spec.data, seed)
    model = build_model(teacher_spec.model, bundle.in_shape, bundle.num_classes, teacher_spec.model_args)
    strategy = STRATEGIES["none"]([], model, STRATEGIES["none"].Params(), in_shape=bundle.in_shape)
    result = fit(strategy, bundle, training, seed, work_dir, task=TASKS["image_classification"], resume=resume,
                 callbacks=callbacks, description=f"teacher[{index}] {teacher_spec.model}")
    device = resolve_device(training.device)
    test = evaluate(model, bundle.test, bundle.normalize, training.eval_batch_size, device)
    facts = {
        "model": teacher_spec.model,
        "model_args": teacher_spec.model_args,
        "dataset": spec.data.dataset,
        "seed": seed,
        "epochs": training.epochs,
        "best_epoch": result.best_epoch,
        "val_accuracy": result.best_val_score,
        "test_accuracy": test.accuracy,
        "seconds": round(result.seconds, 1),
        "command": shlex.join(["distillab", *sys.argv[1:]]) if sys.argv[0].endswith("distillab") else None,
    }
    save_model(model.cpu(), out_path, facts)
    atomic_write_json(out_path.with_suffix(".json"), {**facts, "sha256": file_checksum(out_path)})
    log.info("teacher[%d]: test accuracy %.4f -> %s", index, test.accuracy, out_path)
    return facts


def _trained_teacher_key(spec, index: int) -> str:
    from distillab.data import data_digest

    teacher_spec = spec.teachers[index]
    training = teacher_spec.training or spec.training
    blob = json.dumps(
        {"teacher": teacher_spec.model_dump(mode="json"), "training": training.model_dump(mode="json"),
         "data": spec.data.model_dump(mode="json"),  # and the data's contents: a file replaced at its path
         "contents": data_digest(spec.data.dataset, str(spec.data.path) if spec.data.path else None)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@contextmanager
def _exclusive(folder: Path):
    """An exclusive lock on ``folder`` between processes of this machine (flock on a lock file)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".lock", "a")
    except OSError as error:
        raise SpecError(f"cache.dir: cannot write the teacher cache {folder} ({error.strerror or error})") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def get_teachers(spec, bundle, *, resume: bool = False, callbacks=None) -> list[tuple[object, str, dict]]:
    """[(model, checksum, facts)] for every teacher in the spec, training those without a
    checkpoint once (then reusing the cached weights). ``callbacks("teacher", index)`` may
    return engine callbacks for that training."""
    out = []
    for index, teacher_spec in enumerate(spec.teachers):
        where = "teacher" if len(spec.teachers) == 1 else f"teacher.{index}"
        if teacher_spec.url is not None:
            import os

            from distillab.models.remote import RemoteTeacher

            model = RemoteTeacher(teacher_spec.url, os.environ.get(teacher_spec.api_key_env), bundle.in_shape,
                                  bundle.num_classes, where)
            out.append((model, model.fingerprint, {"source": teacher_spec.url, "top_k": model.top_k}))
            continue
        if teacher_spec.checkpoint is not None:
            model, checksum = load_teacher(teacher_spec, bundle.in_shape, bundle.num_classes, where)
            model = with_input_convention(model, bundle.normalize, teacher_spec.input)
            key = file_teacher_key(checksum, teacher_spec.resolved_format, teacher_spec.input_convention)
            out.append((model, key, {"source": str(teacher_spec.checkpoint), "input": teacher_spec.input_convention,
                                     "format": teacher_spec.resolved_format}))
            continue
        folder = (spec.cache.dir or default_cache_dir()) / "teachers" / _trained_teacher_key(spec, index)
        weights = folder / "teacher.safetensors"
        with _exclusive(folder):  # two jobs needing the same teacher: one trains, the other waits and reuses it
            if not weights.exists():
                train_teacher(spec, index, weights, folder / "work", resume=resume,
                              callbacks=callbacks("teacher", index) if callbacks else ())
        model = build_model(teacher_spec.model, bundle.in_shape, bundle.num_classes, teacher_spec.model_args)
        load_state_into(model, weights, f"{where} (cached)")
        model.eval()
        out.append((model, file_checksum(weights), {"source": f"trained, cached at {weights}"}))
    return out
