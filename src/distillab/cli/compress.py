"""Compression and deployment: export with a parity check, prune, quantization-aware training,
and a deployable package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from distillab.cli.common import _env_key, _logging, app, command, console, SeedOpt


@command(app)
def export(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    out: Annotated[Path, typer.Option(help="folder to write the model and export.json into")],
    format_: Annotated[str, typer.Option("--format", help="onnx, torchscript, hf (a language-model student "
                                         "as a Hugging Face folder), or adaptive (an adaptive run's generator and "
                                         "student as safetensors)")] = "onnx",
    quantize: Annotated[Optional[str], typer.Option(help="int8 (static, calibrated) or int8-dynamic")] = None,
    seed: SeedOpt = None,
    tolerance: Annotated[Optional[float], typer.Option(help="largest |delta logit| allowed (default 1e-3; "
                                                       "unbounded with --quantize)")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="smallest argmax agreement allowed (default "
                                                           "0.999; 0.97 with --quantize)")] = None,
    parity_samples: Annotated[int, typer.Option(help="held-out test inputs the parity check runs on")] = 1000,
    calibration_samples: Annotated[int, typer.Option(help="training inputs that calibrate int8")] = 512,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Export a run's distilled student, checked for parity with the eager model (exit 2 when it fails)."""
    from distillab.compress.export import Tolerance, default_tolerance
    from distillab.compress.runs import export_run

    _logging(False)
    if format_ == "adaptive":
        _export_adaptive(run_dir, out, seed)
        return
    base = default_tolerance(quantize)
    limits = Tolerance(base.max_abs_logit if tolerance is None else tolerance,
                       base.min_agreement if min_agreement is None else min_agreement)
    record = export_run(run_dir, out, fmt=format_, quantize=quantize, seed=seed, tolerance=limits,
                        parity_samples=parity_samples, calibration_samples=calibration_samples,
                        overwrite=overwrite)
    parity = record["parity"]
    console.print(f"wrote {out / record['file']} (seed {record['seed']}, {record['bytes'] / 1e3:.1f} kB); parity on "
                  f"{parity['samples']} held-out inputs: max |delta logit| {parity['max_abs_logit_diff']:.2e}, "
                  f"argmax agreement {parity['argmax_agreement']:.4f}", markup=False, highlight=False)


def _export_adaptive(run_dir: Path, out: Path, seed: int | None) -> None:
    """The generator G and the student of an adaptive run, without the teacher."""
    from distillab.compress.adaptive_export import export_run

    path = export_run(run_dir, out, seed)
    for name in ("adaptive.json", "generator.safetensors", "student.safetensors"):
        console.print(str(path / name), markup=False)


@command(app)
def prune(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    out: Annotated[Path, typer.Option(help="the pruned run folder to write")],
    method: Annotated[str, typer.Option(help="channels (smaller CNN) or magnitude")] = "channels",
    ratio: Annotated[float, typer.Option(help="share of channels (or weights) to remove in the end")] = 0.5,
    steps: Annotated[int, typer.Option(help="pruning steps of the gradual (cubic) schedule")] = 4,
    epochs_per_step: Annotated[int, typer.Option(help="fine-tuning epochs after each step")] = 2,
    kd: Annotated[bool, typer.Option("--kd/--no-kd", help="fine-tune with KD, or labels only")] = True,
    importance: Annotated[str, typer.Option(help="channel ranking: l1 (filter norm) or bn (|BN scale|)")] = "l1",
    stage: Annotated[Optional[list[int]], typer.Option(help="prune only these stages (repeat the option)")] = None,
    seed: SeedOpt = None,
    lr: Annotated[Optional[float], typer.Option(help="fine-tuning learning rate (default: the run's / 4)")] = None,
    round_to: Annotated[int, typer.Option(help="channel counts in multiples of this")] = 1,
    temperature: Annotated[Optional[float], typer.Option(help="KD temperature (default: the run's)")] = None,
    alpha: Annotated[Optional[float], typer.Option(help="KD weight alpha (default: the run's)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Prune a run's student on a gradual schedule, fine-tuning with KD between steps."""
    from distillab.compress.prune_run import prune_run

    _logging(False)
    record = prune_run(run_dir, out, method=method, ratio=ratio, steps=steps, epochs_per_step=epochs_per_step,
                       kd=kd, importance=importance, stages=stage, seed=seed, lr=lr, round_to=round_to,
                       overwrite=overwrite, temperature=temperature, alpha=alpha)
    first, last = record["history"][0], record["history"][-1]
    console.print(f"pruned seed {record['seed']}: test accuracy {100 * first['test_accuracy']:.2f} -> "
                  f"{100 * last['test_accuracy']:.2f} %, MACs {first['macs']} -> {last['macs']}, params "
                  f"{first['params']} -> {last['params']}, weight sparsity {100 * last['sparsity']:.0f} %; wrote {out}",
                  markup=False, highlight=False)


@command(app)
def qat(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    out: Annotated[Path, typer.Option(help="the run folder to write")],
    epochs: Annotated[int, typer.Option(help="fine-tuning epochs with int8 simulated")] = 3,
    kd: Annotated[bool, typer.Option("--kd/--no-kd", help="fine-tune with KD, or labels only")] = True,
    seed: SeedOpt = None,
    lr: Annotated[Optional[float], typer.Option(help="fine-tuning learning rate (default: the run's / 4)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Quantization-aware training: fine-tune a run's student with int8 simulated and the KD loss;
    then `distillab export OUT --quantize int8`."""
    from distillab.compress.qat import qat_run

    _logging(False)
    record = qat_run(run_dir, out, epochs=epochs, kd=kd, seed=seed, lr=lr, overwrite=overwrite)
    before, after = record["simulated_int8_before"], record["simulated_int8_after"]
    console.print(f"QAT seed {record['seed']}: simulated int8 test accuracy {100 * before['test_accuracy']:.2f} -> "
                  f"{100 * after['test_accuracy']:.2f} % (float before: {100 * record['before']['test_accuracy']:.2f}"
                  f" %); wrote {out}; now: distillab export {out} --quantize int8 --out DIR",
                  markup=False, highlight=False)


@command(app)
def package(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder")],
    out: Annotated[Path, typer.Option(help="the package folder to write")],
    quantize: Annotated[Optional[str], typer.Option(help="int8 (static, calibrated) or int8-dynamic")] = None,
    seed: SeedOpt = None,
    name: Annotated[Optional[str], typer.Option(help="the package's name (default: run-seedN)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
    sign_key_env: Annotated[Optional[str], typer.Option(
        help="variable holding a key: also write package.json.sig (HMAC-SHA256 of the manifest), which "
             "serve-model --verify-key-env checks")] = None,
) -> None:
    """A deployable folder: the parity-checked ONNX student, its manifest, model card, server and Dockerfile."""
    from distillab.deploy.package import package_run

    _logging(False)
    sign_key = _env_key(sign_key_env, "--sign-key-env")
    manifest = package_run(run_dir, out, quantize=quantize, seed=seed, name=name, overwrite=overwrite,
                           sign_key=sign_key.encode() if sign_key else None)
    console.print(f"wrote package {manifest['name']!r} to {out}: {', '.join(manifest['files'])}, package.json",
                  markup=False, highlight=False)
