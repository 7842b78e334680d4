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

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

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

    def batches(self, indices: Tensor, weights: Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[Batch]:
        return iterate_batches(self.images, self.labels, indices, weights, batch_size, generator,
                               padding=self.padding, flip=self.flip, memory_format=self.memory_format)


def _dataset_labels(dataset: Dataset[Any], n: int) -> Tensor:
    """(n,) int64 labels without reading images where the dataset exposes them (TensorDataset, ``targets``)."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        labels = dataset.tensors[1]
    elif hasattr(dataset, "targets"):
        labels = torch.as_tensor(dataset.targets)
    else:
        labels = torch.tensor([int(dataset[i][1]) for i in range(n)])
    if labels.shape != (n,) or labels.is_floating_point():
        raise DataError(f"dataset labels must be n={n} integers, got {labels.dtype} {tuple(labels.shape)}")
    return labels.long()


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
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise DataError("the dataset is empty: coreset selection needs at least one example")
        _check_item(dataset[0])
        self.dataset, self.device, self.num_workers = dataset, torch.device(device), num_workers
        self.memory_format = memory_format
        self.labels = _dataset_labels(dataset, n).to(self.device)

    def __len__(self) -> int:
        return self.labels.numel()

    def _to_device(self, x: Tensor) -> Tensor:
        return to_float(x.to(self.device)).contiguous(memory_format=self.memory_format)

    def sample(self, n: int = 2) -> Tensor:
        return self._to_device(torch.stack([self.dataset[i][0] for i in range(min(n, len(self)))]))

    def ordered(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(self.dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers)
        for x, y in loader:
            yield self._to_device(x), torch.as_tensor(y).long().to(self.device)

    def batches(self, indices: Tensor, weights: Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[Batch]:
        order = torch.randperm(indices.numel(), generator=generator).to(indices.device)
        chunks = [order[s:s + batch_size] for s in range(0, order.numel(), batch_size)]
        plan = [indices[c].tolist() for c in chunks]
        loader = DataLoader(self.dataset, batch_sampler=plan, num_workers=self.num_workers)
        for chunk, (x, y) in zip(chunks, loader, strict=True):
            yield Batch(self._to_device(x), torch.as_tensor(y).long().to(self.device),
                        weights[chunk].to(self.device), indices[chunk])


def as_source(data: Any, device: torch.device | str = "cpu", **kwargs: Any) -> DataSource:
    """``data`` as a source: a source is returned as it is, a ``Dataset`` becomes a :class:`DatasetSource`
    (``kwargs``: ``num_workers``, ``memory_format``)."""
    if isinstance(data, (TensorSource, DatasetSource)):
        return data
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return DatasetSource(data, device, **kwargs)
    raise DataError(f"expected a map-style torch Dataset of (image, label) pairs, got {type(data).__name__}")


def dataset_tensors(dataset: Any, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """All of a (small, evaluation) Dataset as (images (N, C, H, W) as stored, labels (N,) int64) on the CPU."""
    _check_item(dataset[0])
    xs, ys = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        xs.append(x)
        ys.append(torch.as_tensor(y).long())
    return torch.cat(xs), torch.cat(ys)
