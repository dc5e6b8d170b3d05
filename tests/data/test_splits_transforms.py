"""build(): deterministic train/val splits and input checks; augmentation and normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distillab.data import build
from distillab.data.transforms import Augment, apply_augment, draw_augment_params, fit_normalize
from distillab.errors import DataError
from distillab.spec import DataSpec


def write_npz(path, n_train=40, n_test=8, x_train=None):
    rng = np.random.default_rng(0)
    if x_train is None:
        x_train = rng.integers(0, 256, (n_train, 4, 4), dtype=np.uint8)
    np.savez(
        path,
        x_train=x_train,
        y_train=np.arange(len(x_train)) % 3,
        x_test=rng.integers(0, 256, (n_test, 4, 4), dtype=np.uint8),
        y_test=np.arange(n_test) % 3,
    )
    return path


@pytest.fixture
def npz_path(tmp_path):
    return write_npz(tmp_path / "small.npz")


def spec_for(path, **kwargs) -> DataSpec:
    return DataSpec(dataset="npz", path=path, **kwargs)


# --- splits ------------------------------------------------------------------------------------


def test_split_is_deterministic_for_one_seed(npz_path):
    first = build(spec_for(npz_path, val_size=0.25), seed=3)
    second = build(spec_for(npz_path, val_size=0.25), seed=3)
    assert torch.equal(first.train_index, second.train_index)
    assert torch.equal(first.val.images, second.val.images)
    assert torch.equal(first.train.labels, second.train.labels)


def test_split_differs_across_seeds(npz_path):
    indices = {tuple(build(spec_for(npz_path, val_size=0.25), seed=seed).train_index.tolist()) for seed in range(4)}
    assert len(indices) > 1


def test_train_and_val_are_disjoint_and_cover_limit_train(npz_path):
    bundle = build(spec_for(npz_path, limit_train=30, val_size=0.2), seed=0)
    assert len(bundle.train) == 24 and len(bundle.val) == 6
    assert len(bundle.full_train) == 40  # the full file stays available for the cache
    # recover the val rows from the full set by matching images (rows are distinct random 4x4 images)
    flat_full = bundle.full_train.images.flatten(1)
    val_rows = [int((flat_full == row).all(1).nonzero()[0]) for row in bundle.val.images.flatten(1)]
    train_rows = bundle.train_index.tolist()
    assert set(train_rows).isdisjoint(val_rows)
    assert sorted(train_rows + val_rows) == list(range(30))  # exactly the first limit_train rows


def test_train_index_maps_into_the_full_set(npz_path):
    bundle = build(spec_for(npz_path, val_size=0.3), seed=5)
    assert bundle.train_index.dtype == torch.int64
    assert torch.equal(bundle.train.images, bundle.full_train.images[bundle.train_index])
    assert torch.equal(bundle.train.labels, bundle.full_train.labels[bundle.train_index])


def test_bundle_facts(npz_path):
    bundle = build(spec_for(npz_path), seed=0)
    assert bundle.num_classes == 3
    assert bundle.in_shape == (1, 4, 4)
    assert len(bundle.test) == 8


def test_empty_npz_is_an_error(tmp_path):
    path = write_npz(tmp_path / "empty.npz", x_train=np.zeros((0, 4, 4), np.uint8))
    with pytest.raises(DataError, match="empty"):
        build(spec_for(path), seed=0)


def test_nan_inputs_are_an_error(tmp_path):
    x = np.zeros((10, 5), np.float32)
    x[7, 2] = np.nan
    path = write_npz(tmp_path / "nan.npz", x_train=x)
    with pytest.raises(DataError, match=r"NaN.*\[7\]"):
        build(spec_for(path), seed=0)


def test_limit_train_too_small_leaves_no_training_rows(npz_path):
    with pytest.raises(DataError, match="limit_train"):
        build(spec_for(npz_path, limit_train=1), seed=0)


# --- augmentation ------------------------------------------------------------------------------


def images_batch() -> torch.Tensor:
    return torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) + 1  # (B, C, H, W), no zeros


def params(dy, dx, flip, n=2) -> torch.Tensor:
    return torch.tensor([[dy, dx, flip]] * n, dtype=torch.int16)


def test_centre_offset_without_flip_is_identity():
    images = images_batch()
    assert torch.equal(apply_augment(images, params(2, 2, 0), padding=2), images)


def test_zero_offset_shifts_down_right_with_zero_border():
    images = images_batch()
    p = 2
    shifted = apply_augment(images, params(0, 0, 0), padding=p)
    assert shifted.shape == images.shape
    assert torch.equal(shifted[:, :, p:, p:], images[:, :, :-p, :-p])
    assert (shifted[:, :, :p, :] == 0).all() and (shifted[:, :, :, :p] == 0).all()


def test_flip_mirrors_the_width_axis():
    images = images_batch()
    assert torch.equal(apply_augment(images, params(0, 0, 1), padding=0), images.flip(3))


def test_flip_applies_per_sample():
    images = images_batch()
    mixed = torch.tensor([[0, 0, 1], [0, 0, 0]], dtype=torch.int16)
    out = apply_augment(images, mixed, padding=0)
    assert torch.equal(out[0], images[0].flip(2))
    assert torch.equal(out[1], images[1])


def test_draw_params_same_seed_same_params_and_ranges():
    augment = Augment(crop_padding=3, hflip=True)
    first = draw_augment_params(augment, 500, torch.Generator().manual_seed(11))
    second = draw_augment_params(augment, 500, torch.Generator().manual_seed(11))
    assert first.shape == (500, 3) and first.dtype == torch.int16
    assert torch.equal(first, second)
    offsets = first[:, :2]
    assert int(offsets.min()) == 0 and int(offsets.max()) == 6  # [0, 2p], both ends reached in 500 draws
    assert set(first[:, 2].tolist()) == {0, 1}


def test_draw_params_disabled_augment_is_the_identity_view():
    augment = Augment(crop_padding=0, hflip=False)
    drawn = draw_augment_params(augment, 4, torch.Generator().manual_seed(0))
    assert not augment.enabled
    assert drawn.tolist() == [[0, 0, 0]] * 4
    images = images_batch()
    assert torch.equal(apply_augment(images, drawn[:2], padding=0), images)


def test_draw_params_no_padding_gives_zero_offsets_but_still_flips():
    drawn = draw_augment_params(Augment(crop_padding=0, hflip=True), 200, torch.Generator().manual_seed(1))
    assert (drawn[:, :2] == 0).all()
    assert set(drawn[:, 2].tolist()) == {0, 1}


# --- normalisation -----------------------------------------------------------------------------


def test_normalize_fit_gives_zero_mean_unit_std_uint8():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 6, 6), generator=generator, dtype=torch.uint8)
    images[:, 1] //= 4  # channels with different statistics
    normalize = fit_normalize(images)
    assert normalize.scale == pytest.approx(1 / 255)
    out = normalize(images)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)


def test_normalize_fit_float_inputs_keep_scale_one():
    images = torch.randn(50, 2, 3, 3, generator=torch.Generator().manual_seed(2)) * 5 + 7
    normalize = fit_normalize(images)
    assert normalize.scale == 1.0
    out = normalize(images)
    torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(dim=(0, 2, 3)), torch.ones(2), atol=1e-4, rtol=0)


def test_normalize_constant_channel_stays_finite():
    images = torch.full((4, 1, 2, 2), 9, dtype=torch.uint8)
    out = fit_normalize(images)(images)
    assert torch.isfinite(out).all()


def test_mixup_and_cutmix_mix_what_they_say():
    from distillab.data.transforms import Augment, apply_mix, draw_mix_params

    a = torch.zeros(4, 1, 8, 8)
    b = torch.full((4, 1, 8, 8), 100.0)
    generator = torch.Generator().manual_seed(0)
    mixup = draw_mix_params(Augment(mix="mixup", mix_alpha=0.5), 4, 8, 8, generator)
    mixed = apply_mix(a, b, mixup, "mixup")
    assert torch.allclose(mixed.mean(dim=(1, 2, 3)), 100.0 * (1 - mixup[:, 0]))
    cutmix = draw_mix_params(Augment(mix="cutmix", mix_alpha=1.0), 4, 8, 8, generator)
    pasted = apply_mix(a, b, cutmix, "cutmix")
    share_kept = (pasted == 0).float().mean(dim=(1, 2, 3))
    assert torch.allclose(share_kept, cutmix[:, 0])  # lam is the share of the image's own pixels
    y0, y1, x0, x1 = cutmix[0, 1:].long().tolist()
    assert (pasted[0, 0, y0:y1, x0:x1] == 100).all()
