"""Curriculum order, stage schedule, the teacher-assistant chain and born-again generations."""

import pytest
import torch
from torch import nn

import distillab
from distillab import data as data_module
from distillab.errors import SpecError
from distillab.spec import DataSpec
from distillab.spec_io import parse_spec
from distillab.strategies import STRATEGIES
from distillab.strategies.progressive import Progressive, ProgressiveParams
from conftest import tiny_spec


class ConfidenceByBrightness(nn.Module):
    """A teacher whose confidence in class 0 grows with the mean input value."""

    def forward(self, x):  # (B, C, H, W) -> (B, 3)
        m = x.flatten(1).mean(1)
        return torch.stack([m * 10, torch.zeros_like(m), torch.zeros_like(m)], 1)


def test_curriculum_orders_samples_by_teacher_confidence_and_grows_the_pool(blobs):
    bundle = data_module.build(DataSpec(dataset="npz", path=blobs), 0)
    bundle.train.labels.zero_()  # every sample is class 0: confidence is a function of brightness
    strategy = Progressive([ConfidenceByBrightness()], nn.Linear(64, 3), ProgressiveParams())
    strategy.prepare(bundle)
    brightness = bundle.normalize(bundle.train.images).flatten(1).mean(1)
    order = strategy.difficulty_order
    ranked = brightness[order]
    assert torch.all(ranked[:-1] >= ranked[1:] - 1e-5)  # easiest (most confident) first, up to float ties

    n = len(bundle.train)
    generator = torch.Generator().manual_seed(0)
    pools = []
    for epoch in range(10):
        rows = strategy.sample_order(epoch, 10, generator)
        assert len(rows) == n
        pools.append(set(rows.tolist()))
    easiest_third = set(order[: round(n / 3)].tolist())
    assert pools[0] <= easiest_third and pools[1] <= easiest_third  # stage 1: 20% of the epochs
    assert pools[2] <= set(order[: round(2 * n / 3)].tolist()) and not pools[2] <= easiest_third
    assert pools[9] == set(range(n))  # the last stage sees everything
    assert [strategy.stage_of(e, 10) for e in range(10)] == [0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


def test_stage_shares_are_validated(blobs, tiny_teacher):
    spec = tiny_spec(blobs, tiny_teacher, strategy={"name": "progressive", "params": {"stage_epochs": [0.5, 0.6], "stage_data": [0.5, 1.0]}})
    with pytest.raises(SpecError, match="strategy.params.stage_epochs"):
        parse_spec(spec)


def test_teacher_assistant_chain_and_born_again_generations_are_reported(blobs, tiny_teacher, tmp_path):
    assistant = {"name": "progressive", "params": {"mode": "assistant", "assistant_model": "cnn_tiny",
                                                    "assistant_args": {}}}
    report = distillab.run(tiny_spec(blobs, tiny_teacher, strategy=assistant, training={"seeds": [0]}),
                           tmp_path / "ta")
    stages = report.model("distilled")["stages"]
    assert [s["stage"] for s in stages] == ["assistant", "student"]
    assert stages[0]["model"] == "cnn_tiny" and stages[1]["model"] == "mlp"
    assert report.model("distilled")["accuracy"]["mean"] == stages[1]["accuracy"]["mean"]
    assert "| assistant | cnn_tiny |" in (tmp_path / "ta" / "report.md").read_text()

    born_again = {"name": "self", "params": {"generations": 2}}
    report = distillab.run(tiny_spec(blobs, tiny_teacher, strategy=born_again, training={"seeds": [0]}),
                           tmp_path / "ban")
    assert [s["stage"] for s in report.model("distilled")["stages"]] == ["generation_1", "generation_2"]
    assert (tmp_path / "ban" / "seed_0" / "distilled" / "generation_2" / "student.safetensors").exists()


def test_self_distillation_does_not_need_the_jobs_teacher():
    stages = STRATEGIES["self"].stages(STRATEGIES["self"].Params(generations=3))
    assert [s.teacher for s in stages] == ["scratch", "previous", "previous"]
