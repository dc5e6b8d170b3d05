"""The discriminator's heads, the adaptive strategy's training, and the inference pipeline:
calibration, monitoring, re-calibration on shifted data, export without the teacher."""

import pytest
import torch
from torch import nn

from distillab.adaptive.objective import Weights, discriminator_step, generator_loss
from distillab.models.critic import input_condition
from distillab.adaptive.pipeline import AdaptivePipeline, PipelineConfig
from distillab.data.transforms import Normalize
from distillab.errors import CheckpointError, SpecError
from distillab.models.zoo import build_model
from distillab.strategies.adaptive import Adaptive

SIZE, K = 8, 3
NORMALIZE = Normalize((40 / 255,), (70 / 255,), 1 / 255)


def blob_images(n, seed):
    """uint8 (n, 1, 8, 8): noise plus a bright band whose row position is the class."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, K, (n,), generator=g)
    images = torch.randint(0, 60, (n, 1, SIZE, SIZE), generator=g).to(torch.uint8)
    for i, label in enumerate(labels.tolist()):
        row = label * SIZE // K
        images[i, 0, row : row + 3, 1:6] = 230
    return images, labels


def shift(images):
    """The distribution shift of these tests: lower contrast, much brighter."""
    return (images.float() * 0.3 + 150).clamp(0, 255).to(torch.uint8)


class BandTeacher(nn.Module):
    """Scores each class by the mean of its band minus the image mean: right on clean and on
    shifted images (a positive affine change of brightness does not move the argmax)."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(4.0))

    def forward(self, x):  # normalised (B, 1, 8, 8) -> (B, K)
        rows = x.mean(dim=(1, 3))  # (B, 8)
        bands = torch.stack([rows[:, c * SIZE // K : c * SIZE // K + 3].mean(1) for c in range(K)], 1)
        return self.gain * (bands - rows.mean(1, keepdim=True)) / (rows.std(1, keepdim=True) + 1e-6)


def trained_strategy(params=None, steps=150):
    torch.manual_seed(0)
    student = build_model("mlp", (1, SIZE, SIZE), K, {"hidden": [32]})
    strategy = Adaptive([BandTeacher()], student, Adaptive.Params.model_validate(params or {}), in_shape=(1, SIZE, SIZE))
    optimizer = torch.optim.Adam(strategy.trainable_parameters(), lr=3e-3)
    images, labels = blob_images(512, seed=0)
    strategy.train()
    for step in range(steps):
        rows = torch.randint(0, len(images), (64,), generator=torch.Generator().manual_seed(step))
        batch = {"inputs": NORMALIZE(images[rows]), "targets": labels[rows], "epoch": 0 if step < steps // 2 else 1,
                 "epochs": 2}
        out = strategy.loss(batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    return strategy.eval()


@pytest.fixture(scope="module")
def strategy():
    return trained_strategy()


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before, after):
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_every_discriminator_head_receives_gradients(strategy):
    images, _ = blob_images(32, seed=3)
    inputs = NORMALIZE(images)
    teacher_logits = strategy.teachers[0](inputs)
    generated, mu, logvar = strategy.student.generate(inputs, sample=True)
    student_logits = strategy.student.run_student(inputs, generated)
    discriminator = strategy.discriminator
    discriminator.zero_grad(set_to_none=True)
    logs = discriminator_step(discriminator, torch.optim.SGD(discriminator.parameters(), lr=0.0), teacher_logits,
                              student_logits, generated, input_condition(inputs, strategy.condition_dims), Weights())
    for head in ("output", "weights", "complexity"):
        grads = [p.grad for p in getattr(discriminator, head).parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0, head
    assert {"d_output_accuracy", "d_weights_accuracy", "d_complexity_accuracy", "d_loss"} <= set(logs)


def test_generator_loss_leaves_no_gradient_on_discriminator_or_teacher(strategy):
    images, labels = blob_images(16, seed=4)
    inputs = NORMALIZE(images)
    strategy.zero_grad(set_to_none=True)
    generated, mu, logvar = strategy.student.generate(inputs, sample=True)
    student_logits = strategy.student.run_student(inputs, generated)
    teacher_logits = torch.randn(len(inputs), K, requires_grad=True)  # as if from a teacher with gradients on
    loss, logs = generator_loss(strategy.discriminator, teacher_logits, student_logits, generated, mu,
                                logvar, input_condition(inputs, strategy.condition_dims), Weights(), labels)
    loss.backward()
    assert all(p.grad is None for p in strategy.discriminator.parameters())
    assert teacher_logits.grad is None
    assert strategy.student.generator.decoder[-1].weight.grad.abs().sum() > 0
    assert {"kd", "hard", "vae_kl", "adv_output", "adv_weights", "adv_complexity"} <= set(logs)


def test_a_switched_off_head_is_neither_trained_nor_used(strategy):
    images, _ = blob_images(16, seed=5)
    inputs = NORMALIZE(images)
    generated, mu, logvar = strategy.student.generate(inputs)
    student_logits = strategy.student.run_student(inputs, generated)
    cfg = Weights(weights_weight=0.0, complexity_weight=0.0)
    discriminator = strategy.discriminator
    discriminator.zero_grad(set_to_none=True)
    logs = discriminator_step(discriminator, torch.optim.SGD(discriminator.parameters(), lr=0.0),
                              strategy.teachers[0](inputs), student_logits, generated, None if not
                              strategy.condition_dims else input_condition(inputs, strategy.condition_dims), cfg)
    assert all(p.grad is None for p in discriminator.weights.parameters())
    assert all(p.grad is None for p in discriminator.complexity.parameters())
    assert "d_weights_accuracy" not in logs and "d_complexity_accuracy" not in logs
    _, g_logs = generator_loss(discriminator, strategy.teachers[0](inputs), student_logits, generated, mu, logvar,
                               input_condition(inputs, strategy.condition_dims), cfg)
    assert "adv_output" in g_logs and "adv_weights" not in g_logs and "adv_complexity" not in g_logs


def test_training_reaches_the_teacher_and_selects_only_adaptive_epochs(strategy):
    images, labels = blob_images(300, seed=7)
    with torch.no_grad():
        predicted = strategy.student(NORMALIZE(images)).argmax(-1)
    assert strategy.student.is_active
    assert (predicted == labels).float().mean() > 0.9
    assert not strategy.selectable(0, 2) and strategy.selectable(1, 2)


def pipeline_for(strategy, **config):
    trained = trained_strategy().train()  # a fresh copy (pipelines change G), left in train mode on purpose
    return AdaptivePipeline.from_strategy(trained, NORMALIZE, PipelineConfig(**config))


def test_calibration_changes_the_generator_and_then_nothing_changes():
    pipeline = pipeline_for(None, calibration_calls=3, audit_fraction=0.5)
    images, _ = blob_images(32 * 8, seed=11)
    before = state(pipeline.model)
    for call in range(3):
        assert pipeline.calibrating
        pipeline.predict(images[32 * call : 32 * (call + 1)])
    assert not pipeline.calibrating
    after_calibration = state(pipeline.model)
    assert any(k.startswith("generator.") for k in changed(before, after_calibration))
    assert not any(k.startswith("student.") for k in changed(before, after_calibration))  # the base is shared
    discriminator = state(pipeline.discriminator)
    for call in range(3, 8):
        pipeline.predict(images[32 * call : 32 * (call + 1)])
    assert changed(after_calibration, state(pipeline.model)) == []
    assert changed(discriminator, state(pipeline.discriminator)) == []
    stats = pipeline.stats()
    assert stats["calls"] == 8 and stats["samples"] == 256 and stats["calibration_steps"] == 3
    assert stats["recalibrations"] == 0 and stats["audits"] > 0
    assert set(stats["latency_ms"]) == {"p50", "p90", "p99"}
    assert 0 <= stats["discriminator_score"] <= 1


def test_monitoring_recalibrates_when_agreement_drops_on_shifted_data():
    pipeline = pipeline_for(None, calibration_calls=0, audit_fraction=1.0, window=64, min_audits=32,
                            agreement_threshold=0.8, recalibration_calls=4)
    clean, _ = blob_images(32 * 6, seed=12)
    for call in range(6):
        pipeline.predict(clean[32 * call : 32 * (call + 1)])
    assert pipeline.stats()["recalibrations"] == 0
    assert pipeline.agreement > 0.9
    shifted = shift(blob_images(32 * 6, seed=13)[0])
    for call in range(6):
        pipeline.predict(shifted[32 * call : 32 * (call + 1)])
    stats = pipeline.stats()
    assert stats["recalibrations"] >= 1
    assert stats["calibration_steps"] >= 1


def test_a_pipeline_without_teacher_neither_calibrates_nor_audits(tmp_path, strategy):
    pipeline = AdaptivePipeline(strategy.student, normalize=NORMALIZE)
    images, _ = blob_images(20, seed=14)
    pipeline.predict(images)
    stats = pipeline.stats()
    assert stats["calibration_steps"] == 0 and stats["audits"] == 0 and stats["agreement"] is None
    with pytest.raises(RuntimeError, match="needs the teacher"):
        pipeline.calibrate(NORMALIZE(images))


def test_saved_pipeline_predicts_the_same_without_the_teacher(tmp_path, strategy):
    pipeline = AdaptivePipeline(strategy.student, normalize=NORMALIZE)
    out = pipeline.save(tmp_path / "export", student_model="mlp", student_args={"hidden": [32]},
                        in_shape=(1, SIZE, SIZE), num_classes=K)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["adaptive.json", "generator.safetensors", "student.safetensors"]
    loaded = AdaptivePipeline.load(out)
    assert loaded.teacher is None and loaded.discriminator is None
    images, _ = blob_images(50, seed=15)
    torch.testing.assert_close(loaded.predict(images), pipeline.predict(images))
    (out / "adaptive.json").write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="format"):
        AdaptivePipeline.load(out)
    with pytest.raises(CheckpointError, match="no adaptive.json"):
        AdaptivePipeline.load(tmp_path)


def test_a_restored_strategy_scores_weights_like_the_trained_one(strategy):
    """The reference statistics D scales its features by follow the reference it loads."""
    torch.manual_seed(1)
    fresh = Adaptive([BandTeacher()], build_model("mlp", (1, SIZE, SIZE), K, {"hidden": [32]}),
                     Adaptive.Params(), in_shape=(1, SIZE, SIZE))
    fresh.load_trainable_state_dict(strategy.trainable_state_dict())
    weights = {name: w.unsqueeze(0) for name, w in strategy.discriminator.reference().items()}
    for a, b in zip(fresh.discriminator.weight_features(weights, torch.Generator().manual_seed(0)),
                    strategy.discriminator.weight_features(weights, torch.Generator().manual_seed(0))):
        torch.testing.assert_close(a, b)


def test_a_pipeline_with_a_teacher_but_no_discriminator_only_audits(strategy):
    pipeline = AdaptivePipeline(strategy.student, normalize=NORMALIZE, teacher=BandTeacher(),
                                config=PipelineConfig(audit_fraction=1.0))
    images, _ = blob_images(40, seed=16)
    pipeline.predict(images)
    stats = pipeline.stats()
    assert not pipeline.calibrating and stats["calibration_steps"] == 0 and stats["audits"] == 40
    with pytest.raises(RuntimeError, match="no discriminator"):
        pipeline.calibrate(NORMALIZE(images))


def test_bad_inputs_and_configs_are_clear_errors(strategy):
    pipeline = AdaptivePipeline(strategy.student, normalize=NORMALIZE, in_shape=(1, SIZE, SIZE))
    images, _ = blob_images(4, seed=17)
    with pytest.raises(ValueError, match=r"shape \(1, 9, 9\); this model takes \(1, 8, 8\)"):
        pipeline.predict(torch.zeros(4, 1, 9, 9, dtype=torch.uint8))
    with pytest.raises(ValueError, match="raw uint8"):
        pipeline.predict(images.float() / 255)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        pipeline.predict(images[0])
    with pytest.raises(ValueError, match="could never fire"):
        PipelineConfig(window=10, min_audits=20)
    with pytest.raises(ValueError, match="audit_fraction"):
        PipelineConfig(audit_fraction=1.5)


def test_a_corrupt_export_is_a_checkpoint_error(tmp_path, strategy):
    out = AdaptivePipeline(strategy.student, normalize=NORMALIZE).save(
        tmp_path / "export", student_model="mlp", student_args={"hidden": [32]}, in_shape=(1, SIZE, SIZE),
        num_classes=K)
    (out / "generator.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="generator.safetensors"):
        AdaptivePipeline.load(out)
    (out / "adaptive.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        AdaptivePipeline.load(out)
    assert not (tmp_path / "export.partial").exists()


def test_no_epoch_left_for_the_base_is_a_clear_error():
    torch.manual_seed(0)
    student = build_model("mlp", (1, SIZE, SIZE), K, {"hidden": [32]})
    strategy = Adaptive([BandTeacher()], student, Adaptive.Params(), in_shape=(1, SIZE, SIZE))
    images, labels = blob_images(8, seed=18)
    with pytest.raises(SpecError, match="strategy.params.base_fraction: 0.5 of 1 epoch"):
        strategy.loss({"inputs": NORMALIZE(images), "targets": labels, "epoch": 0, "epochs": 1})
    assert strategy.base_epochs(5) == 2 and strategy.base_epochs(4) == 2


def test_calibration_is_reproducible_and_leaves_the_global_rng_alone():
    images, _ = blob_images(64, seed=19)
    results = []
    for _ in range(2):
        pipeline = pipeline_for(None, calibration_calls=2, audit_fraction=0.0, seed=3)
        torch.manual_seed(123)
        pipeline.predict(images[:32])
        pipeline.predict(images[32:])
        results.append((state(pipeline.model.generator), torch.rand(1)))
    assert changed(results[0][0], results[1][0]) == []
    torch.manual_seed(123)
    assert torch.equal(results[0][1], torch.rand(1))  # calibration drew nothing from the global generator
