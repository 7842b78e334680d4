"""Unpickling CIFAR's python batches without running code and without allocating what the file does not hold.

``find_class`` is the only route by which a pickle reaches a callable, so the unpickler resolves only the
few numpy constructors and plain containers a pickled dict of arrays needs; ``os.system``, ``eval`` and the
like are never looked up. Every admitted constructor is checked too, because numpy's own allocate
memory the file need not pay for: ``numpy.ndarray(shape)`` and ``_reconstruct(ndarray, shape, dtype)``
return uninitialised arrays of any shape, ``bytearray(n)`` n zero bytes. Here an array is built only
from bytes the file holds: ``_reconstruct`` accepts only numpy's empty start array, and the array's state
(shape, dtype, raw bytes) is checked - numeric dtype, at most ``MAX_ARRAY_BYTES``, byte count equal to
shape x itemsize - before numpy sees it. Length-prefixed opcodes are checked against the stream before
the C unpickler would allocate their buffers.
"""

from __future__ import annotations

import codecs
import importlib
import io
import math
import pickle
import pickletools
from collections.abc import Sequence
from typing import Any, Literal, cast

import numpy as np

MAX_ARRAY_BYTES = 50_000 * 3 * 32 * 32
"""The largest array a CIFAR file holds: CIFAR-100's training file, 50,000 images of 3,072 bytes."""
_KINDS = "biuf"  # bool, signed, unsigned, float: what pixels and labels can be


class Refused(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list, or gave an admitted one unsafe arguments."""


class Corrupt(ValueError):
    """The pickle stream is damaged: truncated, inconsistent sizes."""


def _numpy_attr(modules: Sequence[str], name: str) -> Any:
    """``name`` from the first importable numpy module in ``modules`` (numpy 2 moved core to _core)."""
    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {list(modules)} provides {name}")


def _check_dtype(dt: Any, where: str) -> np.dtype:
    if not isinstance(dt, np.dtype) or dt.kind not in _KINDS or dt.fields is not None or dt.subdtype is not None:
        raise Refused(f"refusing to unpickle {where} of dtype {dt!s:.40}: only numeric arrays are allowed")
    return dt


def _checked_dtype(*args: Any) -> np.dtype:
    """``numpy.dtype(*args)`` for numeric dtypes only: pixel and label arrays never hold objects."""
    if not args or not isinstance(args[0], (str, bytes)) or len(args[0]) > 8:
        raise Refused("refusing to unpickle a numpy.dtype that is not a short type code")
    dt = np.dtype(*args)
    if dt.hasobject:
        raise Refused(f"refusing to unpickle an object dtype ({dt})")
    return _check_dtype(dt, "an array")


class _NdarrayName:
    """What the pickle's ``numpy.ndarray`` resolves to: a marker for ``_reconstruct``, never called."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise Refused("refusing to call numpy.ndarray from a pickle (it allocates uninitialised memory)")


_NDARRAY = _NdarrayName()


class _PickledArray(np.ndarray):
    """An array being unpickled: its state is checked before numpy copies it in."""

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 5):
            raise Refused("refusing to unpickle an array state of unexpected form")
        _, shape, dtype, _, raw = state
        if not (isinstance(shape, tuple) and len(shape) <= 4
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
            raise Refused(f"refusing to unpickle an array of shape {shape!s:.60}")
        dt = _check_dtype(dtype, "an array")
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > MAX_ARRAY_BYTES:
            raise Refused(f"refusing to unpickle an array of shape {shape} ({nbytes} bytes): more than the "
                          f"{MAX_ARRAY_BYTES} bytes of the largest CIFAR array")
        if not isinstance(raw, (bytes, bytearray)):
            raise Refused(f"refusing to unpickle array data of type {type(raw).__name__} (expected bytes)")
        if len(raw) != nbytes:
            raise Corrupt(f"an array of shape {shape} and dtype {dt} needs {nbytes} bytes, the file holds "
                          f"{len(raw)}")
        super().__setstate__(state)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``, only as numpy's pickles call it: an empty start array, filled by BUILD."""
    if subtype is not _NDARRAY or shape != (0,):
        raise Refused(f"refusing to unpickle _reconstruct({type(subtype).__name__}, {shape!s:.40}): numpy "
                      "pickles start from an empty array")
    return _PickledArray((0,), dtype=np.uint8)


def _scalar(dtype: Any, raw: Any = None) -> Any:
    dt = _check_dtype(dtype, "a scalar")
    if not isinstance(raw, bytes) or len(raw) != dt.itemsize:
        raise Corrupt(f"a {dt} scalar needs {dt.itemsize} bytes")
    return np.frombuffer(raw, dtype=dt)[0]


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """Protocol 5 arrays: a view of bytes the file holds, reshaped (numpy checks the size)."""
    dt = _check_dtype(dtype, "an array")
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise Refused(f"refusing to unpickle array data of type {type(buf).__name__}")
    try:
        # numpy's stubs leave PickleBuffer (a buffer-protocol object) out of frombuffer's accepted types
        flat = np.frombuffer(buf, dtype=dt)  # type: ignore[arg-type]
        # ``order`` comes from the file: numpy rejects anything but "C", "F", "A" with a ValueError
        return flat.reshape(shape, order=cast(Literal["A", "C", "F"], order))
    except (ValueError, TypeError) as e:
        raise Corrupt(f"array data does not match shape {shape!s:.40} ({type(e).__name__})") from None


def _bytearray(*args: Any) -> bytearray:
    """``bytearray`` of given bytes or text only: ``bytearray(n)`` would allocate n bytes from one number."""
    if not args or not isinstance(args[0], (bytes, str)):
        raise Refused("refusing to unpickle bytearray(size): only bytearray(bytes) is allowed")
    return bytearray(*args)


def _bytes(*args: Any) -> bytes:
    """``bytes()`` (how protocol 2 writes ``b""``) or ``bytes(text, encoding)``; never ``bytes(n)``."""
    if args and not isinstance(args[0], (bytes, str)):
        raise Refused("refusing to unpickle bytes(size): only bytes() or bytes(text, encoding) is allowed")
    return bytes(*args)


def _latin1_encode(text: str, encoding: str = "utf-8", *rest: Any) -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes at protocol <= 2; only the latin-1 codec is admitted."""
    if rest or not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise Refused(f"refusing to unpickle _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin-1")


def _safe_globals() -> dict[tuple[str, str], Any]:
    """The (module, name) pairs a pickled dict of numpy arrays, lists and strings can need."""
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _checked_dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        table[(mod, "_reconstruct")] = _reconstruct
        table[(mod, "scalar")] = _scalar
    for mod in ("numpy._core.numeric", "numpy.core.numeric"):
        table[(mod, "_frombuffer")] = _frombuffer
    # Plain containers; "__builtin__" is how Python 2 pickles name the module.
    for mod in ("builtins", "__builtin__"):
        for cls in (list, dict, tuple, set, frozenset):
            table[(mod, cls.__name__)] = cls
        table[(mod, "bytearray")] = _bytearray
        table[(mod, "bytes")] = _bytes
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only checked numpy constructors, dtypes and plain containers."""

    def __init__(self, file: io.BufferedIOBase, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = _safe_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise Refused(f"refusing to unpickle {module}.{name}") from None


def _plain(obj: Any, depth: int = 0) -> Any:
    """``obj`` with every array under construction turned into a plain ndarray (dicts, lists, tuples)."""
    if depth > 20:
        raise Refused("refusing to unpickle containers nested more than 20 deep")
    if isinstance(obj, _PickledArray):
        return np.asarray(obj)
    if isinstance(obj, dict):
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v, depth + 1) for v in obj)
    return obj


def unpickle_restricted(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (Python 2 ``str`` -> ``bytes``).

    Raises:
        Refused: a name outside the allow-list or an unsafe argument to an admitted one.
        Corrupt: a truncated stream, or sizes that do not add up.
    """
    try:  # a length-prefixed opcode longer than the stream would make the C unpickler allocate it first
        for _ in pickletools.genops(data):
            pass
    except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError) as e:
        raise Corrupt(f"corrupt or truncated pickle stream ({type(e).__name__})") from None
    try:
        return _plain(RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load())
    except (Refused, Corrupt):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, RecursionError) as e:
        raise Corrupt(f"corrupt or truncated pickle ({type(e).__name__})") from None
