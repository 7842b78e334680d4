"""Load a dataset by name as uint8 image tensors; its normalisation statistics and default augmentation.

Supported names and the files each expects under ``root`` (the standard distribution layout):

=================  ====================================================================================
``fashion-mnist``  ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (default root
                   ``/usr/share/datasets/fashion-mnist``; ``root/raw`` and ``root/FashionMNIST/raw`` too)
``mnist``          same file names (default root ``/usr/share/datasets/mnist``; also ``root/MNIST/raw``)
``cifar10``        ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (or root = that dir)
``cifar100``       ``cifar-100-python/{train, test, meta}`` (or root = that dir)
``svhn``           ``train_32x32.mat``, ``test_32x32.mat``
``imagefolder``    ``train/<class>/<image>``; evaluation split ``val/<class>/...`` or else ``test/...``
``digits``         none: scikit-learn's bundled 8x8 digits, split as described in :func:`digits_split`
=================  ====================================================================================

Nothing is downloaded: a missing file raises :class:`DataError` saying which file and where.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from advcoreset.data.formats import (
    DataError,
    check_labels,
    list_class_dirs,
    read_cifar_batch,
    read_cifar_meta,
    read_idx,
    read_image_folder,
    read_svhn_mat,
)
from advcoreset.registry import Registry

__all__ = ["DATASETS", "DATASET_RECORDS", "DataError", "DatasetRecord", "ImageArrays", "dataset_record",
           "dataset_stats", "default_augment", "digits_split", "load_dataset", "run_stats"]

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]

DIGITS_TEST_SIZE = 400
DIGITS_SEED = 0


@dataclass
class ImageArrays:
    """A whole split in memory. Validated on construction (raises DataError)."""

    images: torch.Tensor
    """(N, C, H, W) uint8, pixel value / 255 is the [0, 1] intensity."""
    labels: torch.Tensor
    """(N,) int64 in [0, num_classes)."""
    classes: list[str]
    """Class names; ``classes[k]`` names label k."""

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                            f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")
        if self.labels.shape[0] != self.images.shape[0]:
            raise DataError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if not self.classes:
            raise DataError("classes must name at least one class")
        if self.labels.numel():
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.classes):
                raise DataError(f"labels span [{lo}, {hi}] but there are {len(self.classes)} classes")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, c, h, w = self.images.shape
        return (c, h, w)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class DatasetRecord:
    """What the rest of the package needs to know about a built-in dataset, so nothing branches on names."""

    name: str
    load: Callable[[Path | None, bool, int | tuple[int, int] | None], ImageArrays]
    """(root or None for datasets without files, train, image_size) -> the split."""
    augment: str
    """``data.augment: auto`` resolves to this: ``crop`` for digits and clothes (a flip changes a digit),
    ``crop_flip`` for natural images."""
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """Per-channel (mean, std) of the training images in [0, 1] (population std over N*H*W); None: computed
    from the training images of the run."""
    aliases: tuple[str, ...] = ()
    default_root: str | None = None
    """Where the files are looked for when ``root`` is None; None: ``data.root`` is required."""
    needs_root: bool = True
    shape: tuple[int, int, int] | None = None
    """(C, H, W) of every image; None: it depends on the files (imagefolder)."""


DATASET_RECORDS: Registry[DatasetRecord] = Registry("dataset")


def _idx(key: str) -> Callable[[Path | None, bool, object], ImageArrays]:
    return lambda root, train, _size: _load_idx_dataset(key, _root_dir(root, key), train)


@DATASET_RECORDS.register("fashion-mnist")
def _fashion_mnist() -> DatasetRecord:
    return DatasetRecord("fashion-mnist", _idx("fashion-mnist"), "crop", ((0.2860,), (0.3530,)),
                         ("fashionmnist",), "/usr/share/datasets/fashion-mnist",
                         shape=(1, 28, 28))


@DATASET_RECORDS.register("mnist")
def _mnist() -> DatasetRecord:
    return DatasetRecord("mnist", _idx("mnist"), "crop", ((0.1307,), (0.3081,)), (),
                         "/usr/share/datasets/mnist", shape=(1, 28, 28))


@DATASET_RECORDS.register("cifar10")
def _cifar10() -> DatasetRecord:
    def load(root: Path | None, train: bool, _size: object) -> ImageArrays:
        return _load_cifar(_root_dir(root, "cifar10"), train, folder="cifar-10-batches-py", num_classes=10,
                           meta="batches.meta",
                           files=[f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"])

    return DatasetRecord("cifar10", load, "crop_flip", ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                         ("cifar-10",), shape=(3, 32, 32))


@DATASET_RECORDS.register("cifar100")
def _cifar100() -> DatasetRecord:
    def load(root: Path | None, train: bool, _size: object) -> ImageArrays:
        return _load_cifar(_root_dir(root, "cifar100"), train, folder="cifar-100-python", num_classes=100,
                           meta="meta", files=["train"] if train else ["test"])

    return DatasetRecord("cifar100", load, "crop_flip", ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
                         ("cifar-100",), shape=(3, 32, 32))


@DATASET_RECORDS.register("svhn")
def _svhn() -> DatasetRecord:
    def load(root: Path | None, train: bool, _size: object) -> ImageArrays:
        images, labels = read_svhn_mat(_root_dir(root, "svhn") / ("train_32x32.mat" if train else "test_32x32.mat"))
        return _arrays(images, labels, DIGIT_CLASSES)

    return DatasetRecord("svhn", load, "crop", ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
                         shape=(3, 32, 32))


@DATASET_RECORDS.register("imagefolder")
def _imagefolder() -> DatasetRecord:
    return DatasetRecord("imagefolder", lambda root, train, size: _load_image_folder(
        _root_dir(root, "imagefolder"), train, size), "crop_flip", None, ("image-folder",))


@DATASET_RECORDS.register("digits")
def _digits() -> DatasetRecord:
    return DatasetRecord("digits", lambda _root, train, _size: _load_digits(train), "crop",
                         ((0.3052,), (0.3759,)), needs_root=False, shape=(1, 8, 8))


DATASETS = tuple(DATASET_RECORDS.names())
"""Names accepted by :func:`load_dataset`."""

DEFAULT_ROOTS: dict[str, str] = {n: r.default_root for n in DATASETS
                                 if (r := DATASET_RECORDS.get(n)()).default_root is not None}
"""Where :func:`load_dataset` looks when ``root`` is None. Other datasets need ``data.root``."""


def dataset_record(name: str) -> DatasetRecord:
    """The record of dataset ``name`` or one of its aliases (``_`` and ``-`` interchangeable, case ignored)."""
    key = name.strip().lower().replace("_", "-")
    for n in DATASETS:
        rec = DATASET_RECORDS.get(n)()
        if key == n or key in rec.aliases:
            return rec
    raise DataError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")


def _canonical(name: str) -> str:
    return dataset_record(name).name


def _root_dir(root: Path | None, key: str) -> Path:
    if root is None:
        raise DataError(f"dataset {key!r} has no default location: set data.root to the folder holding "
                        f"its files (see advcoreset.data.datasets for the expected layout)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data.root folder for dataset {key!r} does not exist")
    return root


def load_dataset(name: str, root: str | Path | None, train: bool,
                 *, image_size: int | tuple[int, int] | None = None) -> ImageArrays:
    """Load the training (``train=True``) or test split of dataset ``name`` from ``root``.

    Args:
        name: one of :data:`DATASETS` or an alias (``_`` and ``-`` are interchangeable, case ignored).
        root: the folder holding the dataset's standard files; None = the record's ``default_root`` (only
            MNIST and Fashion-MNIST have one).
        train: training split if True, test (or ``val``) split otherwise.
        image_size: imagefolder only: resize every image to ``(H, W)`` (or ``(S, S)``); None = all
            images must share one size. Ignored by the other datasets.

    Returns:
        ImageArrays with uint8 (N, C, H, W) images and int64 (N,) labels.

    Raises:
        DataError: unknown name, no root for a dataset without a default, a missing, truncated or
            corrupt file (the message names it and says what was expected).
    """
    rec = dataset_record(name)
    if root is None and rec.needs_root:
        root = rec.default_root
    return rec.load(None if root is None else Path(root), train, image_size)


def _arrays(images: np.ndarray, labels: np.ndarray, classes: list[str]) -> ImageArrays:
    return ImageArrays(torch.from_numpy(np.ascontiguousarray(images)),
                       torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)), list(classes))


def _find_file(dirs: list[Path], stem: str, dataset: str, root: Path) -> Path:
    """The first existing ``stem`` or ``stem.gz`` among ``dirs``."""
    for d in dirs:
        for candidate in (d / stem, d / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"{dataset}: file {stem}[.gz] not found under {root} (looked in "
                    f"{', '.join(str(d) for d in dirs)}); set data.root to the folder holding it")


def _load_idx_dataset(key: str, root: Path, train: bool) -> ImageArrays:
    sub = "FashionMNIST" if key == "fashion-mnist" else "MNIST"
    dirs = [root, root / "raw", root / sub / "raw"]
    prefix = "train" if train else "t10k"
    img_path = _find_file(dirs, f"{prefix}-images-idx3-ubyte", key, root)
    lab_path = _find_file(dirs, f"{prefix}-labels-idx1-ubyte", key, root)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{img_path}: expected uint8 images of shape (N, H, W), got {images.dtype} "
                        f"{images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{lab_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{lab_path}: expected {images.shape[0]} labels (one per image in {img_path.name}), "
                        f"got {labels.shape[0]}")
    labels = labels.astype(np.int64)
    check_labels(labels, 10, lab_path)
    classes = FASHION_MNIST_CLASSES if key == "fashion-mnist" else DIGIT_CLASSES
    return _arrays(images[:, None], labels, classes)


def _load_cifar(root: Path, train: bool, folder: str, num_classes: int, meta: str,
                files: list[str]) -> ImageArrays:
    base = next((d for d in (root / folder, root) if (d / files[0]).is_file()), None)
    if base is None:
        raise DataError(f"{root / folder / files[0]}: file not found (expected the extracted python version "
                        f"of the dataset: {root}/{folder}/ or data.root pointing at that folder)")
    classes = read_cifar_meta(base / meta)
    if len(classes) != num_classes:
        raise DataError(f"{base / meta}: expected {num_classes} class names, got {len(classes)}")
    parts = [read_cifar_batch(base / f, num_classes=num_classes) for f in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return _arrays(images, labels, classes)


def _load_image_folder(root: Path, train: bool, image_size: int | tuple[int, int] | None) -> ImageArrays:
    classes = list_class_dirs(root / "train")
    split: Path | None
    if train:
        split = root / "train"
    else:
        split = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
        if split is None:
            raise DataError(f"{root}: no evaluation split: expected {root}/val/<class>/... or "
                            f"{root}/test/<class>/...")
    images, labels, classes = read_image_folder(split, classes=classes, image_size=image_size)
    return _arrays(images, labels, classes)


def digits_split(labels: np.ndarray, test_size: int = DIGITS_TEST_SIZE, seed: int = DIGITS_SEED,
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A fixed class-stratified train/test split of ``labels`` (N,) -> (train_idx, test_idx), each sorted.

    Class c gets ``floor(test_size * n_c / N)`` test images, plus one for the classes with the largest
    remainders (ties to the smaller class index) until ``test_size`` is reached; within a class the
    test images are the first of a ``numpy.random.default_rng(seed)`` permutation. For scikit-learn's
    1797 digits this gives 1397 training and 400 test images, disjoint.
    """
    n = labels.shape[0]
    if not 0 < test_size < n:
        raise DataError(f"test_size must be in (0, {n}), got {test_size}")
    counts = np.bincount(labels)
    quota = counts * test_size / n
    k = np.floor(quota).astype(np.int64)
    short = test_size - int(k.sum())
    k[np.argsort(-(quota - k), kind="stable")[:short]] += 1
    perm = np.random.default_rng(seed).permutation(n)
    grouped = perm[np.argsort(labels[perm], kind="stable")]  # by class, permuted order within a class
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(n) - starts[labels[grouped]]
    in_test = rank < k[labels[grouped]]
    return np.sort(grouped[~in_test]), np.sort(grouped[in_test])


def _load_digits(train: bool) -> ImageArrays:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("dataset 'digits' needs scikit-learn (its bundled copy; nothing is downloaded): "
                        "pip install scikit-learn") from exc
    bunch = load_digits()
    # Intensities 0..16 -> 0..255 so the model sees the same [0, 1] range as every other dataset.
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = digits_split(labels)
    idx = train_idx if train else test_idx
    return _arrays(images[idx, None], labels[idx], DIGIT_CLASSES)


def dataset_stats(name: str, images: torch.Tensor | None = None) -> tuple[list[float], list[float]]:
    """Per-channel (mean, std) of the training images, pixels in [0, 1], for the model's normalisation.

    Known datasets return published / precomputed constants. For ``imagefolder`` (or to override),
    pass ``images`` uint8 (N, C, H, W): the statistics are computed from them in float64, in chunks.
    """
    if images is not None:
        return _compute_stats(images)
    rec = dataset_record(name)
    if rec.stats is None:
        raise DataError(f"dataset {rec.name!r} has no fixed statistics: pass its training images to compute them")
    mean, std = rec.stats
    return list(mean), list(std)


def run_stats(name: str, images: torch.Tensor) -> tuple[list[float], list[float]]:
    """The normalisation a run of dataset ``name`` uses: the record's constants, else computed from the run's
    training ``images`` (N, C, H, W) uint8."""
    rec = dataset_record(name)
    return dataset_stats(name, None if rec.stats is not None else images)


def _compute_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Population mean / std per channel over (N, H, W) of uint8 images (N, C, H, W), in [0, 1] units."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise DataError(f"expected non-empty images (N, C, H, W), got shape {tuple(images.shape)}")
    c = images.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        x = images[start:start + chunk].to(torch.float64) / 255.0
        s1 += x.sum(dim=(0, 2, 3))
        s2 += (x * x).sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s1 / count
    std = (s2 / count - mean * mean).clamp_min(0).sqrt()
    return mean.tolist(), std.tolist()


def default_augment(name: str) -> str:
    """The augmentation ``data.augment: auto`` resolves to (the dataset record's ``augment``)."""
    return dataset_record(name).augment
