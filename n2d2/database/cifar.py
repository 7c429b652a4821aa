"""`CIFAR10` and `CIFAR100` databases (binary batch format).

Each record of a CIFAR-10 file is one label byte then 3072 bytes: the 32x32 red plane, green
plane, blue plane. CIFAR-100 records carry a coarse then a fine label byte. Images are stored
uint8, channels in BGR order as N2D2 (OpenCV) stores them.
"""
import os

import numpy as np

from n2d2.database.database import DATABASE_PARAMETERS, Database, check_fraction
from n2d2.error_handler import DataFileError, WrongInputType

_SIDE = 32
_PIXELS = 3 * _SIDE * _SIDE


# Limits on untrusted CIFAR files (a real batch holds 30 MB, a label list 1 KB).
MAX_CIFAR_BYTES = 4 << 30
MAX_LABEL_NAMES_BYTES = 1 << 20


def _checked_size(path: str, what: str, limit: int) -> int:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CIFAR {what} file not found: {path}")
    size = os.path.getsize(path)
    if size > limit:
        raise DataFileError(f"{path}: {size} bytes, more than the {limit}-byte limit of a CIFAR {what} file")
    return size


def read_cifar_file(path: str, nb_label_bytes: int):
    """(images (n, 3, 32, 32) uint8 BGR, label bytes (n, nb_label_bytes)) of one binary file.

    The size on disk is checked (whole records, under `MAX_CIFAR_BYTES`) before anything is read."""
    size = _checked_size(path, "data", MAX_CIFAR_BYTES)
    record = nb_label_bytes + _PIXELS
    if size == 0 or size % record:
        raise DataFileError(f"{path}: {size} bytes is not a whole number of {record}-byte CIFAR records "
                            f"({nb_label_bytes} label byte(s) + {_PIXELS} pixel bytes): truncated or not a CIFAR file")
    raw = np.fromfile(path, dtype=np.uint8, count=size)
    if raw.size != size:
        raise DataFileError(f"{path}: {raw.size} bytes read, {size} expected (the file changed while read)")
    records = raw.reshape(-1, record)
    labels = records[:, :nb_label_bytes].astype(np.int32)
    rgb = records[:, nb_label_bytes:].reshape(-1, 3, _SIDE, _SIDE)
    return np.ascontiguousarray(rgb[:, ::-1]), labels


def read_label_names(path: str) -> list:
    """The non-empty lines of a UTF-8 label list (under `MAX_LABEL_NAMES_BYTES`)."""
    _checked_size(path, "label names", MAX_LABEL_NAMES_BYTES)
    with open(path, "rb") as f:
        raw = f.read(MAX_LABEL_NAMES_BYTES + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFileError(f"{path}: not UTF-8 text (byte {e.start}): expected one label name per line") from None
    names = [n for n in (line.strip() for line in text.split("\n")) if n]
    if not names:
        raise DataFileError(f"{path}: no label name in the file")
    return names


class _CIFAR(Database):
    _label_bytes = 1

    def _check_common(self, validation, use_test_for_validation):
        validation = check_fraction("validation", validation)
        if not isinstance(use_test_for_validation, bool):
            raise WrongInputType("use_test_for_validation", type(use_test_for_validation), ["bool"])
        return validation

    def _read(self, path, names_file, column):
        images, label_bytes = read_cifar_file(path, self._label_bytes)
        labels = label_bytes[:, column]
        if labels.size and labels.max() >= len(self._label_names):
            raise DataFileError(f"{path}: label {int(labels.max())} but {names_file} names only "
                             f"{len(self._label_names)} labels")
        return images, labels

    def _load_sets(self, train_files, test_file, names_file, column):
        self._label_names = read_label_names(names_file)
        train = [self._read(f, names_file, column) for f in train_files]
        self._add_stimuli(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]))
        validation = self._args["validation"]
        self.partition_stimuli(1.0 - validation, validation, 0.0)
        test_images, test_labels = self._read(test_file, names_file, column)
        if self._args["use_test_for_validation"]:
            self._add_stimuli(test_images, test_labels, "Validation")
        self._add_stimuli(test_images, test_labels, "Test")


class CIFAR10(_CIFAR):
    """CIFAR-10: `load(data_path)` reads `data_batch_1..5.bin` (Learn, and Validation for a
    fraction `validation`), `test_batch.bin` (Test, and Validation too with
    `use_test_for_validation`), label names from `batches.meta.txt`. Label index = the
    file's label byte."""

    _arguments = ("validation", "use_test_for_validation")
    _parameters = dict(DATABASE_PARAMETERS)
    _download_links = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)

    def __init__(self, validation: float = 0.0, use_test_for_validation: bool = False, **config):
        validation = self._check_common(validation, use_test_for_validation)
        super().__init__({"validation": validation, "use_test_for_validation": use_test_for_validation}, **config)

    def load(self, data_path: str, label_path: str = "", extract_ROIs: bool = False):
        data_path = os.fspath(data_path)
        label_dir = label_path or data_path
        self._load_sets([os.path.join(data_path, f"data_batch_{k}.bin") for k in range(1, 6)],
                        os.path.join(data_path, "test_batch.bin"),
                        os.path.join(label_dir, "batches.meta.txt"), 0)


class CIFAR100(_CIFAR):
    """CIFAR-100: `load(data_path)` reads `train.bin` and `test.bin`; labels are the fine ones
    (`fine_label_names.txt`) or, with `use_coarse`, the coarse ones (`coarse_label_names.txt`)."""

    _label_bytes = 2
    _arguments = ("validation", "use_coarse", "use_test_for_validation")
    _parameters = dict(DATABASE_PARAMETERS)
    _download_links = ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",)

    def __init__(self, validation: float = 0.0, use_coarse: bool = False, use_test_for_validation: bool = False,
                 **config):
        validation = self._check_common(validation, use_test_for_validation)
        if not isinstance(use_coarse, bool):
            raise WrongInputType("use_coarse", type(use_coarse), ["bool"])
        super().__init__({"validation": validation, "use_coarse": use_coarse,
                          "use_test_for_validation": use_test_for_validation}, **config)

    def load(self, data_path: str, label_path: str = "", extract_ROIs: bool = False):
        data_path = os.fspath(data_path)
        label_dir = label_path or data_path
        coarse = self._args["use_coarse"]
        names = os.path.join(label_dir, "coarse_label_names.txt" if coarse else "fine_label_names.txt")
        self._load_sets([os.path.join(data_path, "train.bin")], os.path.join(data_path, "test.bin"),
                        names, 0 if coarse else 1)
