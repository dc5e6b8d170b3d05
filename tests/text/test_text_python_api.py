"""Language models from Python: Distiller and compare on a transformers teacher object and the
user's own documents, the same engine, cache and report as a spec; and their bad inputs."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import TEXT
from distillab import Distiller, compare
from distillab.errors import DataError, SpecError
from distillab.models.gpt import GPT

DOCUMENTS = [text * 6 for text in TEXT]


@pytest.fixture(scope="module")
def hf_teacher(tiny_lm):
    return AutoModelForCausalLM.from_pretrained(tiny_lm, local_files_only=True), \
        AutoTokenizer.from_pretrained(tiny_lm, local_files_only=True)


def small_gpt(vocab: int) -> GPT:
    return GPT((16,), vocab, layers=1, dim=16, heads=2)


def test_a_distiller_fits_a_student_lm_on_documents_from_the_teacher_cache(hf_teacher, private_cache):
    model, tokenizer = hf_teacher
    torch.manual_seed(0)
    student = small_gpt(len(tokenizer))
    before = [p.detach().clone() for p in student.parameters()]
    distiller = Distiller(model, student, "token_kd", task="language_modeling", tokenizer=tokenizer,
                          strategy_params={"top_k": 4}, lr=0.01, batch_size=8)
    history = distiller.fit(DOCUMENTS, epochs=2, context_length=16, val_size=0.15, test_size=0.15)
    assert len(history.epochs) == 2 and "val_bits_per_character" in history.history
    assert history.best_val == min(history.history["val_bits_per_character"])  # lower is better
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert list((private_cache / "teacher_topk").glob("*-k4/meta.json"))  # the teacher's top-4 was cached
    metrics = distiller.evaluate()
    assert set(metrics) >= {"bits_per_character", "perplexity", "accuracy", "loss"}
    assert 0 < metrics["bits_per_character"] < 20 and metrics["perplexity"] > 1


def test_compare_reports_bits_per_character_for_a_user_student(hf_teacher, tmp_path):
    """... and eval_limit caps the validation and test text, as the spec's limit_eval_tokens does."""
    model, tokenizer = hf_teacher
    report = compare(model, lambda: small_gpt(len(tokenizer)), DOCUMENTS, task="language_modeling",
                     tokenizer=tokenizer, strategy="token_kd", strategy_params={"top_k": 4}, seeds=[0, 1], epochs=1,
                     context_length=16, val_size=0.15, test_size=0.15, batch_size=8, lr=0.01, plots=False,
                     latency_repeats=2, out_dir=tmp_path / "run", eval_limit=32)
    assert 0 < report.data["dataset"]["tokens"]["test"] <= 32
    assert report.data["dataset"]["tokens"]["train"] > 32  # the training text is not capped
    assert report.data["task"]["metric"] == "bits_per_character"
    assert report.data["comparisons"][0]["metric"] == "bits_per_character"
    assert report.data["comparisons"][0]["n"] == 2
    roles = {m["role"]: m for m in report.data["models"]}
    assert roles["teacher"]["model"] == "LlamaForCausalLM" and roles["scratch"]["model"] == "GPT"
    assert roles["distilled"]["prefill_tokens_per_s"] > 0
    assert (tmp_path / "run" / "report.md").exists()


def test_compare_takes_a_zoo_student_with_its_arguments_and_a_corpus_spec(hf_teacher, tmp_path, corpus):
    model, tokenizer = hf_teacher
    report = compare(model, "gpt", {"dataset": "text_folder", "path": str(corpus), "context_length": 16,
                                    "val_size": 0.15, "test_size": 0.15},
                     student_args={"layers": 1, "dim": 16, "heads": 2}, task="language_modeling", tokenizer=tokenizer,
                     strategy="token_kd", strategy_params={"top_k": 4}, seeds=[0], epochs=1, batch_size=8,
                     plots=False, latency_repeats=2, out_dir=tmp_path / "run")
    assert report.model("distilled")["params"] == report.model("scratch")["params"]
    assert report.data["dataset"]["tokens"]["test"] > 0


def test_language_model_bad_inputs_are_named(hf_teacher):
    model, tokenizer = hf_teacher
    student = small_gpt(len(tokenizer))
    with pytest.raises(SpecError, match="tokenizer"):  # a bare transformers model cannot be wrapped blind
        Distiller(model, student, "token_kd", task="language_modeling")
    with pytest.raises(SpecError, match="strategy: .* not language_modeling"):
        Distiller(model, student, "feature", task="language_modeling", tokenizer=tokenizer)
    distiller = Distiller(model, student, "token_kd", task="language_modeling", tokenizer=tokenizer)
    with pytest.raises(DataError, match="train_data: a language model trains on text"):
        distiller.fit((torch.zeros(4, 8, dtype=torch.long), torch.zeros(4, 8, dtype=torch.long)))
    with pytest.raises(DataError, match=r"train_data\[1\]: expected a string"):
        distiller.fit(["some text", 3])
    with pytest.raises(SpecError, match="val_data"):
        distiller.fit(DOCUMENTS, val_data=DOCUMENTS)
    with pytest.raises(DataError, match="context_length: 128 tokens is longer than the teacher.s context of 64"):
        distiller.fit(DOCUMENTS, context_length=128)
    with pytest.raises(SpecError, match="call fit"):
        distiller.evaluate()
    with pytest.raises(SpecError, match="train_data: 'digits' is not a text corpus"):
        compare(model, lambda: small_gpt(len(tokenizer)), "digits", task="language_modeling", tokenizer=tokenizer,
                strategy="token_kd")
    with pytest.raises(SpecError, match="task: unknown task 'texts'"):
        Distiller(model, student, "token_kd", task="texts")
    with pytest.raises(SpecError, match="strategy: TokenKD serves language_modeling, not text_embedding"):
        Distiller(model, student, "token_kd", task="text_embedding", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    from distillab.models.hf import load_encoder

    return load_encoder(tiny_encoder)


def test_a_text_encoder_is_distilled_from_python_on_documents(encoder, private_cache):
    from distillab.models.hf import encoder_subset

    torch.manual_seed(0)
    student = encoder_subset(encoder, keep=2)
    before = [p.detach().clone() for p in student.parameters()]
    distiller = Distiller(encoder, student, "embedding_kd", task="text_embedding", lr=1e-3, batch_size=8)
    history = distiller.fit(DOCUMENTS, epochs=2, context_length=24, val_size=0.2, test_size=0.2)
    assert "val_spearman" in history.history and history.best_val == max(history.history["val_spearman"])
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert list((private_cache / "teacher_embeddings").glob("*.npy"))  # the teacher's embeddings, cached once
    metrics = distiller.evaluate()
    assert set(metrics) >= {"spearman", "cosine_agreement", "recall_at_10"}
    assert -1 <= metrics["spearman"] <= 1 and 0 <= metrics["recall_at_10"] <= 1
    teacher_itself = Distiller(encoder, encoder, "embedding_kd", task="text_embedding")
    teacher_itself.data = distiller.data  # the teacher scored against itself on the same test sentences
    assert teacher_itself.evaluate()["spearman"] == pytest.approx(1.0)


def test_compare_on_a_text_encoder_has_an_untrained_scratch_twin(encoder, tmp_path):
    from distillab.models.hf import encoder_subset

    report = compare(encoder, lambda: encoder_subset(encoder, keep=2), DOCUMENTS, task="text_embedding",
                     strategy="embedding_kd", seeds=[0, 1], epochs=1, context_length=24, val_size=0.2, test_size=0.2,
                     batch_size=8, lr=1e-3, plots=False, latency_repeats=2, out_dir=tmp_path / "run")
    assert report.data["task"]["metric"] == "spearman"
    roles = {m["role"]: m for m in report.data["models"]}
    assert roles["teacher"]["model"] == "BertModel"
    assert roles["teacher"]["score"]["mean"] == pytest.approx(1.0)  # the teacher against itself
    assert roles["distilled"]["params"] < roles["teacher"]["params"]


def test_on_policy_steps_mix_with_cached_ones_in_a_fit(hf_teacher):
    model, tokenizer = hf_teacher
    distiller = Distiller(model, small_gpt(len(tokenizer)), "token_kd", task="language_modeling", tokenizer=tokenizer,
                          strategy_params={"top_k": 4, "on_policy": 0.5}, lr=0.01, batch_size=4)
    history = distiller.fit(DOCUMENTS, epochs=1, context_length=16, val_size=0.15, test_size=0.15)
    share = history.epochs[0]["on_policy"]  # the share of samples that were on-policy
    assert 0 < share < 1 and history.epochs[0]["train_accuracy"] > 0


def test_train_fits_a_language_model_on_next_token_ce_alone(hf_teacher):
    from distillab import train

    _, tokenizer = hf_teacher
    torch.manual_seed(0)
    model = small_gpt(len(tokenizer))
    history = train(model, DOCUMENTS, epochs=3, task="language_modeling", tokenizer=tokenizer, context_length=16,
                    val_size=0.15, test_size=0.15, lr=0.01, batch_size=8)
    bpc = history.history["val_bits_per_character"]
    assert len(bpc) == 3 and bpc[-1] < bpc[0]  # it learns the text
    with pytest.raises(SpecError, match="tokenizer"):
        train(small_gpt(len(tokenizer)), DOCUMENTS, task="language_modeling")
    with pytest.raises(SpecError, match="no labels to train on alone"):
        train(small_gpt(len(tokenizer)), DOCUMENTS, task="text_embedding", tokenizer=tokenizer)
