"""Where training and selection read images from: the built-in device-resident arrays, or any Dataset.

Both sources give the coreset machinery the same three things: the labels of every example (selection
is per class), un-augmented batches in index order (the selection attack's pass), and what a training
``DataLoader`` reads (``items()``, collated by ``collate_items``) with the step that makes a fetched batch a
training batch (``finish``: device, floats in [0, 1], augmentation).

- :class:`TensorSource`: uint8 (or float) images resident on the device; ``items()`` gathers a whole batch
  in one index operation (``__getitems__``) and ``finish`` augments it in one batched operation
  (``random_crop_flip``): the fast path of the built-in datasets.
- :class:`DatasetSource`: any map-style ``torch.utils.data.Dataset`` whose items are (image tensor
  (C, H, W) uint8 or float in [0, 1], int label), any channel count and any H x W (dict items, Hugging Face
  style: ``keys=``, see ``data.keyed``); the dataset's own transforms do any augmentation.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset, default_collate

from advcoreset.data.datasets import DataError
from advcoreset.data.keyed import KeyedDataset
from advcoreset.data.loader import Augmentation, Part, augment_batch, to_float


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

    def items(self) -> Dataset[Any]:
        """The map-style Dataset a training ``DataLoader`` reads (collated by ``collate_items``)."""
        ...

    def finish(self, x: Tensor, y: Tensor, generator: torch.Generator,
               part: Part | None = None) -> tuple[Tensor, Tensor, Augmentation | None]:
        """A fetched batch (x (B, C, H, W), y (B,)) as a training batch on the device: x float in [0, 1],
        augmented (random draws from ``generator``; ``part``: for the whole global batch, this rank's rows
        kept), y int64, and the built-in augmentation drawn (None: none)."""
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

    def items(self) -> TensorItems:
        return TensorItems(self.images, self.labels)

    def finish(self, x: Tensor, y: Tensor, generator: torch.Generator,
               part: Part | None = None) -> tuple[Tensor, Tensor, Augmentation | None]:
        """The batched ``random_crop_flip`` of ``data.loader.iterate_batches``, with the same random draws."""
        x, aug = to_float(x.to(self.images.device, non_blocking=True)), None
        if self.padding or self.flip:
            x, aug = augment_batch(x, self.padding, self.flip, generator, part)
        return x.contiguous(memory_format=self.memory_format), y.to(self.labels.device, non_blocking=True), aug


class Rows(Sequence[tuple[Tensor, Tensor]]):
    """A batch gathered in one index operation: ``x`` (B, C, H, W) and ``y`` (B,) as they are stored. It is
    also the sequence of its B (image, label) items, for a ``collate_fn`` of the caller's."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.y.numel()

    def __getitem__(self, i: Any) -> Any:
        return self.x[i], self.y[i]


class TensorItems(Dataset[tuple[Tensor, Tensor]]):
    """A ``TensorSource``'s arrays as a map-style Dataset of (image, label); a ``DataLoader`` fetching a batch
    calls ``__getitems__``, one gather for the whole batch (no Python per item)."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.images[i], self.labels[i]

    def __getitems__(self, indices: list[int]) -> Rows:
        idx = torch.as_tensor(indices, dtype=torch.long).to(self.images.device)
        return Rows(self.images[idx], self.labels[idx])


def collate_items(batch: Any) -> Any:
    """The default ``collate_fn`` of the training DataLoader: a gathered ``Rows`` batch as (x, y) as it is,
    a list of items by torch's ``default_collate``."""
    return (batch.x, batch.y) if isinstance(batch, Rows) else default_collate(batch)


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


def dataset_labels(dataset: Any) -> Tensor:
    """(n,) int64 labels of a map-style Dataset of (image, label) pairs, read as a ``DatasetSource`` reads them
    (exposed labels, else one pass with the random states kept); ``DataError`` when they are not class indices."""
    return _dataset_labels(dataset, len(dataset))


def _dataset_labels(dataset: Dataset[Any], n: int) -> Tensor:
    """(n,) int64 labels without reading images where the dataset exposes them (``_exposed_labels``); else
    one pass over the items, with torch's, Python's and NumPy's random states restored afterwards, so a
    random transform in the dataset does not shift the run's random streams."""
    labels = _exposed_labels(dataset)
    if labels is None:
        with random_states_kept():
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


def fetched(loader: Iterable[Any], where: str) -> Iterator[Any]:
    """``loader``'s batches as collated, with a collation failure (images of different sizes) said as a
    DataError."""
    it = iter(loader)
    while True:
        try:
            out = next(it)
        except StopIteration:
            return
        except RuntimeError as e:
            if "equal size" in str(e):
                raise DataError(f"{where}: the images are not all of one size ({' '.join(str(e).split())}); "
                                "resize them in the dataset (e.g. a Resize transform)") from None
            raise
        yield out


def _collated(loader: DataLoader[Any], where: str) -> Iterator[tuple[Tensor, Tensor]]:
    """``loader``'s (x, y) batches, checked (``_batch``) and with collation failures named (``fetched``)."""
    for x, y in fetched(loader, where):
        yield _batch(x, y, where)


@contextmanager
def random_states_kept(device: torch.device | str | None = None) -> Iterator[None]:
    """Python's, NumPy's and torch's random states (the CPU's, and ``device``'s when it is a CUDA device) as
    they were before the block: whatever it draws shifts none of the run's streams."""
    py, npy = random.getstate(), np.random.get_state()
    dev = torch.device(device) if device is not None else None
    cuda = [dev] if dev is not None and dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, **({"device_type": "cuda"} if cuda else {})):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _check_item(item: Any) -> None:
    if isinstance(item, dict):
        raise DataError(f"dataset items are dicts (keys {sorted(map(str, item))[:6]}): pass keys=(image key, label "
                        "key), e.g. keys=('image', 'label') for a Hugging Face datasets-style set")
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

    ``num_workers``: DataLoader worker processes; batches come back in the order asked for either way.
    ``padding``, ``flip``: the built-in augmentation (``random_crop_flip``) of every training batch, drawn
    from the loader's generator (``data.augment`` crop / crop_flip); the selection pass reads no augmentation.
    ``labels``: (n,) the dataset's labels when the caller already holds them (no second read)."""

    def __init__(self, dataset: Dataset[Any], device: torch.device | str = "cpu", *, num_workers: int = 0,
                 memory_format: torch.memory_format = torch.contiguous_format,
                 selection_view: Dataset[Any] | None = None, padding: int = 0, flip: bool = False,
                 labels: Tensor | None = None) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise DataError("the dataset is empty: coreset selection needs at least one example")
        with random_states_kept():  # reading an item may draw a random augmentation
            _check_item(dataset[0])
        self.dataset, self.device, self.num_workers = dataset, torch.device(device), num_workers
        self.memory_format, self.padding, self.flip = memory_format, padding, flip
        if labels is not None and tuple(labels.shape) != (n,):
            raise DataError(f"labels= must be the dataset's (n,) = ({n},) labels, got {tuple(labels.shape)}")
        self.labels = (_dataset_labels(dataset, n) if labels is None else labels.long()).to(self.device)
        self.view = dataset if selection_view is None else selection_view
        """What ``ordered`` and ``sample`` read (the selection pass): the same items without random
        augmentation, when the caller gives such a view."""
        if selection_view is not None:
            m = len(selection_view)  # type: ignore[arg-type]
            if m != n:
                raise DataError(f"the selection view has {m} items, the training set {n}: give the same dataset "
                                "without its random augmentation")
            with random_states_kept():
                _check_item(selection_view[0])
            exposed = _exposed_labels(selection_view)
            if exposed is not None and not torch.equal(exposed.long().cpu(), self.labels.cpu()):
                raise DataError("the selection view's labels differ from the training set's: give the same "
                                "dataset, in the same order, without its random augmentation")

    def __len__(self) -> int:
        return self.labels.numel()

    def _to_device(self, x: Tensor) -> Tensor:
        return to_float(x.to(self.device, non_blocking=True)).contiguous(memory_format=self.memory_format)

    def sample(self, n: int = 2) -> Tensor:
        with random_states_kept():  # a dry run's read draws nothing from the run's streams
            return self._to_device(torch.stack([self.view[i][0] for i in range(min(n, len(self)))]))

    def ordered(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        return self._read(self.view, batch_size)

    def ordered_at(self, indices: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        return self._read(Subset(self.view, indices.tolist()), batch_size)

    def _read(self, dataset: Dataset[Any], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=self.num_workers)
        for x, y in _collated(loader, "the training set"):
            yield self._to_device(x), y.to(self.device)

    def items(self) -> Dataset[Any]:
        return self.dataset

    def finish(self, x: Tensor, y: Tensor, generator: torch.Generator,
               part: Part | None = None) -> tuple[Tensor, Tensor, Augmentation | None]:
        """Checked as the first item was (``_batch``), on the device; augmented by the dataset's transforms and,
        with ``padding`` / ``flip``, by ``random_crop_flip`` from ``generator`` (``part``: of a global batch),
        with that built-in augmentation's draws (the dataset's own transforms are not known here)."""
        x, y = _batch(x, y, "the training set")
        x, aug = self._to_device(x), None
        if self.padding or self.flip:
            x, aug = augment_batch(x, self.padding, self.flip, generator, part)
            x = x.contiguous(memory_format=self.memory_format)
        return x, y.to(self.device, non_blocking=True), aug


def check_label_range(source: DataSource, outputs: int) -> None:
    """A ``DataError`` unless every label of ``source`` is one of a model's ``outputs`` classes (a label beyond
    them fails deep inside the selection attack's loss as an IndexError)."""
    labels = source.labels
    if labels.numel() and int(labels.max()) >= outputs:
        top = int(labels.max())
        raise DataError(f"dataset label {top} is beyond the model's {outputs} outputs (classes 0..{outputs - 1}): "
                        f"give a model with (at least) {top + 1} outputs, or labels 0..{outputs - 1}")


def as_source(data: Any, device: torch.device | str = "cpu", *, keys: Sequence[str] | None = None,
              **kwargs: Any) -> DataSource:
    """``data`` as a source: a source is returned as it is, a ``Dataset`` becomes a :class:`DatasetSource`
    (``kwargs``: ``num_workers``, ``memory_format``, ``selection_view``). ``keys`` = (image key, label key):
    the items (and the selection view's) are dicts, read as pairs (``data.keyed.KeyedDataset``)."""
    if isinstance(data, (TensorSource, DatasetSource)):
        if kwargs.get("selection_view") is not None or keys is not None:
            raise DataError("a selection view or keys= go with a Dataset, not with a data source: pass the Dataset")
        return data
    if keys is not None:
        data = KeyedDataset(data, keys)
        if kwargs.get("selection_view") is not None:
            kwargs["selection_view"] = KeyedDataset(kwargs["selection_view"], keys)
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
