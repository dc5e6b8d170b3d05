"""The teacher-output cache: reuse, invalidation, and correctness under augmentation."""

import numpy as np
import torch

from distillab import data as data_module
from distillab.data.cache import teacher_outputs
from distillab.engine.loop import train_batches
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
