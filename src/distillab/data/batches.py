"""One epoch of a ``DataBundle``'s training batches: shuffled, augmented (or replaying a cached
view), normalised; and its evaluation batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from distillab.data.transforms import augmented, draw_augment_params, draw_mix_params


def train_batches(
    bundle, batch_size: int, generator: torch.Generator, caches: Sequence, order: torch.Tensor | None = None
) -> Iterator[dict]:
    """One epoch of shuffled, augmented, normalised batches, in ``order`` when given
    (rows of bundle.train, e.g. a curriculum), else a random permutation.

    With caches, each sample is shown as one of the cached views (drawn per sample from
    ``generator``) with exactly that view's augmentation, and carries the cached logits.
    When the augmentation mixes, a batch also carries ``mix_targets`` (the partners' labels)
    and ``mix_lam`` (B,) (the share of each image's own label); partners are always
    training rows of this split (cached views whose partner is a validation row are not drawn).
    """
    n = len(bundle.train)
    if order is None:
        order = torch.randperm(n, generator=generator)
    augment = bundle.augment
    in_train = None
    if augment.mixing:
        in_train = torch.zeros(len(bundle.full_train), dtype=torch.bool)
        in_train[bundle.train_index] = True
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2 and n >= 2:
            continue  # a batch of one breaks BatchNorm in training mode
        rows = bundle.train_index[idx]  # rows of the full training file
        images = bundle.train.images[idx]
        batch = {"targets": bundle.train.labels[idx], "index": rows}
        partners = partner_params = mix = None
        if caches:
            views = torch.randint(0, caches[0].views, (len(idx),), generator=generator)
            if augment.mixing:
                views = _views_with_training_partners(caches[0], views, rows, in_train, generator)
                partners, mix = caches[0].partner_rows(views, rows), caches[0].mix_params(views, rows)
                partner_params = caches[0].augment_params(views, partners)
            params = caches[0].augment_params(views, rows)
            batch["teacher_logits"] = torch.stack([cache.lookup(views, rows) for cache in caches])  # (T, B, K)
        elif augment.enabled:
            params = draw_augment_params(augment, len(idx), generator)
            if augment.mixing:  # the scratch twin mixes the same way, with partners from its split
                partners = bundle.train_index[torch.randint(0, n, (len(idx),), generator=generator)]
                partner_params = draw_augment_params(augment, len(idx), generator)
                mix = draw_mix_params(augment, len(idx), images.shape[-2], images.shape[-1], generator)
        else:
            params = None
        if params is not None:
            partner_images = bundle.full_train.images[partners] if partners is not None else None
            images = augmented(augment, images, params, partner_images, partner_params, mix)
        if partners is not None:
            batch["mix_targets"] = bundle.full_train.labels[partners]
            batch["mix_lam"] = mix[:, 0]
        batch["inputs"] = bundle.normalize(images)
        yield batch


def _views_with_training_partners(cache, views: torch.Tensor, rows: torch.Tensor, in_train: torch.Tensor,
                                  generator: torch.Generator, rounds: int = 16) -> torch.Tensor:
    """Redraw the views whose cached partner is not a training row of this split (a cache is
    shared by seeds, whose validation rows differ), so no validation image is trained on."""
    for _ in range(rounds):
        bad = ~in_train[cache.partner_rows(views, rows)]
        if not bad.any():
            break
        views = views.clone()
        views[bad] = torch.randint(0, cache.views, (int(bad.sum()),), generator=generator)
    return views


def eval_batches(split, normalize, batch_size: int) -> Iterator[dict]:
    """Batches of one split in order, normalised, without augmentation."""
    for start in range(0, len(split), batch_size):
        yield {"inputs": normalize(split.images[start : start + batch_size]),
               "targets": split.labels[start : start + batch_size]}


def batches_of(data, split: str, count: int, batch_size: int = 128) -> list[torch.Tensor]:
    """The first ``count`` inputs of a split, un-augmented and normalised, in batches."""
    batches, taken = [], 0
    for batch in data.eval_batches(split, batch_size):
        inputs = batch["inputs"][: count - taken]
        batches.append(inputs)
        taken += len(inputs)
        if taken >= count:
            break
    return batches
