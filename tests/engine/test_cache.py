"""The teacher-output cache: reuse, invalidation, and correctness under augmentation."""

from pathlib import Path

import numpy as np
import pytest
import torch

from distillab import data as data_module
from distillab.data.cache import teacher_outputs
from distillab.data.batches import train_batches
from distillab.models.loading import file_checksum, save_model
from distillab.models.zoo import build_model
from distillab.spec import DataSpec


class CountingTeacher(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = build_model("cnn_tiny", (1, 8, 8), 3).eval()
        self.samples = 0

    def forward(self, x):
        self.samples += len(x)
        return self.model(x)


def bundle_for(npz, **augment):
    return data_module.build(DataSpec(dataset="npz", path=npz, augment=augment or {"crop_padding": 2, "hflip": True}), 0)


def test_second_use_reads_the_cache_without_running_the_teacher(blobs, tmp_path):
    bundle = bundle_for(blobs)
    teacher = CountingTeacher()
    first = teacher_outputs(teacher, "abc", bundle, views=3, fp16=False, cache_dir=tmp_path)
    assert not first.hit and teacher.samples == 3 * bundle.n_rows
    teacher.samples = 0
    again = teacher_outputs(teacher, "abc", bundle_for(blobs), views=3, fp16=False, cache_dir=tmp_path)
    assert again.hit and teacher.samples == 0
    assert again.folder == first.folder
    assert np.array_equal(np.asarray(again.logits), np.asarray(first.logits))
    assert isinstance(again.logits, np.memmap)


def test_cache_is_invalidated_by_teacher_transform_or_view_count(blobs, tmp_path):
    bundle = bundle_for(blobs)
    teacher = CountingTeacher()
    base = teacher_outputs(teacher, "teacher-a", bundle, views=2, fp16=False, cache_dir=tmp_path).folder
    for checksum, b, views in [
        ("teacher-b", bundle, 2),  # another teacher
        ("teacher-a", bundle_for(blobs, crop_padding=1, hflip=True), 2),  # another transform
        ("teacher-a", bundle, 3),  # another view count
    ]:
        teacher.samples = 0
        entry = teacher_outputs(teacher, checksum, b, views=views, fp16=False, cache_dir=tmp_path)
        assert entry.folder != base and not entry.hit and teacher.samples > 0


def test_teacher_checksum_follows_the_weights(tmp_path):
    path = tmp_path / "t.safetensors"
    save_model(build_model("cnn_tiny", (1, 8, 8), 3), path)
    before = file_checksum(path)
    model = build_model("cnn_tiny", (1, 8, 8), 3)
    torch.nn.init.zeros_(model.classifier.weight)
    save_model(model, path)
    assert file_checksum(path) != before


def test_cached_logits_belong_to_the_exact_view_the_student_sees(blobs, tmp_path):
    bundle = bundle_for(blobs)
    teacher = CountingTeacher()
    cache = teacher_outputs(teacher, "abc", bundle, views=4, fp16=False, cache_dir=tmp_path)
    generator = torch.Generator().manual_seed(3)
    checked = 0
    for batch in train_batches(bundle, 32, generator, [cache]):
        with torch.no_grad():
            live = teacher(batch["inputs"])
        assert torch.allclose(batch["teacher_logits"][0], live, atol=1e-5)
        checked += len(live)
    assert checked >= len(bundle.train) - 1
    # and the views really differ: augmentation is not silently off
    assert not np.array_equal(np.asarray(cache.augment[0]), np.asarray(cache.augment[1]))


def test_fp16_mode_stores_half_precision(blobs, tmp_path):
    bundle = bundle_for(blobs)
    teacher = CountingTeacher()
    full = teacher_outputs(teacher, "abc", bundle, views=1, fp16=False, cache_dir=tmp_path)
    half = teacher_outputs(teacher, "abc", bundle, views=1, fp16=True, cache_dir=tmp_path)
    assert half.logits.dtype == np.float16 and full.logits.dtype == np.float32
    assert np.allclose(np.asarray(half.logits, dtype=np.float32), np.asarray(full.logits), atol=1e-2)


def test_a_disk_that_fills_during_the_fill_leaves_nothing(blobs, tmp_path, monkeypatch):
    from distillab.data import cache as cache_module
    from distillab.errors import DiskFull

    bundle = bundle_for(blobs)
    real_write = cache_module._Array.write_view

    def full_disk(self, view, block):
        if view == 1:
            raise OSError(28, "No space left on device")
        return real_write(self, view, block)

    monkeypatch.setattr(cache_module._Array, "write_view", full_disk)
    with pytest.raises(DiskFull, match="cache.dir: the disk is full"):
        teacher_outputs(CountingTeacher(), "abc", bundle, views=3, fp16=False, cache_dir=tmp_path)
    assert [p.name for p in (tmp_path / "teacher_outputs").iterdir() if not p.name.endswith(".lock")] == []


def test_an_interrupted_fill_resumes_where_it_stopped(blobs, tmp_path):
    bundle = bundle_for(blobs)
    teacher = CountingTeacher()

    def interrupt_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        teacher_outputs(teacher, "abc", bundle, views=5, fp16=True, cache_dir=tmp_path, progress=interrupt_after_two)
    assert teacher.samples == 2 * bundle.n_rows
    teacher.samples = 0
    resumed = teacher_outputs(teacher, "abc", bundle, views=5, fp16=True, cache_dir=tmp_path)
    assert teacher.samples == 3 * bundle.n_rows  # only the three missing views were computed
    fresh = teacher_outputs(CountingTeacher(), "abc", bundle, views=5, fp16=True, cache_dir=tmp_path / "fresh")
    assert np.array_equal(np.asarray(resumed.logits), np.asarray(fresh.logits))
    assert np.array_equal(np.asarray(resumed.augment), np.asarray(fresh.augment))
    assert resumed.meta["teacher_passes"] == 5 * bundle.n_rows and resumed.meta["fill_seconds"] > 0


def test_every_distinct_view_is_cached_and_replayed_exactly(blobs, tmp_path):
    """views: all -> (2p+1)^2 x 2 views; the loop shows each sample the crop its logits belong to."""
    bundle = bundle_for(blobs, crop_padding=1, hflip=True)
    teacher = CountingTeacher()
    cache = teacher_outputs(teacher, "abc", bundle, views="all", fp16=False, cache_dir=tmp_path)
    assert cache.views == 3 * 3 * 2
    combos = {tuple(cache.augment[v, 0].tolist()) for v in range(cache.views)}
    assert len(combos) == 18 and all(len({tuple(r) for r in cache.augment[v].tolist()}) == 1 for v in range(18))
    for batch in train_batches(bundle, 64, torch.Generator().manual_seed(0), [cache]):
        with torch.no_grad():
            live = teacher.model(batch["inputs"])
        assert torch.allclose(batch["teacher_logits"][0], live, atol=1e-5)


def test_view_counts_and_sizes_over_the_limits_are_named(blobs, tmp_path):
    from distillab.errors import SpecError

    bundle = bundle_for(blobs)
    with pytest.raises(SpecError, match="cache.views: 2000 views; at most 1024"):
        teacher_outputs(CountingTeacher(), "abc", bundle, views=2000, fp16=False, cache_dir=tmp_path)
    with pytest.raises(SpecError, match="cache.views: .* over cache.max_gb"):
        teacher_outputs(CountingTeacher(), "abc", bundle, views=1000, fp16=False, cache_dir=tmp_path, max_gb=1e-4)
    with pytest.raises(SpecError, match="cache.dir: cannot write"):
        teacher_outputs(CountingTeacher(), "abc", bundle, views=2, fp16=False, cache_dir=Path("/proc/distillab"))


def test_a_concurrent_first_writer_wins(blobs, tmp_path):
    from distillab.data import cache as cache_module

    first = teacher_outputs(CountingTeacher(), "abc", bundle_for(blobs), views=2, fp16=False, cache_dir=tmp_path)
    # a second process finishing the same key later keeps the first entry (its readers may be mapping it)
    staging = tmp_path / "teacher_outputs" / ".staging-late"
    staging.mkdir()
    (staging / "meta.json").write_text("{}")
    cache_module._publish(staging, first.folder)
    assert not staging.exists() and {"teacher_checksum", "views"} <= set(first.meta)


@pytest.mark.parametrize("kind", ["mixup", "cutmix"])
def test_a_mixed_view_is_cached_and_replayed_exactly(blobs, tmp_path, kind):
    """Function matching: the teacher saw the mixed image, the student is shown the same one,
    and every partner is a training row of this split."""
    bundle = bundle_for(blobs, crop_padding=1, hflip=True, mix=kind, mix_alpha=1.0)
    teacher = CountingTeacher()
    cache = teacher_outputs(teacher, "abc", bundle, views=6, fp16=False, cache_dir=tmp_path)
    assert cache.partner.shape == (6, bundle.n_rows) and cache.mix.shape == (6, bundle.n_rows, 5)
    in_train = set(bundle.train_index.tolist())
    for batch in train_batches(bundle, 64, torch.Generator().manual_seed(0), [cache]):
        with torch.no_grad():
            live = teacher.model(batch["inputs"])
        assert torch.allclose(batch["teacher_logits"][0], live, atol=1e-4)
        assert 0 <= batch["mix_lam"].min() and batch["mix_lam"].max() <= 1
        assert batch["mix_targets"].shape == batch["targets"].shape
    views = torch.zeros(bundle.n_rows, dtype=torch.long)
    rows = torch.arange(bundle.n_rows)
    assert not set(cache.partner_rows(views, rows).tolist()) <= in_train  # the cache holds validation partners ...
    from distillab.data.batches import _views_with_training_partners

    in_train_mask = torch.zeros(len(bundle.full_train), dtype=torch.bool)
    in_train_mask[bundle.train_index] = True
    train_rows = bundle.train_index
    chosen = _views_with_training_partners(cache, torch.zeros(len(train_rows), dtype=torch.long), train_rows,
                                           in_train_mask, torch.Generator().manual_seed(1))
    assert set(cache.partner_rows(chosen, train_rows).tolist()) <= in_train  # ... that training never uses


def test_the_scratch_twin_mixes_with_its_own_split(blobs):
    bundle = bundle_for(blobs, crop_padding=1, hflip=True, mix="cutmix", mix_alpha=1.0)
    in_train = set(bundle.train_index.tolist())
    labels = bundle.full_train.labels
    for batch in train_batches(bundle, 64, torch.Generator().manual_seed(0), []):
        assert "teacher_logits" not in batch and batch["inputs"].shape[1:] == (1, 8, 8)
        lam = batch["mix_lam"]
        assert ((lam > 0) & (lam <= 1)).all()
        assert set(batch["mix_targets"].tolist()) <= set(labels[list(in_train)].tolist())
