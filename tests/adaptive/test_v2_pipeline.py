"""``AdaptivePipeline`` on adaptive v2's generator (the routers of the dynamic convolutions):
calibration steps the routers and nothing else, monitoring re-calibrates on shifted data, and
the exported pipeline predicts the same without the teacher."""

import copy

import pytest
import torch

from distillab.adaptive.dynamic import dynamic_layers
from distillab.adaptive.pipeline import EXPORT_FORMAT_V2, AdaptivePipeline, PipelineConfig
from distillab.models.zoo import build_model
from distillab.strategies.adaptive_v2 import AdaptiveV2
from test_pipeline import NORMALIZE, SIZE, BandTeacher, K, blob_images, changed, shift, state


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    student = build_model("cnn_tiny", (1, SIZE, SIZE), K)
    params = AdaptiveV2.Params(experts=3, max_macs_ratio=10, adv_weight=0.1)
    strategy = AdaptiveV2([BandTeacher()], student, params, in_shape=(1, SIZE, SIZE))
    strategy.prepare(type("Bundle", (), {"steps_per_epoch": staticmethod(lambda batch_size: 60)})())
    optimizer = torch.optim.Adam(strategy.trainable_parameters(), lr=3e-3)
    images, labels = blob_images(512, seed=0)
    strategy.train()
    for step in range(120):
        rows = torch.randint(0, len(images), (64,), generator=torch.Generator().manual_seed(step))
        out = strategy.loss({"inputs": NORMALIZE(images[rows]), "targets": labels[rows], "epoch": step // 60,
                             "epochs": 2})
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return strategy.eval()


def router_keys(model):
    return {f"{name}.{key}" for name, module in model.named_modules() if module in dynamic_layers(model)
            for key in module.state_dict() if key.startswith(("router.", "head."))}


def test_calibration_steps_only_the_routers_and_the_critic(trained):
    pipeline = AdaptivePipeline.from_strategy(copy.deepcopy(trained), NORMALIZE,
                                              PipelineConfig(calibration_calls=3, audit_fraction=0.5))
    assert pipeline.dynamic and pipeline.can_calibrate
    images, _ = blob_images(32 * 6, seed=11)
    before, critic = state(pipeline.model), state(pipeline.discriminator)
    for call in range(3):
        assert pipeline.calibrating
        pipeline.predict(images[32 * call : 32 * (call + 1)])
    after = state(pipeline.model)
    moved = set(changed(before, after))
    assert moved and moved <= router_keys(pipeline.model)  # kernels, BatchNorm and the rest stay as trained
    assert changed(critic, state(pipeline.discriminator))  # the output critic steps too (adv_weight > 0)
    assert {"soft", "adv_output", "d_loss", "g_loss"} <= set(pipeline.last_calibration)
    routers = {id(p) for p in pipeline.generator_parameters()}
    assert all(p.grad is None for p in pipeline.model.parameters() if id(p) not in routers)
    for call in range(3, 6):
        pipeline.predict(images[32 * call : 32 * (call + 1)])
    assert changed(after, state(pipeline.model)) == []
    stats = pipeline.stats()
    assert stats["calibration_steps"] == 3 and stats["audits"] > 0 and 0 <= stats["discriminator_score"] <= 1


def test_calibration_moves_the_student_towards_the_teacher_on_shifted_data(trained):
    pipeline = AdaptivePipeline.from_strategy(copy.deepcopy(trained), NORMALIZE,
                                              PipelineConfig(calibration_calls=0, calibration_lr=3e-3))
    shifted = NORMALIZE(shift(blob_images(256, seed=12)[0]))
    first = pipeline.calibrate(shifted)["soft"]
    for _ in range(30):
        last = pipeline.calibrate(shifted)["soft"]
    assert last < first  # the routers alone reduce the KD loss on the new distribution


def test_monitoring_recalibrates_when_agreement_drops(trained):
    pipeline = AdaptivePipeline.from_strategy(copy.deepcopy(trained), NORMALIZE,
                                              PipelineConfig(calibration_calls=0, audit_fraction=1.0, window=64,
                                                             min_audits=32, agreement_threshold=0.8,
                                                             recalibration_calls=4))
    clean, _ = blob_images(32 * 4, seed=13)
    for call in range(4):
        pipeline.predict(clean[32 * call : 32 * (call + 1)])
    assert pipeline.stats()["recalibrations"] == 0 and pipeline.agreement > 0.9
    with torch.no_grad():  # the student goes wrong (its classes permuted), as under a shift it cannot follow
        classifier = pipeline.model.classifier
        classifier.weight.copy_(classifier.weight.roll(1, 0))
        classifier.bias.copy_(classifier.bias.roll(1, 0))
    for call in range(4):
        pipeline.predict(clean[32 * call : 32 * (call + 1)])
    stats = pipeline.stats()
    assert stats["recalibrations"] >= 1 and stats["calibration_steps"] >= 1


def test_the_exported_v2_pipeline_predicts_the_same_without_the_teacher(trained, tmp_path):
    pipeline = AdaptivePipeline(copy.deepcopy(trained.student), normalize=NORMALIZE)
    assert not pipeline.can_calibrate
    out = pipeline.save(tmp_path / "export", student_model="cnn_tiny", student_args={}, in_shape=(1, SIZE, SIZE),
                        num_classes=K)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["adaptive.json", "student.safetensors"]
    loaded = AdaptivePipeline.load(out)
    assert loaded.dynamic and loaded.teacher is None
    images, _ = blob_images(40, seed=14)
    torch.testing.assert_close(loaded.predict(images), pipeline.predict(images))
    import json

    assert json.loads((out / "adaptive.json").read_text())["format"] == EXPORT_FORMAT_V2


def test_a_model_without_dynamic_layers_is_refused():
    with pytest.raises(ValueError, match="neither"):
        AdaptivePipeline(build_model("cnn_tiny", (1, SIZE, SIZE), K))
