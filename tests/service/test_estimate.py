"""Estimates never run a submitted model: MACs are counted on the meta device and priced by
this server's measured cost per MAC."""

from distillab.service.estimate import cost_table, estimate, model_macs
from distillab.spec_io import parse_spec


def spec_with(student_args: dict, teacher_args: dict | None = None):
    return parse_spec({
        "data": {"dataset": "digits"},
        "teacher": {"model": "mlp", "model_args": teacher_args or {"hidden": [64]}},
        "student": {"model": "mlp", "model_args": student_args},
        "training": {"epochs": 2, "seeds": [0, 1]},
    })


def test_macs_are_counted_without_building_weights():
    # 10 billion weights would need 40 GB if they were allocated
    assert model_macs("mlp", {"hidden": [10**8, 100]}, (1, 8, 8), 10) == 64 * 10**8 + 10**8 * 100 + 100 * 10


def test_the_estimate_grows_with_the_work_and_with_the_model():
    table = cost_table()
    assert set(table) == {"train", "infer"} and all(per_mac > 0 for _, per_mac in table.values())
    small = spec_with({"hidden": [16]})
    large = spec_with({"hidden": [4096, 4096]})
    args = dict(n_train=1000, n_val=100, in_shape=(1, 8, 8), classes=10, untrained_teachers=[0],
                price_per_device_hour=1.0)
    base = estimate(small, teacher_macs=[64 * 64 + 640], **args)
    assert base.seconds > 0 and base.basis.startswith("MACs per sample") and "no submitted model is run" in base.basis
    assert estimate(large, teacher_macs=[64 * 64 + 640], **args).seconds > base.seconds
    assert estimate(small, teacher_macs=[64 * 64 + 640], **{**args, "n_train": 10_000}).seconds > base.seconds
    assert base.cost_usd == base.seconds / 3600  # at $1 per device-hour
