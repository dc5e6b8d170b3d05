"""Quantization-aware training with the KD loss: ``distillab qat RUN_DIR --out DIR``.

The student is fine-tuned with the int8 rounding of ONNX Runtime's static quantizer (the one
``export --quantize int8`` applies) simulated in the forward pass, so its weights and batch-norm
statistics adapt to it; the teacher's response KD loss (or labels only, ``--no-kd``) keeps it close
to the teacher meanwhile. Simulated, per Conv2d and Linear:

- the weight: int8 per output channel, symmetric, in [-127, 127] (what the quantizer stores);
- the input activation: int8 per tensor, asymmetric, its range an exponential moving average of
  each training batch's min and max (what min-max calibration measures once).

Rounding uses torch's ``fake_quantize_per_channel_affine`` / ``fake_quantize_per_tensor_affine``,
whose gradient is the straight-through estimator. A per-channel symmetric grid is unchanged when
batch norm is folded into the convolution at export (it scales each channel's weights and their
scale together), so the trained grid is the deployed one.

The output is a run folder with plain float weights that lie on the trained int8 grid;
``distillab export DIR --quantize int8`` calibrates and quantizes it as it does any run, so the
QAT model and the PTQ model are measured through the same exporter. Training runs in fp32: the
simulated rounding is defined on fp32 values, and bf16 autocast would round the inputs first.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from distillab.compress.finetune import Finetuning, write_derived_run
from distillab.files import check_output_folder
from distillab.errors import DistillabError

log = logging.getLogger("distillab")
QUANTIZED_LAYERS = (nn.Conv2d, nn.Linear)


class QATError(DistillabError):
    pass


class WeightFakeQuant(nn.Module):
    """A parametrization: the weight rounded to int8 per output channel (symmetric)."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        flat = weight.detach().abs().flatten(1).amax(dim=1)
        scale = torch.clamp(flat / 127.0, min=1e-12).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


class ActivationFakeQuant(nn.Module):
    """The input of a layer rounded to int8 per tensor, its range tracked by a moving average."""

    def __init__(self, momentum: float = 0.01):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            low, high = x.detach().min().float(), x.detach().max().float()
            if not bool(self.seen):
                self.low.copy_(low)
                self.high.copy_(high)
                self.seen.fill_(True)
            else:
                self.low.lerp_(low, self.momentum)
                self.high.lerp_(high, self.momentum)
        low, high = torch.clamp(self.low, max=0.0), torch.clamp(self.high, min=0.0)  # zero is exact
        scale = torch.clamp((high - low) / 255.0, min=1e-8)
        zero = torch.clamp(torch.round(-128 - low / scale), -128, 127).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zero.reshape(()), -128, 127)


def _quantize_input(module: nn.Module, args):
    return (module.input_quant(args[0]), *args[1:])


def prepare_qat(model: nn.Module) -> nn.Module:
    """Simulate int8 in every Conv2d and Linear of ``model`` (in place); returns ``model``."""
    layers = [m for m in model.modules() if isinstance(m, QUANTIZED_LAYERS)]
    if not layers:
        raise QATError(f"{type(model).__name__}: no Conv2d or Linear layer to quantize")
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", WeightFakeQuant())
        layer.input_quant = ActivationFakeQuant()
        layer._qat_hook = layer.register_forward_pre_hook(_quantize_input)
    return model


def strip_qat(model: nn.Module) -> nn.Module:
    """Plain layers again, their weights the int8-grid values (in place); returns ``model``."""
    for layer in model.modules():
        if isinstance(layer, QUANTIZED_LAYERS) and parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
            layer._qat_hook.remove()
            del layer._qat_hook
            del layer.input_quant
    return model


def qat_run(run_dir: Path | str, out: Path | str, *, epochs: int = 3, kd: bool = True, seed: int | None = None,
            lr: float | None = None, overwrite: bool = False) -> dict:
    """Fine-tune the run's student (default seed: the best on validation) under simulated int8;
    returns the record written to ``qat.json``."""
    if epochs < 1:
        raise QATError(f"--epochs {epochs}: quantization-aware training needs at least one epoch")
    out = check_output_folder(out, "qat", overwrite=overwrite, inputs=[run_dir], error_cls=QATError)
    tuning = Finetuning.of_run(run_dir, seed, kd=kd, epochs=epochs, lr=lr, precision="fp32")
    model = tuning.student.model
    before = tuning.measure(model)
    prepare_qat(model)
    simulated_before = _evaluate(tuning, model)  # ranges from one pass over training batches
    with tempfile.TemporaryDirectory(prefix="distillab-qat-") as scratch:
        model = tuning.train(model, tuning.seed * 1000 + 7, Path(scratch) / "qat", "quantization-aware training")
    simulated_after = _evaluate(tuning, model, calibrate=False)
    strip_qat(model)
    after = tuning.measure(model)
    record = {"epochs": epochs, "kd": kd, "seed": tuning.seed, "lr": tuning.training.lr,
              "source": str(Path(run_dir).resolve()), "before": before, "after": after,
              "simulated_int8_before": simulated_before, "simulated_int8_after": simulated_after}
    log.info("QAT: simulated int8 val %.4f -> %.4f; float val %.4f -> %.4f", simulated_before["val_accuracy"],
             simulated_after["val_accuracy"], before["val_accuracy"], after["val_accuracy"])
    verdict = (f"Quantization-aware training ({epochs} epochs, {'with' if kd else 'without'} KD) moved the "
               f"simulated-int8 test accuracy from {100 * simulated_before['test_accuracy']:.2f} % to "
               f"{100 * simulated_after['test_accuracy']:.2f} % (one seed); measure the exported model with "
               "`distillab export DIR --quantize int8`")
    spec = tuning.spec
    write_derived_run(out, tuning, model, suffix="qat", record=record, record_name="qat", before=before, after=after,
                      student_spec={"model": spec.student.model, "model_args": dict(spec.student.model_args)},
                      verdict=verdict)
    return record


@torch.no_grad()
def calibrate_ranges(model: nn.Module, batches) -> None:
    """Track the activation ranges over ``batches`` (batch-norm statistics stay as they are)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    for inputs in batches:
        model(inputs)
    model.eval()


@torch.no_grad()
def _evaluate(tuning: Finetuning, model: nn.Module, calibrate: bool = True) -> dict:
    """Validation and test scores with int8 simulated; ``calibrate`` first sets the activation
    ranges from 8 training batches (as the exporter's calibration would)."""
    if calibrate:
        from distillab.compress.runs import batches_of

        calibrate_ranges(model, [b.to(tuning.device) for b in batches_of(tuning.data, "train", 1024)])
    model.eval()
    batch = tuning.training.eval_batch_size
    return {"val_accuracy": tuning.task.evaluate(model, tuning.data, "val", batch, tuning.device).value,
            "test_accuracy": tuning.task.evaluate(model, tuning.data, "test", batch, tuning.device).value}
