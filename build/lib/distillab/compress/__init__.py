"""Compression and export: one parity-checked exporter (ONNX / TorchScript, int8 through ONNX
Runtime), and the run-level helpers that find a run's deployable student."""

from distillab.compress.export import FORMATS, QUANTIZE, ExportError, Tolerance, export_model
from distillab.compress.runs import export_run, run_student

__all__ = ["FORMATS", "QUANTIZE", "ExportError", "Tolerance", "export_model", "export_run", "run_student"]
