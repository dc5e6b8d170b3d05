"""Spec validation: every error names the key path and the problem."""

import json

import pytest
from pydantic import ValidationError

from distillab.errors import SpecError
from distillab.spec import JobSpec
from distillab.spec_io import apply_override, load_spec, parse_spec
from conftest import tiny_spec


def error_of(data) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return str(info.value)


def test_valid_spec_fills_defaults(blobs, tiny_teacher):
    spec = parse_spec(tiny_spec(blobs, tiny_teacher))
    assert isinstance(spec, JobSpec)
    assert spec.strategy.params == {"temperature": 4.0, "alpha": 0.9}
    assert spec.teachers[0].resolved_format == "safetensors"
    assert spec.data.limit_train is None and spec.training.seeds == [0, 1]


def test_unknown_key_is_named(blobs, tiny_teacher):
    data = tiny_spec(blobs, tiny_teacher, training={"epochz": 3})
    assert "training.epochz: unknown key" in error_of(data)


def test_wrong_type_is_named(blobs, tiny_teacher):
    assert "training.batch_size" in error_of(tiny_spec(blobs, tiny_teacher, training={"batch_size": "big"}))


def test_out_of_range_strategy_param_is_named(blobs, tiny_teacher):
    message = error_of(tiny_spec(blobs, tiny_teacher, strategy={"name": "response", "params": {"temperature": 0}}))
    assert "strategy.params.temperature" in message and "greater than 0" in message


def test_unknown_strategy_param_is_named(blobs, tiny_teacher):
    message = error_of(tiny_spec(blobs, tiny_teacher, strategy={"name": "response", "params": {"temprature": 2}}))
    assert "strategy.params.temprature: unknown key" in message


def test_unknown_strategy_suggests_close_names(blobs, tiny_teacher):
    message = error_of(tiny_spec(blobs, tiny_teacher, strategy={"name": "respons"}))
    assert "strategy.name" in message and "response" in message


def test_missing_files_are_named(blobs, tiny_teacher, tmp_path):
    message = error_of(tiny_spec(blobs, tmp_path / "nope.safetensors"))
    assert "teacher.checkpoint: no such file" in message
    message = error_of(tiny_spec(tmp_path / "nope.npz", tiny_teacher))
    assert "data.path: no such file" in message


def test_unknown_model_and_dataset(blobs, tiny_teacher):
    assert "student.model: unknown model 'resnet9000'" in error_of(
        tiny_spec(blobs, tiny_teacher, student={"model": "resnet9000"}))
    assert "data.dataset" in error_of(tiny_spec(blobs, tiny_teacher, data={"dataset": "fashion"}))


def test_a_list_of_teachers_is_accepted_and_errors_name_the_index(blobs, tiny_teacher, tmp_path):
    data = tiny_spec(blobs, tiny_teacher)
    data["teacher"] = [data["teacher"], {"model": "cnn_tiny", "checkpoint": str(tmp_path / "missing.st")}]
    assert "teacher.1.checkpoint: no such file" in error_of(data)
    data["teacher"] = [data["teacher"][0], data["teacher"][0]]
    assert len(parse_spec(data).teachers) == 2


def test_overrides_are_parsed_as_yaml(blobs, tiny_teacher, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_spec(blobs, tiny_teacher)))
    spec = load_spec(path, ["training.epochs=3", "strategy.params.temperature=2", "training.seeds=[4, 5]"])
    assert spec.training.epochs == 3 and spec.strategy.params["temperature"] == 2.0 and spec.training.seeds == [4, 5]
    with pytest.raises(SpecError, match="expected key.path=value"):
        apply_override({}, "training.epochs")
    with pytest.raises(SpecError, match="training.epochs: unknown key|training.epochs"):
        load_spec(path, ["training.epochs.x=1"])


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("teacher: [unclosed\n  student: {")
    with pytest.raises(SpecError, match="bad.yaml: not valid YAML"):
        load_spec(path)


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)


def test_the_spec_is_immutable(blobs, tiny_teacher):
    spec = parse_spec(tiny_spec(blobs, tiny_teacher))
    with pytest.raises(ValidationError, match="frozen"):
        spec.training.epochs = 5


def test_the_task_defaults_to_image_classification_and_unknown_tasks_are_named(blobs, tiny_teacher):
    assert parse_spec(tiny_spec(blobs, tiny_teacher)).task == "image_classification"
    with pytest.raises(SpecError, match=r"^invalid spec: task: unknown task 'image_clasification' "
                                        r"\(did you mean: image_classification\?\)"):
        parse_spec({**tiny_spec(blobs, tiny_teacher), "task": "image_clasification"})


def test_every_shipped_image_config_still_validates_without_a_task_key():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
    image_configs = [path for path in configs if "\ntask:" not in path.read_text()]  # written before tasks existed
    assert len(image_configs) >= 5
    for path in image_configs:
        assert load_spec(path).task == "image_classification"
    for path in set(configs) - set(image_configs):  # the text jobs name their task
        assert load_spec(path).task in ("language_modeling", "text_embedding")


@pytest.mark.parametrize("change, expected", [
    ({"training": {"epochz": 3}}, "training.epochz: unknown key (did you mean: epochs"),
    ({"strategy": {"name": "response", "params": {"temprature": 2}}},
     "strategy.params.temprature: unknown key (did you mean: temperature"),
])
def test_a_mistyped_key_gets_a_suggestion(change, expected):
    base = {"teacher": {"model": "cnn_tiny"}, "student": {"model": "mlp"}, "data": {"dataset": "digits"}}
    with pytest.raises(SpecError) as error:
        parse_spec({**base, **change})
    assert expected in str(error.value)


def test_a_mistyped_required_key_is_one_error_with_a_suggestion():
    with pytest.raises(SpecError) as error:
        parse_spec({"teacher": {"model": "cnn_tiny"}, "studnet": {"model": "mlp"}, "data": {"dataset": "digits"}})
    assert str(error.value) == "invalid spec: studnet: unknown key (did you mean: student?)"


def test_hinton_means_response():
    spec = parse_spec({"teacher": {"model": "cnn_tiny"}, "student": {"model": "mlp"}, "data": {"dataset": "digits"},
                       "strategy": {"name": "hinton", "params": {"temperature": 2.0}}})
    assert spec.strategy.name == "response" and spec.strategy.params["temperature"] == 2.0
