"""Readers for the standard on-disk formats of the image datasets, each returning numpy arrays.

Every reader validates what it reads (magic numbers, byte counts, shapes, image/label counts) and
raises :class:`DataError` naming the file, what was expected and what was found. Images come back
as ``uint8`` arrays laid out ``(N, C, H, W)``; labels as ``int64`` ``(N,)``.

CIFAR's python batches are pickles. They are read with :class:`RestrictedUnpickler`, which
admits only the few numpy constructors those files need, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class DataError(ValueError):
    """A dataset file is missing, truncated or corrupt. The message names the file and what was expected."""


class _Refused(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (or a disallowed argument to one)."""


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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
"""File suffixes (lower case) read as images by :func:`read_image_folder`."""


def _read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number (whatever its suffix)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc


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
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
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

def _numpy_attr(modules: Sequence[str], name: str) -> Any:
    """``name`` from the first importable numpy module in ``modules`` (numpy 2 moved core to _core)."""
    import importlib

    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {list(modules)} provides {name}")


def _checked_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype(*args)`` that refuses object dtypes: pixel and label arrays never hold objects."""
    dt = np.dtype(*args)
    if dt.hasobject:
        raise _Refused(f"refusing to unpickle an object dtype ({dt})")
    return dt


def _latin1_encode(text: str, encoding: str = "utf-8", *rest: Any) -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes at protocol <= 2; only the latin-1 codec is admitted."""
    if rest or codecs.lookup(encoding).name != "iso8859-1":
        raise _Refused(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin-1")


def _safe_globals() -> dict[tuple[str, str], Any]:
    """The (module, name) pairs a pickled dict of numpy arrays, lists and strings can need."""
    core = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")
    reconstruct = _numpy_attr(core, "_reconstruct")
    scalar = _numpy_attr(core, "scalar")
    frombuffer = _numpy_attr(numeric, "_frombuffer")
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _checked_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in core:
        table[(mod, "_reconstruct")] = reconstruct
        table[(mod, "scalar")] = scalar
    for mod in numeric:
        table[(mod, "_frombuffer")] = frombuffer
    # Plain containers; "__builtin__" is how Python 2 pickles name the module.
    for mod in ("builtins", "__builtin__"):
        for cls in (list, dict, tuple, set, frozenset, bytearray):
            table[(mod, cls.__name__)] = cls
    return table


# What a damaged stream raises inside pickle / numpy (the C unpickler is not consistent about it).
_CORRUPT_PICKLE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                   KeyError, MemoryError)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy arrays, dtypes and plain containers.

    ``find_class`` is the only route by which a pickle reaches a callable, so refusing every other
    name means a malicious file's ``__reduce__`` payload (``os.system``, ``eval``, ...) is never
    looked up, let alone called.
    """

    def __init__(self, file: io.BufferedIOBase, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"refusing to unpickle {module}.{name}") from None


def load_pickle_restricted(path: str | Path) -> Any:
    """Unpickle ``path`` (gzipped or raw) with :class:`RestrictedUnpickler`.

    Python 2 ``str`` objects come back as ``bytes`` (``encoding="bytes"``), as in the CIFAR files.

    Raises:
        DataError: missing file, a name outside the allow-list ("refusing to unpickle X"), or a
            truncated / corrupt pickle stream.
    """
    path = Path(path)
    data = _read_bytes(path)
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _Refused as exc:
        raise DataError(f"{path}: {exc}") from exc
    except _CORRUPT_PICKLE as exc:
        raise DataError(f"{path}: corrupt or truncated pickle ({type(exc).__name__}: {exc})") from exc


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
    data = np.asarray(_get(batch, [b"data"], path))
    labels_raw = _get(batch, [b"fine_labels", b"labels"], path)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected 'data' uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    labels = np.asarray(labels_raw)
    if labels.dtype.kind not in "iu":
        raise DataError(f"{path}: expected integer labels, got {labels.dtype} values")
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
    digit 0 (0 is accepted as well).

    Returns:
        images uint8 (N, 3, 32, 32), labels int64 (N,) in [0, 10) equal to the digit shown.
    """
    from scipy.io import loadmat  # scipy is a dependency; imported here to keep package import light

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        mat = loadmat(str(path))
    except NotImplementedError as exc:  # MATLAB v7.3 (HDF5) files
        raise DataError(f"{path}: unsupported .mat version ({exc}); expected a MATLAB v5 file") from exc
    except Exception as exc:  # scipy raises several types (MatReadError, ValueError, OSError, ...)
        raise DataError(f"{path}: corrupt or unreadable .mat file ({type(exc).__name__}: {exc})") from exc
    for key in ("X", "y"):
        if key not in mat:
            found = sorted(k for k in mat if not k.startswith("__"))
            raise DataError(f"{path}: expected variables 'X' and 'y', found {found}")
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
        decode: ``(path, size) -> (H, W, 3) uint8``; defaults to a Pillow decoder. (For tests / formats
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
    """Decode one image file with Pillow -> (H, W, 3) uint8, resized to ``size`` = (H, W) if given."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:
        raise DataError("reading image folders needs Pillow: pip install pillow") from exc
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from exc


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
