"""int8 through ONNX Runtime's quantizer.

- "int8": post-training static quantization. Activation ranges are calibrated (min-max) on
  batches from the training split; weights are int8 per output channel; QDQ format, which
  ONNX Runtime fuses into int8 kernels on x86 (the format its docs recommend for CPUs).
  On an x86 CPU without VNNI (no AVX512-VNNI, AVX-VNNI or AMX), ONNX Runtime's int8 kernels
  multiply with an instruction whose 16-bit sums can saturate, which can flip predictions; there
  the weights are quantized to 7 bits (``reduce_range``, as ONNX Runtime advises for such CPUs).
  The export records which was used; its parity check measures the result on this CPU.
- "int8-dynamic": weights-only int8, activations quantized per batch at run time; for students
  whose cost is in Linear layers (MLPs, language models). No calibration data.

Why ONNX Runtime rather than torch's PT2E flow: the quantized model is the file the
inference server runs (``serve-model`` is ONNX Runtime), so what is measured is what is
deployed; `benchmarks/deploy.py` measures its latency against eager PyTorch.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from distillab.errors import DistillabError


class CalibrationBatches:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, input_name: str, batches: Sequence[torch.Tensor]):
        self.input_name = input_name
        self.items = iter([batch.numpy() for batch in batches])

    def get_next(self):
        batch = next(self.items, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self):  # part of the protocol; one pass is all the min-max calibration needs
        pass


def int8_saturates(cpuinfo: str | None = None, machine: str | None = None) -> bool:
    """Whether this CPU (or the one ``cpuinfo`` and ``machine`` describe) runs ONNX Runtime's int8
    kernels without VNNI: x86 whose flags name none of avx512_vnni, avx_vnni, amx_int8 (an
    unreadable /proc/cpuinfo counts as saturating)."""
    import platform

    if (machine or platform.machine()).lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    if cpuinfo is None:
        from distillab.runtime import cpuinfo as read_cpuinfo

        cpuinfo = read_cpuinfo()
        if cpuinfo is None:
            return True
    return not set(cpuinfo.split()) & {"avx512_vnni", "avx_vnni", "amx_int8"}


def quantize_onnx(float_path: Path, out_path: Path, mode: str,
                  calibration: Sequence[torch.Tensor] | None) -> dict:
    """Quantize ``float_path`` into ``out_path``; returns the settings used (for the export's record)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode == "int8-dynamic":
        with _quiet():
            quantize_dynamic(str(float_path), str(out_path), weight_type=QuantType.QInt8)
        return {"mode": mode, "weights": "int8"}
    if not calibration:
        raise DistillabError("--quantize int8: the calibration set is empty")
    with tempfile.TemporaryDirectory(dir=Path(out_path).parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"  # shapes inferred and graph folded, as the quantizer advises
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        import onnx

        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        reduce_range = int8_saturates()
        with _quiet():
            quantize_static(str(prepared), str(out_path), CalibrationBatches(input_name, calibration),
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return {"mode": mode, "weights": "int7 (reduce_range: this CPU has no VNNI)" if reduce_range else "int8",
            "reduce_range": reduce_range}


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs a line per tensor at INFO on the root logger."""
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)
