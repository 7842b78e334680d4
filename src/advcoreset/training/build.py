"""The parts of a run built from its config (and whatever the caller brought): device, data, model.
(``resolve_device`` and ``eval_alpha`` live below training, in ``advcoreset.device`` and ``evaluation.run``.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advcoreset.config import Config, ConfigError
from advcoreset.data import DataSplits, ImageArrays, default_augment, prepare_data
from advcoreset.data.datasets import DataError, run_stats
from advcoreset.data.keyed import KeyedDataset
from advcoreset.data.sources import DataSource, TensorSource, as_source, dataset_tensors
from advcoreset.models import create_model


@dataclass
class RunData:
    """The training source and the evaluation tensors of a run."""

    source: DataSource
    test: tuple[Tensor, Tensor]
    """(N, C, H, W) uint8 or float in [0, 1] images and (N,) labels."""
    val: ImageArrays | None
    num_classes: int
    shape: tuple[int, int, int]
    """(C, H, W) of one training image."""
    stats: tuple[list[float], list[float]] | None
    """Per-channel normalisation of a built-in model (None: none)."""
    classes: list[str] | None = None
    """Class names of a built-in dataset (None: a caller's Dataset)."""


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


def user_data(train_set: Any, test_set: Any, device: torch.device, memory_format: torch.memory_format,
              selection_set: Any = None, keys: Sequence[str] | None = None) -> RunData:
    """A caller's map-style Datasets of (image (C, H, W) uint8 or float in [0, 1], int label);
    ``selection_set``: ``train_set`` without its random augmentation, read by the selection pass; ``keys``:
    (image key, label key) of dict items (``data.keyed``)."""
    if test_set is None:
        raise ConfigError("train(..., train_set=...) needs test_set too (a Dataset of the same kind): the run "
                          "ends with its clean and PGD accuracy on it")
    source = as_source(train_set, device, keys=keys, memory_format=memory_format, selection_view=selection_set)
    test = dataset_tensors(test_set if keys is None else KeyedDataset(test_set, keys))
    c, h, w = source.sample(1).shape[1:]
    if tuple(test[0].shape[1:]) != (c, h, w):
        raise DataError(f"the test images are {tuple(test[0].shape[1:])}, the training images {(c, h, w)}: give "
                        "test and training sets of one image size and channel count")
    num_classes = int(max(int(source.labels.max()), int(test[1].max()))) + 1
    return RunData(source, test, None, num_classes, (c, h, w), None)


def builtin_model(cfg: Config, rd: RunData) -> nn.Module:
    """The registered model ``cfg.model.name`` for ``rd``'s images (square ones: the built-in nets need them)."""
    c, h, w = rd.shape
    if h != w:
        raise ConfigError(f"data: model.name={cfg.model.name} needs square images, got {h}x{w}; pass your own "
                          "model (train(cfg, model=...)) for other shapes")
    mean, std = rd.stats if rd.stats is not None else (None, None)
    return create_model(cfg.model.name, c, rd.num_classes, h, mean, std,
                        **({} if cfg.model.width is None else {"width": cfg.model.width}))
