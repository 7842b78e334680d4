"""Where training and selection read images from: the built-in device-resident arrays, or any Dataset.

Both sources give the coreset machinery the same three things: the labels of every example (selection
is per class), un-augmented batches in index order (the selection attack's pass), and shuffled weighted
training batches over a coreset's indices (:class:`~advcoreset.data.loader.Batch`, which unpacks as
``x, y, w``).

- :class:`TensorSource`: uint8 (or float) images resident on the device, gathered by index with batched
  augmentation (``iterate_batches``): the fast path of the built-in datasets.
- :class:`DatasetSource`: any map-style ``torch.utils.data.Dataset`` whose items are (image tensor
  (C, H, W) uint8 or float in [0, 1], int label), any channel count and any H x W, read through a
  ``DataLoader`` over the coreset's indices (the dataset's own transforms do any augmentation).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from advcoreset.data.datasets import DataError
from advcoreset.data.loader import Batch, iterate_batches, to_float


class DataSource(Protocol):
    """A training set as the coreset loader reads it."""

    labels: Tensor
    """(N,) int64 labels of every example, on the device the selection runs on."""

    def __len__(self) -> int: ...

    def sample(self, n: int = 2) -> Tensor:
        """(n, C, H, W) float in [0, 1]: the first examples, on the device (dry-run checks)."""
        ...

    def ordered(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(x (B, C, H, W) float in [0, 1], y (B,)) over all examples in index order, no augmentation."""
        ...

    def ordered_at(self, indices: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The same over the examples ``indices`` (k,), in that order."""
        ...

    def batches(self, indices: Tensor, weights: Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[Batch]:
        """Shuffled (seeded by ``generator``), augmented batches over ``indices`` (k,) with ``weights`` (k,)."""
        ...


class TensorSource:
    """Images (N, C, H, W) uint8 (or float in [0, 1]) and labels (N,) int64, moved to ``device`` once."""

    def __init__(self, images: Tensor, labels: Tensor, device: torch.device | str = "cpu", *, padding: int = 0,
                 flip: bool = False, memory_format: torch.memory_format = torch.contiguous_format) -> None:
        if images.dim() != 4 or labels.shape != (images.shape[0],):
            raise DataError(f"images must be (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
                            f"{tuple(labels.shape)}")
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.padding, self.flip, self.memory_format = padding, flip, memory_format

    def __len__(self) -> int:
        return self.labels.numel()

    def sample(self, n: int = 2) -> Tensor:
        return to_float(self.images[:n])

    def ordered(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self), batch_size):
            x = to_float(self.images[start:start + batch_size]).contiguous(memory_format=self.memory_format)
            yield x, self.labels[start:start + batch_size]

    def ordered_at(self, indices: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        idx = indices.to(self.images.device)
        for start in range(0, idx.numel(), batch_size):
            chunk = idx[start:start + batch_size]
            yield to_float(self.images[chunk]).contiguous(memory_format=self.memory_format), self.labels[chunk]

    def batches(self, indices: Tensor, weights: Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[Batch]:
        return iterate_batches(self.images, self.labels, indices, weights, batch_size, generator,
                               padding=self.padding, flip=self.flip, memory_format=self.memory_format)


def _exposed_labels(dataset: Any) -> Tensor | None:
    """The labels a dataset exposes without reading its items: a TensorDataset's second tensor, ``targets``
    or ``labels`` (torchvision, many others), a ``Subset`` of such a dataset; None otherwise."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[1]
    for name in ("targets", "labels"):
        value = getattr(dataset, name, None)
        if isinstance(value, (Tensor, list, tuple)) or type(value).__name__ == "ndarray":
            return torch.as_tensor(value)
    if isinstance(dataset, Subset):
        parent = _exposed_labels(dataset.dataset)
        return None if parent is None else parent[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    return None


def _dataset_labels(dataset: Dataset[Any], n: int) -> Tensor:
    """(n,) int64 labels without reading images where the dataset exposes them (``_exposed_labels``); else
    one pass over the items, with torch's, Python's and NumPy's random states restored afterwards, so a
    random transform in the dataset does not shift the run's random streams."""
    labels = _exposed_labels(dataset)
    if labels is None:
        with _random_states_kept():
            labels = torch.as_tensor([dataset[i][1] for i in range(n)])
    if labels.shape != (n,) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"dataset labels must be n={n} integers, got {labels.dtype} {tuple(labels.shape)}: a "
                        "class index per item (a float label such as 1.7 would be cut to 1)")
    if n and int(labels.min()) < 0:
        raise DataError(f"dataset label {int(labels.min())} is negative: labels are class indices 0..C-1")
    return labels.long()


def _batch(x: Tensor, y: Any, where: str) -> tuple[Tensor, Tensor]:
    """A collated batch checked as the first item was: images in [0, 1] (or uint8), integer labels."""
    if x.is_floating_point() and x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise DataError(f"{where}: images must lie in [0, 1], got range [{float(x.min()):.4g}, "
                        f"{float(x.max()):.4g}] (only the first item was checked up front): divide by 255")
    labels = torch.as_tensor(y)
    if labels.is_floating_point():
        raise DataError(f"{where}: labels must be integers, got {labels.dtype} (a float label would be cut)")
    return x, labels.long()


def _collated(loader: DataLoader[Any], where: str) -> Iterator[tuple[Tensor, Tensor]]:
    """``loader``'s batches, with a collation failure (images of different sizes) said as a DataError."""
    it = iter(loader)
    while True:
        try:
            x, y = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            if "stack expects each tensor to be equal size" in str(e) or "equal size" in str(e):
                raise DataError(f"{where}: the images are not all of one size ({' '.join(str(e).split())}); "
                                "resize them in the dataset (e.g. a Resize transform)") from None
            raise
        yield _batch(x, y, where)


@contextmanager
def _random_states_kept() -> Iterator[None]:
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _check_item(item: Any) -> None:
    if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Tensor)):
        raise DataError(f"dataset items must be (image tensor (C, H, W), int label), got {type(item).__name__}; "
                        "wrap the dataset so that it returns such pairs")
    x = item[0]
    if x.dim() != 3 or not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise DataError(f"dataset images must be (C, H, W) uint8 or float in [0, 1], got {x.dtype} "
                        f"{tuple(x.shape)}")
    if x.is_floating_point() and x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise DataError(f"dataset images must lie in [0, 1] (got range [{float(x.min()):.4g}, "
                        f"{float(x.max()):.4g}]): divide by 255 or drop the normalisation (models normalise)")


class DatasetSource:
    """A map-style Dataset of (image (C, H, W) uint8 or float in [0, 1], int label), read through DataLoaders.

    ``num_workers``: DataLoader worker processes; batches come back in the order asked for either way."""

    def __init__(self, dataset: Dataset[Any], device: torch.device | str = "cpu", *, num_workers: int = 0,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 selection_view: Dataset[Any] | None = None) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise DataError("the dataset is empty: coreset selection needs at least one example")
        with _random_states_kept():  # reading an item may draw a random augmentation
            _check_item(dataset[0])
        self.dataset, self.device, self.num_workers = dataset, torch.device(device), num_workers
        self.memory_format = memory_format
        self.labels = _dataset_labels(dataset, n).to(self.device)
        self.view = dataset if selection_view is None else selection_view
        """What ``ordered`` and ``sample`` read (the selection pass): the same items without random
        augmentation, when the caller gives such a view."""
        if selection_view is not None:
            m = len(selection_view)  # type: ignore[arg-type]
            if m != n:
                raise DataError(f"the selection view has {m} items, the training set {n}: give the same dataset "
                                "without its random augmentation")
            with _random_states_kept():
                _check_item(selection_view[0])
            exposed = _exposed_labels(selection_view)
            if exposed is not None and not torch.equal(exposed.long().cpu(), self.labels.cpu()):
                raise DataError("the selection view's labels differ from the training set's: give the same "
                                "dataset, in the same order, without its random augmentation")

    def __len__(self) -> int:
        return self.labels.numel()

    def _to_device(self, x: Tensor) -> Tensor:
        return to_float(x.to(self.device)).contiguous(memory_format=self.memory_format)

    def sample(self, n: int = 2) -> Tensor:
        with _random_states_kept():  # a dry run's read draws nothing from the run's streams
            return self._to_device(torch.stack([self.view[i][0] for i in range(min(n, len(self)))]))

    def ordered(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        return self._read(self.view, batch_size)

    def ordered_at(self, indices: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        return self._read(Subset(self.view, indices.tolist()), batch_size)

    def _read(self, dataset: Dataset[Any], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers)
        for x, y in _collated(loader, "the training set"):
            yield self._to_device(x), y.to(self.device)

    def batches(self, indices: Tensor, weights: Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(indices.numel(), generator=generator).to(indices.device)
        chunks = [order[s:s + batch_size] for s in range(0, order.numel(), batch_size)]
        plan = [indices[c].tolist() for c in chunks]
        loader = DataLoader(self.dataset, batch_sampler=plan, num_workers=self.num_workers)
        for chunk, (x, y) in zip(chunks, _collated(loader, "the training set"), strict=True):
            yield Batch(self._to_device(x), y.to(self.device), weights[chunk].to(self.device), indices[chunk])


def check_label_range(source: DataSource, outputs: int) -> None:
    """A ``DataError`` unless every label of ``source`` is one of a model's ``outputs`` classes (a label beyond
    them fails deep inside the selection attack's loss as an IndexError)."""
    labels = source.labels
    if labels.numel() and int(labels.max()) >= outputs:
        top = int(labels.max())
        raise DataError(f"dataset label {top} is beyond the model's {outputs} outputs (classes 0..{outputs - 1}): "
                        f"give a model with (at least) {top + 1} outputs, or labels 0..{outputs - 1}")


def as_source(data: Any, device: torch.device | str = "cpu", **kwargs: Any) -> DataSource:
    """``data`` as a source: a source is returned as it is, a ``Dataset`` becomes a :class:`DatasetSource`
    (``kwargs``: ``num_workers``, ``memory_format``, ``selection_view``)."""
    if isinstance(data, (TensorSource, DatasetSource)):
        if kwargs.get("selection_view") is not None:
            raise DataError("a selection view goes with a Dataset, not with a data source: pass the Dataset")
        return data
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return DatasetSource(data, device, **kwargs)
    raise DataError(f"expected a map-style torch Dataset of (image, label) pairs, got {type(data).__name__}")


def dataset_tensors(dataset: Any, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """All of a (small, evaluation) Dataset as (images (N, C, H, W) as stored, labels (N,) int64) on the CPU;
    ``DataError`` for an empty set, labels that are not class indices, pixels outside [0, 1], mixed sizes."""
    if len(dataset) == 0:
        raise DataError("the test set is empty: the run ends with its clean and PGD accuracy on it")
    _check_item(dataset[0])
    xs, ys = [], []
    for x, y in _collated(DataLoader(dataset, batch_size=batch_size, shuffle=False), "the test set"):
        xs.append(x)
        ys.append(y)
    labels = torch.cat(ys)
    if int(labels.min()) < 0:
        raise DataError(f"the test set has label {int(labels.min())}: labels are class indices 0..C-1")
    return torch.cat(xs), labels
