"""Writers of hostile and damaged input files for tests/cli/test_bad_input_errors.py and
tests/data/test_data_formats.py (tiny, made in tmp_path)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import torch


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """IDX encoding: 0x0000, type code, ndim, big-endian uint32 dims, payload."""
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def write_fashion(root: Path, n: int = 40, n_test: int = 20) -> Path:
    """A valid, tiny Fashion-MNIST folder: (n, 28, 28) training and (n_test, 28, 28) test images."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, m in (("train", n), ("t10k", n_test)):
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(
            idx_bytes(rng.integers(0, 256, (m, 28, 28), dtype=np.uint8)))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(np.arange(m, dtype=np.uint8) % 10))
    return root


class SystemCall:
    """Unpickling this runs ``os.system(command)``: a live payload."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class Reduce:
    """Pickles as ``func(*args)`` (with ``state`` applied by BUILD when given)."""

    def __init__(self, func, args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _reconstruct():
    from numpy._core.multiarray import _reconstruct as r

    return r


def _py2_names(data: bytes) -> bytes:
    return data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_batch(n: int = 2, labels: list[int] | None = None, data: object = None) -> bytes:
    rng = np.random.default_rng(1)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8) if data is None else data,
             b"labels": list(range(n)) if labels is None else labels}
    return _py2_names(pickle.dumps(batch, protocol=2))


CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(root: Path, classes: int = 10) -> Path:
    """A valid, tiny CIFAR-10 python folder (2 images per batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for f in CIFAR_FILES:
        (folder / f).write_bytes(cifar_batch())
    meta = {b"label_names": [f"c{i}".encode() for i in range(classes)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def hostile_batches(marker: Path) -> dict[str, bytes]:
    """CIFAR ``data_batch_1`` contents that must be refused before any allocation or code runs."""
    r = _reconstruct()
    short_state = (1, (10000, 3072), np.dtype(np.uint8), False, b"\0" * 10)
    big_state = (1, (200000, 3072), np.dtype(np.uint8), False, b"")
    obj_state = (1, (2,), np.dtype(object), False, [1, 2])
    batch = lambda data, labels=None: _py2_names(pickle.dumps(  # noqa: E731
        {b"data": data, b"labels": labels if labels is not None else [0]}, protocol=2))
    return {
        "system": pickle.dumps({b"data": SystemCall(f"touch {marker}"), b"labels": [0]}, protocol=2),
        "reconstruct_big": batch(Reduce(r, (np.ndarray, (200000, 3072), b"B"))),
        "reconstruct_heap": batch(Reduce(r, (np.ndarray, (2, 3072), b"B"))),
        "ndarray_call": batch(Reduce(np.ndarray, ((10000, 3072),))),
        "bytearray_size": batch(Reduce(bytearray, (614_400_000,))),
        "short_raw": batch(Reduce(r, (np.ndarray, (0,), b"b"), short_state)),
        "big_state": batch(Reduce(r, (np.ndarray, (0,), b"b"), big_state)),
        "object_array": batch(Reduce(r, (np.ndarray, (0,), b"b"), obj_state)),
        "bytearray8_huge": b"\x80\x05\x96" + struct.pack("<Q", 290_000_000) + b"\0" * 8 + b".",
        "binbytes8_huge": b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b".",
        "truncated": cifar_batch()[:-30],
        "not_a_dict": pickle.dumps([1, 2, 3], protocol=2),
        "labels_range": cifar_batch(labels=[0, 12]),
        "labels_count": cifar_batch(labels=[0]),
        "labels_strings": cifar_batch(labels=["a", "b"]),
        "data_shape": cifar_batch(data=np.zeros((2, 100), np.uint8)),
        "data_float": cifar_batch(data=np.zeros((2, 3072), np.float32)),
        "empty": cifar_batch(n=0, data=np.zeros((0, 3072), np.uint8), labels=[]),
        "eval_call": pickle.dumps([Reduce(eval, (f"open({str(marker)!r}, 'w')",))], protocol=2),
        "gzip_garbage": b"\x1f\x8b" + b"\0" * 20,
        **{f"codec_{k}": v for k, v in codec_pickles().items()},
        **{f"alloc_{k}": v for k, v in allocating_pickles().items()},
    }


def codec_pickles() -> dict[str, bytes]:
    """CIFAR batches whose byte strings name a codec other than latin-1: unknown ones, a bytes-to-bytes one,
    a real text codec, one of another type, through ``_codecs.encode``, ``bytes`` and ``bytearray``."""
    good = cifar_batch()
    assert good.count(b"latin1") >= 1
    text = b"X\x01\x00\x00\x00x"  # BINUNICODE 'x'
    return {
        "unknown": good.replace(b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00nocodc"),
        "long_name": good.replace(b"X\x06\x00\x00\x00latin1", b"X\x14\x00\x00\x00" + b"no-such-codec-at-all"),
        "bytes_to_bytes": good.replace(b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00zlib__"),
        "utf32": good.replace(b"X\x06\x00\x00\x00latin1", b"X\x06\x00\x00\x00utf-32"),
        "number": good.replace(b"X\x06\x00\x00\x00latin1", b"K\x05"),
        "bytes_call": b"\x80\x02c__builtin__\nbytes\n" + text + b"X\x06\x00\x00\x00nocodc\x86R.",
        "bytearray_call": b"\x80\x02c__builtin__\nbytearray\n" + text + b"X\x05\x00\x00\x00rot13\x86R.",
        "py2_name": b"\x80\x02c_codecs\nencode\n" + text + b"U\x06nocodc\x86R.",
    }


def allocating_pickles(index: int = 8_000_000) -> dict[str, bytes]:
    """Small pickles that made the unpickler allocate far more than their size: a memo index (the C unpickler
    sizes its memo table by it), one large object named many times through the memo (an array's bytes, a
    list copied by ``list()``), a DAG of shared lists that unwrapping expanded into a tree."""
    r = _reconstruct()
    raw = b"\1" * 9000
    state = (1, (9000,), np.dtype(np.uint8), False, raw)
    items = list(range(2000))
    dag = b"\x80\x02]q\x00" + b"".join(b"(" + (b"h" + bytes([k - 1])) * 4 + b"lq" + bytes([k]) for k in range(1, 11))
    return {
        "memo_binput": b"\x80\x02}r" + struct.pack("<I", index) + b".",
        "memo_put_text": b"(dp" + str(index).encode() + b"\n.",
        "memo_late": cifar_batch()[:-1].replace(b"}q\x00", b"}r" + struct.pack("<I", index), 1) + b".",
        "shared_array_bytes": pickle.dumps({b"data": [Reduce(r, (np.ndarray, (0,), b"b"), state)
                                                      for _ in range(2000)]}, protocol=4),
        "list_copies": pickle.dumps({b"data": [Reduce(list, (items,)) for _ in range(1500)]}, protocol=4),
        "shared_dag": dag + b".",
    }


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a few bytes of pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def svhn_mat(path: Path, n: int, declare: int | None = None) -> Path:
    """An SVHN ``.mat`` of ``n`` images (X (32, 32, 3, n) uint8, y (n, 1)), stored compressed. ``declare``:
    rewrite X's header to claim that many images, with a data size to match, as a damaged file can."""
    from scipy.io import savemat

    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    savemat(path, {"X": x, "y": np.ones((n, 1), np.uint8)}, do_compression=True)
    if declare is not None:
        path.write_bytes(_declare_images(path.read_bytes(), n, declare))
    return path


def _declare_images(mat: bytes, n: int, declare: int) -> bytes:
    """``mat`` (a v5 file whose first variable is a compressed X of ``n`` images) claiming ``declare`` images."""
    size = struct.unpack("<I", mat[132:136])[0]  # the first element after the 128-byte header
    inner = bytearray(zlib.decompress(mat[136:136 + size]))
    dims, data = struct.pack("<4i", 32, 32, 3, n), struct.pack("<II", 2, 3072 * n)
    i, j = inner.index(dims), inner.index(data)
    inner[i:i + 16] = struct.pack("<4i", 32, 32, 3, declare)
    inner[j:j + 8] = struct.pack("<II", 2, 3072 * declare)
    packed = zlib.compress(bytes(inner))
    return mat[:128] + struct.pack("<II", 15, len(packed)) + packed + mat[136 + size:]


def malicious_torch_file(path: Path, marker: Path) -> Path:
    """A torch.save file whose unpickling would run ``touch marker``."""
    torch.save({"model": SystemCall(f"touch {marker}")}, path)
    return path


def truncated_copy(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def corrupt_safetensors(path: Path) -> Path:
    path.write_bytes(struct.pack("<Q", 1 << 50) + b"{}")
    return path


def gz(path: Path) -> Path:
    path.write_bytes(gzip.compress(path.read_bytes()))
    return path
