"""``distillab prune RUN_DIR --out DIR``: prune a run's distilled student on a gradual schedule,
fine-tuning between steps with the training loop, with the teacher's KD loss (Hinton, the run's
temperature and alpha, from the run's teacher cache) or with labels only (``--no-kd``).

Each step removes more of the original channels (channels: the cubic schedule of Zhu & Gupta
2017, physically rebuilding the model) or weights (magnitude), then trains ``epochs_per_step``
epochs and keeps the best epoch on validation. The output is a run folder (``report.json``,
``seed_N/distilled/student.safetensors``) whose spec names the pruned architecture, so
``distillab export`` and ``distillab package`` take it as they take any run; ``prune.json``
holds the history: params, MACs, latency and accuracy after every step.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from distillab.compress.finetune import Finetuning, write_derived_run
from distillab.compress.prune import (PRUNABLE_MODELS, PruneError, channel_targets, channels_to_keep,
                                      conv_blocks, cubic_schedule, magnitude_prune, make_permanent, rebuild)
from distillab.compress.runs import read_report
from distillab.files import check_output_folder

log = logging.getLogger("distillab")
METHODS = ("channels", "magnitude")


def prune_run(run_dir: Path | str, out: Path | str, *, method: str = "channels", ratio: float = 0.5, steps: int = 4,
              epochs_per_step: int = 2, kd: bool = True, importance: str = "l1", stages: list[int] | None = None,
              seed: int | None = None, lr: float | None = None, round_to: int = 1, overwrite: bool = False,
              temperature: float | None = None, alpha: float | None = None) -> dict:
    """Prune the run's student; returns the history written to ``prune.json``. ``temperature``
    and ``alpha`` override the run's KD settings for the fine-tuning."""
    from distillab.spec_io import parse_spec

    if method not in METHODS:
        raise PruneError(f"--method {method!r}: choose from {', '.join(METHODS)}")
    if steps < 1 or epochs_per_step < 0:
        raise PruneError("--steps must be >= 1 and --epochs-per-step >= 0")
    if not 0.0 < ratio < 1.0:
        raise PruneError(f"--ratio {ratio}: the share to remove must be in (0, 1)")
    out = check_output_folder(out, "prune", overwrite=overwrite, inputs=[run_dir], error_cls=PruneError)
    spec = parse_spec(read_report(Path(run_dir))["spec"])
    if method == "channels" and spec.student.model not in PRUNABLE_MODELS:
        raise PruneError(f"{run_dir}: channel pruning rebuilds {', '.join(PRUNABLE_MODELS)}; the student is "
                         f"{spec.student.model!r} (use --method magnitude)")
    tuning = Finetuning.of_run(run_dir, seed, kd=kd, epochs=epochs_per_step, lr=lr,
                               kd_params={"temperature": temperature, "alpha": alpha})
    model, seed = tuning.student.model, tuning.seed
    blocks = conv_blocks(model) if method == "channels" else []
    if stages is not None:
        known = sorted({stage for stage, _, _ in blocks})
        if method != "channels" or not set(stages) <= set(known):
            raise PruneError(f"--stage {stages}: the student's stages are {known} (channel pruning only)")
    original = [conv.out_channels for _, conv, _ in blocks]
    history = [{"step": 0, "removed": 0.0, "channels": original or None, **tuning.measure(model)}]
    log.info("before pruning: val %.4f test %.4f, %s MACs", history[0]["val_accuracy"], history[0]["test_accuracy"],
             history[0]["macs"])
    model_args = dict(spec.student.model_args)
    with tempfile.TemporaryDirectory(prefix="distillab-prune-") as scratch:
        for step in range(1, steps + 1):
            fraction = cubic_schedule(step, steps, ratio)
            if method == "channels":
                targets = channel_targets(original, [stage for stage, _, _ in blocks], fraction, stages, round_to)
                model, model_args = rebuild(model.cpu(), channels_to_keep(model.cpu(), targets, importance))
            else:
                magnitude_prune(model.cpu(), fraction)
            if epochs_per_step:
                model = tuning.train(model, seed * 1000 + step, Path(scratch) / f"step_{step}",
                                     f"prune step {step}/{steps}")
            measured = tuning.measure(model)
            history.append({"step": step, "removed": fraction,
                            "channels": [c.out_channels for _, c, _ in conv_blocks(model)] if blocks else None,
                            **measured})
            log.info("prune step %d/%d: removed %.0f %%, val %.4f test %.4f, %s MACs", step, steps, 100 * fraction,
                     measured["val_accuracy"], measured["test_accuracy"], measured["macs"])
    if method == "magnitude":
        make_permanent(model)
    record = {"method": method, "ratio": ratio, "round_to": round_to, "steps": steps,
              "epochs_per_step": epochs_per_step, "kd": kd,
              "importance": importance if method == "channels" else "magnitude", "stages": stages, "seed": seed,
              "lr": tuning.training.lr, "kd_params": tuning.params.model_dump() if kd else None, "source": str(Path(run_dir).resolve()), "history": history}
    before, last = history[0], history[-1]
    verdict = (f"Pruning ({method}, {100 * ratio:.0f} % removed, {'with' if kd else 'without'} KD) changed test "
               f"accuracy by {100 * (last['test_accuracy'] - before['test_accuracy']):+.2f} points and MACs "
               f"{before['macs']} -> {last['macs']} (one seed)")
    student_spec = {"model": "cnn" if method == "channels" else spec.student.model, "model_args": model_args}
    write_derived_run(out, tuning, model, suffix="pruned", student_spec=student_spec, record=record,
                      record_name="prune", before=before, after=last, verdict=verdict)
    return record
