"""DataProvider: batches, labels, invalid slots, epochs, iteration, transformations, prefetching."""
import threading
import time

import numpy as np
import pytest

import n2d2
import n2d2.datasets
from n2d2.database import MNIST, Numpy
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.provider import DataProvider
from n2d2.transform import Flip, PadCrop, Rescale, Transformation
from tests.conftest import requires_cuda


def id_database(n=23, shape=(1, 2, 3), partition="Learn"):
    """A Numpy database whose stimulus i is filled with the float i (label i % 5)."""
    db = Numpy()
    db.load([np.full(shape, float(i), np.float32) for i in range(n)], [i % 5 for i in range(n)], partition=partition)
    return db


def ids_of(batch) -> np.ndarray:
    return batch.to_numpy()[:, 0, 0, 0].astype(int)


@pytest.fixture(scope="module")
def mnist():
    return MNIST(n2d2.datasets.mnist_path(download_if_missing=False), validation=0.1)


class Counting(Transformation):
    """Adds 1 to float images and counts the images it saw."""

    def __init__(self, **config):
        super().__init__(None, **config)
        self.seen = 0

    def _forward(self, x, rng):
        self.seen += x.shape[0]
        return x + 1.0


# -- basics ------------------------------------------------------------------------------------------
def test_data_before_and_after_reading(mnist):
    p = DataProvider(mnist, [28, 28, 1], batch_size=4)
    assert p.get_partition() == "Test"
    assert p.get_data().shape() == [4, 1, 28, 28] and not p.get_data().to_numpy().any()
    x = p.read_random_batch()
    assert x.to_numpy().any() and p.get_data() is x
    x = p.read_batch(idx=0)
    test = mnist.get_partition_ids("Test")
    np.testing.assert_array_equal(x.to_numpy(), mnist._data[test[:4]].astype(np.float32) / np.float32(255))
    assert x.to_numpy().dtype == np.float32 and x.data_type() == "float"
    assert x.cell is p and not x.is_cuda
    labels = p.get_labels()
    assert labels.data_type() == "int" and labels.shape() == [4, 1, 1, 1]
    assert [labels[i] for i in range(4)] == [7, 2, 1, 0]
    assert 0.0 <= x.to_numpy().min() and x.to_numpy().max() <= 1.0


def test_accessors_and_printing(mnist):
    p = DataProvider(mnist, [28, 28, 1], batch_size=64)
    assert p.get_database() is mnist and p.get_size() == [28, 28, 1] and p.get_batch_size() == 64
    assert p.dims() == [28, 28, 1, 64] and p.shape() == [64, 1, 28, 28]
    assert p.get_parameter("batch_size") == 64 and p.get_parameter("database") is mnist
    assert str(p) == (f"'{p.get_name()}' DataProvider(database={mnist}, size=[28, 28, 1], batch_size=64, "
                      f"composite_stimuli=False)")
    p.add_transformation(Rescale(28, 28))
    p.add_on_the_fly_transformation(Flip(random_horizontal_flip=True, apply_to="LearnOnly"))
    flip = Flip(random_horizontal_flip=True, apply_to="LearnOnly")
    assert str(p).endswith(f"[Transformations={Rescale(28, 28)}, {flip}]")
    n2d2.global_variables.verbosity = n2d2.global_variables.Verbosity.graph_only
    assert str(p).startswith(f"'{p.get_name()}' DataProvider[Transformations=")
    small = DataProvider(mnist, [10, 10], composite_stimuli=True)
    assert small.get_size() == [10, 10] and small.dims() == [10, 10, 1, 1]
    assert small.get_parameter("composite_stimuli") is True
    named = DataProvider(mnist, [28, 28, 1], name="reader")
    assert named.get_name() == "reader"


def test_constructor_errors(mnist):
    with pytest.raises(WrongInputType):
        DataProvider("mnist", [28, 28, 1])
    with pytest.raises(WrongInputType):
        DataProvider(mnist, (28, 28.0, 1))
    with pytest.raises(WrongValue):
        DataProvider(mnist, [28])
    with pytest.raises(WrongInputType):
        DataProvider(mnist, [28, 28, 1], batch_size=2.0)
    with pytest.raises(WrongValue):
        DataProvider(mnist, [28, 28, 1], batch_size=0)
    with pytest.raises(WrongInputType):
        DataProvider(mnist, [28, 28, 1], composite_stimuli=1)
    p = DataProvider(mnist, [28, 28, 1])
    with pytest.raises(WrongValue):
        p.set_partition("Train")
    with pytest.raises(WrongInputType):
        p.add_transformation("Rescale")


def test_each_read_starts_a_new_graph(mnist):
    p = DataProvider(mnist, [28, 28, 1], batch_size=2)
    x1 = p.read_batch(0)
    g1 = x1.get_deepnet()
    x2 = p.read_random_batch()
    assert x2.get_deepnet() is p.get_deepnet() and x2.get_deepnet() is not g1


# -- sequential reads, invalid slots -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_images_scale_to_the_exact_float32_quotient(dtype):
    """Every 8- and 16-bit value becomes float32(v) / float32(255 or 65535), bit for bit, whether
    the provider converts into its batch buffer or into a new array."""
    values = np.arange(np.iinfo(dtype).max + 1, dtype=dtype)
    scale = np.float32(np.iinfo(dtype).max)
    expected = (values.astype(np.float32) / scale).view(np.uint32)
    out = np.full(values.shape, np.nan, dtype=np.float32)
    assert DataProvider._to_float(values, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint32), expected)
    np.testing.assert_array_equal(DataProvider._to_float(values).view(np.uint32), expected)


def test_cached_batches_equal_the_database_stimuli():
    """After the first read caches the partition, a batch is the database's stimuli (rescaled
    once), in the order asked, whichever ids it mixes."""
    data = np.random.default_rng(5).integers(0, 256, (40, 1, 6, 6), dtype=np.uint8)
    db = Numpy()
    db.load([d for d in data], [int(i % 3) for i in range(40)])
    db.partition_stimuli(1.0, 0.0, 0.0)
    provider = DataProvider(db, [6, 6, 1], batch_size=8)
    provider.add_transformation(Rescale(width=6, height=6))   # a static transformation: the cache keeps them
    provider.set_partition("Learn")
    ids = db.get_partition_ids("Learn")
    for start in (0, 8, 16, 0, 32, 8):
        x = provider.read_batch(start).to_numpy()
        assert provider._caches["Learn"].array is not None
        chosen = ids[start:start + 8]
        np.testing.assert_array_equal(x, data[chosen].astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(provider.get_labels().to_numpy().ravel(), chosen % 3)


def test_read_batch_invalid_slots_and_errors():
    db = id_database(10)
    p = DataProvider(db, [3, 2, 1], batch_size=4)
    p.set_partition("Learn")
    x = p.read_batch(idx=8)
    assert x.shape() == [4, 1, 2, 3]
    data = x.to_numpy()
    assert ids_of(x)[:2].tolist() == [8, 9] and not data[2:].any()
    assert p.get_labels().to_numpy().ravel().tolist() == [3, 4, -1, -1]
    with pytest.raises(RuntimeError, match="idx=10"):
        p.read_batch(idx=10)
    with pytest.raises(RuntimeError):
        p.read_batch(idx=-1)
    with pytest.raises(WrongInputType):
        p.read_batch(idx=1.0)
    p.set_partition("Validation")
    with pytest.raises(RuntimeError, match="no stimulus"):
        p.read_random_batch()


def test_composite_stimuli_labels():
    p = DataProvider(id_database(6), [3, 2, 1], batch_size=4, composite_stimuli=True)
    p.set_partition("Learn")
    p.read_batch(4)
    labels = p.get_labels().to_numpy()
    assert labels.shape == (4, 1, 2, 3)
    assert (labels[0] == 4).all() and (labels[1] == 0).all() and (labels[2:] == -1).all()


# -- epochs, randomness, iteration --------------------------------------------------------------------------
def test_epoch_covers_every_stimulus_once_in_shuffled_order():
    db = id_database(23)
    p = DataProvider(db, [3, 2, 1], batch_size=5)
    p.set_partition("Learn")
    assert p.all_batchs_provided()
    p.set_batch(shuffle=True)
    got, labels = [], []
    while not p.all_batchs_provided():
        x = p.read_batch()
        lab = p.get_labels().to_numpy().ravel()
        got.extend(ids_of(x)[lab >= 0].tolist())
        labels.extend(lab.tolist())
    assert sorted(got) == list(range(23)) and got != list(range(23))
    assert len(labels) == 25 and labels.count(-1) == 2  # 5 batches, the last one partial
    p.set_batch(shuffle=False)
    ordered = []
    while not p.all_batchs_provided():
        ordered.extend(ids_of(p.read_batch())[:5].tolist())
    assert ordered[:23] == list(range(23))
    # read_batch() after the end starts a new epoch.
    p.read_batch()
    assert not p.all_batchs_provided()


def test_reproducible_with_the_same_seed():
    db = id_database(50)

    def run(seed):
        n2d2.global_variables.seed = seed
        p = DataProvider(db, [3, 2, 1], batch_size=7)
        p.set_partition("Learn")
        randoms = [ids_of(p.read_random_batch()).tolist() for _ in range(3)]
        p.set_batch()
        epoch = [ids_of(p.read_batch()).tolist() for _ in range(3)]
        return randoms, epoch

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_iteration():
    db = id_database(23)
    p = DataProvider(db, [3, 2, 1], batch_size=5)
    p.set_partition("Learn")
    batches = [ids_of(x).tolist() for x in p]
    assert len(batches) == 4 and p.batch_number() == 4  # floor(23 / 5): the last partial batch is dropped
    assert batches[1] == [5, 6, 7, 8, 9]
    p.set_reading_randomly(True)
    assert sum(1 for _ in p) == 4
    it = iter(p)
    next(it)
    assert p.batch_number() == 1
    with pytest.raises(WrongInputType):
        p.set_reading_randomly("yes")


# -- transformations -------------------------------------------------------------------------------------
def test_static_transformation_applied_once_and_cached():
    db = id_database(12)
    p = DataProvider(db, [3, 2, 1], batch_size=4)
    p.set_partition("Learn")
    counting = Counting()
    p.add_transformation(counting)
    assert ids_of(p.read_batch(0)).tolist() == [1, 2, 3, 4]
    assert counting.seen == 12  # the whole (in-memory) partition was transformed at once
    for _ in range(5):
        p.read_random_batch()
    assert counting.seen == 12
    on_the_fly = Counting()
    p.add_on_the_fly_transformation(on_the_fly)
    assert ids_of(p.read_batch(4)).tolist() == [6, 7, 8, 9]
    assert ids_of(p.read_batch(4)).tolist() == [6, 7, 8, 9]
    assert on_the_fly.seen == 8 and counting.seen == 12
    assert p.get_transformations() == [counting, on_the_fly]
    assert p.get_static_transformations() == [counting] and p.get_on_the_fly_transformations() == [on_the_fly]


def test_transformations_follow_apply_to():
    db = id_database(8)
    db.load([np.full((1, 2, 3), 100.0, np.float32)] * 3, [0] * 3, partition="Test")
    p = DataProvider(db, [3, 2, 1], batch_size=3)
    p.add_transformation(Counting(apply_to="TestOnly"))
    p.add_on_the_fly_transformation(Counting(apply_to="LearnOnly"))
    assert ids_of(p.read_batch(0)).tolist() == [101] * 3
    p.set_partition("Learn")
    assert ids_of(p.read_batch(0)).tolist() == [1, 2, 3]


def test_added_static_transformation_spares_stimuli_already_read(mnist):
    """N2D2's data-augmentation example: stimuli read before add_transformation keep their form."""
    p = DataProvider(mnist, [28, 28, 1], batch_size=1)
    test = mnist.get_partition_ids("Test")
    raw = mnist._data[test[:2], 0].astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(p.read_batch(idx=0).to_numpy()[0, 0], raw[0])
    p.add_on_the_fly_transformation(Flip(vertical_flip=True))
    np.testing.assert_array_equal(p.read_batch(idx=0).to_numpy()[0, 0], raw[0][::-1])
    p.add_transformation(Flip(vertical_flip=True))
    np.testing.assert_array_equal(p.read_batch(idx=1).to_numpy()[0, 0], raw[1])  # two flips cancel
    assert p.get_labels()[0] == 2
    np.testing.assert_array_equal(p.read_batch(idx=0).to_numpy()[0, 0], raw[0][::-1])  # cached before the flip


def test_static_rescale_of_mnist_is_vectorised_and_correct(mnist):
    p = DataProvider(mnist, [32, 32, 1], batch_size=128)
    p.add_transformation(Rescale(width=32, height=32))
    p.set_partition("Validation")
    start = time.perf_counter()
    x = p.read_batch(idx=128)
    first = time.perf_counter() - start
    ids = mnist.get_partition_ids("Validation")[128:256]
    ref = Rescale(32, 32).apply_batch(mnist._data[ids]).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(x.to_numpy(), ref)
    assert first < 5.0  # 6000 images rescaled at once
    start = time.perf_counter()
    for _ in range(20):
        p.read_random_batch()
    assert (time.perf_counter() - start) / 20 < 0.05  # cached: one fancy index and one conversion


def test_reading_mnist_batches_is_fast(mnist):
    p = DataProvider(mnist, [28, 28, 1], batch_size=128)
    p.set_partition("Learn")
    p.read_random_batch()
    start = time.perf_counter()
    for _ in range(50):
        p.read_random_batch()
    assert (time.perf_counter() - start) / 50 < 0.02


def test_random_on_the_fly_transformation_changes_between_reads():
    db = Numpy()
    db.load([np.arange(6, dtype=np.float32).reshape(1, 2, 3)] * 16, [0] * 16, partition="Learn")
    p = DataProvider(db, [3, 2, 1], batch_size=16)
    p.set_partition("Learn")
    p.add_on_the_fly_transformation(Flip(random_horizontal_flip=True))
    a, b = p.read_batch(0).to_numpy(), p.read_batch(0).to_numpy()
    flipped = a[:, 0, 0, 0] == 2.0
    assert 0 < flipped.sum() < 16 and not np.array_equal(a, b)


def test_size_mismatch_is_an_error(mnist):
    p = DataProvider(mnist, [32, 32, 1])
    with pytest.raises(RuntimeError, match=r"28x28 with 1 channel.*\[32, 32, 1\].*Rescale"):
        p.read_batch(0)
    p.add_transformation(PadCrop(32, 32))
    assert p.read_batch(0).shape() == [1, 1, 32, 32]


def test_non_uniform_database_with_static_rescale(tmp_path):
    db = Numpy()
    db.load([np.full((1, h, w), 255, np.uint8) for h, w in ((4, 5), (6, 3), (8, 8))], [0, 1, 2], partition="Test")
    p = DataProvider(db, [4, 4, 1], batch_size=4)
    with pytest.raises(RuntimeError):
        p.read_batch(0)
    p2 = DataProvider(db, [4, 4, 1], batch_size=4)
    p2.add_transformation(Rescale(4, 4))
    x = p2.read_batch(0).to_numpy()
    np.testing.assert_array_equal(x[:3], 1.0)
    assert p2.get_labels().to_numpy().ravel().tolist() == [0, 1, 2, -1]


def test_normalize_stimuli(capsys):
    db = Numpy()
    db.load([np.full((1, 1, 1), v, np.float32) for v in (2.0, 4.0, 6.0)], [0, 0, 0], partition="Learn")
    p = DataProvider(db, [1, 1, 1], batch_size=3)
    p.normalize_stimuli()
    assert "min = 2.0, max = 6.0" in capsys.readouterr().out
    p.set_partition("Learn")
    np.testing.assert_allclose(p.read_batch(0).to_numpy().ravel(), [0.0, 0.5, 1.0])


# -- prefetching ---------------------------------------------------------------------------------------------
def test_prefetch_covers_the_epoch_and_sets_labels():
    db = id_database(23)
    p = DataProvider(db, [3, 2, 1], batch_size=5)
    p.set_partition("Learn")
    got = []
    graphs = []
    for x in p.prefetch_batches(shuffle=True, depth=2):
        lab = p.get_labels().to_numpy().ravel()
        ids = ids_of(x)
        assert (lab[lab >= 0] == ids[lab >= 0] % 5).all() and x.cell is p
        graphs.append(x.get_deepnet())
        got.extend(ids[lab >= 0].tolist())
    assert sorted(got) == list(range(23)) and len(graphs) == 5
    assert len({id(g) for g in graphs}) == 5  # a new graph per batch
    assert sum(1 for _ in p.prefetch_batches(drop_last=True)) == 4
    ordered = [ids_of(x)[0] for x in p.prefetch_batches(shuffle=False)]
    assert ordered == [0, 5, 10, 15, 20]


def test_prefetch_stops_early_and_reports_errors(mnist):
    p = DataProvider(mnist, [28, 28, 1], batch_size=16)
    p.set_partition("Learn")
    before = threading.active_count()
    for k, _ in enumerate(p.prefetch_batches()):
        if k == 2:
            break
    time.sleep(0.1)
    assert threading.active_count() == before

    class Boom(Transformation):
        def __init__(self):
            super().__init__(None)

        def _forward(self, x, rng):
            raise ValueError("boom")

    p.add_on_the_fly_transformation(Boom())
    with pytest.raises(ValueError, match="boom"):
        for _ in p.prefetch_batches():
            pass


def test_prefetch_reproducible_with_random_transformations():
    db = id_database(20)

    def run():
        n2d2.global_variables.seed = 11
        p = DataProvider(db, [3, 2, 1], batch_size=6)
        p.set_partition("Learn")
        p.add_on_the_fly_transformation(Flip(random_horizontal_flip=True))
        return [x.to_numpy().copy() for x in p.prefetch_batches()]

    a, b = run(), run()
    assert len(a) == 4 and all(np.array_equal(u, v) for u, v in zip(a, b))


# -- GPU -----------------------------------------------------------------------------------------------------
@requires_cuda
def test_cuda_batches(mnist):
    n2d2.global_variables.default_model = "Frame_CUDA"
    p = DataProvider(mnist, [28, 28, 1], batch_size=8)
    x = p.read_batch(0)
    assert x.is_cuda and x.cell is p
    np.testing.assert_array_equal(x.to_numpy(), mnist._data[mnist.get_partition_ids("Test")[:8]] / np.float32(255))
    assert sum(1 for _ in zip(range(3), p.prefetch_batches())) == 3


def test_prefetch_in_the_callers_thread_gives_the_same_batches():
    """prefetch_batches(depth=0) (and `global_variables.prefetch_depth = 0`, what fit reads
    through) yields the batches of the background thread: same order, data, labels, partial
    last batch and random transformations, one graph each, no thread started."""
    db = id_database(23)

    def run(depth=None, setting=None):
        n2d2.global_variables.seed = 12
        p = DataProvider(db, [3, 2, 1], batch_size=5)
        p.set_partition("Learn")
        p.add_on_the_fly_transformation(Flip(random_horizontal_flip=True))
        saved = n2d2.global_variables.prefetch_depth
        if setting is not None:
            n2d2.global_variables.prefetch_depth = setting
        try:
            before = threading.active_count()
            out = []
            for x in p.prefetch_batches(shuffle=True, depth=depth):
                if setting == 0 or depth == 0:
                    assert threading.active_count() == before
                out.append((x.to_numpy().copy(), p.get_labels().to_numpy().copy(), x.get_deepnet()))
        finally:
            n2d2.global_variables.prefetch_depth = saved
        return out

    threaded = run(depth=2)
    for got in (run(depth=0), run(setting=0)):
        assert len(got) == len(threaded) == 5
        for (x, lab, _), (x0, lab0, _) in zip(got, threaded):
            np.testing.assert_array_equal(x, x0)
            np.testing.assert_array_equal(lab, lab0)
        assert len({id(g) for _, _, g in got}) == 5
    with pytest.raises(WrongValue):
        n2d2.global_variables.prefetch_depth = -1
    with pytest.raises(WrongInputType):
        n2d2.global_variables.prefetch_depth = True
