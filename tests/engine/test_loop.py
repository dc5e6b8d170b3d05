"""The training loop: resume gives the same weights as an uninterrupted run, NaN stops
training with a clear error, model selection uses the validation split."""

import json

import pytest
import torch

from distillab import data as data_module
from distillab.engine.callbacks import Callback
from distillab.engine.loop import fit
from distillab.errors import TrainingDiverged
from distillab.models.zoo import build_model
from distillab.spec import DataSpec, TrainingSpec
from distillab.strategies import STRATEGIES
from distillab.tasks import TASKS
from distillab.strategies.base import StepOutput


class Interrupt(Callback):
    def __init__(self, after_epoch):
        self.after_epoch = after_epoch

    def on_epoch_end(self, epoch, metrics):
        if epoch == self.after_epoch:
            raise KeyboardInterrupt  # as if the process were killed after this epoch's checkpoint


def new_strategy(name="none"):
    torch.manual_seed(0)
    student = build_model("cnn", (1, 8, 8), 3, {"stages": [[8], [16]], "dropout": 0.3})
    cls = STRATEGIES[name]
    return cls([], student, cls.Params())


IMAGES = TASKS["image_classification"]
TRAINING = TrainingSpec(epochs=3, batch_size=32, schedule="cosine", warmup_epochs=1, lr=0.01)


def test_resume_after_interruption_matches_an_uninterrupted_run(blobs, tmp_path):
    bundle = data_module.build(DataSpec(dataset="npz", path=blobs, augment={"crop_padding": 1, "hflip": True}), 0)
    straight = new_strategy()
    fit(straight, bundle, TRAINING, 0, tmp_path / "straight", task=IMAGES, tensorboard=False)

    broken = new_strategy()
    with pytest.raises(KeyboardInterrupt):
        fit(broken, bundle, TRAINING, 0, tmp_path / "resumed", task=IMAGES, callbacks=[Interrupt(after_epoch=1)], tensorboard=False)
    resumed = new_strategy()
    result = fit(resumed, bundle, TRAINING, 0, tmp_path / "resumed", task=IMAGES, resume=True, tensorboard=False)

    assert len(result.history) == 3
    for key, value in straight.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_nan_loss_stops_training_with_a_clear_error(blobs, tmp_path):
    bundle = data_module.build(DataSpec(dataset="npz", path=blobs), 0)

    class Exploding(STRATEGIES["none"]):
        def loss(self, batch):
            out = super().loss(batch)
            return StepOutput(out.loss * float("nan"), out.student_logits)

    strategy = Exploding([], build_model("mlp", (1, 8, 8), 3), STRATEGIES["none"].Params())
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 1.*training.lr"):
        fit(strategy, bundle, TRAINING, 0, tmp_path / "nan", task=IMAGES, tensorboard=False)


def test_the_selected_student_is_the_best_on_validation(blobs, tmp_path):
    bundle = data_module.build(DataSpec(dataset="npz", path=blobs), 0)
    strategy = new_strategy()
    result = fit(strategy, bundle, TrainingSpec(epochs=4, batch_size=32, lr=0.02), 0, tmp_path / "sel", task=IMAGES,
                 tensorboard=True)
    val = [h["val_accuracy"] for h in result.history]
    assert result.best_val_score == max(val)
    assert result.best_epoch == val.index(max(val)) + 1
    assert (tmp_path / "sel" / "student.safetensors").exists()
    assert any((tmp_path / "sel" / "tensorboard").iterdir())


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("adamw", "constant"), ("sgd", "cosine")])
def test_optimizers_and_schedules_learn(blobs, tmp_path, optimizer, schedule):
    bundle = data_module.build(DataSpec(dataset="npz", path=blobs), 0)
    strategy = new_strategy()
    training = TrainingSpec(epochs=4, batch_size=32, lr=0.05 if optimizer == "sgd" else 0.01, optimizer=optimizer,
                            schedule=schedule, step_size=2, grad_clip=1.0)
    result = fit(strategy, bundle, training, 0, tmp_path / "opt", task=IMAGES, tensorboard=False)
    assert result.best_val_score > 0.6  # three classes: chance is 1/3


def narrow_resnet():
    torch.manual_seed(0)  # width 4: the second stage's projection is a stride-2 1x1 convolution of 4 channels
    student = build_model("resnet", (1, 8, 8), 3, {"depth": 8, "width": 4})
    return STRATEGIES["none"]([], student, STRATEGIES["none"].Params())


@pytest.mark.parametrize("capability, cap, faulty", [("AVX2", "", True), ("AVX512", "", False),
                                                      ("AVX512", "AVX2", True), ("AVX512", "AVX512_CORE_AMX", False)])
def test_the_channels_last_fault_is_found_where_onednn_runs_avx2_kernels(monkeypatch, capability, cap, faulty):
    from distillab.runtime import channels_last_fault

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    found = channels_last_fault(narrow_resnet(), torch.device("cpu"))
    assert (found == "student.layer2.0.shortcut.0 (1x1, stride 2, 4 input channels)") == faulty
    wide = STRATEGIES["none"]([], build_model("resnet", (1, 8, 8), 3, {"depth": 8, "width": 8}),
                              STRATEGIES["none"].Params())
    assert channels_last_fault(wide, torch.device("cpu")) is None  # 8 input channels: out of the range
    frozen = narrow_resnet()
    frozen.student.requires_grad_(False)
    assert channels_last_fault(frozen, torch.device("cpu")) is None  # no weight gradient, no fault


def test_training_on_avx2_kernels_keeps_a_narrow_resnet_out_of_channels_last(monkeypatch, blobs, tmp_path, caplog):
    """On a CPU without AVX512 this training aborts the process (heap corruption) in channels-last.
    The guard must reach the layer's input too: augmented one-channel batches come in channels-last
    strides, which convolutions follow even with contiguous weights."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    bundle = data_module.build(DataSpec(dataset="npz", path=blobs, augment={"crop_padding": 1, "hflip": True}), 0)
    strategy = narrow_resnet()
    shortcut = strategy.student.layer2[0].shortcut[0]
    seen = []
    shortcut.register_forward_pre_hook(lambda module, inputs: seen.append(
        (inputs[0].is_contiguous(), module.weight.is_contiguous())) if module.training else None)
    with caplog.at_level("WARNING", logger="distillab"):
        fit(strategy, bundle, TrainingSpec(epochs=1, batch_size=32, lr=0.01), 0, tmp_path / "run", task=IMAGES,
            tensorboard=False)
    assert "training in contiguous layout, not channels-last" in caplog.text and "layer2.0.shortcut.0" in caplog.text
    assert seen and all(inputs and weight for inputs, weight in seen)


def test_the_fault_check_reads_no_parametrized_weight(monkeypatch):
    """Reading a spectral-normed weight runs a power iteration; the check must leave it alone."""
    from torch.nn.utils.parametrizations import spectral_norm
    from distillab.runtime import channels_last_fault

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    strategy = narrow_resnet()
    block = strategy.student.layer2[0].shortcut
    block[0] = spectral_norm(block[0])
    before = {k: v.clone() for k, v in strategy.student.state_dict().items()}
    assert channels_last_fault(strategy, torch.device("cpu")) == \
        "student.layer2.0.shortcut.0 (1x1, stride 2, 4 input channels)"
    assert all(torch.equal(v, before[k]) for k, v in strategy.student.state_dict().items())
