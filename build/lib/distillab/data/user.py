"""A user's own data from Python: tensors, a map-style ``Dataset`` or a ``DataLoader`` per split.

- Tensors ``(inputs, targets)`` become a ``DataBundle`` used as given (no normalisation, no
  augmentation): samples are addressed by row, so the teacher's outputs are cached as for a
  registered dataset.
- A ``Dataset`` is batched by the engine (shuffled by the seeded generator, default collate);
  a ``DataLoader`` is iterated as the user built it (its sampler, collate and workers). The
  teacher runs online on exactly the batch the student sees, which keeps any augmentation
  of theirs consistent.

Every batch is a dict with ``inputs``, ``targets`` and an optional ``mask``; a loader may yield
``(inputs, targets)`` or such a dict.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset, TensorDataset

from distillab.data.readers import ArraySet
from distillab.data.transforms import Augment, Normalize
from distillab.errors import DataError

IDENTITY = Normalize((), (), 1.0)


def as_batch(item, where: str) -> dict:
    """A loader's item as the engine's batch dict, or a DataError naming ``where``."""
    if isinstance(item, dict):
        missing = [key for key in ("inputs", "targets") if key not in item]
        if missing:
            raise DataError(f"{where}: a batch dict needs 'inputs' and 'targets' tensors; it has "
                            f"{sorted(map(str, item))} (missing {missing})")
        batch = {key: item[key] for key in ("inputs", "targets", "mask") if key in item}
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        batch = {"inputs": item[0], "targets": item[1]}
    else:
        kind = f"a {type(item).__name__} of {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
        raise DataError(f"{where}: each batch must be (inputs, targets) or a dict with 'inputs' and 'targets'; "
                        f"got {kind}")
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor):
            raise DataError(f"{where}: batch[{key!r}] is a {type(value).__name__}, not a tensor")
    if batch["targets"].is_floating_point():
        raise DataError(f"{where}: targets must be integer class indices, got {batch['targets'].dtype}")
    if len(batch["targets"]) != len(batch["inputs"]):
        raise DataError(f"{where}: {len(batch['inputs'])} inputs but {len(batch['targets'])} targets in a batch")
    return batch


def is_tensor_pair(data) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(part, torch.Tensor) for part in data))


def _tensor_split(data, where: str) -> ArraySet:
    inputs, targets = data
    if len(inputs) == 0:
        raise DataError(f"{where}: no samples (the tensors are empty)")
    if len(inputs) != len(targets):
        raise DataError(f"{where}: {len(inputs)} inputs but {len(targets)} targets")
    if targets.is_floating_point() or targets.dim() != 1:
        raise DataError(f"{where}: targets must be a 1-D tensor of integer class indices, got "
                        f"{targets.dtype} of shape {tuple(targets.shape)}")
    if (targets < 0).any():
        raise DataError(f"{where}: targets must be >= 0")
    if inputs.is_floating_point() and not torch.isfinite(inputs).all():
        raise DataError(f"{where}: inputs contain NaN or infinite values")
    return ArraySet(inputs, targets.long())


def tensor_bundle(train, val, test, seed: int, val_size: float = 0.1):
    """A DataBundle of tensor splits; without ``val``, ``val_size`` of train is held out by ``seed``."""
    from distillab.data import DataBundle

    full = _tensor_split(train, "train_data")
    test_set = _tensor_split(test, "test_data") if test is not None else None
    if val is not None:
        val_set, train_rows = _tensor_split(val, "val_data"), torch.arange(len(full))
    else:
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(10_007 + seed))
        n_val = max(1, round(len(full) * val_size))
        if len(full) - n_val < 2:
            raise DataError(f"train_data: {len(full)} samples leave too few for training after holding out "
                            "a validation split; pass val_data")
        val_rows, train_rows = order[:n_val].sort().values, order[n_val:].sort().values
        val_set = ArraySet(full.images[val_rows], full.labels[val_rows])
    for name, split in (("val_data", val_set), ("test_data", test_set)):
        if split is not None and split.images.shape[1:] != full.images.shape[1:]:
            raise DataError(f"{name}: inputs of shape {tuple(split.images.shape[1:])}, but train_data's are "
                            f"{tuple(full.images.shape[1:])}")
    digest = hashlib.sha256()
    for tensor in (full.images, full.labels):
        digest.update(tensor.contiguous().numpy().tobytes())
    labels = [full.labels] + [s.labels for s in (val_set, test_set) if s is not None]
    return DataBundle(
        name="tensors", source=f"tensors:{digest.hexdigest()[:24]}",
        train=ArraySet(full.images[train_rows], full.labels[train_rows]), train_index=train_rows,
        full_train=full, n_rows=len(full), val=val_set, test=test_set if test_set is not None else val_set,
        normalize=IDENTITY, augment=Augment(), num_classes=int(max(int(t.max()) for t in labels)) + 1,
    )


class LoaderData:
    """Splits given as Datasets or DataLoaders. Samples have no stable row, so nothing is cached."""

    name = "user data"
    cacheable = False
    normalize = IDENTITY
    augment = Augment()

    def __init__(self, train, val, test, seed: int, val_size: float = 0.1):
        train = _check_source(train, "train_data")
        self.splits = {"train": train}
        if val is None:
            if isinstance(train, DataLoader):
                raise DataError("val_data: a DataLoader cannot be split for validation; pass val_data (or pass "
                                "the Dataset itself, and a validation share is held out)")
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(10_007 + seed)).tolist()
            n_val = max(1, round(len(train) * val_size))
            if len(train) - n_val < 2:
                raise DataError(f"train_data: {len(train)} samples leave too few for training after holding out "
                                "a validation split; pass val_data")
            self.splits = {"train": Subset(train, sorted(order[n_val:])), "val": Subset(train, sorted(order[:n_val]))}
        else:
            self.splits["val"] = _check_source(val, "val_data")
        self.splits["test"] = _check_source(test, "test_data") if test is not None else self.splits["val"]
        first = next(self.eval_batches("train", 2))
        self.in_shape = tuple(first["inputs"].shape[1:])
        self.num_classes = None  # known from the models' outputs, not from a loader

    def __len__(self) -> int:
        return self.size("train")

    def size(self, split: str) -> int | None:
        source = self.splits[split]
        try:
            return len(source.dataset if isinstance(source, DataLoader) else source)
        except TypeError:
            return None

    def steps_per_epoch(self, batch_size: int) -> int:
        source = self.splits["train"]
        if isinstance(source, DataLoader):
            try:
                return max(1, len(source))
            except TypeError:
                raise DataError("train_data: the DataLoader has no length (an IterableDataset); the schedule "
                                "needs the number of steps per epoch") from None
        return max(1, -(-len(source) // batch_size))

    def train_batches(self, batch_size: int, generator: torch.Generator, caches=(), order=None) -> Iterator[dict]:
        if order is not None:
            raise DataError("train_data: this strategy visits rows in its own order, which needs tensors")
        source = self.splits["train"]
        if isinstance(source, DataLoader):
            items = iter(source)
        else:  # a Dataset: shuffled by the engine's seeded generator, so resume replays the same epoch
            sampler = torch.randperm(len(source), generator=generator).tolist()
            items = iter(DataLoader(source, batch_size=batch_size, sampler=sampler))
        for item in items:
            batch = as_batch(item, "train_data")
            if len(batch["targets"]) < 2:
                continue  # a batch of one breaks BatchNorm in training mode
            yield batch

    def eval_batches(self, split: str, batch_size: int) -> Iterator[dict]:
        source = self.splits[split]
        where = {"train": "train_data", "val": "val_data", "test": "test_data"}[split]
        loader = source if isinstance(source, DataLoader) else DataLoader(source, batch_size=batch_size)
        for item in loader:
            yield as_batch(item, where)

    def example_inputs(self, n: int = 2) -> torch.Tensor:
        return next(self.eval_batches("train", n))["inputs"][:n]


def _check_source(source, where: str):
    if is_tensor_pair(source):
        source = TensorDataset(*source)
    if isinstance(source, DataLoader):
        if not isinstance(source.dataset, IterableDataset) and len(source.dataset) == 0:
            raise DataError(f"{where}: the DataLoader's dataset is empty")
        return source
    if isinstance(source, IterableDataset):
        raise DataError(f"{where}: an IterableDataset has no length; wrap it in a DataLoader")
    if isinstance(source, Dataset) or (hasattr(source, "__getitem__") and hasattr(source, "__len__")):
        if len(source) == 0:
            raise DataError(f"{where}: the Dataset is empty")
        return source
    raise DataError(f"{where}: expected (inputs, targets) tensors, a torch Dataset or a DataLoader; got "
                    f"{type(source).__name__}")


def user_data(train, val, test, seed: int, val_size: float = 0.1):
    """The data object for one seed: a cached-capable DataBundle for tensors, else LoaderData."""
    if is_tensor_pair(train) and all(split is None or is_tensor_pair(split) for split in (val, test)):
        return tensor_bundle(train, val, test, seed, val_size)
    if isinstance(train, (tuple, list)):
        raise DataError("train_data: expected (inputs, targets) as two tensors, a torch Dataset or a DataLoader; got "
                        f"a {type(train).__name__} of {len(train)} "
                        f"({', '.join(type(part).__name__ for part in train)})")
    return LoaderData(train, val, test, seed, val_size)
