"""Regression tests: data-file parsers check declared sizes before they allocate or inflate (issue 11)."""
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from n2d2.database import mnist
from n2d2.database.cifar import read_cifar_file, read_label_names
from n2d2.error_handler import DataFileError

_INFLATED = 64 << 20  # what the bomb streams expand to; the reader must never hold it


def _gzip_bomb(path, header: bytes, inflated: int = _INFLATED):
    """A .gz whose stream is `header` then `inflated` zero bytes (~64 KB on disk), written in chunks."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    with open(path, "wb") as f:
        f.write(comp.compress(header))
        for _ in range(inflated // len(zeros)):
            f.write(comp.compress(zeros))
        f.write(comp.flush())
    return str(path)


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _idx_header(dims, type_code=0x08):
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)


def test_gzip_bomb_modest_header_is_not_inflated(tmp_path):
    # Header: 10x10 bytes; the stream goes on for 64 MiB. Only the 100 bytes (plus one probe) are inflated.
    path = _gzip_bomb(tmp_path / "train-images-idx3-ubyte.gz", _idx_header((1, 10, 10)))
    errors = []

    def read():
        with pytest.raises(DataFileError) as info:
            mnist.read_idx(path)
        errors.append(str(info.value))

    peak = _peak_bytes(read)
    assert peak < 4 << 20, f"the reader held {peak} bytes while rejecting the bomb"
    assert "train-images-idx3-ubyte.gz: IDX file larger than expected" in errors[0]


def test_gzip_bomb_huge_header_is_rejected_from_the_header(tmp_path):
    # Header: 2^40 bytes. Rejected before any payload byte is inflated or allocated.
    path = _gzip_bomb(tmp_path / "t10k-images-idx3-ubyte.gz", _idx_header((1 << 20, 1 << 10, 1 << 10)))
    errors = []

    def read():
        with pytest.raises(DataFileError) as info:
            mnist.read_idx(path)
        errors.append(str(info.value))

    peak = _peak_bytes(read)
    assert peak < 4 << 20, f"the reader held {peak} bytes while rejecting the bomb"
    assert "t10k-images-idx3-ubyte.gz: the IDX header announces 1048576x1024x1024 values" in errors[0]
    assert "limit" in errors[0]


def test_gzip_header_larger_than_deflate_can_hold_is_rejected_before_allocation(tmp_path):
    # 512 MiB announced (under the cap) by a 1 KB gzip file: deflate cannot expand that far.
    path = tmp_path / "labels.idx.gz"
    path.write_bytes(_gzip_small(_idx_header((1 << 29,)) + bytes(1000)))

    def read():
        with pytest.raises(DataFileError, match="labels.idx.gz: .*gzip data can hold"):
            mnist.read_idx(str(path))

    assert _peak_bytes(read) < 4 << 20


def _gzip_small(raw):
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    return comp.compress(raw) + comp.flush()


def test_idx_cap_is_checked_against_the_header(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "MAX_IDX_BYTES", 1000)
    ok = _idx_header((10, 100)) + bytes(1000)
    assert mnist.parse_idx(ok).shape == (10, 100)
    with pytest.raises(DataFileError, match="x.idx: the IDX header announces 11x100 values .*1000-byte limit"):
        mnist.parse_idx(_idx_header((11, 100)) + bytes(1100), "x.idx")


def test_idx_gzip_trailing_garbage_and_truncation(tmp_path):
    good = _idx_header((2, 3)) + bytes(range(6))
    np.testing.assert_array_equal(mnist.parse_idx(_gzip_small(good), "a.gz"), np.arange(6).reshape(2, 3))
    with pytest.raises(DataFileError, match="a.gz: IDX file larger than expected"):
        mnist.parse_idx(_gzip_small(good + b"\x01"), "a.gz")
    with pytest.raises(DataFileError, match="a.gz: truncated IDX file.*gzip"):
        mnist.parse_idx(_gzip_small(good[:-1]), "a.gz")
    with pytest.raises(DataFileError, match="a.gz: corrupt or truncated gzip"):
        mnist.parse_idx(_gzip_small(good)[:-6], "a.gz")


def test_cifar_size_is_checked_before_reading(tmp_path, monkeypatch):
    from n2d2.database import cifar

    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(bytes(3073 * 3))
    images, labels = read_cifar_file(str(path), 1)
    assert images.shape == (3, 3, 32, 32) and labels.shape == (3, 1)
    monkeypatch.setattr(cifar, "MAX_CIFAR_BYTES", 3073 * 2)
    with pytest.raises(DataFileError, match="data_batch_1.bin: .*limit"):
        read_cifar_file(str(path), 1)


def test_cifar_label_names_that_are_not_text(tmp_path):
    path = tmp_path / "batches.meta.txt"
    path.write_bytes(b"cat\n\xff\xfe dog\n")
    with pytest.raises(DataFileError, match="batches.meta.txt: .*UTF-8"):
        read_label_names(str(path))
