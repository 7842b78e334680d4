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


def split_train(labels: Tensor, val_size: int, train_subset: int | None, seed: int) -> tuple[Tensor, Tensor]:
    """(validation positions, training positions), each ascending, of a training set with ``labels`` (n,):
    ``val_size`` held out and the first ``train_subset`` (None: all) of the rest kept, along one seeded
    class-stratified order (``stratified_order``), the same for the built-in data and a caller's Dataset."""
    order = stratified_order(labels, torch.Generator().manual_seed(seed + 12345))
    if val_size >= order.numel():
        raise DataError(f"data.val_size={val_size} leaves no training images (train has {order.numel()})")
    rest = order[val_size:]
    if train_subset is not None:
        rest = rest[:train_subset]
    return order[:val_size].sort().values, rest.sort().values


def fixed_test_positions(labels: Tensor, test_subset: int | None) -> Tensor | None:
    """Ascending positions of the first ``test_subset`` test images of a fixed class-balanced order that does
    not depend on the run's seed; None: all (``test_subset`` None or at least the set's size)."""
    if test_subset is None or test_subset >= labels.numel():
        return None
    return stratified_order(labels, torch.Generator().manual_seed(0))[:test_subset].sort().values


def prepare_data(cfg: DataConfig, seed: int) -> DataSplits:
    """Load train and test, carve ``val_size`` validation images out of train (stratified, seeded),
    keep ``train_subset`` of the rest, and the first ``test_subset`` test images (fixed order)."""
    train = load_dataset(cfg.name, cfg.root, train=True, image_size=cfg.image_size)
    test = load_dataset(cfg.name, cfg.root, train=False, image_size=cfg.image_size)
    if train.shape != test.shape:
        raise DataError(f"{cfg.name}: train images are {train.shape} but test images are {test.shape}")
    val_idx, keep = split_train(train.labels, cfg.val_size, cfg.train_subset, seed)
    val = _take(train, val_idx) if cfg.val_size else None
    train = _take(train, keep)
    at = fixed_test_positions(test.labels, cfg.test_subset)
    if at is not None:
        test = _take(test, at)
    return DataSplits(train, val, test)
