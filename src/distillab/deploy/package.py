"""``distillab package RUN_DIR --out PKG``: a deployable folder for a run's distilled student.

    PKG/
      model.onnx            the student, exported with a parity check (int8 with --quantize)
      student.safetensors   its weights, for PyTorch users (the zoo model and args are in the manifest)
      export.json           the exporter's record: parity on held-out inputs, tolerance, sha256
      MODEL_CARD.md         data, metrics over seeds with std, teacher, strategy, parity, limits
      serve.py              the inference server (this package's copy of deploy/server.py)
      requirements.txt      what serve.py needs, pinned to the versions that wrote the package
      Dockerfile            serves the package on port 8080
      package.json          the manifest: preprocessing, labels, and every file's sha256

The folder is written beside PKG and renamed into place once complete, so a failure (a parity
check, a full disk) leaves no half-written package.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from pathlib import Path

from distillab.compress.export import ExportError, Tolerance
from distillab.compress.runs import export_run
from distillab.deploy.server import MANIFEST, read_manifest, sign_manifest
from distillab.files import OUTPUT_MARKER, atomic_write_json, check_output_folder, staged_folder
from distillab.experiment.stats import p_value_text
from distillab.models.loading import file_checksum

SERVER_REQUIREMENTS = ("numpy", "onnxruntime", "fastapi", "uvicorn", "prometheus_client", "pillow")


def percent(summary: dict | None) -> str:
    """'91.18 ± 0.05 %' from a {mean, std} of fractions: the model card's one number format."""
    if not summary:
        return "n/a"
    return f"{100 * summary['mean']:.2f} ± {100 * (summary.get('std') or 0.0):.2f} %"


def raw_input(record: dict) -> str:
    """What a client sends: values as the dataset stores them, before normalisation."""
    scale = (record.get("normalize") or {}).get("scale")
    pixels = scale is not None and abs(scale * 255 - 1) < 1e-9
    return "raw pixel values 0-255" if pixels else "raw values as the dataset stores them"


def model_card(report: dict, record: dict, name: str) -> str:
    """The model card, in Markdown, from the run's report and the export record."""
    dataset, strategy = report["dataset"], report["strategy"]
    seeds = report["seeds"]
    lines = [f"# {name}", "",
             f"A `{record['model']}` student distilled by distillab (strategy `{strategy['name']}`) on "
             f"`{dataset['name']}`. This package holds the student of seed {record['seed']}, the seed with the best "
             "validation accuracy (chosen without looking at test).", "",
             "## Data", "",
             f"- dataset: `{dataset['name']}`; train {dataset.get('train')}, validation {dataset.get('val')}, "
             f"test {dataset.get('test')} samples; {dataset['num_classes']} classes",
             f"- input: {raw_input(record)} of shape {tuple(record['in_shape'])}; normalisation "
             f"{json.dumps(record.get('normalize'))} is applied by the server", "",
             f"## Results (test accuracy, mean ± std over seeds {seeds})", "",
             "| role | model | parameters | test accuracy | per seed | validation accuracy |",
             "|---|---|---|---|---|---|"]
    for entry in report["models"]:
        per_seed = ", ".join(f"{100 * value:.2f}" for value in entry["accuracy"].get("per_seed", []))
        lines.append(f"| {entry['role']} | `{entry['model']}` | {entry.get('params', 'n/a')} | "
                     f"{percent(entry['accuracy'])} | {per_seed} | {percent(entry.get('val_accuracy'))} |")
    lines += [""]
    for comparison in report.get("comparisons", []):
        lines.append(f"- {comparison['a']} − {comparison['b']}: {100 * comparison['mean_diff']:+.2f} points, "
                     f"{p_value_text(comparison)} (n = {comparison['n']})")
    if report.get("verdict"):
        lines += ["", f"Verdict: {report['verdict']}"]
    teachers = [entry for entry in report["models"] if entry["role"] == "teacher"]
    lines += ["", "## Teacher and strategy", ""]
    for teacher in teachers:
        lines.append(f"- teacher `{teacher['model']}`: {percent(teacher['accuracy'])} test accuracy, "
                     f"{teacher.get('params', 'n/a')} parameters (not part of this package)")
    lines.append(f"- strategy `{strategy['name']}` with {json.dumps(strategy.get('params', {}))}")
    parity = record["parity"]
    lines += ["", "## Export", "",
              f"- `{record['file']}` ({record['format']}{', ' + record['quantize'] if record['quantize'] else ''}), "
              f"{record['bytes']} bytes, sha256 `{record['sha256'][:16]}…`",
              f"- parity against the PyTorch student on {parity['samples']} held-out test inputs: max |Δ logit| "
              f"{parity['max_abs_logit_diff']:.3g}, argmax agreement {100 * parity['argmax_agreement']:.2f} %",
              "", "## Limits", "",
              f"- Measured on `{dataset['name']}` only, over {len(seeds)} seed(s); inputs unlike its training "
              "data (other sizes, colours, framing) are outside what was measured.",
              "- The accuracies above are the PyTorch student's; the exported model agrees with it on the share "
              "of held-out inputs given under Export.",
              "- The teacher is not shipped; this package exposes only the student."]
    return "\n".join(lines) + "\n"


def dockerfile() -> str:
    return ("# Serves this package: docker build -t student . && docker run -p 8080:8080 student\n"
            "FROM python:3.11-slim\n"
            "WORKDIR /package\n"
            "COPY requirements.txt .\n"
            "RUN pip install --no-cache-dir -r requirements.txt\n"
            "COPY . .\n"
            "EXPOSE 8080\n"
            'HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen(\'http://127.0.0.1:8080/healthz\')"\n'
            'CMD ["python", "serve.py", ".", "--host", "0.0.0.0", "--port", "8080"]\n')


def requirements() -> str:
    return "".join(f"{name}=={importlib.metadata.version(name)}\n" for name in SERVER_REQUIREMENTS)


def package_run(run_dir: Path | str, out: Path | str, *, quantize: str | None = None, seed: int | None = None,
                name: str | None = None, tolerance: Tolerance | None = None, overwrite: bool = False,
                sign_key: bytes | None = None) -> dict:
    """Write the package of a run's distilled student into ``out``; returns the manifest.
    ``sign_key`` also writes package.json.sig (an HMAC of the manifest), which ``serve-model
    --verify-key-env`` checks."""
    out = check_output_folder(out, "package", overwrite=overwrite, inputs=[run_dir], error_cls=ExportError)
    with staged_folder(out, "package") as staging:
        record = export_run(run_dir, staging, fmt="onnx", quantize=quantize, seed=seed, tolerance=tolerance,
                            overwrite=True)
        if record["task"] != "image_classification":
            raise ExportError(f"{run_dir}: packages serve image classifiers; a {record['task']} student is exported "
                              "with `distillab export`")
        report = json.loads((Path(run_dir) / "report.json").read_text())
        name = name or f"{report['name']}-seed{record['seed']}{'-' + record['quantize'] if record['quantize'] else ''}"
        shutil.copyfile(Path(run_dir) / f"seed_{record['seed']}" / "distilled" / "student.safetensors",
                        staging / "student.safetensors")
        (staging / "MODEL_CARD.md").write_text(model_card(report, record, name))
        shutil.copyfile(Path(__file__).with_name("server.py"), staging / "serve.py")
        (staging / "requirements.txt").write_text(requirements())
        (staging / "Dockerfile").write_text(dockerfile())
        (staging / OUTPUT_MARKER).unlink(missing_ok=True)  # the inner export's; the package writes its own
        files = {path.name: file_checksum(path) for path in sorted(staging.iterdir()) if path.is_file()}
        manifest = {
            "format_version": 1, "name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "distillab": importlib.metadata.version("distillab"), "task": record["task"],
            "model": {"file": record["file"], "format": record["format"], "quantize": record["quantize"],
                      # the zoo model the weights load into (a student cut from its teacher is one)
                      "architecture": record.get("architecture", {}).get("model", record["model"]),
                      "model_args": record.get("architecture", {}).get("model_args", record["model_args"]),
                      "weights": "student.safetensors", "seed": record["seed"], "run": record["run"]},
            "preprocessing": {"in_shape": record["in_shape"], "dtype": "float32", "normalize": record["normalize"],
                              "labels": record["labels"],
                              "input": f"{raw_input(record)}; the server normalises"},
            "metrics": {"val_accuracy": record["val_metric"], "test_accuracy": record["test_metric"]},
            "parity": record["parity"], "files": files,
        }
        atomic_write_json(staging / MANIFEST, manifest)
        if sign_key is not None:
            sign_manifest(staging, sign_key)
        read_manifest(staging, sign_key)  # what serve-model will check, checked once before the package exists
    return manifest
