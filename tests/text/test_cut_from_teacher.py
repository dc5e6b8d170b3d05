"""Students cut from a language-model teacher: importance, the cut, grouped-query attention,
the Hugging Face folder a run leaves, and the student as the teacher's draft model."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from conftest import make_tiny_lm, text_spec
from distillab.cli import app
from distillab.errors import SpecError
from distillab.models.hf import load_causal_lm
from distillab.models.lm_prune import CutShape, cut, estimate_importance, shape_for_params, teacher_shape
from distillab.spec_io import parse_spec
from distillab.tasks import TASKS


def tiny_llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    settings = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True)
    return LlamaForCausalLM(LlamaConfig(**{**settings, **overrides})).eval()


def calibration(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 61, (12, 20), generator=torch.Generator().manual_seed(seed))


def silence_heads(model, layer: int, heads: list[int]) -> None:
    """Zero the output weights (their columns of o_proj) of ``heads`` in ``layer``."""
    head_dim = model.config.head_dim
    with torch.no_grad():
        for head in heads:
            model.model.layers[layer].self_attn.o_proj.weight[:, head * head_dim:(head + 1) * head_dim] = 0


def test_a_head_with_zeroed_output_weights_ranks_least_and_the_cut_keeps_the_others_exactly():
    model = tiny_llama()
    silence_heads(model, 1, [1, 2])  # one query head in each key/value group (heads 0-1 and 2-3)
    importance = estimate_importance(model, calibration())
    assert importance.heads[1, 1] == 0 and importance.heads[1, 2] == 0
    assert set(importance.heads[1].argsort()[:2].tolist()) == {1, 2}
    full = teacher_shape(model.config)
    small = cut(model, importance, CutShape(full.hidden_size, full.intermediate_size, 2, 2, full.layers))
    ids = calibration(seed=7)
    kept_q = small.model.layers[1].self_attn.q_proj.weight
    assert torch.equal(kept_q[:8], model.model.layers[1].self_attn.q_proj.weight[0:8])  # head 0
    assert torch.equal(kept_q[8:], model.model.layers[1].self_attn.q_proj.weight[24:32])  # head 3
    # the silenced heads contributed nothing; the other layers lost their least important head of
    # each group: the cut model is the full one with exactly those heads silenced
    reference = tiny_llama()
    silence_heads(reference, 1, [1, 2])
    for layer in (0, 2):
        scores = importance.heads[layer].reshape(2, 2)
        dropped = [group * 2 + int(scores[group].argmin()) for group in range(2)]
        silence_heads(reference, layer, dropped)
    torch.testing.assert_close(small(ids).logits, reference(ids).logits, rtol=1e-5, atol=1e-5)


def test_whole_key_value_groups_are_cut_and_the_query_heads_follow_their_group():
    model = tiny_llama(hidden_size=48, num_attention_heads=6, num_key_value_heads=3)
    for layer in range(3):
        silence_heads(model, layer, [2, 3])  # the whole second group (heads 2-3 share key/value head 1)
    importance = estimate_importance(model, calibration())
    full = teacher_shape(model.config)
    small = cut(model, importance, CutShape(full.hidden_size, full.intermediate_size, 4, 2, full.layers))
    assert small.config.num_attention_heads == 4 and small.config.num_key_value_heads == 2
    attention, original = small.model.layers[0].self_attn, model.model.layers[0].self_attn
    assert torch.equal(attention.k_proj.weight, torch.cat([original.k_proj.weight[0:8], original.k_proj.weight[16:24]]))
    assert torch.equal(attention.q_proj.weight[16:32], original.q_proj.weight[32:48])  # group 2's heads 4-5
    ids = calibration(seed=3)
    torch.testing.assert_close(small(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)  # the group added nothing


def test_a_cut_that_keeps_everything_is_the_teacher():
    model = tiny_llama()
    importance = estimate_importance(model, calibration(), layer_metric="perplexity")
    assert importance.loss_increase.shape == (3,)
    same = cut(model, importance, teacher_shape(model.config))
    ids = calibration(seed=5)
    assert torch.equal(same(ids).logits, model(ids).logits)


def test_width_and_depth_cuts_keep_the_most_important_units_and_fit_a_parameter_target():
    model = tiny_llama()
    importance = estimate_importance(model, calibration())
    shape = shape_for_params(model.config, 12_000)
    small = cut(model, importance, shape)
    assert sum(p.numel() for p in small.parameters()) <= 12_000 < sum(p.numel() for p in model.parameters())
    kept = importance.channels.topk(shape.hidden_size).indices.sort().values
    assert torch.equal(small.model.embed_tokens.weight, model.model.embed_tokens.weight[:, kept])
    assert small.lm_head.weight.data_ptr() == small.model.embed_tokens.weight.data_ptr()  # still tied
    deep = shape_for_params(model.config, 12_000, axis="depth")
    assert deep.layers < 3 and deep.hidden_size == 32
    shallow = cut(model, importance, deep)
    best = importance.block_influence.topk(deep.layers).indices.sort().values.tolist()
    assert shallow.cut_layers == best


@pytest.mark.parametrize("args, message", [
    ({"heads": 3, "kv_heads": 2, "hidden_size": 24}, r"heads \(3\) must divide into kv_heads \(2\)"),
    ({"heads": 3, "kv_heads": 1}, r"hidden_size \(32\) must be a multiple of heads \(3\)"),
    ({"heads": 4, "kv_heads": 1}, "4 query heads per key/value group is more than the teacher's 2"),
    ({"hidden_size": 64}, "hidden_size: 64 is larger than the teacher's 32"),
    ({"params": 1e9}, "not smaller than the teacher's"),
    ({"params": "1e9"}, "not smaller than the teacher's"),  # YAML reads 1e9 without a dot as a string
    ({"params": "many"}, "params: 'many' must be a positive number"),
    ({"layers": 1, "calibration_tokens": 10}, "calibration_tokens: 10 is too few"),
    ({"layers": 1, "calibration_tokens": 10_000_000}, "more than the training split's"),
    ({"layers": 1, "axis": "depth"}, "axis: goes with params"),
    ({"width": 3}, "teacher_pruned takes"),
])
def test_cuts_the_teacher_cannot_make_are_refused_naming_the_key(corpus, tiny_lm, args, message):
    spec = parse_spec(text_spec(corpus, tiny_lm, student={"model": "teacher_pruned", "model_args": args}))
    task = TASKS["language_modeling"]
    with pytest.raises(SpecError, match=message):
        task.build_student(spec, task.build(spec.data, 0, spec))


def test_a_teacher_outside_the_llama_family_is_refused(corpus, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = make_tiny_lm(tmp_path / "llama")
    GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=16, n_layer=1, n_head=2, n_positions=64)).save_pretrained(folder)
    spec = parse_spec(text_spec(corpus, folder, student={"model": "teacher_pruned", "model_args": {"layers": 1}}))
    task = TASKS["language_modeling"]
    with pytest.raises(SpecError, match=r"gpt2 model cannot be cut; .*Llama-family causal LMs \(llama, mistral"):
        task.build_student(spec, task.build(spec.data, 0, spec))


def test_a_cut_run_records_the_cut_leaves_a_plain_transformers_folder_and_times_the_draft(corpus, tiny_lm, tmp_path):
    from distillab.experiment.run import run

    spec = text_spec(corpus, tiny_lm, student={"model": "teacher_pruned",
                                               "model_args": {"hidden_size": 24, "intermediate_size": 48, "heads": 2,
                                                              "kv_heads": 2, "calibration_tokens": 256}},
                     training={"epochs": 1, "seeds": [0]}, output={"draft_prompts": 2, "draft_tokens": 6})
    report = run(parse_spec(spec), tmp_path / "run").data
    cut_facts = report["student_cut"]
    assert cut_facts["shape"] == {"hidden_size": 24, "intermediate_size": 48, "heads": 2, "kv_heads": 2, "layers": 2}
    assert cut_facts["zero_shot"]["val_bits_per_character"] > 0
    distilled = next(m for m in report["models"] if m["role"] == "distilled")
    assert distilled["params"] == sum(p.numel() for p in load_causal_lm(tmp_path / "run").parameters())
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "run")  # transformers alone, no distillab
    ours = TASKS["language_modeling"]
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    from distillab.models.loading import load_state_into

    built = ours.build_student(parse_spec(spec), ours.build(parse_spec(spec).data, 0, parse_spec(spec)))
    load_state_into(built, tmp_path / "run" / "seed_0" / "distilled" / "student.safetensors", "test")
    torch.testing.assert_close(plain(ids).logits[..., :built.vocab_size], built(ids), rtol=1e-5, atol=1e-5)
    draft = report["draft"]
    assert draft["identical_output"] and draft["prompts"] == 2 and 0 <= draft["acceptance_rate"] <= 1
    assert draft["lookahead"] == draft["lookahead_choice"]["lookahead"] and 1 <= draft["lookahead"] <= 8
    assert "validation prompts" in draft["lookahead_choice"]["chosen_on"]
    assert "draft model" in (tmp_path / "run" / "report.md").read_text()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["hidden_size"] == 24
    exported = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"),
                                        "--format", "hf"])
    assert exported.exit_code == 0, exported.output
    record = json.loads((tmp_path / "hf" / "export.json").read_text())
    assert record["format"] == "hf" and record["parity"]["max_abs_logit_diff"] < 1e-4
    assert (tmp_path / "hf" / "tokenizer.json").is_file()


def test_a_student_that_is_not_a_transformers_model_is_not_exported_as_a_hugging_face_folder(corpus, tiny_lm,
                                                                                              tmp_path):
    from distillab.experiment.run import run

    run(parse_spec(text_spec(corpus, tiny_lm, training={"epochs": 1, "seeds": [0]})), tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()  # a gpt student: no Hugging Face folder
    result = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"),
                                      "--format", "hf"])
    assert result.exit_code == 2 and "not a transformers causal LM" in result.output
    assert not (tmp_path / "hf").exists()


def test_assisted_decoding_with_a_draft_gives_the_teachers_greedy_output(tiny_lm):
    from distillab.models.draft import speculative_decoding
    from distillab.models.hf import reduced_width

    teacher = load_causal_lm(tiny_lm)
    torch.manual_seed(0)
    draft = reduced_width(teacher, hidden_size=16, intermediate_size=32, heads=2, kv_heads=1, layers=1)
    prompts = torch.randint(3, 200, (3, 5), generator=torch.Generator().manual_seed(0))
    measured = speculative_decoding(teacher, draft, prompts, new_tokens=8)
    assert measured["identical_output"] and measured["identical_prompts"] == 3
    assert measured["teacher_tokens_per_s"] > 0 and measured["speedup"] > 0
    fixed = speculative_decoding(teacher, draft, prompts, new_tokens=8, lookahead=2)
    assert fixed["identical_output"] and fixed["lookahead"] == 2
    other = load_causal_lm(make_tiny_lm(tiny_lm.parent / "other_vocab", vocab_size=280))
    with pytest.raises(SpecError, match="must share the teacher's tokenizer"):
        speculative_decoding(teacher, other, prompts, new_tokens=4)


def test_the_lookahead_is_chosen_from_the_drafts_measured_agreement_and_cost(tiny_lm):
    from distillab.models.draft import choose_lookahead, expected_speedup

    # a perfect free draft: all k+1 tokens per teacher pass; a useless one: one token per pass, plus its cost
    assert expected_speedup(1.0, 0.0, 4) == 5.0 and expected_speedup(0.0, 0.5, 2) == 0.5
    assert round(expected_speedup(0.8, 0.1, 3), 4) == round((1 - 0.8 ** 4) / 0.2 / 1.3, 4)
    teacher = load_causal_lm(tiny_lm)
    prompts = torch.randint(3, 200, (2, 5), generator=torch.Generator().manual_seed(1))
    itself = choose_lookahead(teacher, teacher, prompts, new_tokens=6)  # the teacher agrees with itself
    assert itself["agreement"] == 1.0 and 1 <= itself["lookahead"] <= 8 and itself["relative_cost"] > 0


def test_the_python_api_cuts_the_student_from_a_transformers_teacher(tiny_lm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import TEXT
    from distillab import Distiller, compare

    teacher = AutoModelForCausalLM.from_pretrained(tiny_lm)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    documents = [text * 6 for text in TEXT]
    args = {"hidden_size": 16, "intermediate_size": 32, "heads": 2, "kv_heads": 2, "calibration_tokens": 256}
    distiller = Distiller(teacher, "teacher_pruned", "token_kd", task="language_modeling", tokenizer=tokenizer,
                          student_args=args, strategy_params={"top_k": 4}, lr=0.01, batch_size=8)
    assert distiller.student is None  # cut when fit() has the text
    distiller.fit(documents, epochs=1, context_length=16, val_size=0.15, test_size=0.15, progress=False)
    assert distiller.student.model.config.hidden_size == 16 and distiller.student.cut["calibration_tokens"] >= 256
    assert distiller.evaluate()["bits_per_character"] > 0
    report = compare(teacher, "teacher_pruned", documents, task="language_modeling", tokenizer=tokenizer,
                     student_args=args, strategy="token_kd", strategy_params={"top_k": 4}, seeds=[0], epochs=1,
                     context_length=16, val_size=0.15, test_size=0.15, progress=False, plots=False,
                     latency_repeats=1)
    assert report.data["student_cut"]["shape"]["hidden_size"] == 16
    with pytest.raises(SpecError, match="student_args: they go with a student made from the teacher"):
        Distiller(teacher, torch.nn.Linear(2, 2), task="language_modeling", tokenizer=tokenizer, student_args=args)


def test_a_cut_student_is_distilled_layer_by_layer_too(corpus, tiny_lm, tmp_path):
    from distillab.experiment.run import run

    spec = text_spec(corpus, tiny_lm, student={"model": "teacher_pruned",
                                               "model_args": {"hidden_size": 16, "layers": 1, "calibration_tokens": 256}},
                     strategy={"name": "layerwise", "params": {}}, training={"epochs": 1, "seeds": [0]},
                     output={"draft_prompts": 0})
    report = run(parse_spec(spec), tmp_path / "run").data
    assert report["student_cut"]["shape"]["layers"] == 1 and "draft" not in report
    assert report["strategy"]["name"] == "layerwise"


def test_a_cut_is_reused_only_for_the_same_teacher(tiny_lm, tmp_path):
    from distillab.api.text import teacher_student, text_data
    from conftest import TEXT

    documents = [text * 6 for text in TEXT]
    args = {"hidden_size": 16, "calibration_tokens": 256}
    cuts = []
    for folder in (tiny_lm, make_tiny_lm(tmp_path / "other_weights", seed=1)):
        teacher = load_causal_lm(folder)
        data = text_data("language_modeling", documents, teacher.tokenizer, 16, 0.15, 0.15, None, [teacher], None)
        cuts.append(teacher_student("teacher_pruned", teacher, args, data))
    assert not torch.equal(cuts[0].model.model.embed_tokens.weight, cuts[1].model.model.embed_tokens.weight)


@pytest.mark.parametrize("student", [{"model": "teacher_width", "model_args": {"hidden_size": 24, "heads": 2,
                                                                              "intermediate_size": 48}},
                                     {"model": "teacher_layers", "model_args": {"keep": 1}}])
def test_a_student_made_from_the_teacher_exports_from_its_run_folder(corpus, tiny_lm, tmp_path, student):
    from distillab.experiment.run import run

    run(parse_spec(text_spec(corpus, tiny_lm, student=student, training={"epochs": 1, "seeds": [0]})),
        tmp_path / "run")
    exported = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "hf"),
                                        "--format", "hf"])  # the student is rebuilt without the teacher's weights
    assert exported.exit_code == 0, exported.output
    record = json.loads((tmp_path / "hf" / "export.json").read_text())
    assert record["parity"]["max_abs_logit_diff"] < 1e-4 and record["model"] == student["model"]
