"""Readers for the standard on-disk formats of the image datasets, each returning numpy arrays.

Every reader validates what it reads (magic numbers, byte counts, shapes, image/label counts) and
raises :class:`DataError` naming the file, what was expected and what was found. Images come back
as ``uint8`` arrays laid out ``(N, C, H, W)``; labels as ``int64`` ``(N,)``.

CIFAR's python batches are pickles. They are read with :class:`RestrictedUnpickler`, which
admits only the few numpy constructors those files need, so a tampered file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import math
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from advcoreset.data.restricted_pickle import Corrupt, Refused, RestrictedUnpickler, unpickle_restricted

__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "DataError", "RestrictedUnpickler", "check_labels",
           "list_class_dirs", "load_pickle_restricted", "read_cifar_batch", "read_cifar_meta", "read_idx",
           "read_image_folder", "read_svhn_mat"]


class DataError(ValueError):
    """A dataset file is missing, truncated or corrupt. The message names the file and what was expected."""


# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"
MAX_FILE_BYTES = 1 << 30
"""Largest unpacked file read (CIFAR-100's training file is 150 MB): a gzip bomb stops here."""

MAX_IMAGE_PIXELS = 8192 * 8192
"""Largest image (width x height, read from its header before anything is decoded) an image folder may hold:
a PNG header can claim 20000 x 20000 pixels in a file of a few bytes, and decoding it would allocate the
full RGB image first. Larger photographs are to be resized offline first."""
MAT_MAX_RATIO = 64
"""Most bytes an SVHN ``.mat`` file's ``X`` may declare per byte of the file (plus ``MAT_SLACK``): a variable
stored compressed can declare any size in a small file, and scipy allocates what it declares before reading;
pixels compress far less than this."""
MAT_SLACK = 1 << 20

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
"""File suffixes (lower case) read as images by :func:`read_image_folder`."""


def _read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number (whatever its suffix)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size} bytes, more than the {MAX_FILE_BYTES} of any dataset file this library "
                        "reads; replace it with the dataset's original")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        out = _gunzip(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
    if out is None:
        raise DataError(f"{path}: unpacks to more than {MAX_FILE_BYTES} bytes, more than any dataset file "
                        "this library reads; replace it with the dataset's original")
    return out


def _gunzip(raw: bytes, chunk: int = 1 << 20) -> bytes | None:
    """``raw`` unpacked, or None once it passes ``MAX_FILE_BYTES``; read in chunks, as ``read(n)`` would
    allocate n bytes up front whatever the stream holds."""
    parts: list[bytes] = []
    total = 0
    with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
        while part := f.read(chunk):
            total += len(part)
            if total > MAX_FILE_BYTES:
                return None
            parts.append(part)
    return b"".join(parts)


# ----------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)
# ----------------------------------------------------------------------------------------------------

def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), gzipped or raw.

    Layout: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes, then exactly ``prod(sizes)`` items in row-major order.

    Returns:
        An array of shape ``sizes`` in native byte order (uint8 for image and label files).

    Raises:
        DataError: missing file, wrong magic number, unknown type code, or a payload whose byte count
            differs from what the header announces (truncated or padded file).
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: expected an IDX header of at least 4 bytes, got {len(data)} bytes")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: not an IDX file: expected magic number starting 0x0000, "
                        f"got 0x{data[:4].hex()}")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"{path}: unknown IDX type code 0x{code:02X} (expected one of {known})")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions (expected >= 1)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header: expected {header} bytes for {ndim} dimensions, "
                        f"got {len(data)}")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    if 0 in shape:
        raise DataError(f"{path}: IDX header announces shape {shape}, which holds no items; the file is "
                        "empty or damaged: replace it with the dataset's original")
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: numpy's int64 product wraps to 0 at 2**64
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "trailing bytes"
        raise DataError(f"{path}: {what}: header announces shape {shape} of {dtype.name} = {expected} "
                        f"payload bytes, got {got}")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # Native byte order and a writable copy (torch.from_numpy warns on read-only buffers).
    return arr.astype(dtype.newbyteorder("="), copy=True)


# ----------------------------------------------------------------------------------------------------
# Restricted pickle loading (CIFAR python batches)
# ----------------------------------------------------------------------------------------------------

def load_pickle_restricted(path: str | Path) -> Any:
    """Unpickle ``path`` (gzipped or raw) with :class:`RestrictedUnpickler` (see ``restricted_pickle``).

    Python 2 ``str`` objects come back as ``bytes`` (``encoding="bytes"``), as in the CIFAR files.

    Raises:
        DataError: missing file, a name outside the allow-list ("refusing to unpickle X"), an array larger
            than any CIFAR file holds, or a truncated / corrupt pickle stream.
    """
    path = Path(path)
    data = _read_bytes(path)
    try:
        return unpickle_restricted(data)
    except Refused as exc:
        raise DataError(f"{path}: {exc}; this is not a file as the dataset distributes it: replace it with the "
                        "dataset's original") from None
    except Corrupt as exc:
        raise DataError(f"{path}: {exc}; replace the file with the dataset's original") from None


def _get(d: dict, keys: Sequence[bytes], path: Path) -> Any:
    """The value of the first of ``keys`` present in ``d`` (keys as bytes or str)."""
    for k in keys:
        for variant in (k, k.decode()):
            if variant in d:
                return d[variant]
    found = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in d)
    raise DataError(f"{path}: expected a key {' or '.join(repr(k.decode()) for k in keys)}, found {found}")


def read_cifar_batch(path: str | Path, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 / CIFAR-100 python batch (``data_batch_1``, ``test_batch``, ``train``, ``test``).

    The file is a pickled dict: ``b"data"`` a uint8 array (N, 3072) holding the red, green then blue
    32x32 planes of each image row-major; ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100,
    preferred over ``b"coarse_labels"``) a list of N ints.

    Args:
        num_classes: when given, labels must lie in [0, num_classes).

    Returns:
        images uint8 (N, 3, 32, 32), labels int64 (N,).
    """
    path = Path(path)
    batch = load_pickle_restricted(path)
    if not isinstance(batch, dict):
        raise DataError(f"{path}: expected a pickled dict (a CIFAR batch), got {type(batch).__name__}")
    data = _get(batch, [b"data"], path)
    labels_raw = _get(batch, [b"fine_labels", b"labels"], path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: expected 'data' uint8 of shape (N, 3072), got {what}")
    if not 1 <= data.shape[0] <= 50_000:
        raise DataError(f"{path}: expected 1 to 50,000 images in a CIFAR file, got {data.shape[0]}")
    if not isinstance(labels_raw, (list, tuple, np.ndarray)):
        raise DataError(f"{path}: expected the labels as a list of ints, got {type(labels_raw).__name__}")
    labels: np.ndarray | None
    if isinstance(labels_raw, np.ndarray):
        labels = labels_raw
    else:  # a list of ints; anything else (nested lists, strings) would make numpy build other shapes or objects
        labels = np.asarray(labels_raw) if all(isinstance(v, (int, np.integer)) for v in labels_raw) else None
    if labels is None or labels.dtype.kind not in "iu":
        raise DataError(f"{path}: expected integer labels, got other values")
    labels = labels.astype(np.int64)
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise DataError(f"{path}: expected {data.shape[0]} labels (one per image), got shape {labels.shape}")
    if num_classes is not None:
        check_labels(labels, num_classes, path)
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    return images, labels


def read_cifar_meta(path: str | Path) -> list[str]:
    """Class names from CIFAR-10 ``batches.meta`` (``b"label_names"``) or CIFAR-100 ``meta``
    (``b"fine_label_names"``)."""
    path = Path(path)
    meta = load_pickle_restricted(path)
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a pickled dict (CIFAR meta), got {type(meta).__name__}")
    names = _get(meta, [b"fine_label_names", b"label_names"], path)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(f"{path}: expected a non-empty list of class names, got {names!r:.80}")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


# ----------------------------------------------------------------------------------------------------
# SVHN (.mat)
# ----------------------------------------------------------------------------------------------------

def read_svhn_mat(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits file (``train_32x32.mat`` / ``test_32x32.mat``).

    The file holds ``X`` uint8 (32, 32, 3, N) and ``y`` (N, 1) with labels 1..10, where 10 is the
    digit 0 (0 is accepted as well). The shapes the file declares are checked from the variables'
    headers before anything is read (``_check_svhn_header``): at least one image, and no more bytes
    than the file can hold; only ``X`` and ``y`` are read.

    Returns:
        images uint8 (N, 3, 32, 32), labels int64 (N,) in [0, 10) equal to the digit shown.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    mat = _read_mat(path, _check_svhn_header)
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: expected X of shape (32, 32, 3, N), got {x.shape}")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: expected X of dtype uint8, got {x.dtype}")
    n = x.shape[3]
    if y.size != n or (y.ndim == 2 and y.shape[1] != 1) or y.ndim > 2:
        raise DataError(f"{path}: expected y of shape ({n}, 1) (one label per image), got {y.shape}")
    labels = y.reshape(-1).astype(np.int64)
    bad = (labels < 0) | (labels > 10)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: label {int(labels[i])} at index {i} is outside 1..10 (10 = digit 0)")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))
    return images, labels % 10


Declared = dict[str, tuple[tuple[int, ...], str]]
"""A .mat file's variables as their headers declare them: name -> (shape, MATLAB class such as 'uint8')."""


def _read_mat(path: Path, check: Callable[[Path, Declared], None]) -> dict[str, Any]:
    """``X`` and ``y`` of the MATLAB v5 file ``path``, after ``check(path, {name: (shape, class)})`` has
    passed the shapes its headers declare; every failure of scipy's a ``DataError`` naming the file."""
    from scipy.io import loadmat, whosmat  # scipy is a dependency; imported here to keep package import light

    try:
        check(path, {name: (tuple(shape), cls) for name, shape, cls in whosmat(str(path))})
        return loadmat(str(path), variable_names=["X", "y"])
    except DataError:
        raise
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise DataError(f"{path}: unsupported .mat version ({exc}); expected a MATLAB v5 file") from exc
    except Exception as exc:  # scipy raises several types (MatReadError, ValueError, OSError, ...)
        raise DataError(f"{path}: corrupt or unreadable .mat file ({type(exc).__name__}: {exc})") from exc


def _check_svhn_header(path: Path, declared: Declared) -> None:
    """``DataError`` unless the headers declare ``X`` uint8 (32, 32, 3, N) with N >= 1 and at most
    ``MAT_MAX_RATIO`` x the file's size (+ ``MAT_SLACK``) bytes, and ``y`` of N labels."""
    if "X" not in declared or "y" not in declared:
        raise DataError(f"{path}: expected variables 'X' and 'y', found {sorted(declared)}")
    (shape, cls), (y_shape, _) = declared["X"], declared["y"]
    if len(shape) != 4 or shape[:3] != (32, 32, 3) or cls != "uint8":
        raise DataError(f"{path}: expected X uint8 of shape (32, 32, 3, N), the file declares {cls} {shape}")
    n, size = shape[3], path.stat().st_size
    if n == 0:
        raise DataError(f"{path}: holds 0 images (X of shape {shape}); the file is empty or damaged: replace "
                        "it with the dataset's original")
    if math.prod(shape) > MAT_MAX_RATIO * size + MAT_SLACK:
        raise DataError(f"{path}: declares {n} images ({math.prod(shape)} bytes) in a file of {size} bytes, "
                        "more than it can hold; the file is damaged: replace it with the dataset's original")
    if math.prod(y_shape) != n:
        raise DataError(f"{path}: expected y of shape ({n}, 1) (one label per image), the file declares {y_shape}")


# ----------------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------------

def list_class_dirs(split_dir: str | Path) -> list[str]:
    """Sorted names of the class sub-folders of ``split_dir`` (hidden folders ignored)."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"{split_dir}: folder not found (expected <root>/<split>/<class>/<image files>)")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir}: no class sub-folders (expected {split_dir}/<class>/<image files>)")
    return classes


def read_image_folder(split_dir: str | Path, classes: Sequence[str] | None = None,
                      image_size: int | tuple[int, int] | None = None,
                      decode: Callable[[Path, tuple[int, int] | None], np.ndarray] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read ``split_dir/<class>/<image>`` into arrays. Images are converted to RGB.

    Args:
        classes: class names defining the label order (the training split's); a sub-folder not in this
            list is an error. None = the sorted sub-folders of ``split_dir``.
        image_size: ``(H, W)`` or ``S`` for ``(S, S)``: resize every image (bilinear). None = all images
            must already share one size.
        decode: ``(path, size) -> (H, W, 3) uint8``; defaults to a Pillow decoder, which refuses an image
            whose header claims more than ``MAX_IMAGE_PIXELS`` before decoding it. (For tests / formats
            Pillow lacks.)

    Returns:
        images uint8 (N, 3, H, W), labels int64 (N,), class names. Files are ordered by class, then name.
    """
    split_dir = Path(split_dir)
    present = list_class_dirs(split_dir)
    if classes is None:
        classes = present
    classes = list(classes)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise DataError(f"{split_dir}: class folders {unknown} are not among the training classes {classes}")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise DataError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    decode = decode or _decode_pil
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"{split_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in any class folder")
    first = decode(files[0], size)
    images = np.empty((len(files), *first.shape), dtype=np.uint8)
    images[0] = first
    for i, f in enumerate(files[1:], start=1):
        img = decode(f, size)
        if img.shape != first.shape:
            raise DataError(f"{f}: image size {img.shape[1]}x{img.shape[0]} differs from {first.shape[1]}x"
                            f"{first.shape[0]} of {files[0]}; set image_size to resize all images")
        images[i] = img
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), np.asarray(labels, dtype=np.int64), classes


def _decode_pil(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """Decode one image file with Pillow -> (H, W, 3) uint8, resized to ``size`` = (H, W) if given. The size
    its header claims is checked first (``MAX_IMAGE_PIXELS``): nothing is decoded for a larger one."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise DataError("reading image folders needs Pillow: pip install pillow") from exc
    try:
        with warnings.catch_warnings():  # Pillow's own bomb warning as an error: refused as too large below
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                _check_image_size(path, im.size)
                im = im.convert("RGB")
                if size is not None and im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                return np.asarray(im, dtype=np.uint8)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: the image is larger than the {MAX_IMAGE_PIXELS} pixels an image folder may "
                        f"hold ({exc}); resize it, or remove it if it is damaged") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from exc


def _check_image_size(path: Path, size: tuple[int, int]) -> None:
    """``DataError`` unless the (width, height) an image's header claims has at most ``MAX_IMAGE_PIXELS``."""
    w, h = size
    if w * h > MAX_IMAGE_PIXELS:
        raise DataError(f"{path}: the header claims {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS} "
                        "an image folder may hold; resize the image, or remove it if it is damaged")


# ----------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------

def check_labels(labels: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Raise DataError naming ``path`` unless every label lies in [0, num_classes)."""
    if labels.size == 0:
        return
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: label {int(labels[i])} at index {i} is outside [0, {num_classes}) "
                        f"({int(bad.sum())} labels out of range)")
