"""Image students cut from their teacher (``teacher_pruned``): the cut computes what the teacher
with the removed channels and blocks silenced computes; it keeps what matters; a run with a cut
student reports the cut, and its student exports and packages without the teacher's file."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import blobs_teacher, make_blobs_npz, tiny_spec
from distillab import run
from distillab.autodistill.space import ImageSpace
from distillab.compress import export_run
from distillab.models.cut import block_influence, cut, cut_shape, masked_resnet, rebuild_resnet, resnet_plan
from distillab.errors import SpecError
from distillab.models.zoo import build_model, count_parameters
from distillab.spec_io import parse_spec


def _trained_looking_resnet(depth: int = 20, width: int = 16, seed: int = 0):
    """A zoo ResNet with non-trivial BN scales, shifts and statistics, as after training."""
    torch.manual_seed(seed)
    model = build_model("resnet", (1, 28, 28), 10, {"depth": depth, "width": width})
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(-1.0, 1.0)
            module.bias.data.uniform_(-0.5, 0.5)
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("args", [{"keep": 0.5}, {"keep": 0.5, "blocks": [1, 2, 1]},
                                  {"keep": 0.3, "blocks": [2, 1, 3], "importance": "bn", "round_to": 4}])
def test_the_cut_resnet_computes_what_the_silenced_teacher_computes(args):
    teacher = _trained_looking_resnet()
    images = torch.randn(32, 1, 28, 28)
    plan = resnet_plan(teacher, args, images)
    student = rebuild_resnet(teacher, plan).eval()
    with torch.no_grad():
        torch.testing.assert_close(student(images), masked_resnet(teacher, plan).eval()(images),
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(student(images), teacher(images), atol=1e-2)  # the removed channels mattered
    assert [len(kept) for kept in plan.blocks] == list(args.get("blocks", [3, 3, 3]))
    name, shape = cut_shape(teacher, args)
    rebuilt = build_model(name, (1, 28, 28), 10, shape)  # the zoo builds the cut from its arguments alone
    rebuilt.load_state_dict(student.state_dict())
    assert count_parameters(student) < count_parameters(teacher) / 3


def test_keeping_everything_is_the_teacher():
    teacher = _trained_looking_resnet(depth=8, width=8)
    student, facts = cut(teacher, {"keep": 1.0})
    images = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(images), teacher(images))
    assert facts["params"] == facts["teacher_params"] and facts["bn_recalibrated_on"] == 0


def test_the_least_influential_block_is_dropped_and_the_strongest_channels_stay():
    teacher = _trained_looking_resnet(depth=14, width=8)  # 2 blocks per stage
    with torch.no_grad():
        teacher.layer1[0].bn2.weight.zero_()  # its residual branch outputs a constant: it barely changes its input
        teacher.layer1[0].bn2.bias.fill_(1e-3)
        teacher.layer2[0].conv1.weight[5] *= 100  # the strongest filter of a projection block
    images = torch.randn(64, 1, 28, 28)
    influence = block_influence(teacher, images)
    assert influence[0][0] < influence[0][1] and influence[1][0] is None  # a projection block is not ranked
    plan = resnet_plan(teacher, {"keep": 0.5, "blocks": [1, 1, 1]}, images)
    assert plan.blocks == [[1], [0], [0]]  # stage 1 drops block 0; stages 2 and 3 keep their projections
    assert 5 in plan.inner[(1, 0)].tolist()


def test_batchnorm_statistics_are_re_estimated_on_the_calibration_images():
    teacher = _trained_looking_resnet(depth=8, width=8)
    images = torch.randn(40, 1, 28, 28) * 3 + 1
    student, facts = cut(teacher, {"keep": 0.5}, images)
    stem_conv, stem_bn = student.stem[0], student.stem[1]
    with torch.no_grad():
        out = stem_conv(images)  # what the first BatchNorm normalises
    torch.testing.assert_close(stem_bn.running_mean, out.mean(dim=(0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert facts["bn_recalibrated_on"] == 40


def test_a_cnn_teacher_is_cut_with_the_pruners_channel_choice():
    torch.manual_seed(0)
    teacher = build_model("cnn_small", (1, 28, 28), 10).eval()
    student, facts = cut(teacher, {"keep": 0.5})
    assert facts["architecture"] == {"model": "cnn", "model_args": {"stages": [[8], [16, 16], [32, 48]],
                                                                   "dropout": 0.0}}
    assert count_parameters(student) == facts["params"] < facts["teacher_params"] / 3


def _spec(tmp_path, student_args: dict, teacher_model: str = "resnet", **overrides) -> dict:
    npz = make_blobs_npz(tmp_path / "blobs.npz")
    teacher = tmp_path / "teacher.safetensors"
    teacher_args = {"depth": 14, "width": 8} if teacher_model == "resnet" else {}
    if not teacher.exists():
        blobs_teacher(teacher, teacher_model, teacher_args)
    return tiny_spec(npz, teacher, teacher={"model": teacher_model, "model_args": teacher_args},
                     student={"model": "teacher_pruned", "model_args": student_args}, **overrides)


@pytest.mark.parametrize("args, teacher_model, message", [
    ({"keep": 0}, "resnet", "student.model_args.keep"),
    ({"keep": 1.5}, "resnet", "student.model_args.keep"),
    ({"blocks": [0, 1, 1]}, "resnet", "student.model_args.blocks"),
    ({"blocks": [3, 1, 1]}, "resnet", "student.model_args.blocks[0]: 3; stage 1 of the teacher has 2 blocks"),
    ({"width": 4}, "resnet", "not width"),
    ({"blocks": [1, 1, 1]}, "cnn_tiny", "no residual blocks"),
    ({"keep": 0.5}, "mlp", "cut from a zoo resnet"),
])
def test_bad_cuts_are_refused_when_the_spec_is_read(tmp_path, args, teacher_model, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(_spec(tmp_path, args, teacher_model))


def test_a_run_with_a_cut_student_reports_the_cut_and_exports_without_the_teacher(tmp_path):
    spec = _spec(tmp_path, {"keep": 0.5, "blocks": [1, 1, 1]})
    result = run(spec, tmp_path / "run")
    report = json.loads((result.out_dir / "report.json").read_text())
    cut_facts = report["student_cut"]
    assert cut_facts["architecture"]["model"] == "resnet"
    assert cut_facts["blocks_kept"] == [[0] if cut_facts["block_influence"][0][0] > cut_facts["block_influence"][0][1]
                                        else [1], [0], [0]]
    assert 0.0 <= cut_facts["zero_shot"]["val_accuracy"] <= 1.0
    distilled = next(m for m in report["models"] if m["role"] == "distilled")
    assert distilled["params"] == cut_facts["params"] < cut_facts["teacher_params"]
    (tmp_path / "teacher.safetensors").unlink()  # the student is rebuilt from the run alone
    record = export_run(result.out_dir, tmp_path / "onnx")
    assert record["parity"]["argmax_agreement"] == 1.0
    assert record["architecture"] == cut_facts["architecture"]


def test_the_search_space_counts_the_cuts_as_they_are_built():
    teacher = _trained_looking_resnet(depth=14, width=8)
    space = ImageSpace((1, 28, 28), 10, "torch", 1, teacher, cut_from=teacher)
    cuts = space.candidates(["teacher_pruned"])
    assert {json.dumps(c.args["blocks"]) for c in cuts} == {"[1, 1, 1]", "[2, 2, 2]"}
    for candidate in cuts:
        student, _ = cut(teacher, candidate.args, torch.randn(16, 1, 28, 28))
        assert count_parameters(student) == candidate.params
        assert candidate.facts()["architecture"]["model"] == "resnet"
    assert ImageSpace((1, 28, 28), 10, "torch", 1, teacher, cut_from=None).candidates(["teacher_pruned"]) == []


def test_the_python_api_cuts_a_teacher_module(tmp_path):
    from distillab import Distiller, compare
    from distillab.models.loading import load_state_into

    npz = make_blobs_npz(tmp_path / "blobs.npz")
    arrays = __import__("numpy").load(npz)
    x = torch.tensor(arrays["x_train"], dtype=torch.float32).unsqueeze(1) / 255
    y = torch.tensor(arrays["y_train"], dtype=torch.long)
    x_test = torch.tensor(arrays["x_test"], dtype=torch.float32).unsqueeze(1) / 255
    y_test = torch.tensor(arrays["y_test"], dtype=torch.long)
    teacher = load_state_into(build_model("resnet", (1, 8, 8), 3, {"depth": 14, "width": 8}),
                              blobs_teacher(tmp_path / "t.safetensors", "resnet", {"depth": 14, "width": 8}),
                              "teacher").eval()
    distiller = Distiller(teacher, "teacher_pruned", student_args={"keep": 0.5, "blocks": [1, 1, 1]}, lr=1e-2)
    distiller.fit((x, y), epochs=1, progress=False)
    assert distiller.student.cut["architecture"]["model_args"]["inner"] == [[4], [8], [16]]
    with pytest.raises(SpecError, match="student_args.blocks"):
        Distiller(teacher, "teacher_pruned", student_args={"blocks": [1, 1]})
    report = compare(teacher, "teacher_pruned", (x, y), (x_test, y_test), student_args={"keep": 0.5}, seeds=[0],
                     epochs=1, out_dir=tmp_path / "cmp", latency_repeats=2)
    teacher_row, scratch, distilled = report.models
    assert scratch["params"] == distilled["params"] < teacher_row["params"] / 3  # both twins are the cut
