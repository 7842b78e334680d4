"""From a DataConfig to the three arrays a run uses: train, validation (held out of train), test."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from advcoreset.config import DataConfig
from advcoreset.data.datasets import DataError, ImageArrays, load_dataset


@dataclass
class DataSplits:
    train: ImageArrays
    val: ImageArrays | None
    test: ImageArrays


def stratified_order(labels: Tensor, generator: torch.Generator) -> Tensor:
    """A seeded permutation of 0..n-1 in which every prefix is (nearly) class-balanced: classes are
    interleaved round-robin after shuffling within each class. labels: (n,) -> (n,) int64."""
    perm = torch.randperm(labels.numel(), generator=generator)
    lab = labels[perm]
    # rank of each element within its class (in shuffled order), then sort by (rank, class)
    order = torch.argsort(lab, stable=True)
    sorted_lab = lab[order]
    starts = torch.searchsorted(sorted_lab, sorted_lab, right=False)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel()) - starts
    key = rank * (int(labels.max()) + 1) + lab
    return perm[torch.argsort(key, stable=True)]


def _take(a: ImageArrays, idx: Tensor) -> ImageArrays:
    return ImageArrays(a.images[idx], a.labels[idx], a.classes)


def prepare_data(cfg: DataConfig, seed: int) -> DataSplits:
    """Load train and test, carve ``val_size`` validation images out of train (stratified, seeded),
    keep ``train_subset`` of the rest, and the first ``test_subset`` test images (fixed order)."""
    train = load_dataset(cfg.name, cfg.root, train=True, image_size=cfg.image_size)
    test = load_dataset(cfg.name, cfg.root, train=False, image_size=cfg.image_size)
    if train.shape != test.shape:
        raise DataError(f"{cfg.name}: train images are {train.shape} but test images are {test.shape}")
    g = torch.Generator().manual_seed(seed + 12345)
    order = stratified_order(train.labels, g)
    if cfg.val_size >= order.numel():
        raise DataError(f"data.val_size={cfg.val_size} leaves no training images (train has {order.numel()})")
    val = _take(train, order[:cfg.val_size].sort().values) if cfg.val_size else None
    rest = order[cfg.val_size:]
    if cfg.train_subset is not None:
        rest = rest[:cfg.train_subset]
    train = _take(train, rest.sort().values)
    if cfg.test_subset is not None:
        # a fixed, class-balanced subset that does not depend on the run's seed
        t_order = stratified_order(test.labels, torch.Generator().manual_seed(0))[:cfg.test_subset]
        test = _take(test, t_order.sort().values)
    return DataSplits(train, val, test)
