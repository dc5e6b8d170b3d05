"""A language-model job end to end on the CLI, and its bad inputs (exit 2, named, no run folder)."""

import json

import pytest
from typer.testing import CliRunner

from conftest import text_spec, tiny_spec
from distillab.cli import app

runner = CliRunner()


def run_cli(tmp_path, spec, *extra):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(path), "--out", str(out), *extra])
    return result.exit_code, result.output, out


def test_a_text_job_runs_end_to_end_and_reports_bits_per_character(tmp_path, corpus, tiny_lm):
    code, output, out = run_cli(tmp_path, text_spec(corpus, tiny_lm))
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == {"name": "language_modeling", "metric": "bits_per_character", "higher_is_better": False}
    assert report["dataset"]["tokens"]["test"] > 0 and report["dataset"]["num_classes"] == 300
    roles = {m["role"]: m for m in report["models"]}
    for model in roles.values():
        assert model["score"]["mean"] == pytest.approx(model["metrics"]["bits_per_character"]["mean"])
        assert model["prefill_tokens_per_s"] > 0 and model["decode_tokens_per_s"] > 0
        assert model["metrics"]["perplexity"]["mean"] > 1
    comparison = report["comparisons"][0]
    assert comparison["metric"] == "bits_per_character" and comparison["n"] == 2
    distilled, scratch = roles["distilled"]["score"]["per_seed"], roles["scratch"]["score"]["per_seed"]
    assert comparison["mean_diff"] == pytest.approx(sum(distilled) / 2 - sum(scratch) / 2)
    assert "bits per character" in report["verdict"]
    markdown = (out / "report.md").read_text()
    assert "| bits/char |" in markdown and "prefill tok/s" in markdown
    assert "bits/char" in output  # the CLI prints the language-model table


@pytest.mark.parametrize("change, needles", [
    ({"strategy": {"name": "dkd"}}, ["strategy.name: dkd serves the task(s) image_classification, not "
                                     "language_modeling"]),
    ({"strategy": {"name": "token_kd", "params": {"top_k": 301}}}, ["top_k: 301 is larger than the vocabulary (300)"]),
    ({"strategy": {"name": "token_kd", "params": {"tail": "drop", "divergence": "tvd"}}},
     ["tail: drop is a truncated forward KL"]),
    ({"task": "image_classification"}, ["the task image_classification needs an image or tensor dataset"]),
    ({"teacher": {"pretrained": "gpt-17"}}, ["unknown pretrained model 'gpt-17'"]),
    ({"data": {"context_length": 100}}, ["data.context_length: 100 tokens is longer than the teacher's context"]),
])
def test_bad_text_jobs_are_refused_by_name(tmp_path, corpus, tiny_lm, change, needles):
    spec = text_spec(corpus, tiny_lm)
    for key, value in change.items():
        spec[key] = {**spec[key], **value} if key == "data" else value
    code, output, out = run_cli(tmp_path, spec)
    assert code == 2, output
    assert "Traceback" not in output
    flat = " ".join(output.split())
    for needle in needles:
        assert needle in flat, output
    assert not out.exists() and not out.with_name("run.partial").exists()


def test_an_empty_or_non_utf8_corpus_is_named(tmp_path, tiny_lm):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.txt").write_bytes(b"caf\xe9")
    code, output, _ = run_cli(tmp_path, text_spec(bad, tiny_lm))
    assert code == 2 and "a.txt is not UTF-8 text (byte 3" in " ".join(output.split()), output


def test_a_language_model_teacher_needs_the_language_modeling_task(tmp_path, blobs, tiny_lm):
    spec = tiny_spec(blobs, tiny_lm)
    spec["teacher"] = {"checkpoint": str(tiny_lm)}
    code, output, _ = run_cli(tmp_path, spec)
    assert code == 2 and "teacher: a pretrained text model teacher needs task: language_modeling or text_embedding" in output, output


def test_a_sweep_of_a_text_job_minimises_bits_per_character(tmp_path, corpus, tiny_lm):
    spec = text_spec(corpus, tiny_lm, training={"epochs": 1, "seeds": [0]})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    result = runner.invoke(app, ["sweep", str(path), "--out", str(tmp_path / "sweep"),
                                 "--grid", "strategy.params.alpha=0.2,0.8", "--grid", "strategy.params.top_k=2,4"])
    assert result.exit_code == 0, result.output
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    assert best["metric"] == "bits_per_character" and best["trials"] == 4
    table = (tmp_path / "sweep" / "trials.md").read_text()
    values = [float(line.rsplit("|", 2)[1]) for line in table.splitlines()[2:]]
    assert values == sorted(values)  # best (lowest) first
    assert best["val_bits_per_character"] == pytest.approx(values[0], abs=1e-4)
    assert f"-> {values[0]:.4f} bits per character" in result.output


def test_sweep_overrides_change_the_spec_for_every_trial(tmp_path, corpus, tiny_lm):
    from distillab.experiment.sweep import sweep

    spec = text_spec(corpus, tiny_lm, training={"epochs": 1, "seeds": [0, 1]})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    best = sweep(path, tmp_path / "sweep", {"strategy.params.alpha": [0.5]}, {}, overrides=["training.seeds=[1]"])
    assert best["trials"] == 1
    assert [p.name for p in (tmp_path / "sweep" / "trials" / "0000").iterdir()] == ["seed_1"]


def test_validate_reads_a_language_model_teacher_without_its_weights(tmp_path, corpus, tiny_lm):
    """validate needs the teacher's tokenizer and architecture, not its weights: inside
    weightless_teachers the teacher is built on the meta device, and validate still checks the
    strategy against it (a layer pair out of range is named)."""

    from distillab.spec_io import parse_spec
    from distillab.tasks.language_modeling import load_lm_teacher, weightless_teachers

    spec = parse_spec(text_spec(corpus, tiny_lm))
    with weightless_teachers():
        skeleton = load_lm_teacher(spec.teachers[0])
    assert {p.device.type for p in skeleton.parameters()} == {"meta"}
    loaded = load_lm_teacher(spec.teachers[0])
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert skeleton.vocab_size == loaded.vocab_size and skeleton.context_length == loaded.context_length
    assert [n for n, _ in skeleton.named_parameters()] == [n for n, _ in loaded.named_parameters()]

    runner = CliRunner()
    path = tmp_path / "job.json"
    path.write_text(json.dumps(text_spec(corpus, tiny_lm)))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and "valid" in result.output, result.output
    bad = text_spec(corpus, tiny_lm, strategy={"name": "layerwise", "params": {"pairs": [[1, 99]]}})
    path.write_text(json.dumps(bad))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "pairs[0]" in result.output and "out of range" in result.output, result.output


@pytest.mark.integration  # a fresh interpreter
def test_known_third_party_start_up_noise_is_filtered(tmp_path):
    """torchao's unloadable CUDA kernels, its no-triton notice and torch's pytree deprecations
    are not shown once distillab is imported; other warnings still are."""
    import subprocess
    import sys

    script = ("import logging, distillab, torchao, transformers\n"
              "logging.getLogger('torchao').error('an error still shows')\n"
              "logging.getLogger('distillab.x').warning('a warning still shows')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Failed to load" not in done.stderr and "triton" not in done.stderr and "_pytree" not in done.stderr
    assert "an error still shows" in done.stderr and "a warning still shows" in done.stderr


def test_a_language_model_teachers_evaluation_is_cached_by_its_key(tmp_path, corpus, tiny_lm):
    """The teacher's test-split evaluation of a text job is kept by (teacher, split contents):
    a second run reads it; other text is measured again."""
    from distillab.experiment.teacher_check import cached_evaluation
    from distillab.spec_io import parse_spec
    from distillab.tasks import TASKS
    from distillab.tasks.language_modeling import load_lm_teacher

    spec = parse_spec(text_spec(corpus, tiny_lm))
    task = TASKS["language_modeling"]
    data = task.build(spec.data, 0, spec)
    teacher = load_lm_teacher(spec.teachers[0])
    calls = []

    class Counting(type(task)):
        def evaluate(self, *args, **kwargs):
            calls.append(1)
            return super().evaluate(*args, **kwargs)

    counting = Counting()
    first = cached_evaluation(counting, teacher, "key-a", data, "test", 16, "cpu", tmp_path)
    again = cached_evaluation(counting, teacher, "key-a", data, "test", 16, "cpu", tmp_path)
    assert len(calls) == 1 and again.metrics == first.metrics
    cached_evaluation(counting, teacher, "key-a", data, "val", 16, "cpu", tmp_path)
    cached_evaluation(counting, teacher, "key-b", data, "test", 16, "cpu", tmp_path)
    assert len(calls) == 3
