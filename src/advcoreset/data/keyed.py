"""Datasets whose items are dicts (Hugging Face ``datasets`` style: ``{"image": ..., "label": ...}``) as the
(image, label) pairs the rest of the package reads.

    source = as_source(hf_train, keys=("image", "label"))      # or CoresetLoader(..., keys=...), train(keys=...)

Images follow torchvision's conventions: a tensor is (C, H, W) (an (H, W) one gets a channel); a NumPy array
or a PIL image is (H, W[, C]) and is made (C, H, W), keeping its dtype (uint8 stays uint8: pixels 0..255;
floats must lie in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from advcoreset.data.formats import DataError


def as_image(value: Any) -> Any:
    """An item's image as a (C, H, W) tensor: a tensor as it is ((H, W): one channel added), an array or a
    PIL image from (H, W[, C]); anything else unchanged (the item check then names it)."""
    if isinstance(value, (Image.Image, np.ndarray)):
        t = torch.from_numpy(np.array(value))  # a copy: a PIL image's array is read-only
        return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous() if t.dim() == 3 else t
    if isinstance(value, Tensor) and value.dim() == 2:
        return value.unsqueeze(0)
    return value


class KeyedDataset(Dataset[tuple[Any, Any]]):
    """``dataset``'s dict items as (image (C, H, W), label) pairs, the image converted by ``as_image``.

    Args:
        dataset: a map-style dataset of dicts (a ``datasets.Dataset``, a list of dicts, ...).
        keys: (image key, label key).
    """

    def __init__(self, dataset: Any, keys: Sequence[str] = ("image", "label")) -> None:
        if isinstance(keys, str) or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
            raise DataError(f"keys must be (image key, label key), two strings, got {keys!r}")
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise DataError(f"keys= needs a map-style dataset of dict items, got {type(dataset).__name__}")
        self.dataset, self.keys = dataset, (keys[0], keys[1])
        self.labels = self._exposed_labels()
        """(N,) labels read without decoding an image (a ``datasets`` column, a list's dicts), else None."""

    def _exposed_labels(self) -> Tensor | None:
        key, ds = self.keys[1], self.dataset
        if key in (getattr(ds, "column_names", None) or ()):
            return torch.as_tensor(list(ds[key]))
        if isinstance(ds, (list, tuple)) and all(isinstance(item, dict) and key in item for item in ds):
            return torch.as_tensor([item[key] for item in ds])
        return None

    def __len__(self) -> int:
        return len(self.dataset)

    def _pair(self, item: Any) -> tuple[Any, Any]:
        if not isinstance(item, dict) or any(k not in item for k in self.keys):
            have = sorted(map(str, item))[:8] if isinstance(item, dict) else type(item).__name__
            raise DataError(f"keys={self.keys}: an item lacks one of them (it has {have}); give the image and "
                            "label keys of the dataset's items")
        return as_image(item[self.keys[0]]), item[self.keys[1]]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        return self._pair(self.dataset[i])

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any]]:
        """A batch's items; through the dataset's own ``__getitems__`` when it has one (``datasets`` does)."""
        batch = getattr(self.dataset, "__getitems__", None)
        items = batch(indices) if callable(batch) else [self.dataset[i] for i in indices]
        return [self._pair(item) for item in items]
