"""The one exporter: a trained student to ONNX or TorchScript (optionally int8 through ONNX
Runtime's quantizer), checked for parity against the eager model on held-out inputs before
anything is written. The CLI (`distillab export`), `distillab package` and the service worker
all export through :func:`export_model`.

A parity check that fails leaves nothing behind: the files are written into a temporary folder
beside ``out`` and renamed into place only after the check passed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from distillab.files import atomic_write_json, check_output_folder, staged_folder
from distillab.errors import DistillabError, close_matches
from distillab.models.loading import file_checksum

# hf: a language-model student as a standard Hugging Face folder (config, safetensors, tokenizer)
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt", "hf": "model.safetensors"}
QUANTIZE = ("int8", "int8-dynamic")  # static (calibrated) int8; weights-only int8 for Linear-heavy models
EXPORT_TASKS = ("image_classification", "language_modeling")  # outputs are logits: argmax agreement means something


class ExportError(DistillabError):
    """A run cannot be exported, or its export failed the parity check."""


@dataclass(frozen=True)
class Tolerance:
    """How far an exported model may stray from the eager one on held-out inputs: the largest
    absolute logit difference (None: not bounded, as for int8) and the smallest share of inputs
    (positions, for a language model) whose argmax agrees."""

    max_abs_logit: float | None
    min_agreement: float


def default_tolerance(quantize: str | None) -> Tolerance:
    # fp32 graphs differ from eager PyTorch by float reassociation only (~1e-5); int8 moves
    # logits by design, so only the decisions are held to a bound.
    return Tolerance(1e-3, 0.999) if quantize is None else Tolerance(None, 0.97)


@torch.no_grad()
def parity(reference: Callable[[torch.Tensor], torch.Tensor], candidate: Callable[[torch.Tensor], torch.Tensor],
           inputs: Sequence[torch.Tensor]) -> dict:
    """Logit differences and argmax agreement of ``candidate`` against ``reference`` over the
    batches ``inputs``; logits (B, K) or (B, T, V) are compared per row / position."""
    worst, total_abs, agree, count, values = 0.0, 0.0, 0, 0, 0
    for batch in inputs:
        expected = reference(batch).float()
        expected = expected.reshape(-1, expected.shape[-1])  # (rows or positions, K)
        got = candidate(batch).float().reshape(expected.shape)
        diff = (expected - got).abs()
        worst = max(worst, float(diff.max()))
        total_abs += float(diff.sum())
        values += diff.numel()
        agree += int((expected.argmax(-1) == got.argmax(-1)).sum())
        count += expected.shape[0]
    if count == 0:
        raise ExportError("parity: there are no held-out inputs to compare on")
    return {"samples": count, "max_abs_logit_diff": worst, "mean_abs_logit_diff": total_abs / values,
            "argmax_agreement": agree / count}


def check(measured: dict, tolerance: Tolerance) -> list[str]:
    """What failed, in words (empty when the export passes)."""
    failures = []
    if tolerance.max_abs_logit is not None and measured["max_abs_logit_diff"] > tolerance.max_abs_logit:
        failures.append(f"max |delta logit| {measured['max_abs_logit_diff']:.3g} > {tolerance.max_abs_logit:g}")
    if measured["argmax_agreement"] < tolerance.min_agreement:
        failures.append(f"argmax agreement {measured['argmax_agreement']:.4f} < {tolerance.min_agreement:g}")
    return failures


def onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported ONNX graph as a function of a tensor, run by ONNX Runtime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda batch: torch.from_numpy(session.run(None, {name: batch.numpy()})[0])


def torchscript_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(batch):
        with torch.no_grad():
            return module(batch)

    return run


def eager_runner(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(batch):
        with torch.no_grad():
            return model(batch)

    return run


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    dynamic = {"input": {0: "batch"}, "logits": {0: "batch"}}
    if example.dim() == 2 and not example.is_floating_point():  # token ids (B, T): any length too
        dynamic = {"input": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"}}
    try:
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes=dynamic)
    except Exception as error:  # the exporter's errors are untyped; an unsupported op is the usual cause
        raise ExportError(f"--format onnx: the model does not export to ONNX ({str(error)[:300]})") from None


def write_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        with torch.no_grad():
            traced = torch.jit.trace(model, (example,), check_trace=False)
        traced.save(str(path))
    except Exception as error:
        raise ExportError(f"--format torchscript: the model does not trace ({str(error)[:300]})") from None


def export_model(model: nn.Module, out: Path | str, *, fmt: str = "onnx", held_out: Sequence[torch.Tensor],
                 calibration: Sequence[torch.Tensor] | None = None, quantize: str | None = None,
                 tolerance: Tolerance | None = None, facts: dict | None = None, overwrite: bool = False,
                 inputs: Sequence[Path | str] = ()) -> dict:
    """Export ``model`` into the folder ``out`` (``model.onnx`` or ``model.pt`` and
    ``export.json``: the facts, the file's sha256, the parity measured on ``held_out``
    batches and the tolerance). ``quantize`` ("int8": static, calibrated on ``calibration``
    batches from the training split; "int8-dynamic": weights only) needs ONNX.
    Raises ExportError, writing nothing, when the parity check fails."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: unknown format{close_matches(fmt, FORMATS)}")
    if quantize is not None and quantize not in QUANTIZE:
        raise ExportError(f"--quantize {quantize!r}: unknown{close_matches(quantize, QUANTIZE)}")
    if quantize is not None and fmt != "onnx":
        raise ExportError(f"--quantize {quantize}: int8 models are written through ONNX Runtime's quantizer; "
                          "use --format onnx")
    if fmt == "hf" and not hasattr(getattr(model, "model", None), "save_pretrained"):
        raise ExportError("--format hf: the student is not a transformers causal LM (teacher_layers, teacher_width, "
                          "teacher_pruned and hf students are); use onnx or torchscript")
    if quantize == "int8" and not calibration:
        raise ExportError("--quantize int8: the calibration set is empty (static int8 needs training inputs "
                          "to measure activation ranges)")
    held_out = [batch for batch in held_out if len(batch)]
    if not held_out:
        raise ExportError("parity: there are no held-out inputs to compare on")
    tolerance = tolerance or default_tolerance(quantize)
    out = check_output_folder(out, "export", overwrite=overwrite, inputs=inputs, error_cls=ExportError)
    model = model.eval().float()
    with staged_folder(out, "export") as staging:
        path = staging / FORMATS[fmt]
        example = held_out[0][:1]
        if fmt == "onnx":
            write_onnx(model, example, path)
            if quantize is not None:
                from distillab.compress.quantize import quantize_onnx

                float_path = staging / "float.onnx"
                os.replace(path, float_path)
                quantization = quantize_onnx(float_path, path, quantize, calibration)
                float_path.unlink()
            runner = onnx_runner(path)
        elif fmt == "hf":
            from distillab.models.hf import save_hf_folder

            save_hf_folder(model, staging)
            runner = hf_runner(staging, model.vocab_size)
        else:
            write_torchscript(model, example, path)
            runner = torchscript_runner(path)
        measured = parity(eager_runner(model), runner, held_out)
        failures = check(measured, tolerance)
        if failures:
            raise ExportError(f"parity check failed on {measured['samples']} held-out inputs: "
                              f"{'; '.join(failures)}; nothing was written")
        record = {**(facts or {}), "format": fmt, "file": path.name, "quantize": quantize,
                  **({"quantization": quantization} if quantize is not None and fmt == "onnx" else {}),
                  "bytes": path.stat().st_size, "sha256": file_checksum(path), "parity": measured,
                  "tolerance": asdict(tolerance), "input_dtype": str(example.dtype).removeprefix("torch.")}
        atomic_write_json(staging / "export.json", record)
    return record


def hf_runner(folder: Path, vocab_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The folder loaded by transformers alone, as a user would: ids -> logits over the tokenizer's vocabulary."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    def run(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids, use_cache=False).logits[..., :vocab_size]

    return run


def read_export(folder: Path) -> dict:
    path = Path(folder) / "export.json"
    if not path.exists():
        raise ExportError(f"{folder}: no export.json (not an exported model)")
    return json.loads(path.read_text())
