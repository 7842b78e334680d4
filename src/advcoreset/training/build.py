"""The parts of a run built from its config (and whatever the caller brought): device, data, model.
(``resolve_device`` and ``eval_alpha`` live below training, in ``advcoreset.device`` and ``evaluation.run``.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from advcoreset.config import Config, ConfigError
from advcoreset.data import DataSplits, ImageArrays, default_augment, prepare_data
from advcoreset.data.datasets import DataError, run_stats
from advcoreset.data.keyed import KeyedDataset
from advcoreset.data.sources import DataSource, TensorSource, as_source, dataset_labels, dataset_tensors
from advcoreset.data.splits import fixed_test_positions, split_train
from advcoreset.models import create_model
from advcoreset.training.evaluate import HeldOut


@dataclass
class RunData:
    """The training source and the evaluation tensors of a run."""

    source: DataSource
    test: tuple[Tensor, Tensor]
    """(N, C, H, W) uint8 or float in [0, 1] images and (N,) labels."""
    val: ImageArrays | HeldOut | None
    num_classes: int
    shape: tuple[int, int, int]
    """(C, H, W) of one training image."""
    stats: tuple[list[float], list[float]] | None
    """Per-channel normalisation of a built-in model (None: none)."""
    classes: list[str] | None = None
    """Class names (a caller's Dataset: its ``classes`` if it has them, else None)."""


def builtin_data(cfg: Config, device: torch.device, memory_format: torch.memory_format,
                 data: DataSplits | None = None) -> RunData:
    """The dataset ``cfg.data`` names (or ``data``), training set resident on ``device`` as uint8."""
    data = data or prepare_data(cfg.data, cfg.seed)
    tr = data.train
    aug = cfg.data.augment if cfg.data.augment != "auto" else default_augment(cfg.data.name)
    padding = cfg.data.crop_padding if aug in ("crop", "crop_flip") else 0
    source = TensorSource(tr.images, tr.labels, device, padding=padding, flip=aug == "crop_flip",
                          memory_format=memory_format)
    return RunData(source, (data.test.images, data.test.labels), data.val, tr.num_classes, tr.shape,
                   run_stats(cfg.data.name, tr.images), list(tr.classes))


def user_data(cfg: Config, train_set: Any, test_set: Any, device: torch.device, memory_format: torch.memory_format,
              selection_set: Any = None, keys: Sequence[str] | None = None) -> RunData:
    """A caller's map-style Datasets of (image (C, H, W) uint8 or float in [0, 1], int label), with the
    ``data`` settings that apply to them, as for the built-in data: ``val_size`` images held out and
    ``train_subset`` kept of the rest (``split_train``), the first ``test_subset`` of the test set's fixed order,
    ``augment`` crop / crop_flip as the built-in batched augmentation (``check_given`` refuses the others).
    ``selection_set``: ``train_set`` without its random augmentation, read by the selection pass and for
    validation; ``keys``: (image key, label key) of dict items (``data.keyed``)."""
    if test_set is None:
        raise ConfigError("train(..., train_set=...) needs test_set too (a Dataset of the same kind): the run "
                          "ends with its clean and PGD accuracy on it")
    d = cfg.data
    train, view = (train_set, selection_set) if keys is None else (
        KeyedDataset(train_set, keys), None if selection_set is None else KeyedDataset(selection_set, keys))
    labels = dataset_labels(train)
    val_idx, keep = split_train(labels, d.val_size, d.train_subset, cfg.seed)
    val = HeldOut(*dataset_tensors(Subset(view if view is not None else train, val_idx.tolist()))) \
        if d.val_size else None
    if keep.numel() < labels.numel():
        train, labels = Subset(train, keep.tolist()), labels[keep]
        view = None if view is None else Subset(view, keep.tolist())
    source = as_source(train, device, memory_format=memory_format, selection_view=view, labels=labels,
                       padding=d.crop_padding if d.augment in ("crop", "crop_flip") else 0,
                       flip=d.augment == "crop_flip")
    test = dataset_tensors(test_set if keys is None else KeyedDataset(test_set, keys))
    at = fixed_test_positions(test[1], d.test_subset)
    if at is not None:
        test = (test[0][at], test[1][at])
    c, h, w = source.sample(1).shape[1:]
    if tuple(test[0].shape[1:]) != (c, h, w):
        raise DataError(f"the test images are {tuple(test[0].shape[1:])}, the training images {(c, h, w)}: give "
                        "test and training sets of one image size and channel count")
    num_classes = int(max(int(source.labels.max()), int(test[1].max()))) + 1
    return RunData(source, test, val, num_classes, (c, h, w), None, class_names(train_set, num_classes))


def class_names(dataset: Any, num_classes: int) -> list[str] | None:
    """A Dataset's ``classes`` (torchvision's convention) when it names exactly ``num_classes`` classes."""
    names = getattr(dataset, "classes", None)
    if isinstance(names, (list, tuple)) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def builtin_model(cfg: Config, rd: RunData) -> nn.Module:
    """The registered model ``cfg.model.name`` for ``rd``'s images (square ones: the built-in nets need them)."""
    c, h, w = rd.shape
    if h != w:
        raise ConfigError(f"data: model.name={cfg.model.name} needs square images, got {h}x{w}; pass your own "
                          "model (train(cfg, model=...)) for other shapes")
    mean, std = rd.stats if rd.stats is not None else (None, None)
    return create_model(cfg.model.name, c, rd.num_classes, h, mean, std,
                        **({} if cfg.model.width is None else {"width": cfg.model.width}))
