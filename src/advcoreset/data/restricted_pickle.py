"""Unpickling CIFAR's python batches without running code and without allocating what the file does not hold.

``find_class`` is the only route by which a pickle reaches a callable, so the unpickler resolves only the
few numpy constructors and plain containers a pickled dict of arrays needs; ``os.system``, ``eval`` and the
like are never looked up. Every admitted constructor is checked too, because numpy's own allocate
memory the file need not pay for: ``numpy.ndarray(shape)`` and ``_reconstruct(ndarray, shape, dtype)``
return uninitialised arrays of any shape, ``bytearray(n)`` n zero bytes. Here an array is built only
from bytes the file holds: ``_reconstruct`` accepts only numpy's empty start array, and the array's state
(shape, dtype, raw bytes) is checked - numeric dtype, at most ``MAX_ARRAY_BYTES``, byte count equal to
shape x itemsize - before numpy sees it. Length-prefixed opcodes are checked against the stream before
the C unpickler would allocate their buffers, and so are memo indices: the C unpickler sizes its memo table
by the largest index it is given (16 bytes per index), so one ``LONG_BINPUT`` of five bytes could claim
gigabytes; an index is admitted only up to the number of opcodes before it, as every pickler writes them.

Nothing may build more than the file holds: every admitted constructor that copies (an array's ``BUILD``,
``bytes``, ``bytearray``, ``_codecs.encode``, ``list``/``tuple``/``dict``/``set``) spends from one budget of
``BUILD_FACTOR`` x the file's size (plus ``BUILD_SLACK``), so a small file that names one large object many
times through the memo is refused, and shared objects stay shared when the result is unwrapped. Text is
turned into bytes only with the latin-1 codec, the one pickles of bytes use; any other codec name,
unknown or not, is refused by name (it is never looked up).
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
BUILD_FACTOR = 2
"""Bytes the admitted constructors may build per byte of the file: an array from latin-1 text is built twice
(the text's bytes, then the array), and its text takes at least a byte of the file per byte of data."""
BUILD_SLACK = 1 << 20
"""Bytes every file may build beyond ``BUILD_FACTOR`` x its size (small files' containers)."""
_ITEM_BYTES = 64
"""What one element of a container built by ``list()``, ``dict()``... is counted as (a pointer and an object)."""
_LATIN1 = frozenset({"latin1", "latin", "iso88591", "l1", "cp819", "ibm819", "isoir100", "csisolatin1", "8859"})
"""Spellings of the latin-1 codec, lower case without '-' and '_' (those Python's codec registry knows)."""


class Refused(pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list, or gave an admitted one unsafe arguments."""


class Corrupt(ValueError):
    """The pickle stream is damaged: truncated, inconsistent sizes."""


class _Budget:
    """The bytes the admitted constructors may still build while one file is unpickled."""

    def __init__(self, file_bytes: int) -> None:
        self.file_bytes = file_bytes
        self.limit = BUILD_FACTOR * file_bytes + BUILD_SLACK
        self.left = self.limit

    def spend(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` about to be built for ``what``; ``Refused`` once more than ``limit`` in all."""
        if nbytes > self.left:
            raise Refused(f"refusing to unpickle {what}: the file would build more than {self.limit} bytes, "
                          f"more than its {self.file_bytes} bytes hold (a small file naming one large object "
                          "many times)")
        self.left -= nbytes


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

    budget: _Budget

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
        self.budget.spend(nbytes, f"an array of shape {shape}")
        super().__setstate__(state)


def _reconstruct_into(budget: _Budget) -> Any:
    """numpy's ``_reconstruct``, only as numpy's pickles call it: an empty start array, filled by BUILD, whose
    bytes are counted in ``budget``."""
    def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _NDARRAY or shape != (0,):
            raise Refused(f"refusing to unpickle _reconstruct({type(subtype).__name__}, {shape!s:.40}): numpy "
                          "pickles start from an empty array")
        arr = _PickledArray((0,), dtype=np.uint8)
        arr.budget = budget
        return arr
    return _reconstruct


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


def _check_codec(encoding: Any, what: str) -> None:
    """``Refused`` unless ``encoding`` names latin-1 (as str, or as bytes in a Python 2 pickle); the name is
    compared, never looked up, so no codec module is imported and an unknown name is no LookupError."""
    name = encoding.decode("latin-1") if isinstance(encoding, bytes) else encoding
    if not (isinstance(name, str) and name.lower().replace("-", "").replace("_", "") in _LATIN1):
        raise Refused(f"refusing to unpickle {what} with encoding {encoding!r:.40}: pickles of bytes use only "
                      "latin-1")


def _to_bytes(cls: type[bytes] | type[bytearray], budget: _Budget) -> Any:
    """``cls(data)`` of bytes or ``cls(text, latin-1)``, counted in ``budget``: never ``cls(n)`` (n zero bytes
    from one number) and no other codec. ``bytes()`` is how protocol 2 writes ``b""``."""
    name = cls.__name__

    def build(*args: Any) -> Any:
        if len(args) > 2 or (args and not isinstance(args[0], (bytes, bytearray, str))):
            raise Refused(f"refusing to unpickle {name}(size): only {name}(bytes) or {name}(text, 'latin-1') is "
                          "allowed")
        if len(args) == 2 or (args and isinstance(args[0], str)):
            _check_codec(args[1] if len(args) == 2 else None, name)
            budget.spend(len(args[0]), f"{name} of {len(args[0])} bytes")
            return cls(args[0], "latin-1")
        if args:
            budget.spend(len(args[0]), f"{name} of {len(args[0])} bytes")
        return cls(*args)
    return build


def _latin1_encode(budget: _Budget) -> Any:
    """``_codecs.encode`` as Python 3 writes bytes at protocol <= 2 (text, 'latin1'), counted in ``budget``."""
    def encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
        _check_codec(encoding, "_codecs.encode")
        if rest or not isinstance(text, str):
            raise Refused(f"refusing to unpickle _codecs.encode of a {type(text).__name__} (expected text)")
        budget.spend(len(text), f"_codecs.encode of {len(text)} characters")
        return codecs.encode(text, "latin-1")
    return encode


def _container(cls: type, budget: _Budget) -> Any:
    """``cls()`` or ``cls(items)`` of a sized object, its items counted in ``budget`` before they are copied."""
    def build(*args: Any) -> Any:
        if len(args) > 1 or (args and not hasattr(args[0], "__len__")):
            raise Refused(f"refusing to unpickle {cls.__name__} of {len(args)} arguments or of an unsized object")
        if args:
            budget.spend(len(args[0]) * _ITEM_BYTES, f"a {cls.__name__} of {len(args[0])} items")
        return cls(*args)
    return build


def _safe_globals(budget: _Budget) -> dict[tuple[str, str], Any]:
    """The (module, name) pairs a pickled dict of numpy arrays, lists and strings can need, each building
    from ``budget``."""
    table: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _checked_dtype,
        ("_codecs", "encode"): _latin1_encode(budget),
    }
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        table[(mod, "_reconstruct")] = _reconstruct_into(budget)
        table[(mod, "scalar")] = _scalar
    for mod in ("numpy._core.numeric", "numpy.core.numeric"):
        table[(mod, "_frombuffer")] = _frombuffer
    # Plain containers; "__builtin__" is how Python 2 pickles name the module.
    for mod in ("builtins", "__builtin__"):
        for cls in (list, dict, tuple, set, frozenset):
            table[(mod, cls.__name__)] = _container(cls, budget)
        table[(mod, "bytearray")] = _to_bytes(bytearray, budget)
        table[(mod, "bytes")] = _to_bytes(bytes, budget)
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only checked numpy constructors, dtypes and plain containers, which together
    build at most ``BUILD_FACTOR`` x ``file_bytes`` (the size of the stream) + ``BUILD_SLACK`` bytes."""

    def __init__(self, file: io.BufferedIOBase, file_bytes: int = 0, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed = _safe_globals(_Budget(file_bytes))

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise Refused(f"refusing to unpickle {module}.{name}") from None


def _plain(obj: Any, seen: dict[int, Any], depth: int = 0) -> Any:
    """``obj`` with every array under construction turned into a plain ndarray (dicts, lists, tuples). An
    object the pickle shares (one memo entry named many times) is converted once and stays shared in the
    result: unwrapping never multiplies what the file built."""
    if depth > 20:
        raise Refused("refusing to unpickle containers nested more than 20 deep")
    if id(obj) in seen:
        return seen[id(obj)]
    out: Any
    if isinstance(obj, _PickledArray):
        out = np.asarray(obj)
    elif isinstance(obj, dict):
        out = {_plain(k, seen, depth + 1): _plain(v, seen, depth + 1) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [_plain(v, seen, depth + 1) for v in obj]
    elif isinstance(obj, tuple):
        out = tuple(_plain(v, seen, depth + 1) for v in obj)
    else:
        return obj
    seen[id(obj)] = out
    return out


_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})


def _check_stream(data: bytes) -> None:
    """``Corrupt`` for a stream the C unpickler would over-allocate on: a length-prefixed opcode longer than
    the stream (it allocates the length first) or a memo index beyond the opcodes before it (it sizes its memo
    table by the largest index)."""
    try:
        for n, (op, arg, pos) in enumerate(pickletools.genops(data)):
            if op.name in _MEMO_PUTS and isinstance(arg, int) and not 0 <= arg <= n:
                raise Corrupt(f"corrupt pickle stream: memo index {arg} at byte {pos} is beyond the {n} opcodes "
                              "before it")
    except Corrupt:
        raise
    except (ValueError, EOFError, pickle.UnpicklingError, UnicodeDecodeError) as e:
        raise Corrupt(f"corrupt or truncated pickle stream ({type(e).__name__})") from None


def unpickle_restricted(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (Python 2 ``str`` -> ``bytes``), building at most
    ``BUILD_FACTOR`` x ``len(data)`` + ``BUILD_SLACK`` bytes through its constructors.

    Raises:
        Refused: a name outside the allow-list, an unsafe argument to an admitted one (a codec other than
            latin-1, a size), or more built than the file holds.
        Corrupt: a truncated stream, sizes that do not add up, or a memo index beyond the stream.
    """
    _check_stream(data)
    try:
        return _plain(RestrictedUnpickler(io.BytesIO(data), len(data), encoding="bytes").load(), {})
    except (Refused, Corrupt):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            LookupError, OverflowError, MemoryError, RecursionError) as e:
        raise Corrupt(f"corrupt or truncated pickle ({type(e).__name__})") from None
