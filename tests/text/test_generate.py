"""Sequence-level KD data: teacher continuations of training prompts, filtered by the
teacher's perplexity, deterministic for a seed, usable as a text_folder corpus."""

import json

from typer.testing import CliRunner

from conftest import text_spec
from distillab.cli import app

runner = CliRunner()


def generate(tmp_path, spec_path, out, *extra):
    result = runner.invoke(app, ["generate", str(spec_path), "--out", str(out), "--prompts", "6",
                                 "--prompt-tokens", "4", "--new-tokens", "8", *extra])
    return result.exit_code, result.output


def test_generated_corpus_is_deterministic_filtered_and_trains_a_student(tmp_path, corpus, tiny_lm):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(text_spec(corpus, tiny_lm)))
    first, second = tmp_path / "gen" / "a.jsonl", tmp_path / "gen2" / "b.jsonl"
    for out in (first, second):
        code, output = generate(tmp_path, spec_path, out, "--keep", "0.5", "--seed", "3")
        assert code == 0, output
    assert first.read_text() == second.read_text()  # same seed, same file
    lines = [json.loads(line) for line in first.read_text().splitlines()]
    meta = json.loads((first.parent / "a.jsonl.meta.json").read_text())
    assert meta["prompts"] == 6 and meta["kept"] == len(lines) == 3
    assert all(line["teacher_perplexity"] <= meta["perplexity_threshold"] + 1e-3 for line in lines)
    code, _ = generate(tmp_path, spec_path, tmp_path / "other.jsonl", "--keep", "0.5", "--seed", "4")
    assert (tmp_path / "other.jsonl").read_text() != first.read_text()  # another seed samples otherwise

    # the generated corpus is a text_folder corpus for a job (here only validated)
    job = text_spec(first.parent, tiny_lm, data={"val_size": 0.2, "test_size": 0.2})
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job))
    result = runner.invoke(app, ["validate", str(job_path)])
    assert result.exit_code == 0, result.output


def test_generation_refuses_a_prompt_as_long_as_the_context(tmp_path, corpus, tiny_lm):
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(text_spec(corpus, tiny_lm)))
    result = runner.invoke(app, ["generate", str(spec_path), "--out", str(tmp_path / "x.jsonl"),
                                 "--prompt-tokens", "16"])
    assert result.exit_code == 2 and "must be shorter than the context (16)" in result.output
