"""A spec's student, built where the teachers can be loaded: a student cut from its image
teacher (``teacher_pruned``, ``models.cut``) needs the teacher's weights, which the experiment
loads (a file, or the teacher the run trains). Every other student is the task's to build."""

from __future__ import annotations

import copy
import hashlib
import json

from torch import nn

_CUTS: dict[tuple, tuple[nn.Module, dict]] = {}  # (teacher, args, calibration) -> the cut, once per process


def spec_student(spec, task, data) -> nn.Module:
    """A fresh student of ``spec`` for ``data`` (the caller seeds torch first)."""
    if spec.task == "image_classification" and spec.student.model == "teacher_pruned":
        return cut_student(spec, data)
    return task.build_student(spec, data)


def cut_student(spec, data) -> nn.Module:
    """A spec's image ``teacher_pruned`` student: its teacher cut as ``student.model_args`` say,
    on the seed's training images (``.cut`` holds what the report keeps). The cut does not depend
    on torch's seed: the scratch twin and the distilled student start from the same weights.
    Without teachers' weights (``weightless_teachers()``: a validation, or a finished run's student
    rebuilt for export), the cut's architecture, untrained."""
    from distillab.experiment.teacher import get_teachers
    from distillab.models.cut import calibration_images, checked_args, cut, cut_shape
    from distillab.models.zoo import build_model, meta_model
    from distillab.tasks.language_modeling import teachers_weightless

    teacher_spec = spec.teachers[0]
    args = dict(spec.student.model_args)
    if teachers_weightless():
        skeleton = meta_model(teacher_spec.model, data.in_shape, data.num_classes, teacher_spec.model_args)
        name, shape = cut_shape(skeleton, args)
        model = build_model(name, data.in_shape, data.num_classes, shape, "student")
        model.architecture = {"model": name, "model_args": shape}
        return model
    images = calibration_images(data, checked_args(args)["calibration_images"])
    [(teacher, checksum, _)] = get_teachers(spec, data)
    key = (checksum, json.dumps(args, sort_keys=True), hashlib.sha256(images.numpy().tobytes()).hexdigest())
    if key not in _CUTS:
        _CUTS.clear()  # one cut kept
        _CUTS[key] = cut(teacher, args, images)
    student, facts = _CUTS[key]
    out = copy.deepcopy(student).train()
    out.cut = facts  # the report records it
    out.architecture = facts["architecture"]
    return out
