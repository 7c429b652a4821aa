"""`MNIST` database and the IDX file reader.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges (CC BY-SA 3.0); the copy
bundled in `data/mnist/` is described, with its provenance, in `data/mnist/SOURCE.md`.
"""
import gzip
import io
import os
import zlib

import numpy as np

from n2d2.configurable import Spec
from n2d2.database.database import DATABASE_PARAMETERS, Database, check_fraction
from n2d2.datasets import MNIST_FILES, download_mnist  # the file names live with the download
from n2d2.error_handler import DataFileError, WrongInputType

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}



# Limits on untrusted IDX files. The largest real IDX file (MNIST training images) holds 47 MB.
MAX_IDX_BYTES = 4 << 30      # declared payload (dims product x item size) of one file
MAX_GZIP_RATIO = 1100        # deflate cannot expand more than ~1032:1; a header announcing more is a lie
_CHUNK = 1 << 20


def _read_raw(path: str) -> bytes:
    """The file's bytes (compressed ones for `.gz`), after checking its size on disk."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IDX file not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_IDX_BYTES + 4 + 4 * 255:
        raise DataFileError(f"{path}: {size} bytes on disk, more than the {MAX_IDX_BYTES}-byte limit of an IDX file")
    with open(path, "rb") as f:
        return f.read()


def _read_exact(stream, n: int, path: str, what: str, into=None):
    """Exactly `n` bytes of `stream` (read in chunks, never more), else a DataFileError naming `what`."""
    buf = bytearray(n) if into is None else into
    view = memoryview(buf)
    got = 0
    while got < n:
        k = stream.readinto(view[got:got + _CHUNK])
        if not k:
            raise DataFileError(f"{path}: truncated IDX file: {what} needs {n} bytes, only {got} follow")
        got += k
    return buf


def _parse_idx_stream(stream, path, stored_size, compressed, expected_ndim, expected_type):
    """Header first, its sizes checked against the limits and the stored bytes, then exactly
    the announced payload; anything after it is an error. Never inflates more than announced."""
    head = bytes(_read_exact(stream, 4, path, "the 4-byte magic number"))
    zero0, zero1, type_code, ndim = head
    magic = int.from_bytes(head, "big")
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DataFileError(f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x0000TTDD with a type TT in "
                            f"{', '.join(f'{t:02x}' for t in _IDX_DTYPES)} and DD dimensions): not an IDX file")
    if expected_type is not None and type_code != expected_type:
        raise DataFileError(f"{path}: IDX data type 0x{type_code:02x}, expected 0x{expected_type:02x} "
                            f"(magic number 0x{magic:08x})")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataFileError(f"{path}: IDX file has {ndim} dimension(s), expected {expected_ndim} "
                            f"(magic number 0x{magic:08x})")
    try:
        raw_dims = bytes(_read_exact(stream, 4 * ndim, path, f"the header of {ndim} dimensions"))
    except DataFileError:
        raise DataFileError(f"{path}: truncated IDX header ({4 * ndim} bytes of dimensions expected for "
                            f"{ndim} dimensions)") from None
    dims = tuple(int.from_bytes(raw_dims[4 * k:4 * k + 4], "big") for k in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow
    expected = count * dtype.itemsize
    shape_text = "x".join(str(d) for d in dims)
    if expected > MAX_IDX_BYTES:
        raise DataFileError(f"{path}: the IDX header announces {shape_text} values ({expected} bytes), more than "
                            f"the {MAX_IDX_BYTES}-byte limit")
    payload_room = stored_size - 4 - 4 * ndim
    if compressed and expected > MAX_GZIP_RATIO * stored_size + 1024:
        raise DataFileError(f"{path}: truncated IDX file: the header announces {shape_text} values ({expected} "
                            f"bytes of data), more than {stored_size} bytes of gzip data can hold")
    if not compressed and payload_room < expected:
        raise DataFileError(f"{path}: truncated IDX file: the header announces {shape_text} values "
                            f"({expected} bytes of data), only {payload_room} bytes follow")
    if not compressed and payload_room > expected:
        raise DataFileError(f"{path}: IDX file larger than expected: {payload_room - expected} bytes after the "
                            f"{shape_text} values the header announces")
    array = np.empty(count, dtype=dtype)
    _read_exact(stream, expected, path, f"the {shape_text} values the header announces",
                into=array.view(np.uint8))
    if stream.read(1):
        raise DataFileError(f"{path}: IDX file larger than expected: data follows the {shape_text} values the "
                            f"header announces")
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=False)


def parse_idx(raw: bytes, path: str = "<bytes>", expected_ndim: int = None, expected_type: int = None,
              compressed: bool = None) -> np.ndarray:
    """Decode an IDX buffer (magic number, big-endian dimensions, payload), checking every length
    before allocating. `compressed` (default: `path` ends with `.gz`): `raw` is gzip data."""
    if compressed is None:
        compressed = path.endswith(".gz")
    source = io.BytesIO(raw)
    if not compressed:
        return _parse_idx_stream(source, path, len(raw), False, expected_ndim, expected_type)
    try:
        with gzip.GzipFile(fileobj=source, mode="rb") as stream:
            return _parse_idx_stream(stream, path, len(raw), True, expected_ndim, expected_type)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFileError(f"{path}: corrupt or truncated gzip data ({e})") from None
    except DataFileError as e:
        raise DataFileError(f"{e} (gzip data)") from None


def read_idx(path: str, expected_ndim: int = None, expected_type: int = None) -> np.ndarray:
    """Read an IDX file, plain or `.gz`. Errors name the file and what is wrong."""
    return parse_idx(_read_raw(path), path, expected_ndim, expected_type)


def find_idx_file(directory: str, base: str) -> str:
    """`directory/base`, `base.gz`, or the 7-Zip spelling (`train-images.idx3-ubyte`)."""
    alt = base.replace("-idx", ".idx")
    for name in (base, base + ".gz", alt, alt + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"MNIST: '{base}' (or '{base}.gz') not found in '{directory}'")


def _file_key(path, raw: bytes):
    # The checksum guards against a file rewritten within the file system's timestamp granularity.
    st = os.stat(path)
    return os.path.realpath(path), st.st_size, st.st_mtime_ns, zlib.crc32(raw)


_CACHE = {}  # decoded MNIST arrays, shared read-only between MNIST objects
_CACHE_SIZE = 2


def load_mnist_arrays(data_path: str, label_path: str = ""):
    """(images (70000, 1, 28, 28) uint8, labels (70000,) int32, nb_train) from the four IDX files.

    The result is read-only and cached per file set, so building several MNIST databases
    costs one decoding.
    """
    label_dir = label_path or data_path
    files = [find_idx_file(data_path, MNIST_FILES[0]), find_idx_file(label_dir, MNIST_FILES[1]),
             find_idx_file(data_path, MNIST_FILES[2]), find_idx_file(label_dir, MNIST_FILES[3])]
    raws = [_read_raw(f) for f in files]
    key = tuple(_file_key(f, raw) for f, raw in zip(files, raws))
    if key in _CACHE:
        return _CACHE[key]
    parts = []
    for k in (0, 2):
        img_file, lab_file = files[k], files[k + 1]
        images = parse_idx(raws[k], img_file, expected_ndim=3, expected_type=0x08)
        labels = parse_idx(raws[k + 1], lab_file, expected_ndim=1, expected_type=0x08)
        if images.shape[0] != labels.shape[0]:
            raise DataFileError(f"MNIST: {img_file} holds {images.shape[0]} images but {lab_file} "
                             f"holds {labels.shape[0]} labels")
        if labels.size and labels.max() > 9:
            raise DataFileError(f"{lab_file}: label value {int(labels.max())} is not a digit 0..9")
        parts.append((images, labels))
    (train, train_labels), (test, test_labels) = parts
    if train.shape[1:] != test.shape[1:]:
        raise DataFileError(f"MNIST: training images are {train.shape[1:]} but test images are {test.shape[1:]}")
    n_train, n_test = train.shape[0], test.shape[0]
    data = np.empty((n_train + n_test, 1) + train.shape[1:], dtype=np.uint8)
    data[:n_train, 0] = train
    data[n_train:, 0] = test
    labels = np.concatenate([train_labels, test_labels]).astype(np.int32)
    data.flags.writeable = False
    labels.flags.writeable = False
    if len(_CACHE) >= _CACHE_SIZE:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (data, labels, n_train)
    return _CACHE[key]


class MNIST(Database):
    """MNIST handwritten digits (LeCun, Cortes, Burges): 60000 training and 10000 test images, 28x28.

    Loads at construction `train-images-idx3-ubyte` / `train-labels-idx1-ubyte` (Learn, and
    Validation for a fraction `validation`, drawn reproducibly from the seed) and
    `t10k-images-idx3-ubyte` / `t10k-labels-idx1-ubyte` (Test, in file order), plain or
    `.gz`. Labels are "0".."9", label index = digit. Images are uint8 (the provider scales
    them to [0, 1]).

    Parameters
    ----------
    data_path : str
        Folder holding the four IDX files (`n2d2.datasets.mnist_path()` finds one).
    label_path : str
        Folder holding the label files, when not `data_path`.
    extract_roi : bool
        Accepted for compatibility (MNIST has no regions of interest).
    validation : float
        Fraction of the training set moved to Validation.
    """

    _arguments = ("data_path", "label_path", "extract_roi", "validation")
    _parameters = {**DATABASE_PARAMETERS,
                   "stimuli_per_label_train": Spec(int, 0),
                   "stimuli_per_label_test": Spec(int, 0)}
    _download_links = tuple("https://ossci-datasets.s3.amazonaws.com/mnist/" + f + ".gz" for f in MNIST_FILES)

    def __init__(self, data_path: str, label_path: str = "", extract_roi: bool = False, validation: float = 0.0,
                 **config):
        if isinstance(data_path, os.PathLike):
            data_path = os.fspath(data_path)
        if not isinstance(data_path, str):
            raise WrongInputType("data_path", type(data_path), ["str"])
        if isinstance(label_path, os.PathLike):
            label_path = os.fspath(label_path)
        if not isinstance(label_path, str):
            raise WrongInputType("label_path", type(label_path), ["str"])
        if not isinstance(extract_roi, bool):
            raise WrongInputType("extract_roi", type(extract_roi), ["bool"])
        validation = check_fraction("validation", validation)
        super().__init__({"data_path": data_path, "label_path": label_path, "extract_roi": extract_roi,
                          "validation": validation}, **config)
        self._label_names = [str(d) for d in range(10)]
        self.load(data_path, label_path)

    def load(self, data_path: str, label_path: str = "", extract_ROIs: bool = False):
        """Add the MNIST files of `data_path` (training set split by `validation`, test set to Test)."""
        data, labels, n_train = load_mnist_arrays(data_path, label_path)
        train_ids = self._limit_per_label(np.arange(n_train), labels[:n_train], self._config["stimuli_per_label_train"])
        test_ids = self._limit_per_label(np.arange(n_train, labels.size), labels[n_train:],
                                         self._config["stimuli_per_label_test"])
        if train_ids.size + test_ids.size != labels.size:
            data, labels = data[np.concatenate([train_ids, test_ids])], labels[np.concatenate([train_ids, test_ids])]
            n_train = train_ids.size
        first = self._labels.size
        self._add_stimuli(data, labels, "Unpartitioned")
        # The test images go straight to Test (file order); the training ones are partitioned.
        pool = self._sets["Unpartitioned"]
        test = np.arange(first + n_train, first + labels.size, dtype=np.int64)
        self._sets["Unpartitioned"] = pool[~np.isin(pool, test)]
        validation = self._args["validation"]
        self.partition_stimuli(1.0 - validation, validation, 0.0)
        self._sets["Test"] = np.concatenate([self._sets["Test"], test])

    @staticmethod
    def _limit_per_label(ids, labels, per_label):
        if per_label <= 0:
            return ids
        keep = np.zeros(ids.size, dtype=bool)
        for digit in range(10):
            keep[np.flatnonzero(labels == digit)[:per_label]] = True
        return ids[keep]

    @classmethod
    def download(cls, path: str = None):
        """Download the four files (md5-checked) to `path` (default `$N2D2_DATA/mnist`)."""
        return download_mnist(path or cls._default_download_path("mnist"))
