"""Databases: IDX parsing, MNIST (small files and the bundled copy), CIFAR, Numpy, DIR, partitions."""
import gzip
import os
import shutil
import urllib.error

import numpy as np
import pytest
from PIL import Image

import n2d2
import n2d2.datasets
from n2d2.database import CIFAR10, CIFAR100, DIR, MNIST, Database, Numpy
from n2d2.database.mnist import load_mnist_arrays, parse_idx, read_idx
from n2d2.error_handler import WrongInputType, WrongValue


# -- IDX files ---------------------------------------------------------------------------------------
def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    return header + array.astype(dtype).tobytes()


def write_mnist(directory, n_train=20, n_test=6, gz=False, seed=0):
    """Four small IDX files in MNIST's layout; returns the arrays written."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    for name, a in arrays.items():
        raw = idx_bytes(a)
        if gz:
            with gzip.open(os.path.join(directory, name + ".gz"), "wb") as f:
                f.write(raw)
        else:
            with open(os.path.join(directory, name), "wb") as f:
                f.write(raw)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_plain_and_gz(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 5
    path = str(tmp_path / ("a.idx" + (".gz" if gz else "")))
    raw = idx_bytes(a, 0x0C)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(raw)
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, a)
    f = np.linspace(-1, 1, 6, dtype=np.float32)
    np.testing.assert_array_equal(parse_idx(idx_bytes(f, 0x0D)), f)


def test_read_idx_errors_name_the_file(tmp_path):
    good = idx_bytes(np.zeros((3, 4, 4), np.uint8))
    cases = {
        "truncated.idx": (good[:-5], "truncated"),
        "short_header.idx": (good[:10], "truncated IDX header"),
        "magic.idx": (b"\x01\x02" + good[2:], "magic"),
        "type.idx": (b"\x00\x00\x07" + good[3:], "magic"),
        "tiny.idx": (good[:2], "truncated"),
        "extra.idx": (good + b"\x00\x00", "larger than expected"),
    }
    for name, (raw, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(ValueError, match=message) as info:
            read_idx(str(path))
        assert name in str(info.value)
    with pytest.raises(ValueError, match="dimension"):
        read_idx(_write(tmp_path / "dims.idx", good), expected_ndim=1)
    with pytest.raises(ValueError, match="data type"):
        read_idx(_write(tmp_path / "int.idx", idx_bytes(np.zeros(3, np.int32), 0x0C)), expected_type=0x08)
    with pytest.raises(FileNotFoundError, match="missing.idx"):
        read_idx(str(tmp_path / "missing.idx"))
    gz = gzip.compress(good)
    with pytest.raises(ValueError, match="gzip") as info:
        read_idx(_write(tmp_path / "cut.idx.gz", gz[: len(gz) // 2]))
    assert "cut.idx.gz" in str(info.value)
    with pytest.raises(ValueError, match="gzip"):
        read_idx(_write(tmp_path / "notgz.idx.gz", good))


def _write(path, raw) -> str:
    path.write_bytes(raw)
    return str(path)


# -- MNIST on small files ---------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_small_files(tmp_path, gz):
    arrays = write_mnist(tmp_path / "m", n_train=20, n_test=6, gz=gz)
    db = MNIST(str(tmp_path / "m"), validation=0.25)
    assert (db.get_nb_stimuli("Learn"), db.get_nb_stimuli("Validation"), db.get_nb_stimuli("Test")) == (15, 5, 6)
    assert db.get_nb_stimuli("Unpartitioned") == 0 and db.get_nb_stimuli() == 26
    assert db._data.shape == (26, 1, 28, 28) and db._data.dtype == np.uint8
    learn, val, test = (db.get_partition_ids(p) for p in ("Learn", "Validation", "Test"))
    assert sorted(np.concatenate([learn, val]).tolist()) == list(range(20))
    np.testing.assert_array_equal(test, np.arange(20, 26))  # test set in file order
    np.testing.assert_array_equal(db._data[test, 0], arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(db._data[learn, 0], arrays["train-images-idx3-ubyte"][learn])
    np.testing.assert_array_equal(db._labels[test], arrays["t10k-labels-idx1-ubyte"])
    assert [db.get_label_name(i) for i in range(10)] == [str(d) for d in range(10)]


def test_mnist_file_errors(tmp_path):
    d = tmp_path / "m"
    write_mnist(d)
    os.remove(d / "t10k-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        MNIST(str(d))
    write_mnist(d)
    raw = (d / "train-images-idx3-ubyte").read_bytes()
    (d / "train-images-idx3-ubyte").write_bytes(raw[:-100])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*truncated"):
        MNIST(str(d))
    write_mnist(d)
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(19, np.uint8)))
    with pytest.raises(ValueError, match="20 images.*19 labels"):
        MNIST(str(d))
    write_mnist(d)
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((20, 1), np.uint8)))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*dimension"):
        MNIST(str(d))
    write_mnist(d)
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(20, 12, np.uint8)))
    with pytest.raises(ValueError, match="label value 12"):
        MNIST(str(d))


def test_mnist_label_path_and_arguments(tmp_path):
    write_mnist(tmp_path / "img")
    labels = tmp_path / "lab"
    labels.mkdir()
    for name in ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.move(str(tmp_path / "img" / name), str(labels / name))
    db = MNIST(str(tmp_path / "img"), label_path=str(labels), extract_roi=True, validation=0.5)
    assert db.get_parameter("label_path") == str(labels)
    assert db.extract_roi is True and db.validation == 0.5
    assert db.get_nb_stimuli("Validation") == 10
    with pytest.raises(WrongInputType):
        MNIST(str(tmp_path / "img"), validation="0.1")
    with pytest.raises(WrongValue):
        MNIST(str(tmp_path / "img"), validation=1.5)
    with pytest.raises(WrongInputType):
        MNIST(3)


def test_mnist_split_reproducible_from_seed(tmp_path):
    write_mnist(tmp_path / "m", n_train=200, n_test=2)
    n2d2.global_variables.seed = 7
    a = MNIST(str(tmp_path / "m"), validation=0.1).get_partition_ids("Validation").copy()
    n2d2.global_variables.rng.random(10)  # other draws in between do not matter
    n2d2.global_variables.seed = 7
    b = MNIST(str(tmp_path / "m"), validation=0.1).get_partition_ids("Validation")
    np.testing.assert_array_equal(a, b)
    n2d2.global_variables.seed = 8
    c = MNIST(str(tmp_path / "m"), validation=0.1).get_partition_ids("Validation")
    assert not np.array_equal(a, c)
    d = MNIST(str(tmp_path / "m"), validation=0.1, random_partitioning=False).get_partition_ids("Validation")
    np.testing.assert_array_equal(d, np.arange(180, 200))


def test_mnist_stimuli_per_label(tmp_path):
    write_mnist(tmp_path / "m", n_train=40, n_test=20)
    db = MNIST(str(tmp_path / "m"), stimuli_per_label_train=2, stimuli_per_label_test=1)
    assert db.get_nb_stimuli("Learn") == 20 and db.get_nb_stimuli("Test") == 10
    assert np.bincount(db._labels[db.get_partition_ids("Learn")]).tolist() == [2] * 10


# -- the bundled MNIST -------------------------------------------------------------------------------------
SUMMARY_01 = """Number of stimuli : 70000
Learn         : 54000 stimuli (77.14%)
Test          : 10000 stimuli (14.29%)
Validation    : 6000 stimuli (8.57%)
Unpartitioned : 0 stimuli (0.0%)

"""


def test_real_mnist(capsys):
    path = n2d2.datasets.mnist_path(download_if_missing=False)
    db = MNIST(path)
    assert (db.get_nb_stimuli("Learn"), db.get_nb_stimuli("Test"), db.get_nb_stimuli("Validation")) == (60000, 10000, 0)
    db = MNIST(data_path=path, validation=0.1)
    assert (db.get_nb_stimuli("Learn"), db.get_nb_stimuli("Validation"), db.get_nb_stimuli("Test")) == (54000, 6000,
                                                                                                         10000)
    db.get_partition_summary()
    assert capsys.readouterr().out == SUMMARY_01
    assert db._data.shape == (70000, 1, 28, 28) and db._data.dtype == np.uint8 and db._data.nbytes == 70000 * 784
    test = db.get_partition_ids("Test")
    assert db._labels[test[:5]].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(db._labels[test]).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    train = np.concatenate([db.get_partition_ids("Learn"), db.get_partition_ids("Validation")])
    assert np.bincount(db._labels[train]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert abs(float(db._data[:60000].mean()) - 33.318) < 1e-3
    assert str(db) == f"MNIST(data_path={path}, label_path=, extract_roi=False, validation=0.1)"
    assert MNIST.is_downloadable() and not Numpy.is_downloadable()


def test_mnist_locator(tmp_path, monkeypatch):
    bundled = n2d2.datasets.mnist_path(download_if_missing=False)
    assert n2d2.datasets.has_mnist(bundled)
    assert os.path.samefile(bundled, os.path.join(n2d2.datasets.repository_root(), "data", "mnist"))
    own = tmp_path / "own"
    write_mnist(own, gz=True)
    assert n2d2.datasets.mnist_path(str(own)) == str(own)
    monkeypatch.setenv("N2D2_DATA", str(tmp_path))
    write_mnist(tmp_path / "mnist")
    assert n2d2.datasets.mnist_path() == os.path.join(str(tmp_path), "mnist")
    # Nothing anywhere and no network: a clear error naming where it looked.
    monkeypatch.delenv("N2D2_DATA")
    monkeypatch.setattr(n2d2.datasets, "repository_root", lambda: str(tmp_path / "nowhere"))

    def offline(url, path, md5=None):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(n2d2.datasets, "download", offline)
    with pytest.raises(RuntimeError, match="MNIST not found.*download") as info:
        n2d2.datasets.mnist_path(str(tmp_path / "empty"))
    assert "empty" in str(info.value)
    with pytest.raises(FileNotFoundError):
        n2d2.datasets.mnist_path(str(tmp_path / "empty"), download_if_missing=False)


def test_mnist_download_checks_md5(tmp_path, monkeypatch):
    calls = []

    def fake_download(url, path, md5=None):
        calls.append(url)
        if "ossci" in url:
            raise RuntimeError(f"Download of {url}: md5 0000 does not match the expected {md5}")
        with open(path, "wb") as f:
            f.write(b"x")

    monkeypatch.setattr(n2d2.datasets, "download", fake_download)
    out = n2d2.datasets.download_mnist(str(tmp_path / "dl"))
    assert out == str(tmp_path / "dl") and len(calls) == 8  # first mirror fails, second is used
    assert n2d2.datasets.verify_md5sums(n2d2.datasets.mnist_path(download_if_missing=False)) == {
        name: True for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                                "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")}


def test_mnist_arrays_are_shared_and_read_only(tmp_path):
    write_mnist(tmp_path / "m")
    a = MNIST(str(tmp_path / "m"))
    b = MNIST(str(tmp_path / "m"), validation=0.5)
    assert a._data is b._data and not a._data.flags.writeable
    data, labels, n_train = load_mnist_arrays(str(tmp_path / "m"))
    assert n_train == 20 and labels.dtype == np.int32


# -- generic database, partitions ----------------------------------------------------------------------------
def test_empty_database(capsys):
    db = Database()
    db.get_partition_summary()
    assert capsys.readouterr().out == "No stimulus in the database !\n"
    assert str(db) == "Database(load_data_in_memory=False)"
    assert Database(load_data_in_memory=True).get_parameter("load_data_in_memory") is True
    with pytest.raises(ValueError):
        db.get_nb_stimuli("Train")


def test_partition_stimuli_and_errors():
    db = Numpy()
    db.load([np.full((1, 2, 2), i, np.float32) for i in range(10)], list(range(10)))
    with pytest.raises(ValueError):
        db.partition_stimuli(0.6, 0.3, 0.2)
    with pytest.raises(WrongInputType):
        db.partition_stimuli("0.5", 0.0, 0.0)
    db.partition_stimuli(0.5, 0.2, 0.1)
    counts = [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test", "Unpartitioned")]
    assert counts == [5, 2, 1, 2]
    all_ids = np.concatenate([db.get_partition_ids(p) for p in ("Learn", "Validation", "Test", "Unpartitioned")])
    assert sorted(all_ids.tolist()) == list(range(10))
    db.partition_stimuli(1, 0, 0)  # ints accepted
    assert db.get_nb_stimuli("Learn") == 7 and db.get_nb_stimuli("Unpartitioned") == 0
    with pytest.raises(ValueError):
        db.get_label_name(10)
    assert db.get_label_name(9) == "9" and db.get_nb_labels() == 10
    assert db.get_label_id("4") == 4 and db.add_label("other") == 10 and db.get_label_id("other") == 10
    with pytest.raises(RuntimeError):
        db.add_label("other")
    with pytest.raises(ValueError):
        db.get_label_id("nothing")


# -- Numpy ------------------------------------------------------------------------------------------------
def test_numpy_database(capsys):
    rng = np.random.default_rng(0)
    train = [rng.integers(0, 256, (28, 28)).astype(np.uint8) for _ in range(60)]
    db = Numpy()
    db.load(train, [i % 10 for i in range(60)])
    assert db.get_nb_stimuli("Unpartitioned") == 60 and db._data.shape == (60, 1, 28, 28)
    db.partition_stimuli(1.0, 0.0, 0.0)
    db.load([a for a in train[:10]], [int(i) for i in range(10)], partition="Validation")
    db.get_partition_summary()
    assert capsys.readouterr().out == ("Number of stimuli : 70\nLearn         : 60 stimuli (85.71%)\n"
                                       "Test          : 0 stimuli (0.0%)\nValidation    : 10 stimuli (14.29%)\n"
                                       "Unpartitioned : 0 stimuli (0.0%)\n\n")
    np.testing.assert_array_equal(db._data[db.get_partition_ids("Validation"), 0], np.stack(train[:10]))


def test_numpy_layouts_and_errors():
    hwc = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    db = Numpy()
    db.load([hwc], [1], channels_first=False, partition="Test")
    np.testing.assert_array_equal(db._data[0], np.transpose(hwc, (2, 0, 1)))
    db.load(np.stack([hwc, hwc]), np.array([2, 3]), channels_first=False, partition="Learn")
    assert db.get_nb_stimuli("Learn") == 2 and db._data.shape == (3, 3, 4, 5)
    db.load([np.zeros((1, 2, 2), np.uint8)], [0])  # another shape: stored as a list
    assert isinstance(db._data, list) and db.get_nb_stimuli() == 4
    with pytest.raises(RuntimeError):
        Numpy().load([hwc, hwc], [1])
    with pytest.raises(RuntimeError):
        Numpy().load([hwc], [1.0])
    with pytest.raises(RuntimeError):
        Numpy().load([hwc], "1")
    with pytest.raises(ValueError):
        Numpy().load([hwc], [1], partition="Unpartitioned")
    with pytest.raises(WrongInputType):
        Numpy().load("images", [1])
    with pytest.warns(UserWarning, match="no label"):
        n = Numpy()
        n.load([hwc])
    assert n._labels.tolist() == [0]


# -- CIFAR ------------------------------------------------------------------------------------------------
def write_cifar10(directory, per_batch=4, n_test=3):
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(1)
    records = {}
    for name, n in [(f"data_batch_{k}.bin", per_batch) for k in range(1, 6)] + [("test_batch.bin", n_test)]:
        labels = rng.integers(0, 10, n).astype(np.uint8)
        rgb = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
        raw = np.concatenate([labels[:, None], rgb.reshape(n, -1)], axis=1)
        (directory / name).write_bytes(raw.tobytes())
        records[name] = (labels, rgb)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (directory / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    return records, names


def test_cifar10(tmp_path):
    records, names = write_cifar10(tmp_path / "c")
    db = CIFAR10(validation=0.2)
    db.load(str(tmp_path / "c"))
    assert (db.get_nb_stimuli("Learn"), db.get_nb_stimuli("Validation"), db.get_nb_stimuli("Test")) == (16, 4, 3)
    test = db.get_partition_ids("Test")
    labels, rgb = records["test_batch.bin"]
    np.testing.assert_array_equal(db._labels[test], labels)
    np.testing.assert_array_equal(db._data[test], rgb[:, ::-1])  # stored BGR, as N2D2
    assert db.get_label_name(3) == "cat" and db.get_nb_labels() == 10
    first = db._data[np.concatenate([db.get_partition_ids("Learn"), db.get_partition_ids("Validation")])]
    assert first.shape == (20, 3, 32, 32) and first.dtype == np.uint8
    both = CIFAR10(use_test_for_validation=True)
    both.load(str(tmp_path / "c"))
    assert (both.get_nb_stimuli("Learn"), both.get_nb_stimuli("Validation"), both.get_nb_stimuli("Test")) == (20, 3, 3)
    assert str(both) == "CIFAR10(validation=0.0, use_test_for_validation=True)"
    raw = (tmp_path / "c" / "data_batch_3.bin").read_bytes()
    (tmp_path / "c" / "data_batch_3.bin").write_bytes(raw[:-7])
    with pytest.raises(ValueError, match="data_batch_3.bin"):
        CIFAR10().load(str(tmp_path / "c"))
    with pytest.raises(FileNotFoundError):
        CIFAR10().load(str(tmp_path / "nothing"))


def test_cifar100(tmp_path):
    d = tmp_path / "c100"
    d.mkdir()
    rng = np.random.default_rng(2)
    for name, n in (("train.bin", 10), ("test.bin", 4)):
        coarse = rng.integers(0, 20, n).astype(np.uint8)
        fine = rng.integers(0, 100, n).astype(np.uint8)
        rgb = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        (d / name).write_bytes(np.concatenate([coarse[:, None], fine[:, None], rgb], axis=1).tobytes())
        if name == "test.bin":
            test_coarse, test_fine = coarse, fine
    (d / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)))
    (d / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    fine_db = CIFAR100(validation=0.1)
    fine_db.load(str(d))
    assert (fine_db.get_nb_stimuli("Learn"), fine_db.get_nb_stimuli("Validation"), fine_db.get_nb_stimuli("Test")) == (
        9, 1, 4)
    np.testing.assert_array_equal(fine_db._labels[fine_db.get_partition_ids("Test")], test_fine)
    coarse_db = CIFAR100(use_coarse=True, use_test_for_validation=True)
    coarse_db.load(str(d))
    assert coarse_db.use_coarse is True and coarse_db.use_test_for_validation is True
    np.testing.assert_array_equal(coarse_db._labels[coarse_db.get_partition_ids("Test")], test_coarse)
    assert coarse_db.get_nb_stimuli("Validation") == 4 and coarse_db.get_label_name(0) == "c0"
    with pytest.raises(WrongInputType):
        CIFAR100(use_coarse=1)


# -- DIR ------------------------------------------------------------------------------------------------------
def make_tree(root, counts=None, rgb=False):
    counts = counts or {"cat": 4, "dog": 6, "emu": 5}
    rng = np.random.default_rng(3)
    for label, n in counts.items():
        (root / label).mkdir(parents=True)
        for k in range(n):
            if rgb:
                a = rng.integers(0, 256, (3, 5, 3)).astype(np.uint8)
                Image.fromarray(a, "RGB").save(root / label / f"{k:02d}.png")
            else:
                a = np.full((3, 5), 10 * k + len(label), np.uint8)
                Image.fromarray(a, "L").save(root / label / f"{k:02d}.png")
    if "dog" in counts:
        (root / "dog" / "notes.xyz").write_text("not an image")
    return counts


def test_dir_labels_and_per_label_partitioning(tmp_path):
    make_tree(tmp_path / "d")
    db = DIR(str(tmp_path / "d"), learn=0.5, validation=0.25)
    assert db.get_label_names() == ["cat", "dog", "emu"]
    # equi-partitioning: every label gives round(4 * 0.5) = 2 to Learn and 1 to Validation.
    learn_labels = db._labels[db.get_partition_ids("Learn")]
    assert np.bincount(learn_labels).tolist() == [2, 2, 2]
    assert np.bincount(db._labels[db.get_partition_ids("Validation")]).tolist() == [1, 1, 1]
    assert db.get_nb_stimuli("Test") == 15 - 9 and db.get_nb_stimuli("Unpartitioned") == 0
    free = DIR(str(tmp_path / "d"), learn=0.5, equiv_label_partitioning=False)
    assert np.bincount(free._labels[free.get_partition_ids("Learn")]).tolist() == [2, 3, 3]
    counted = DIR(str(tmp_path / "d"), learn=5, validation=2, test=3, per_label_partitioning=False)
    assert [counted.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test", "Unpartitioned")] == [5, 2, 3, 5]
    with pytest.raises(RuntimeError):
        DIR(str(tmp_path / "d"), learn=0.8, validation=0.3)
    with pytest.raises(RuntimeError):
        DIR(str(tmp_path / "d"), learn=10, validation=10, per_label_partitioning=False)
    with pytest.raises(FileNotFoundError):
        DIR(str(tmp_path / "missing"), learn=1.0)


def test_dir_reading_lazy_and_in_memory(tmp_path):
    make_tree(tmp_path / "d", rgb=True)
    lazy = DIR(str(tmp_path / "d"), learn=1.0, load_data_in_memory=False)
    eager = DIR(str(tmp_path / "d"), learn=1.0, load_data_in_memory=True)
    assert isinstance(lazy._data, list) and isinstance(lazy._data[0], str)
    assert isinstance(eager._data, np.ndarray) and eager._data.shape == (15, 3, 3, 5)
    name = lazy.get_stimulus_name(0)
    rgb = np.asarray(Image.open(name))
    np.testing.assert_array_equal(lazy._stimulus(0), np.transpose(rgb, (2, 0, 1))[::-1])  # BGR
    np.testing.assert_array_equal(lazy._stimuli(np.arange(15)), eager._data)
    assert eager.get_parameter("load_data_in_memory") is True
    only_cat = DIR(str(tmp_path / "d"), learn=1.0, ignore_mask=["*dog*", "*emu*"])
    assert only_cat.get_nb_stimuli() == 4
    assert DIR(str(tmp_path / "d"), learn=1.0, valid_extensions=["jpg"]).get_nb_stimuli() == 0


def test_dir_text_stimulus_through_provider(tmp_path):
    """Upstream's test: a 1-pixel text 'image' holding 10 reads back as 10 from Learn."""
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "a" / "pixel.txt").write_text("10")
    db = DIR(str(tmp_path / "d"), learn=1.0)
    provider = n2d2.provider.DataProvider(db, [1, 1, 1])
    provider.set_partition("Learn")
    assert provider.read_random_batch()[0] == 10


def test_dir_label_file_and_depth(tmp_path):
    root = tmp_path / "d"
    make_tree(root / "group", {"x": 2, "y": 2})
    flat = DIR(str(root), learn=1.0, depth=2, label_depth=2)
    assert flat.get_label_names() == ["group/x", "group/y"]
    none = DIR(str(root), learn=1.0, depth=-1, label_depth=0)
    assert none.get_label_names() == [""]
    mapping = tmp_path / "map.txt"
    mapping.write_text("00.png 3\n01.png 1\n")
    by_file = DIR(str(root), learn=1.0, depth=-1, label_path=str(mapping), label_depth=0)
    assert sorted(by_file._labels.tolist()) == [1, 1, 3, 3]


def test_cifar_download_extracts_the_archive(tmp_path, monkeypatch):
    import io
    import tarfile

    def fake_download(url, path, md5=None):
        assert url.endswith("cifar-10-binary.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            data = b"airplane\n"
            info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    monkeypatch.setattr(n2d2.utils, "download", fake_download)
    assert CIFAR10.is_downloadable()
    assert CIFAR10.download(str(tmp_path)) == str(tmp_path)
    assert (tmp_path / "cifar-10-batches-bin" / "batches.meta.txt").read_text() == "airplane\n"
    with pytest.raises(NotImplementedError):
        Numpy.download(str(tmp_path))
