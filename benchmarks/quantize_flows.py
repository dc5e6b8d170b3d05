"""Which int8 flow? ONNX Runtime's static quantizer (what `distillab export --quantize int8`
uses) against torch's PT2E flow (torchao's X86InductorQuantizer, compiled by Inductor), on the
distilled cnn_small of the deploy benchmark's run (seed 0): test accuracy and latency at batch 1
and 256 (median after warm-up), beside eager fp32 and ONNX fp32; both int8 flows calibrate on the
same 512 training images.

    .venv/bin/python benchmarks/quantize_flows.py --threads 2
        # -> benchmarks/results/quantize_flows.{json,md} (needs benchmarks/results/deploy/run:
        # run benchmarks/deploy.py first)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from deploy import accuracy, eager, onnx, timed
from distillab.compress import export_run, run_student
from distillab.compress.export import Tolerance
from distillab.compress.runs import batches_of
from distillab.files import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def pt2e_int8(model, calibration: list[torch.Tensor]):
    """torchao's PT2E static int8 for x86 (per-channel weights, calibrated activations),
    lowered by torch.compile (Inductor): the flow PyTorch documents for CPU int8."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = (calibration[0][:2],)  # batch 1 would specialise the batch dimension
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}
    exported = torch.export.export(model.eval(), example, dynamic_shapes=dynamic).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
    converted = convert_pt2e(prepared)
    compiled = torch.compile(converted)

    def run(batch):
        with torch.no_grad():
            return compiled(batch)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--run", default=str(ROOT / "benchmarks" / "results" / "deploy" / "run"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "quantize_flows"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    student = run_student(args.run, 0)
    data = student.data
    images = next(data.eval_batches("test", 256))["inputs"]
    calibration = batches_of(data, "train", 512)
    work = Path(args.out)
    runners = {"eager fp32": eager(student.model, False)}
    for name, quantize in [("ONNX fp32", None), ("ONNX Runtime int8 (static, QDQ)", "int8")]:
        folder = work / name.split(" (")[0].replace(" ", "_")
        export_run(args.run, folder, quantize=quantize, seed=0, overwrite=True,
                   tolerance=Tolerance(None, 0.0) if quantize else None)
        runners[name] = onnx(folder / "model.onnx", args.threads)
    started = time.perf_counter()
    runners["PT2E int8 (torchao, Inductor)"] = pt2e_int8(student.model, calibration)
    runners["PT2E int8 (torchao, Inductor)"](images[:1])  # compiles for batch 1 ...
    runners["PT2E int8 (torchao, Inductor)"](images)  # ... and for a batch dimension
    compile_seconds = time.perf_counter() - started
    rows = {}
    for name, run in runners.items():
        rows[name] = {"accuracy": accuracy(run, data), "latency_ms_b1": timed(run, images[:1], args.repeats * 10),
                      "latency_ms_b256": timed(run, images, args.repeats)}
        print(name, rows[name], flush=True)
    result = {"rows": rows, "pt2e_prepare_and_compile_seconds": compile_seconds, "seed": 0,
              "torch": torch.__version__, "threads": args.threads}
    atomic_write_json(work.with_suffix(".json"), result)
    lines = ["| flow | test accuracy (%) | latency b=1 (ms) | latency b=256 (ms) |", "|---|---:|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {100 * row['accuracy']:.2f} | {row['latency_ms_b1']:.3f} | "
                     f"{row['latency_ms_b256']:.2f} |")
    lines += ["", f"PT2E: quantization and Inductor compilation took {compile_seconds:.0f} s (seed 0's student)."]
    atomic_write_text(work.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
