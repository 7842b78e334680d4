"""Dataset readers: round trips through tiny files in each real on-disk format, and the corrupt cases."""

from __future__ import annotations

import gzip
import os
import pickle
import pickletools
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_files import allocating_pickles, codec_pickles, png_header, svhn_mat

from advcoreset.data.datasets import (
    DATASETS,
    DataError,
    ImageArrays,
    dataset_stats,
    default_augment,
    digits_split,
    load_dataset,
)
from advcoreset.data.formats import (
    MAX_IMAGE_PIXELS,
    load_pickle_restricted,
    read_cifar_batch,
    read_idx,
    read_image_folder,
    read_svhn_mat,
)

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
SMALL_PEAK = 8 * 2**20
"""Most Python memory a refused small file may make the reader allocate (tracemalloc's peak): what such a
file declares (a memo table, copies of one shared object, a decompressed size) runs to tens of MB or more."""


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """Trace Python's allocations inside the block; the yielded function gives their peak in bytes."""
    tracemalloc.start()
    peak = [0]
    try:
        yield lambda: peak[0]
    finally:
        peak[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def refused_one_line(call: Callable[[], object], path: Path, match: str | None = None) -> str:
    """``call()`` raises a one-line ``DataError`` that names ``path`` (and matches ``match``); its message."""
    with pytest.raises(DataError, match=match) as info:
        call()
    message = str(info.value)
    assert str(path) in message and len(message.splitlines()) == 1, message
    return message


# ----------------------------------------------------------------------------------------------------
# Writers for the real formats
# ----------------------------------------------------------------------------------------------------

def idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding: 0x0000, type code, ndim, big-endian uint32 dims, big-endian payload."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


class Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str`` (BINSTRING opcodes), as the original CIFAR files do."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_str8(self, obj: str | bytes) -> None:
        data = obj.encode("latin-1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<I", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = _save_str8
    dispatch[str] = _save_str8


def py2_pickle(obj: object) -> bytes:
    """Protocol 2 pickle laid out like one written by Python 2's cPickle with numpy 1.x."""
    import io

    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------
# IDX
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 4), dtype=np.uint8)
    out = read_idx(write_idx(tmp_path / "x-idx3-ubyte", images, gz))
    assert out.dtype == np.uint8 and out.shape == (7, 5, 4)
    np.testing.assert_array_equal(out, images)
    # Multi-byte types are big-endian on disk and must come back in native order.
    ints = rng.integers(-(2**31), 2**31 - 1, size=(3, 2), dtype=np.int32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "i", ints, gz)), ints)
    floats = rng.standard_normal(6).astype(np.float32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f", floats, gz)), floats)


def test_idx_truncated_and_padded(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((4, 3, 3), dtype=np.uint8))  # 16-byte header + 36 payload bytes
    path = tmp_path / "trunc-idx3-ubyte"
    path.write_bytes(data[:-5])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value) and "36" in str(info.value) and "31" in str(info.value)
    path.write_bytes(data + b"\0")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(path)
    gz = tmp_path / "trunc.gz"
    gz.write_bytes(gzip.compress(data)[:-12])
    with pytest.raises(DataError, match="gzip") as info:
        read_idx(gz)
    assert str(gz) in str(info.value)
    path.write_bytes(data[:10])  # header says 3 dims (16 bytes) but only 10 present
    with pytest.raises(DataError, match="header"):
        read_idx(path)


def test_idx_wrong_magic_and_type(tmp_path: Path) -> None:
    data = bytearray(idx_bytes(np.zeros((2, 2), dtype=np.uint8)))
    path = tmp_path / "bad"
    path.write_bytes(b"\x01" + bytes(data[1:]))
    with pytest.raises(DataError, match="magic") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    data[2] = 0x42
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="0x42"):
        read_idx(path)


def test_idx_sizes_whose_product_overflows_int64_are_refused(tmp_path: Path) -> None:
    """Four sizes of 2**16 multiply to 2**64, which numpy's int64 product wrapped to 0 payload bytes."""
    path = tmp_path / "x-idx3-ubyte"
    for sizes in ([65536] * 4, [2**32 - 1] * 3):
        path.write_bytes(bytes([0, 0, 8, len(sizes)]) + struct.pack(f">{len(sizes)}I", *sizes))
        refused_one_line(lambda: read_idx(path), path, "header announces shape")


def test_idx_missing_file_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope-idx1-ubyte"
    with pytest.raises(DataError, match="not found") as info:
        read_idx(missing)
    assert str(missing) in str(info.value)


def _write_mnist_tree(folder: Path, n_train: int, n_test: int, gz: bool,
                      rng: np.random.Generator) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{prefix}-images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{prefix}-labels"] = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", arrays[f"{prefix}-images"], gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", arrays[f"{prefix}-labels"], gz)
    return arrays


@pytest.mark.parametrize(("name", "sub", "gz"),
                         [("mnist", "", True), ("fashion-mnist", "FashionMNIST/raw", False)])
def test_load_idx_datasets(tmp_path: Path, name: str, sub: str, gz: bool) -> None:
    arrays = _write_mnist_tree(tmp_path / sub, 12, 5, gz, np.random.default_rng(1))
    for train, prefix, n in ((True, "train", 12), (False, "t10k", 5)):
        ds = load_dataset(name, str(tmp_path), train=train)
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.uint8
        assert ds.labels.dtype == torch.int64 and ds.shape == (1, 28, 28) and ds.num_classes == 10
        np.testing.assert_array_equal(ds.images[:, 0].numpy(), arrays[f"{prefix}-images"])
        np.testing.assert_array_equal(ds.labels.numpy(), arrays[f"{prefix}-labels"])
    assert (load_dataset(name, tmp_path, True).classes[0] == "T-shirt/top") == (name == "fashion-mnist")


def test_idx_dataset_label_range_count_and_missing(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _write_mnist_tree(tmp_path, 6, 3, True, rng)
    labels = np.array([0, 1, 2, 10, 3, 4], dtype=np.uint8)
    lab_path = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels, gz=True)
    with pytest.raises(DataError, match=r"label 10 at index 3") as info:
        load_dataset("mnist", tmp_path, train=True)
    assert str(lab_path) in str(info.value)
    write_idx(lab_path, labels[:5] % 10, gz=True)
    with pytest.raises(DataError, match="expected 6 labels"):
        load_dataset("mnist", tmp_path, train=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as info:
        load_dataset("mnist", empty, train=True)
    assert str(empty) in str(info.value)


# ----------------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------------

def _write_cifar10(folder: Path, rng: np.random.Generator, per_batch: int = 3) -> dict[str, dict]:
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
                 b"data": cifar_images(rng, per_batch),
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(py2_pickle(batch))
        batches[name] = batch
    meta = {b"num_cases_per_batch": per_batch, b"num_vis": 3072,
            b"label_names": [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                                  "frog", "horse", "ship", "truck")]}
    (folder / "batches.meta").write_bytes(py2_pickle(meta))
    return batches


def test_cifar10_py2_pickles_round_trip(tmp_path: Path) -> None:
    batches = _write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(3))
    raw = (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes()
    assert raw[:2] == b"\x80\x02" and b"numpy.core.multiarray\n_reconstruct" in raw  # like the originals
    ds = load_dataset("cifar10", tmp_path, train=True)
    assert ds.images.shape == (15, 3, 32, 32) and ds.num_classes == 10 and ds.classes[9] == "truck"
    data = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    n, c, h, w = 7, 2, 5, 30
    assert int(ds.images[n, c, h, w]) == int(data[n, c * 1024 + h * 32 + w])
    np.testing.assert_array_equal(ds.images.reshape(15, -1).numpy(), data)
    # root may also point straight at the batches folder.
    test = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", train=False)
    np.testing.assert_array_equal(test.images.reshape(3, -1).numpy(), batches["test_batch"][b"data"])
    np.testing.assert_array_equal(test.labels.numpy(), batches["test_batch"][b"labels"])


def test_cifar100_py3_protocol2_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    written = {}
    for name, n in (("train", 6), ("test", 4)):
        written[name] = {b"filenames": [b"x.png"] * n, b"batch_label": name.encode(),
                         b"fine_labels": [int(v) for v in rng.integers(0, 100, n)],
                         b"coarse_labels": [int(v) for v in rng.integers(0, 20, n)],
                         b"data": cifar_images(rng, n)}
        (folder / name).write_bytes(pickle.dumps(written[name], protocol=2))  # bytes via _codecs.encode
    meta = {b"fine_label_names": [f"c{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    ds = load_dataset("cifar100", tmp_path, train=True)
    assert ds.num_classes == 100 and ds.classes[42] == "c42" and ds.images.shape == (6, 3, 32, 32)
    np.testing.assert_array_equal(ds.labels.numpy(), written["train"][b"fine_labels"])
    np.testing.assert_array_equal(ds.images.reshape(6, -1).numpy(), written["train"][b"data"])
    assert load_dataset("cifar100", tmp_path, train=False).labels.tolist() == written["test"][b"fine_labels"]


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy_arrays(tmp_path: Path, protocol: int) -> None:
    obj = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"f": np.float32(1.5).reshape(()),
           b"names": [b"a", b"b"], "t": (1, 2.5)}
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = load_pickle_restricted(path)
    np.testing.assert_array_equal(out[b"data"], obj[b"data"])
    assert out[b"names"] == [b"a", b"b"] and out["t"] == (1, 2.5) and float(out[b"f"]) == 1.5


def test_cifar_label_out_of_range_and_bad_shape(tmp_path: Path) -> None:
    batches = _write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(5))
    bad = {**batches["data_batch_2"], b"labels": [0, 10, 1]}
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(py2_pickle(bad))
    with pytest.raises(DataError, match=r"label 10 at index 1 is outside \[0, 10\)") as info:
        load_dataset("cifar10", tmp_path, train=True)
    assert str(path) in str(info.value)
    path.write_bytes(py2_pickle({**bad, b"labels": [0, 1]}))
    with pytest.raises(DataError, match="expected 3 labels"):
        read_cifar_batch(path)
    path.write_bytes(py2_pickle({**bad, b"data": np.zeros((3, 1024), np.uint8)}))
    with pytest.raises(DataError, match=r"\(N, 3072\)"):
        read_cifar_batch(path)
    path.write_bytes(py2_pickle({b"data": np.zeros((3, 3072), np.uint8)}))
    with pytest.raises(DataError, match="'labels'"):
        read_cifar_batch(path)
    path.write_bytes(py2_pickle(batches["data_batch_2"])[:-40])
    with pytest.raises(DataError, match="corrupt or truncated") as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)


def test_cifar_missing_files_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.root"):
        load_dataset("cifar10", None, train=True)
    with pytest.raises(DataError, match="cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", tmp_path, train=True)
    _write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(6))
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4: file not found"):
        load_dataset("cifar10", tmp_path, train=True)


class _SystemCall:
    """Unpickling this runs ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _EvalCall:
    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_rejected_without_executing(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _SystemCall(f"touch {marker}"), b"labels": [0]}, protocol=protocol)
    # The payload is live: it names os.system (posix.system) and calls it with REDUCE.
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(payload)]
    assert ("REDUCE", None) in ops and any(isinstance(a, str) and "system" in a for _, a in ops)
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system") as info:
        read_cifar_batch(path)
    assert str(path) in str(info.value)
    assert not marker.exists()

    path.write_bytes(pickle.dumps([_EvalCall(f"open({str(marker)!r}, 'w')")], protocol=protocol))
    with pytest.raises(DataError, match=r"refusing to unpickle (builtins|__builtin__)\.eval"):
        load_pickle_restricted(path)
    assert not marker.exists()


def test_restricted_unpickler_refuses_object_arrays_and_other_codecs(tmp_path: Path) -> None:
    path = tmp_path / "obj"
    path.write_bytes(pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, protocol=2))
    with pytest.raises(DataError, match="object dtype"):
        load_pickle_restricted(path)
    # _codecs.encode is admitted only for latin-1 (how protocol 2 stores bytes), not arbitrary codecs.
    evil = pickle.dumps(b"x", protocol=2).replace(b"latin1", b"zlib__")
    path.write_bytes(evil)
    with pytest.raises(DataError, match="refusing to unpickle _codecs.encode"):
        load_pickle_restricted(path)


@pytest.mark.parametrize("name", sorted(codec_pickles()))
def test_a_codec_other_than_latin1_is_refused_naming_the_file(tmp_path: Path, name: str) -> None:
    """Pickled bytes name latin-1; any other codec name (unknown ones were a LookupError traceback) is refused,
    by name, without being looked up."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(codec_pickles()[name])
    message = refused_one_line(lambda: read_cifar_batch(path), path)
    assert "replace" in message


@pytest.mark.parametrize("name", sorted(allocating_pickles()))
def test_a_small_pickle_never_allocates_more_than_it_holds(tmp_path: Path, name: str) -> None:
    """A memo index (the C unpickler sized its memo table by it), one object named many times, a DAG of shared
    lists: each is refused (or read) without allocating more than a small multiple of the file."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(allocating_pickles()[name])
    with peak_memory() as peak:
        refused_one_line(lambda: read_cifar_batch(path), path)
    assert peak() < SMALL_PEAK, f"{peak()} bytes traced for a file of {path.stat().st_size}"


def test_a_shared_object_stays_shared_and_a_legal_file_reads_within_budget(tmp_path: Path) -> None:
    shared = [1, 2, 3]
    path = tmp_path / "p"
    path.write_bytes(pickle.dumps({b"a": shared, b"b": shared, b"data": cifar_images(np.random.default_rng(0), 300)},
                                  protocol=2))
    out = load_pickle_restricted(path)
    assert out[b"a"] is out[b"b"] and out[b"a"] == shared and out[b"data"].shape == (300, 3072)


def test_a_small_gzipped_file_is_unpacked_without_allocating_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    path.write_bytes(gzip.compress(pickle.dumps({b"data": cifar_images(np.random.default_rng(0), 2),
                                                 b"labels": [0, 1]}, protocol=2)))
    with peak_memory() as peak:
        images, _ = read_cifar_batch(path)
    assert images.shape == (2, 3, 32, 32) and peak() < SMALL_PEAK


# ----------------------------------------------------------------------------------------------------
# SVHN
# ----------------------------------------------------------------------------------------------------

def test_svhn_file_with_no_images_is_refused(tmp_path: Path) -> None:
    path = svhn_mat(tmp_path / "train_32x32.mat", 0)
    refused_one_line(lambda: read_svhn_mat(path), path, "holds 0 images")
    refused_one_line(lambda: load_dataset("svhn", tmp_path, train=True), path, "replace it")


def test_svhn_file_declaring_more_than_it_holds_is_refused_before_reading(tmp_path: Path) -> None:
    """A compressed X can declare any number of images; scipy allocated what it declared before reading."""
    path = svhn_mat(tmp_path / "train_32x32.mat", 4, declare=40_000)
    with peak_memory() as peak:
        refused_one_line(lambda: read_svhn_mat(path), path, "declares 40000 images")
    assert peak() < SMALL_PEAK
    assert read_svhn_mat(svhn_mat(tmp_path / "ok.mat", 4))[0].shape == (4, 3, 32, 32)  # compressed, as real files

def test_svhn_mat_round_trip_and_errors(tmp_path: Path) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, size=(32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10], [5]], dtype=np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    savemat(tmp_path / "test_32x32.mat", {"X": x[..., :2], "y": y[:2]})
    ds = load_dataset("svhn", tmp_path, train=True)
    assert ds.images.shape == (5, 3, 32, 32) and ds.num_classes == 10
    assert ds.labels.tolist() == [0, 1, 9, 0, 5]  # label 10 is the digit 0
    np.testing.assert_array_equal(ds.images.numpy(), x.transpose(3, 2, 0, 1))
    assert int(ds.images[3, 2, 7, 11]) == int(x[7, 11, 2, 3])
    assert len(load_dataset("svhn", tmp_path, train=False)) == 2

    bad = tmp_path / "bad.mat"
    savemat(bad, {"X": x, "y": np.array([[1], [2], [11], [3], [4]], dtype=np.uint8)})
    with pytest.raises(DataError, match="label 11 at index 2") as info:
        read_svhn_mat(bad)
    assert str(bad) in str(info.value)
    savemat(bad, {"X": x, "y": y[:4]})
    with pytest.raises(DataError, match="one label per image"):
        read_svhn_mat(bad)
    savemat(bad, {"images": x})
    with pytest.raises(DataError, match="expected variables 'X' and 'y'"):
        read_svhn_mat(bad)
    bad.write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(DataError, match="bad.mat"):
        read_svhn_mat(bad)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError, match="test_32x32.mat: file not found"):
        load_dataset("svhn", tmp_path, train=False)


# ----------------------------------------------------------------------------------------------------
# Image folders
# ----------------------------------------------------------------------------------------------------

def _write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def test_image_folder_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    written: dict[tuple[str, str, str], np.ndarray] = {}
    for split, per in (("train", 3), ("val", 1)):
        for cls in ("zebra", "ant"):  # sorted -> ant = 0, zebra = 1
            for i in range(per):
                px = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
                _write_png(tmp_path / split / cls / f"{i}.png", px)
                written[(split, cls, str(i))] = px
    _write_png(tmp_path / "train" / "ant" / "gray.png", np.full((6, 5), 77, dtype=np.uint8))
    (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")
    ds = load_dataset("imagefolder", tmp_path, train=True)
    assert ds.classes == ["ant", "zebra"] and ds.shape == (3, 6, 5) and len(ds) == 7
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 1]  # ant: 0.png 1.png 2.png gray.png
    np.testing.assert_array_equal(ds.images[1].permute(1, 2, 0).numpy(), written[("train", "ant", "1")])
    np.testing.assert_array_equal(ds.images[6].permute(1, 2, 0).numpy(), written[("train", "zebra", "2")])
    assert bool((ds.images[3] == 77).all())  # grayscale expanded to RGB
    val = load_dataset("imagefolder", tmp_path, train=False)
    assert val.classes == ds.classes and val.labels.tolist() == [0, 1]
    resized = load_dataset("imagefolder", tmp_path, train=True, image_size=4)
    assert resized.shape == (3, 4, 4)


@pytest.mark.parametrize("width, height", [(20000, 20000), (9000, 9000), (65536, 1100), (8193, 8192)])
def test_an_image_header_claiming_too_many_pixels_is_refused_before_decoding(tmp_path: Path, width: int,
                                                                             height: int) -> None:
    """Above Pillow's own bomb limit (20000 x 20000: a DecompressionBombError traceback), or below it and above
    ``MAX_IMAGE_PIXELS`` (decoded into a full-size array first): refused from the header, naming the file."""
    assert width * height > MAX_IMAGE_PIXELS
    _write_png(tmp_path / "train" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    big = tmp_path / "train" / "a" / "big.png"
    big.write_bytes(png_header(width, height))
    for size in (None, 4):
        refused_one_line(lambda size=size: load_dataset("imagefolder", tmp_path, train=True, image_size=size), big,
                         "an image folder may hold")


def test_image_folder_errors(tmp_path: Path) -> None:
    _write_png(tmp_path / "train" / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    odd = tmp_path / "train" / "b" / "1.png"
    _write_png(odd, np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(DataError, match="set image_size") as info:
        load_dataset("imagefolder", tmp_path, train=True)
    assert str(odd) in str(info.value)
    with pytest.raises(DataError, match="no evaluation split"):
        load_dataset("imagefolder", tmp_path, train=False, image_size=4)
    _write_png(tmp_path / "test" / "c" / "0.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"\['c'\] are not among the training classes"):
        load_dataset("imagefolder", tmp_path, train=False)
    broken = tmp_path / "broken" / "a" / "x.png"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="cannot decode image") as info:
        read_image_folder(tmp_path / "broken")
    assert str(broken) in str(info.value)
    with pytest.raises(DataError, match="folder not found"):
        load_dataset("imagefolder", tmp_path / "broken", train=True)


# ----------------------------------------------------------------------------------------------------
# Digits, real Fashion-MNIST, stats and registry
# ----------------------------------------------------------------------------------------------------

def test_digits_split_and_load() -> None:
    pytest.importorskip("sklearn")
    train, test = load_dataset("digits", None, True), load_dataset("digits", None, False)
    assert train.images.shape == (1397, 1, 8, 8) and test.images.shape == (400, 1, 8, 8)
    assert int(train.images.max()) == 255 and int(train.images.min()) == 0
    from sklearn.datasets import load_digits

    bunch = load_digits()
    tr_idx, te_idx = digits_split(bunch.target)
    assert np.intersect1d(tr_idx, te_idx).size == 0
    np.testing.assert_array_equal(np.union1d(tr_idx, te_idx), np.arange(1797))
    counts, test_counts = np.bincount(bunch.target), np.bincount(bunch.target[te_idx])
    assert np.all(np.abs(test_counts - counts * 400 / 1797) < 1)  # stratified
    np.testing.assert_array_equal(test.labels.numpy(), bunch.target[te_idx])
    np.testing.assert_array_equal(test.images[:, 0].numpy(), np.rint(bunch.images[te_idx] * 255 / 16))
    again = load_dataset("digits", None, False)
    assert torch.equal(again.images, test.images)  # fixed split
    mean, std = dataset_stats("digits", train.images)
    np.testing.assert_allclose([mean, std], [m for m in dataset_stats("digits")], atol=1e-3)


def test_real_fashion_mnist() -> None:
    if not (FASHION_ROOT / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not at {FASHION_ROOT}")
    train = load_dataset("fashion-mnist", None, train=True)
    test = load_dataset("fashion-mnist", None, train=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.num_classes == 10 and train.classes[9] == "Ankle boot"
    assert train.labels.bincount(minlength=10).tolist() == [6000] * 10
    assert test.labels.bincount(minlength=10).tolist() == [1000] * 10
    mean, std = dataset_stats("fashion-mnist", train.images)
    np.testing.assert_allclose([mean, std], [list(v) for v in dataset_stats("fashion-mnist")], atol=1e-4)


def test_stats_computed_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (9, 3, 4, 5), generator=g, dtype=torch.uint8)
    mean, std = dataset_stats("imagefolder", images)
    x = images.double() / 255
    ref_mean = x.mean(dim=(0, 2, 3))
    ref_std = x.permute(1, 0, 2, 3).reshape(3, -1).std(dim=1, unbiased=False)
    np.testing.assert_allclose(mean, ref_mean.numpy(), atol=1e-12)
    np.testing.assert_allclose(std, ref_std.numpy(), atol=1e-10)
    with pytest.raises(DataError, match="pass its training images"):
        dataset_stats("imagefolder")
    for name in DATASETS:
        if name != "imagefolder":
            m, s = dataset_stats(name)
            assert len(m) == len(s) == (3 if name in ("cifar10", "cifar100", "svhn") else 1)
            assert all(0 < v < 1 for v in m + s)


def test_default_augment_and_names() -> None:
    assert {n: default_augment(n) for n in DATASETS} == {
        "fashion-mnist": "crop", "mnist": "crop", "digits": "crop", "svhn": "crop",
        "cifar10": "crop_flip", "cifar100": "crop_flip", "imagefolder": "crop_flip"}
    assert default_augment("Fashion_MNIST") == "crop"
    with pytest.raises(DataError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", None, True)


def test_image_arrays_validation() -> None:
    imgs = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError, match="2 classes"):
        ImageArrays(imgs, torch.tensor([0, 1, 2]), ["a", "b"])
    with pytest.raises(DataError, match="3 images but 2 labels"):
        ImageArrays(imgs, torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(DataError, match="uint8"):
        ImageArrays(imgs.float(), torch.tensor([0, 1, 1]), ["a", "b"])
