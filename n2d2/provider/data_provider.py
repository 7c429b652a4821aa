"""`DataProvider`: reads batches of stimuli from a database, applies transformations.

Batches are float32 numpy arrays (N, C, H, W) wrapped in a `Tensor` whose producer is the
provider (each read starts a new eager graph). 8-bit stimuli are scaled to [0, 1].

Speed: when the database holds its stimuli in one array (MNIST, CIFAR, stacked `Numpy`), a
batch is one fancy index plus one conversion, and every transformation runs vectorised over
the batch. Static transformations (`add_transformation`) are applied once per stimulus and
cached; for in-memory databases the whole partition is transformed at its first read, in
chunks (e.g. all MNIST images rescaled to 32x32 at once). `prefetch_batches` prepares the
next batches in a background thread while the caller trains on the current one.

Segmentation: with `composite_stimuli` and a database that has pixel-wise label maps
(`Database.has_label_maps()`, e.g. Cityscapes), each stimulus travels with its (H, W) label
map: static and on-the-fly transformations move both with the same random draw
(`Transformation._forward_pair`), the static cache keeps both, and `get_labels()` is the batch
of maps. Classification databases take the same path as before, with no map.
"""
import math
import queue
import threading
import warnings

import numpy as np

from n2d2 import backend
from n2d2.database.database import Database
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.provider.base import PARTITIONS, Provider
from n2d2.settings import Verbosity, global_variables
from n2d2.tensor import Tensor
from n2d2.transform.transformation import Composite, Transformation

_CHUNK = 4096  # stimuli transformed at once when a partition is cached


def _expand(transformation) -> list:
    if isinstance(transformation, Composite):
        out = []
        for t in transformation.get_transformations():
            out.extend(_expand(t))
        return out
    return [transformation]


class _StaticCache:
    """Stimuli of one partition after the static transformations that applied when they were
    first read (N2D2 semantics: a transformation added later does not touch them).

    `state[id]`: 0 not read yet, 1 read with no static transformation (the database's data is
    used as it is), 2 stored here (densely in `array` at `slot[id]`, or in `items`).
    """

    def __init__(self):
        self.state = np.zeros(0, dtype=np.int8)
        self.slot = np.zeros(0, dtype=np.int64)
        self.array = None
        self.count = 0
        self.items = {}

    def ensure(self, n: int):
        if self.state.size < n:
            grow = n - self.state.size
            self.state = np.concatenate([self.state, np.zeros(grow, dtype=np.int8)])
            self.slot = np.concatenate([self.slot, np.full(grow, -1, dtype=np.int64)])

    def store(self, ids: np.ndarray, stimuli, capacity_hint: int):
        if isinstance(stimuli, np.ndarray):
            if self.array is None:
                capacity = max(capacity_hint, ids.size)
                self.array = np.empty((capacity,) + stimuli.shape[1:], dtype=stimuli.dtype)
            if self.array.shape[1:] == stimuli.shape[1:] and self.array.dtype == stimuli.dtype:
                if self.count + ids.size > self.array.shape[0]:
                    capacity = max(2 * self.array.shape[0], self.count + ids.size)
                    grown = np.empty((capacity,) + self.array.shape[1:], dtype=self.array.dtype)
                    grown[:self.count] = self.array[:self.count]
                    self.array = grown
                self.array[self.count:self.count + ids.size] = stimuli
                self.slot[ids] = np.arange(self.count, self.count + ids.size)
                self.count += ids.size
                self.state[ids] = 2
                return
        for i, s in zip(ids.tolist(), stimuli):
            self.items[i] = s
        self.state[ids] = 2

    def get(self, i: int):
        s = int(self.slot[i])
        return self.array[s] if s >= 0 else self.items[i]


def _transform(stimuli, maps, transformations, rng):
    """Apply `transformations` to stimuli (an (n, C, H, W) array, vectorised, or a list of
    (C, H, W) arrays, one at a time) and to their label maps when `maps` is not None (same
    layout, (H, W) each), drawing from `rng`. Returns (stimuli, maps) in the input layouts."""
    if isinstance(stimuli, np.ndarray):
        if maps is None:
            for t in transformations:
                stimuli = t.apply_batch(stimuli, rng)
            return stimuli, None
        labels = np.asarray(maps)[:, None]
        for t in transformations:
            stimuli, labels = t._forward_pair(stimuli, labels, rng)
        return stimuli, labels[:, 0]
    out, out_maps = [], None if maps is None else []
    for j, s in enumerate(stimuli):
        s = s[None]
        if maps is None:
            for t in transformations:
                s = t.apply_batch(s, rng)
        else:
            labels = maps[j][None, None]
            for t in transformations:
                s, labels = t._forward_pair(s, labels, rng)
            out_maps.append(labels[0, 0])
        out.append(s[0])
    return out, out_maps


class _WorkerError:
    def __init__(self, exc):
        self.exc = exc


_END = object()


class DataProvider(Provider):
    """Provide batches of stimuli from a database to a network.

    Parameters
    ----------
    database : n2d2.database.Database
        Where the stimuli come from.
    size : list of int
        `[W, H, C]` (or `[W, H]`, one channel), N2D2 order. Stimuli must reach exactly this
        size (add a `Rescale` / `PadCrop` when the source differs).
    random_read : bool
        Iterating the provider reads random batches (`read_random_batch`) instead of
        sequential ones.
    batch_size : int
        Stimuli per batch.
    composite_stimuli : bool
        Pixel-wise labels: `get_labels()` is then (N, 1, H, W): the database's label maps
        (transformed with their images) when it has some, else the stimulus label everywhere.
    name : str, optional
        Default `DataProvider_<k>`.

    Batches are float32 tensors of numpy shape `[batch_size, C, H, W]`; on a provider built
    while `global_variables.default_model == "Frame_CUDA"` they are on the GPU. The default
    partition is ``Test``.
    """

    def __init__(self, database, size, random_read: bool = False, batch_size: int = 1,
                 composite_stimuli: bool = False, name: str = None):
        if not isinstance(database, Database):
            raise WrongInputType("database", type(database), ["n2d2.database.Database"])
        if not isinstance(size, (list, tuple)):
            raise WrongInputType("size", type(size), ["list"])
        if len(size) not in (2, 3):
            raise WrongValue("size", size, ["[width, height] or [width, height, channels]"])
        for s in size:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0:
                raise WrongInputType("size", type(s), ["list of positive int"])
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise WrongInputType("batch_size", type(batch_size), ["int"])
        if batch_size <= 0:
            raise WrongValue("batch_size", batch_size, ["a positive int"])
        for key, value in (("random_read", random_read), ("composite_stimuli", composite_stimuli)):
            if not isinstance(value, bool):
                raise WrongInputType(key, type(value), ["bool"])
        if name is not None and not isinstance(name, str):
            raise WrongInputType("name", type(name), ["str"])
        super().__init__(name)
        self._database = database
        self._size = [int(s) for s in size]
        self._width, self._height = self._size[0], self._size[1]
        self._channels = self._size[2] if len(self._size) == 3 else 1
        self._batch_size = int(batch_size)
        self._random_read = random_read
        self._composite = composite_stimuli
        self._on_gpu = global_variables.default_model == "Frame_CUDA"
        if self._on_gpu:
            backend.require_cupy()
        self._static = []     # static transformations, Composites expanded
        self._otf = []        # on-the-fly transformations
        self._added = []      # both, in the order they were added (printing)
        self._caches = {p: _StaticCache() for p in PARTITIONS}
        self._map_caches = {p: _StaticCache() for p in PARTITIONS}  # label maps (state: in _caches)
        self._lock = threading.Lock()
        seed = global_variables.seed
        self._static_rng = np.random.default_rng(seed) if seed != 0 else global_variables.rng
        self._epochs = {}     # partition -> [order, position, shuffle]
        self._index = 0
        self._normalization = None
        self._data = Tensor._wrap(np.zeros(self.shape(), dtype=np.float32))
        self._labels = Tensor._wrap(np.zeros(self._labels_shape(), dtype=np.int32))
        if database.has_label_maps() and not composite_stimuli:
            warnings.warn(f"{self._name}: {database.get_type()} has pixel-wise label maps, which this provider "
                          f"does not deliver (every label is the stimulus label); pass composite_stimuli=True "
                          f"to get them", UserWarning, stacklevel=2)

    # -- accessors --------------------------------------------------------------------------------
    def get_database(self) -> Database:
        return self._database

    def get_size(self) -> list:
        return list(self._size)

    def get_batch_size(self) -> int:
        return self._batch_size

    def dims(self) -> list:
        """`[W, H, C, batch]` (N2D2 order)."""
        return [self._width, self._height, self._channels, self._batch_size]

    def shape(self) -> list:
        """`[batch, C, H, W]` (numpy order)."""
        return self.dims()[::-1]

    def get_data(self) -> Tensor:
        """The current batch (zeros before the first read)."""
        return self._data

    def get_labels(self) -> Tensor:
        """Int tensor of the current batch's labels, numpy shape (N, 1, 1, 1), or with
        `composite_stimuli` (N, 1, H, W) (N2D2 dims [W, H, 1, N]): the pixel-wise label maps of
        a segmentation database. -1 marks an invalid slot (past the end of the partition) or
        an ignored pixel (padding, no label)."""
        return self._labels

    def get_parameter(self, key: str):
        values = {"database": self._database, "size": self.get_size(), "batch_size": self._batch_size,
                  "composite_stimuli": self._composite, "random_read": self._random_read}
        if key not in values:
            raise ValueError(f"DataProvider: unknown parameter '{key}' (known: {', '.join(values)})")
        return values[key]

    def set_reading_randomly(self, random_read: bool):
        """Iterate with `read_random_batch` (True) or sequential `read_batch` (False)."""
        if not isinstance(random_read, bool):
            raise WrongInputType("random_read", type(random_read), ["bool"])
        self._random_read = random_read

    def batch_number(self) -> int:
        """Batches yielded by the current iteration."""
        return self._index

    def _labels_shape(self):
        if self._composite:
            return (self._batch_size, 1, self._height, self._width)
        return (self._batch_size, 1, 1, 1)

    def _with_maps(self) -> bool:
        """True when batches carry the database's pixel-wise label maps."""
        return self._composite and self._database.has_label_maps()

    def _nb(self) -> int:
        return self._database.get_nb_stimuli(self._partition)

    # -- transformations --------------------------------------------------------------------------
    def add_transformation(self, transformation: Transformation):
        """Static preprocessing: applied once per stimulus, when it is first read, then cached.

        Stimuli already read keep their cached form (as in N2D2).
        """
        if not isinstance(transformation, Transformation):
            raise WrongInputType("transformation", type(transformation), ["n2d2.transform.Transformation"])
        members = _expand(transformation)
        self._static.extend(members)
        self._added.extend(members)

    def add_on_the_fly_transformation(self, transformation: Transformation):
        """Augmentation: applied at every read (random ones draw new values each time)."""
        if not isinstance(transformation, Transformation):
            raise WrongInputType("transformation", type(transformation), ["n2d2.transform.Transformation"])
        members = _expand(transformation)
        self._otf.extend(members)
        self._added.extend(members)

    def get_transformations(self) -> list:
        """Every transformation added (static and on-the-fly, Composites expanded), in order."""
        return list(self._added)

    def get_static_transformations(self) -> list:
        return list(self._static)

    def get_on_the_fly_transformations(self) -> list:
        return list(self._otf)

    def normalize_stimuli(self):
        """Map the values of every stimulus (after static transformations) to [0, 1], using the
        minimum and maximum over the whole database."""
        lo, hi = math.inf, -math.inf
        for p in PARTITIONS:
            ids = self._database.get_partition_ids(p)
            for start in range(0, ids.size, _CHUNK):
                stimuli = self._static_stimuli(ids[start:start + _CHUNK], p)
                for s in (stimuli if isinstance(stimuli, list) else [stimuli]):
                    f = self._to_float(s)
                    lo, hi = min(lo, float(f.min())), max(hi, float(f.max()))
        if lo == math.inf:
            raise RuntimeError(f"{self._name}: no stimulus to normalize")
        print(f"Stimuli normalization: min = {lo}, max = {hi}")
        self._normalization = (lo, 1.0 / (hi - lo) if hi > lo else 1.0)

    def stimuli_statistics(self, partitions) -> tuple:
        """(mean, standard deviation, number of values) of every value of the stimuli of
        `partitions`, after the static transformations added so far, in their own range (8-bit
        images: 0..255, as a RangeAffineTransformation that uses them sees them; N2D2's
        StimuliData `_GlobalValue`). Read without caching: transformations added later (the normalisation
        these statistics are for) still apply to every stimulus."""
        total, total_sq, count = 0.0, 0.0, 0
        for p in partitions:
            ids = self._database.get_partition_ids(p)
            static = [t for t in self._static if t.applies_to(p)]
            for start in range(0, ids.size, _CHUNK):
                stimuli = self._database._stimuli(ids[start:start + _CHUNK])
                if static:
                    stimuli = self._apply_static(stimuli, static)
                for s in (stimuli if isinstance(stimuli, list) else [stimuli]):
                    f = np.asarray(s, dtype=np.float64)   # raw values, as a later RangeAffine sees them
                    total += float(f.sum())
                    total_sq += float(np.square(f).sum())
                    count += f.size
        if count == 0:
            return 0.0, 0.0, 0
        mean = total / count
        return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0)), count

    # -- reading ----------------------------------------------------------------------------------
    def read_random_batch(self) -> Tensor:
        """A batch of stimuli drawn at random (with replacement) from the current partition."""
        ids = self._database.get_partition_ids(self._partition)
        if ids.size == 0:
            raise RuntimeError(f"{self._name}: partition '{self._partition}' has no stimulus")
        picked = ids[global_variables.rng.integers(0, ids.size, self._batch_size)]
        return self._deliver(*self._assemble(picked, self._partition, self._otf_seed(self._partition)))

    def read_batch(self, idx: int = None) -> Tensor:
        """The batch starting at stimulus `idx` of the current partition (sequential order).

        Slots past the end of the partition are invalid: zero data and label -1. With
        `idx=None`, the next batch of the epoch prepared by `set_batch` (a new epoch is
        prepared when none is, or when the last one is exhausted).
        """
        if idx is None:
            return self._deliver(*self._assemble(self._next_epoch_ids(), self._partition,
                                                 self._otf_seed(self._partition)))
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)):
            raise WrongInputType("idx", type(idx), ["int"])
        ids = self._database.get_partition_ids(self._partition)
        if idx < 0 or idx >= ids.size:
            raise RuntimeError(f"{self._name}: read_batch(idx={idx}) is out of partition '{self._partition}' "
                               f"({ids.size} stimuli)")
        return self._deliver(*self._assemble(ids[idx:idx + self._batch_size], self._partition,
                                             self._otf_seed(self._partition)))

    def set_batch(self, shuffle: bool = True):
        """Prepare an epoch of the current partition: every stimulus once, shuffled (from the
        global generator) or in order; read it with `read_batch()` until `all_batchs_provided()`.
        The last batch may be partial (its extra slots are invalid)."""
        if not isinstance(shuffle, bool):
            raise WrongInputType("shuffle", type(shuffle), ["bool"])
        ids = self._database.get_partition_ids(self._partition)
        order = ids[global_variables.rng.permutation(ids.size)] if shuffle else ids.copy()
        self._epochs[self._partition] = [order, 0, shuffle]

    def all_batchs_provided(self) -> bool:
        """True once every batch of the epoch prepared by `set_batch` was read (or none is prepared)."""
        epoch = self._epochs.get(self._partition)
        return epoch is None or epoch[1] >= epoch[0].size

    def _next_epoch_ids(self) -> np.ndarray:
        epoch = self._epochs.get(self._partition)
        if epoch is None or epoch[1] >= epoch[0].size:
            self.set_batch(epoch[2] if epoch is not None else True)
            epoch = self._epochs[self._partition]
        order, pos, _ = epoch
        if order.size == 0:
            raise RuntimeError(f"{self._name}: partition '{self._partition}' has no stimulus")
        epoch[1] = pos + self._batch_size
        return order[pos:pos + self._batch_size]

    # -- iteration --------------------------------------------------------------------------------
    def __iter__(self):
        self._index = 0
        return self

    def __next__(self) -> Tensor:
        if self._index < self._nb() // self._batch_size:
            self._index += 1
            if self._random_read:
                return self.read_random_batch()
            return self.read_batch((self._index - 1) * self._batch_size)
        raise StopIteration

    def prefetch_batches(self, shuffle: bool = True, depth: int = None, drop_last: bool = False, shard=None):
        """Iterate over one epoch of the current partition, the next batches being prepared by a
        background thread (a queue of `depth` batches, default `global_variables.prefetch_depth`)
        while the caller uses the current one; `depth=0`: no thread, each batch is assembled when
        the caller asks for it (the same batches in the same order).

        Every stimulus is read once, in a shuffled order (drawn from the global generator when
        the iteration starts) or in order; the last batch is partial (invalid slots) unless
        `drop_last`. Each yielded tensor starts a new graph and sets `get_labels()`, as
        `read_batch` does, so a training loop is::

            for x in provider.prefetch_batches():
                loss = target(model(x))
                loss.back_propagate()
                loss.update()

        Leaving the loop early stops the thread.

        `shard=(rank, size)` (data-parallel training): every process draws the same order and
        reads slot `rank` of each global batch of `size * batch_size` stimuli, so the shards are
        disjoint, their union is the epoch, and every rank yields the same number of batches
        (a rank whose slot of the last global batch is empty gets a batch of invalid slots).
        """
        if depth is None:
            depth = global_variables.prefetch_depth
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise WrongValue("depth", depth, ["an int >= 0"])
        partition = self._partition
        ids = self._database.get_partition_ids(partition)
        order = ids[global_variables.rng.permutation(ids.size)] if shuffle else ids.copy()
        rank, size = shard if shard is not None else (0, 1)
        b = self._batch_size
        stride = b * size
        nb = order.size // stride if drop_last else -(-order.size // stride)
        seeds = [self._otf_seed(partition) for _ in range(nb)]
        if size > 1:
            seeds = [None if s is None else int(np.random.SeedSequence([s, rank]).generate_state(1, np.uint64)[0])
                     for s in seeds]
            slots = [order[min(i * stride + rank * b, (i + 1) * stride):(i * stride + (rank + 1) * b)]
                     for i in range(nb)]
            order = np.concatenate(slots + [order[:0]])
            starts = np.cumsum([0] + [s.size for s in slots])
        else:
            starts = np.minimum(np.arange(nb + 1) * b, order.size)
        if self._database._is_uniform():
            self._static_stimuli(order[:0], partition, whole_partition=True)  # cache now, in this thread
        if depth == 0:
            yield from self._batches_in_caller(order, starts, partition, seeds)
        else:
            yield from self._batches_in_thread(order, starts, partition, seeds, depth)

    def _batches_in_caller(self, order, starts, partition, seeds):
        """prefetch_batches(depth=0): each batch assembled when asked for, in the caller's thread."""
        for i in range(len(seeds)):
            yield self._deliver(*self._assemble(order[starts[i]:starts[i + 1]], partition, seeds[i]))

    def _batches_in_thread(self, order, starts, partition, seeds, depth):
        """prefetch_batches(depth > 0): a background thread assembles up to `depth` batches ahead."""
        nb = len(seeds)
        items = queue.Queue(maxsize=depth)
        stop = threading.Event()

        def put(item):
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def work():
            try:
                for i in range(nb):
                    if stop.is_set() or not put(self._assemble(order[starts[i]:starts[i + 1]], partition, seeds[i])):
                        return
                put(_END)
            except BaseException as e:  # handed to the consumer
                put(_WorkerError(e))

        worker = threading.Thread(target=work, name=f"{self._name}-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = items.get()
                if item is _END:
                    break
                if isinstance(item, _WorkerError):
                    raise item.exc
                yield self._deliver(*item)
        finally:
            stop.set()
            worker.join()

    # -- batch assembly ---------------------------------------------------------------------------
    def _otf_seed(self, partition):
        """A seed for this read's random on-the-fly transformations (None when there are none)."""
        if any(t.is_random() and t.applies_to(partition) for t in self._otf):
            return int(global_variables.rng.integers(0, 2 ** 63 - 1))
        return None

    def _deliver(self, data: np.ndarray, labels: np.ndarray) -> Tensor:
        self._new_graph()
        tensor = Tensor._wrap(data, cell=self)
        if self._on_gpu:
            tensor.cuda()
        self._data = tensor
        if self._composite and labels.ndim == 1:
            labels = np.broadcast_to(labels.reshape(-1, 1, 1, 1), self._labels_shape()).copy()
        self._labels = Tensor._wrap(labels.reshape(self._labels_shape()))
        return tensor

    def _assemble(self, ids: np.ndarray, partition: str, otf_seed):
        """(data (N, C, H, W) float32, labels (N,) int32, or (N, 1, H, W) label maps) for the
        stimuli `ids` (fewer than N: the remaining slots are invalid). Touches no provider
        state but the static cache."""
        b, c, h, w = self.shape()
        with_maps = self._with_maps()
        labels = np.full((b, 1, h, w) if with_maps else b, -1, dtype=np.int32)
        k = len(ids)
        data = np.empty((b, c, h, w), dtype=np.float32)
        if k < b:
            data[k:] = 0.0  # invalid slots
        if k == 0:
            return data, labels
        marked = []
        try:
            got = self._static_stimuli(ids, partition, marked=marked, maps=with_maps)
            stimuli, maps = got if with_maps else (got, None)
            self._finish(stimuli, ids, partition, otf_seed, data, maps, labels)
        except BaseException:
            # A failed read leaves no trace: the stimuli count as never read.
            with self._lock:
                for raw_ids in marked:
                    self._caches[partition].state[raw_ids] = 0
            raise
        if not with_maps:
            labels[:k] = self._database._stimuli_labels(ids)
        return data, labels

    def _finish(self, stimuli, ids, partition, otf_seed, data, maps=None, labels=None):
        """On-the-fly transformations, size check and float conversion into `data` (and, with
        label `maps`, the transformed maps into `labels[:, 0]`)."""
        k = len(ids)
        otf = [t for t in self._otf if t.applies_to(partition)]
        if otf:
            rng = np.random.default_rng(otf_seed)
            stimuli, maps = _transform(stimuli, maps, otf, rng)
        if maps is not None:
            for j in range(k):
                if maps[j].shape != stimuli[j].shape[-2:]:
                    raise RuntimeError(f"{self._name}: the label map of stimulus {int(ids[j])} is "
                                       f"{list(maps[j].shape)} after the transformations, its image "
                                       f"{list(stimuli[j].shape[-2:])} ([H, W])")
        if isinstance(stimuli, np.ndarray):
            self._check_shape(stimuli.shape[1:], ids[0], partition)
            self._to_float(stimuli, out=data[:k])
        else:
            for j, s in enumerate(stimuli):
                self._check_shape(s.shape, ids[j], partition)
                data[j] = self._to_float(s)
        if maps is not None:
            for j in range(k):
                labels[j, 0] = maps[j]
        if self._normalization is not None:
            lo, scale = self._normalization
            data[:k] -= lo
            data[:k] *= scale

    def _check_shape(self, shape, stimulus_id, partition):
        if tuple(shape) != (self._channels, self._height, self._width):
            raise RuntimeError(
                f"{self._name}: stimulus {int(stimulus_id)} of partition '{partition}' is "
                f"{shape[2] if len(shape) > 2 else '?'}x{shape[1] if len(shape) > 1 else '?'} with {shape[0]} "
                f"channel(s) after the transformations, but the provider size is {self._size} ([W, H, C]): "
                f"add a Rescale / PadCrop transformation (or fix the size)")

    @staticmethod
    def _to_float(s: np.ndarray, out: np.ndarray = None) -> np.ndarray:
        """float32 values (written into `out` when given); 8-bit (16-bit) integer images are
        scaled to [0, 1] (`v / 255`, as torchvision's `ToTensor`)."""
        if s.dtype in (np.uint8, np.uint16):
            scale = np.float32(255.0 if s.dtype == np.uint8 else 65535.0)
            if out is None:
                return np.divide(s, scale, dtype=np.float32)
            out[...] = s   # exact; then a float32 divide, the same values as the mixed-type one (1.25x faster)
            return np.divide(out, scale, out=out)
        if out is None:
            return s.astype(np.float32, copy=False)
        out[...] = s
        return out

    def _static_stimuli(self, ids: np.ndarray, partition: str, whole_partition: bool = False, marked: list = None,
                        maps: bool = False):
        """The stimuli `ids` after the static transformations (computed and cached on first read);
        with `maps`, (stimuli, their label maps).

        Ids first read here with no static transformation to apply are appended to `marked`.
        """
        db = self._database
        if not (whole_partition or maps) and ids.size:
            with self._lock:   # every batch after the first epoch: all stored in the array (state 2)
                cache = self._caches[partition]
                if cache.array is not None:
                    try:
                        slots = cache.slot[ids]
                    except IndexError:   # (an id past the slots the cache has grown to: the path below)
                        slots = None
                    if slots is not None and slots.min() >= 0:
                        return cache.array[slots]
        static = [t for t in self._static if t.applies_to(partition)]
        with_maps = self._with_maps()
        with self._lock:
            cache, map_cache = self._caches[partition], self._map_caches[partition]
            cache.ensure(db.get_nb_stimuli())
            map_cache.ensure(db.get_nb_stimuli())
            state = cache.state[ids]
            if whole_partition or (state == 0).any():
                new = np.unique(ids[state == 0])
                if static and (whole_partition or db._is_uniform()):
                    # Vectorised path: the whole partition is transformed now, chunk by chunk.
                    part = db.get_partition_ids(partition)
                    new = np.union1d(new, part[cache.state[part] == 0])
                if not static:
                    cache.state[new] = 1
                    if marked is not None:
                        marked.append(new)
                else:
                    hint = db.get_partition_ids(partition).size
                    for start in range(0, new.size, _CHUNK):
                        chunk = new[start:start + _CHUNK]
                        raw = db._stimuli(chunk)
                        done, done_maps = _transform(raw, self._raw_maps(chunk, raw) if with_maps else None,
                                                     static, self._static_rng)
                        if with_maps:
                            map_cache.store(chunk, Database._compact(done_maps), hint)
                        cache.store(chunk, Database._compact(done), hint)
                state = cache.state[ids]
            if state.size == 0:
                return ([], []) if maps else []
            if (state == 1).all():
                stimuli = db._stimuli(ids)
                return (stimuli, self._raw_maps(ids, stimuli)) if maps else stimuli
            if (state == 2).all() and cache.array is not None and (cache.slot[ids] >= 0).all():
                stimuli = cache.array[cache.slot[ids]]
                if not maps:
                    return stimuli
                if map_cache.array is not None and (map_cache.slot[ids] >= 0).all():
                    return stimuli, map_cache.array[map_cache.slot[ids]]
                return stimuli, np.stack([map_cache.get(int(i)) for i in ids])
            stimuli = [db._stimulus(int(i)) if s == 1 else cache.get(int(i)) for i, s in zip(ids, state)]
            if not maps:
                return stimuli
            return stimuli, [self._raw_maps(ids[j:j + 1], stimuli[j:j + 1])[0] if s == 1 else map_cache.get(int(i))
                             for j, (i, s) in enumerate(zip(ids, state))]

    def _raw_maps(self, ids, stimuli):
        """The database's label maps of `ids`, checked to be integer (H, W) maps of their
        image's size: an (n, H, W) int32 array when `stimuli` is an array, else a list."""
        maps = []
        for i, s in zip(ids, stimuli):
            shape = tuple(s.shape[-2:])
            m = np.asarray(self._database._label_map(int(i), shape))
            if m.shape != shape or m.dtype.kind not in "iu":
                names = getattr(self._database, "_names", None)
                name = f" ({names[int(i)]})" if names else ""
                raise RuntimeError(f"{self._name}: the label map of stimulus {int(i)}{name} is {m.dtype} of shape "
                                   f"{list(m.shape)}; expected integers of its image's shape {list(shape)} ([H, W])")
            maps.append(m.astype(np.int32, copy=False))
        return np.stack(maps) if isinstance(stimuli, np.ndarray) else maps

    # -- printing ---------------------------------------------------------------------------------
    def __str__(self):
        output = f"'{self._name}' DataProvider"
        if global_variables.verbosity != Verbosity.graph_only:
            output += (f"(database={self._database}, size={self._size}, batch_size={self._batch_size}, "
                       f"composite_stimuli={self._composite})")
        if self._added:
            output += "[Transformations=" + ", ".join(str(t) for t in self._added) + "]"
        return output

    __repr__ = __str__
