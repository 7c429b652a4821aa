"""`Numpy` database: stimuli given as numpy arrays."""
import warnings

import numpy as np

from n2d2.database.database import DATABASE_PARAMETERS, Database
from n2d2.error_handler import WrongInputType


class Numpy(Database):
    """A database filled from numpy arrays with `load`.

    Arrays keep their dtype: uint8 images are scaled to [0, 1] by the provider, float arrays
    are delivered as they are.
    """

    _arguments = ()
    _parameters = dict(DATABASE_PARAMETERS)

    def __init__(self, **config):
        super().__init__({}, **config)

    def load(self, stimuli_list, labels_list=None, partition: str = None, channels_first: bool = True):
        """Add stimuli.

        Parameters
        ----------
        stimuli_list : list of numpy.ndarray (or one stacked array)
            Each stimulus is (C, H, W), or (H, W, C) with `channels_first=False`; a 2-D (H, W)
            array is one channel. A stacked (N, ...) array is taken as N stimuli.
        labels_list : list of int, optional
            One int label per stimulus (all 0, with a warning, when missing).
        partition : str, optional
            "Learn", "Validation" or "Test" to put the stimuli there; by default they go to
            Unpartitioned (see `partition_stimuli`).
        channels_first : bool
            Layout of 3-D stimuli.
        """
        if partition is not None and partition not in ("Learn", "Validation", "Test"):
            raise ValueError(f"Unknown partition : {partition}, available partitions are \"Learn\", "
                             f"\"Validation\" or \"Test\".")
        if not isinstance(channels_first, bool):
            raise WrongInputType("channels_first", type(channels_first), ["bool"])
        stimuli = self._as_stimuli(stimuli_list, channels_first)
        count = len(stimuli)
        if labels_list is None:
            warnings.warn("Numpy database: no label provided, every label is set to 0", stacklevel=2)
            labels = np.zeros(count, dtype=np.int32)
        else:
            labels = self._as_labels(labels_list)
        if labels.size != count:
            raise RuntimeError(f"stimuli_list and labels_list have different lengths ({count}, {labels.size}), "
                               f"every stimulus needs a corresponding label")
        if count == 0:
            return
        top = int(labels.max()) + 1 if labels.size else 0
        while len(self._label_names) < top:
            self._label_names.append(str(len(self._label_names)))
        self._add_stimuli(stimuli, labels, partition or "Unpartitioned")

    @staticmethod
    def _as_stimuli(stimuli_list, channels_first):
        if isinstance(stimuli_list, np.ndarray):
            if stimuli_list.ndim not in (3, 4):
                raise ValueError(f"A stacked stimuli array must be (N, H, W) or (N, C, H, W) / (N, H, W, C), "
                                 f"got shape {stimuli_list.shape}")
            a = stimuli_list
            if a.ndim == 3:
                a = a[:, None]
            elif not channels_first:
                a = np.transpose(a, (0, 3, 1, 2))
            return np.ascontiguousarray(a)
        if not isinstance(stimuli_list, (list, tuple)):
            raise WrongInputType("stimuli_list", type(stimuli_list), ["list of numpy.ndarray"])
        out = []
        for k, s in enumerate(stimuli_list):
            if not isinstance(s, np.ndarray):
                raise WrongInputType(f"stimuli_list[{k}]", type(s), ["numpy.ndarray"])
            if s.ndim == 2:
                s = s[None]
            elif s.ndim == 3:
                if not channels_first:
                    s = np.transpose(s, (2, 0, 1))
            else:
                raise ValueError(f"stimuli_list[{k}] has shape {s.shape}: expected (C, H, W), (H, W, C) or (H, W)")
            out.append(np.ascontiguousarray(s))
        return out

    @staticmethod
    def _as_labels(labels_list):
        if isinstance(labels_list, np.ndarray):
            if labels_list.ndim != 1 or not np.issubdtype(labels_list.dtype, np.integer):
                raise RuntimeError("labels_list should be a list of integers")
            return labels_list.astype(np.int32)
        if not isinstance(labels_list, (list, tuple)) or not all(
                isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels_list):
            raise RuntimeError("labels_list should be a list of integers")
        return np.asarray(labels_list, dtype=np.int32)
