"""`Database`: stimuli, their labels, and the partitions Learn / Validation / Test / Unpartitioned.

Stimuli live in memory, channels first, in their own dtype (uint8 images stay uint8, so MNIST
is 70000x1x28x28 bytes). When every stimulus has the same shape and dtype they are one array
(N, C, H, W) and a provider reads a batch with one fancy index; otherwise they are a list of
(C, H, W) arrays, or of file paths read on demand (`DIR` without `load_data_in_memory`).
A partition is an ordered array of stimulus ids.
"""
import os
import tarfile

import numpy as np

from n2d2 import utils
from n2d2.configurable import Configurable, Spec, format_value
from n2d2.database.layout import read_stimulus_file
from n2d2.deepnet import PARTITIONS
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.settings import global_variables

# Configuration parameters every database accepts (N2D2's names).
DATABASE_PARAMETERS = {
    "default_label": Spec(int, -1),
    "rois_margin": Spec(int, 0),
    "random_partitioning": Spec(bool, True),
    "data_file_label": Spec(bool, True),
    "composite_label": Spec(str, "Auto"),
    "target_data_path": Spec(str, ""),
    "multi_channel_match": Spec(str, ""),
    "multi_channel_replace": Spec(str, ""),
}

_SUMMARY_ORDER = ("Learn", "Test", "Validation", "Unpartitioned")


def _round_half_up(v: float) -> int:
    return int(np.floor(v + 0.5))


def _round_half_down(v: float) -> int:
    return int(np.ceil(v - 0.5))


def partition_counts(n: int, learn: float, validation: float, test: float):
    """How many of `n` stimuli go to Learn, Validation, Test (N2D2's rounding rules)."""
    nb_learn = _round_half_up(n * learn)
    nb_val_test = min(_round_half_down(n * (validation + test)), n - nb_learn)
    frac_val = validation / (validation + test) if validation > 0 else 0.0
    nb_val = _round_half_up(nb_val_test * frac_val)
    nb_test = min(_round_half_down(nb_val_test * (1.0 - frac_val)), n - nb_learn - nb_val)
    return nb_learn, nb_val, nb_test


def check_fraction(name, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise WrongInputType(name, type(value), ["float"])
    value = float(value)
    if value < 0.0 or value > 1.0:
        raise WrongValue(name, value, ["a fraction in [0, 1]"])
    return value


def check_partition_ratios(learn, validation, test) -> tuple:
    """The Learn, Validation, Test fractions as floats; together they may not exceed 1."""
    learn = check_fraction("learn", learn)
    validation = check_fraction("validation", validation)
    test = check_fraction("test", test)
    if learn + validation + test > 1.0 + 1e-9:
        raise ValueError("The total partition ratio cannot be higher than 1")
    return learn, validation, test


def check_partition(partition: str) -> str:
    if not isinstance(partition, str):
        raise WrongInputType("partition", type(partition), ["str"])
    if partition not in PARTITIONS:
        raise WrongValue("partition", partition, PARTITIONS)
    return partition


class Database(Configurable):
    """Generic database: an empty container of stimuli (also the base of the others).

    Parameters
    ----------
    load_data_in_memory : bool
        Keep every stimulus in memory (databases read from files load them at construction).
    """

    _arguments = ("load_data_in_memory",)
    _parameters = dict(DATABASE_PARAMETERS)
    _download_links = ()

    def __init__(self, arguments: dict = None, **config):
        if arguments is None:
            load = config.pop("load_data_in_memory", False)
            if not isinstance(load, bool):
                raise WrongInputType("load_data_in_memory", type(load), ["bool"])
            arguments = {"load_data_in_memory": load}
        self._user_config = set()
        super().__init__(arguments, **config)
        self._data = None           # (N, C, H, W) array, or a list of arrays / file paths
        self._labels = np.zeros(0, dtype=np.int32)
        self._names = []            # stimulus names (file names), may be empty
        self._label_names = []
        self._sets = {p: np.zeros(0, dtype=np.int64) for p in PARTITIONS}
        seed = global_variables.seed
        # Partitioning is reproducible from the seed, whatever else drew from the global rng.
        self._rng = np.random.default_rng(seed) if seed != 0 else global_variables.rng

    # -- printing: only the configuration the user gave, as upstream ---------------------------------
    def set_parameter(self, key: str, value):
        super().set_parameter(key, value)
        self._user_config.add(key)

    def _config_str(self) -> str:
        return ", ".join(f"{k}={format_value(self._config[k])}" for k in self._parameters if k in self._user_config)

    # -- download --------------------------------------------------------------------------------
    @classmethod
    def is_downloadable(cls) -> bool:
        return bool(cls._download_links)

    @classmethod
    def download(cls, path: str = None) -> str:
        """Download the database's files to `path` (default `$N2D2_DATA`, else `~/DATABASE`);
        `.tar.gz` archives are extracted there. Returns `path`."""
        if not cls.is_downloadable():
            raise NotImplementedError(f"Database {cls.__name__} does not support download")
        path = path or cls._default_download_path()
        for url in cls._download_links:
            target = os.path.join(path, url.rsplit("/", 1)[-1])
            utils.download(url, target)
            if target.endswith((".tar.gz", ".tgz", ".tar")):
                with tarfile.open(target) as archive:
                    if hasattr(tarfile, "data_filter"):  # refuses absolute paths and links out of `path`
                        archive.extractall(path, filter="data")
                    else:  # pragma: no cover - Python < 3.10.12
                        archive.extractall(path)
        return path

    @staticmethod
    def _default_download_path(subdir: str = "") -> str:
        root = os.environ.get("N2D2_DATA") or os.path.join(os.path.expanduser("~"), "DATABASE")
        return os.path.join(root, subdir) if subdir else root

    # -- queries -----------------------------------------------------------------------------------
    def get_nb_stimuli(self, partition: str = None) -> int:
        """Number of stimuli in `partition` (all of them when None)."""
        if partition is None:
            return int(self._labels.size)
        return int(self._sets[check_partition(partition)].size)

    def get_partition_summary(self):
        """Print the number of stimuli of each partition (N2D2's format)."""
        counts = {p: self.get_nb_stimuli(p) for p in PARTITIONS}
        total = sum(counts.values())
        if total == 0:
            print("No stimulus in the database !")
            return
        text = f"Number of stimuli : {total}\n"
        for p in _SUMMARY_ORDER:
            text += f"{p + ' ' * (14 - len(p))}: {counts[p]} stimuli ({round((counts[p] / total) * 100, 2)}%)\n"
        print(text)

    def get_nb_labels(self) -> int:
        return len(self._label_names)

    def get_label_name(self, label_idx: int) -> str:
        if isinstance(label_idx, bool) or not isinstance(label_idx, (int, np.integer)):
            raise WrongInputType("label_idx", type(label_idx), ["int"])
        if not 0 <= label_idx < len(self._label_names):
            raise ValueError(f"{self.get_type()}: label {label_idx} does not exist "
                             f"({len(self._label_names)} labels)")
        return self._label_names[label_idx]

    def get_label_names(self) -> list:
        return list(self._label_names)

    def get_label_id(self, label_name: str) -> int:
        """Index of a label name (`ValueError` when there is none)."""
        try:
            return self._label_names.index(label_name)
        except ValueError:
            raise ValueError(f"{self.get_type()}: no label named '{label_name}'") from None

    def add_label(self, label_name: str) -> int:
        """Add a new label name; returns its index (`RuntimeError` if it exists, as N2D2)."""
        if not isinstance(label_name, str):
            raise WrongInputType("label_name", type(label_name), ["str"])
        if label_name in self._label_names:
            raise RuntimeError(f"{self.get_type()}: a label with the name \"{label_name}\" already exists")
        self._label_names.append(label_name)
        return len(self._label_names) - 1

    def get_stimulus_label(self, stimulus_id: int) -> int:
        return int(self._labels[stimulus_id])

    def get_partition_ids(self, partition: str) -> np.ndarray:
        """Stimulus ids of `partition`, in order (a read-only view)."""
        ids = self._sets[check_partition(partition)].view()
        ids.flags.writeable = False
        return ids

    # -- partitioning ------------------------------------------------------------------------------
    def partition_stimuli(self, learn: float, validation: float, test: float):
        """Move Unpartitioned stimuli to Learn / Validation / Test in these proportions.

        Counts follow N2D2's rounding; with `random_partitioning` (default) the stimuli are
        drawn at random, reproducibly from `n2d2.global_variables.seed`.
        """
        learn, validation, test = check_partition_ratios(learn, validation, test)
        pool = self._sets["Unpartitioned"]
        counts = partition_counts(pool.size, learn, validation, test)
        self._move_unpartitioned(dict(zip(("Learn", "Validation", "Test"), counts)))

    def _move_unpartitioned(self, counts: dict):
        pool = self._sets["Unpartitioned"]
        if sum(counts.values()) > pool.size:
            raise RuntimeError(f"{self.get_type()}: cannot partition {sum(counts.values())} stimuli, "
                               f"only {pool.size} are unpartitioned")
        if self._config["random_partitioning"]:
            pool = pool[self._rng.permutation(pool.size)]
        start = 0
        for p in ("Learn", "Validation", "Test"):
            k = counts.get(p, 0)
            self._sets[p] = np.concatenate([self._sets[p], pool[start:start + k]])
            start += k
        rest = pool[start:]
        self._sets["Unpartitioned"] = np.sort(rest) if self._config["random_partitioning"] else rest

    def partition_stimuli_per_label(self, learn: float, validation: float, test: float, equiv_label: bool = True):
        """Partition the Unpartitioned stimuli label by label (N2D2's `partitionStimuliPerLabel`).

        With `equiv_label`, every label gives the same counts, computed on the smallest label.
        """
        learn, validation, test = check_partition_ratios(learn, validation, test)
        pool = self._sets["Unpartitioned"]
        labels = self._labels[pool]
        groups = [pool[labels == lab] for lab in np.unique(labels)]
        nb_min = min((g.size for g in groups), default=0)
        taken = {p: [] for p in ("Learn", "Validation", "Test")}
        for g in groups:
            if self._config["random_partitioning"]:
                g = g[self._rng.permutation(g.size)]
            n = nb_min if equiv_label else g.size
            counts = partition_counts(n, learn, validation, test)
            start = 0
            for p, k in zip(("Learn", "Validation", "Test"), counts):
                taken[p].append(g[start:start + k])
                start += k
        used = []
        for p, parts in taken.items():
            if parts:
                self._sets[p] = np.concatenate([self._sets[p]] + parts)
                used.extend(parts)
        if used:
            used = np.concatenate(used)
            self._sets["Unpartitioned"] = pool[~np.isin(pool, used)]

    # -- loading ---------------------------------------------------------------------------------
    def load(self, data_path: str, label_path: str = "", extract_ROIs: bool = False):
        """Generic database: read label names from `label_path`, one per line."""
        path = label_path or data_path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Could not open label file: {path}")
        with open(path) as f:
            names = [line.rstrip("\n") for line in f]
        names = [n for n in names if n]
        if not names:
            raise RuntimeError(f"No labels specified in the label file {path}")
        for name in names:
            self._label_id(name)

    def _label_id(self, name: str) -> int:
        """Id of a label name, created (next id) when it is new, as N2D2's `labelID`."""
        try:
            return self._label_names.index(name)
        except ValueError:
            self._label_names.append(name)
            return len(self._label_names) - 1

    def _add_stimuli(self, stimuli, labels, partition: str = "Unpartitioned", names=None) -> np.ndarray:
        """Append stimuli ((N, C, H, W) array, or list of (C, H, W) arrays / file paths) to a partition.

        Returns the ids given to them.
        """
        labels = np.asarray(labels, dtype=np.int32).reshape(-1)
        count = len(stimuli)
        if labels.size != count:
            raise RuntimeError(f"{self.get_type()}: {count} stimuli but {labels.size} labels")
        first = self._labels.size
        if self._data is None or (isinstance(self._data, np.ndarray) and self._data.shape[0] == 0):
            self._data = stimuli if isinstance(stimuli, np.ndarray) else list(stimuli)
        elif (isinstance(self._data, np.ndarray) and isinstance(stimuli, np.ndarray)
              and stimuli.shape[1:] == self._data.shape[1:] and stimuli.dtype == self._data.dtype):
            self._data = np.concatenate([self._data, stimuli])
        else:
            current = list(self._data) if isinstance(self._data, np.ndarray) else self._data
            self._data = current + list(stimuli)
        self._data = self._compact(self._data)
        self._labels = np.concatenate([self._labels, labels])
        if names is not None or self._names:
            self._names.extend(names if names is not None else [""] * count)
        ids = np.arange(first, first + count, dtype=np.int64)
        self._sets[partition] = np.concatenate([self._sets[partition], ids])
        return ids

    @staticmethod
    def _compact(data):
        """One array when every stimulus is an in-memory array of the same shape and dtype."""
        if isinstance(data, np.ndarray) or not data:
            return data
        first = data[0]
        if not isinstance(first, np.ndarray):
            return data
        if all(isinstance(d, np.ndarray) and d.shape == first.shape and d.dtype == first.dtype for d in data):
            return np.stack(data)
        return data

    # -- access for providers ------------------------------------------------------------------------
    def _is_uniform(self) -> bool:
        """True when the stimuli are one in-memory (N, C, H, W) array."""
        return isinstance(self._data, np.ndarray)

    def _stimuli(self, ids: np.ndarray):
        """The stimuli `ids`: an (n, C, H, W) array when uniform, else a list of (C, H, W) arrays."""
        if isinstance(self._data, np.ndarray):
            return self._data[ids]
        return [self._stimulus(int(i)) for i in ids]

    def _stimulus(self, stimulus_id: int) -> np.ndarray:
        item = self._data[stimulus_id]
        if isinstance(item, np.ndarray):
            return item
        return self._read_file(item)

    def _read_file(self, path: str) -> np.ndarray:
        return read_stimulus_file(path)

    def _stimuli_labels(self, ids: np.ndarray) -> np.ndarray:
        return self._labels[ids]

    # -- pixel-wise labels (segmentation databases) --------------------------------------------------
    def has_label_maps(self) -> bool:
        """True when the stimuli have pixel-wise label maps (`get_stimulus_label_map`): a
        provider with `composite_stimuli` then delivers them as its labels."""
        return False

    def get_stimulus_label_map(self, stimulus_id: int) -> np.ndarray:
        """(H, W) int32 label indices of a stimulus (segmentation databases only)."""
        raise ValueError(f"{self.get_type()}: its stimuli have no pixel-wise label map (one label per stimulus)")

    def _label_map(self, stimulus_id: int, shape: tuple) -> np.ndarray:
        """The label map a provider uses for a stimulus of (H, W) `shape` (overridden where a
        stimulus may have none: all -1 then)."""
        return self.get_stimulus_label_map(stimulus_id)

    def __str__(self):
        return super().__str__()
