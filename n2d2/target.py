"""Targets (`n2d2.target`): turn the last cell's output and the batch labels into a loss.

`loss = target(x)` seeds the gradient of `x` (Learn partition only), scores the batch
(success rate, top-N success, confusion matrix, per partition) and returns a one-element leaf
Tensor whose `back_propagate()` / `update()` run the whole eager graph of the batch.

Every log goes to the directory named after the target (`Score_0/`), created in the current
working directory at the first call.

Confusion-matrix metrics (per class c, from the matrix M[target, estimated] of a partition;
TP = M[c, c], FN = row sum - TP, FP = column sum - TP, TN = total - TP - FN - FP; a ratio whose
numerator is 0 is 0, as upstream):

==========================  ==============================
Sensitivity                 TP / (TP + FN)
Specificity                 TN / (TN + FP)
Precision                   TP / (TP + FP)
NegativePredictiveValue     TN / (TN + FN)
MissRate                    1 - Sensitivity
FallOut                     1 - Specificity
FalseDiscoveryRate          1 - Precision
FalseOmissionRate           1 - NegativePredictiveValue
Accuracy                    (TP + TN) / (TP + TN + FP + FN)
F1Score                     2 Precision Sensitivity / (Precision + Sensitivity)
Informedness                Sensitivity + Specificity - 1
Markedness                  Precision + NegativePredictiveValue - 1
IU                          TP / (TP + FP + FN)
==========================  ==============================

`get_average_score(metric)` is the plain mean of the metric over all classes.
"""
import functools
import os
import shlex
import warnings

import numpy as np

from n2d2 import distributed, plots, stats
from n2d2.backend import array_module, to_host
from n2d2.configurable import Configurable, Spec
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.names import file_stem
from n2d2.provider.base import Provider
from n2d2.settings import global_variables
from n2d2.tensor import Tensor
from n2d2.utils import atomic_write_text, generate_name

METRICS = ("Sensitivity", "Specificity", "Precision", "NegativePredictiveValue", "MissRate", "FallOut",
           "FalseDiscoveryRate", "FalseOmissionRate", "Accuracy", "F1Score", "Informedness", "Markedness", "IU")


@functools.lru_cache(maxsize=16)
def _rows(n: int) -> np.ndarray:
    """`arange(n)` (read-only), the row index of a batch's scoring, made once per batch size."""
    rows = np.arange(n)
    rows.flags.writeable = False
    return rows


def _ratio(num, den):
    """num / den where num > 0, else 0 (upstream's convention for empty classes)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=(num > 0) & (den > 0))


def confusion_metrics(matrix) -> dict:
    """Every metric of METRICS, per class, from a confusion matrix M[target, estimated]."""
    m = np.asarray(matrix, dtype=np.float64)
    tp = np.diag(m)
    fn = m.sum(axis=1) - tp
    fp = m.sum(axis=0) - tp
    tn = m.sum() - tp - fn - fp
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    prec, npv = _ratio(tp, tp + fp), _ratio(tn, tn + fn)
    f1 = _ratio(2.0 * prec * sens, prec + sens) * (tp > 0)
    return {
        "Sensitivity": sens, "Specificity": spec, "Precision": prec, "NegativePredictiveValue": npv,
        "MissRate": 1.0 - sens, "FallOut": 1.0 - spec, "FalseDiscoveryRate": 1.0 - prec,
        "FalseOmissionRate": 1.0 - npv, "Accuracy": _ratio(tp + tn, tp + tn + fp + fn), "F1Score": f1,
        "Informedness": sens + spec - 1.0, "Markedness": prec + npv - 1.0, "IU": _ratio(tp, tp + fp + fn),
    }


def _data_rate_text(values, window: int) -> str:
    """Upstream's data-rate log: one line per step, `value running_average` (4 significant digits)."""
    v = np.asarray(values, dtype=np.float64)
    if window > 0:
        c = np.concatenate([[0.0], np.cumsum(v)])
        idx = np.arange(1, len(v) + 1)
        lo = np.maximum(idx - window, 0)
        avg = (c[idx] - c[lo]) / (idx - lo)
    else:
        avg = np.cumsum(v) / np.arange(1, len(v) + 1) if len(v) else v
    return "".join("%.4g %.4g\n" % (a, b) for a, b in zip(v, avg)), avg


class _PartitionScore:
    """What a target records for one partition since the last clear."""

    __slots__ = ("success", "top_n_success", "confusion")

    def __init__(self):
        self.success = []
        self.top_n_success = []
        self.confusion = None


class LossProducer:
    """The producer (`.cell`) of a loss tensor: leads `back_propagate()` to the batch's graph.

    One per call, so a loss tensor kept from an earlier batch still refers to its own graph.
    """

    __slots__ = ("_target", "_deepnet")

    def __init__(self, target, deepnet):
        self._target = target
        self._deepnet = deepnet

    def get_deepnet(self):
        return self._deepnet

    def get_name(self) -> str:
        return self._target.get_name()

    def get_target(self):
        return self._target


class Target(Configurable):
    """Abstract base of targets (TypeError if instantiated)."""

    def __init__(self, provider, name=None, arguments=None, **config):
        if type(self) is Target:
            raise TypeError("Target is abstract: use n2d2.target.Score")

        if not isinstance(provider, Provider):
            raise WrongInputType("provider", type(provider), ["Provider"])
        if name is not None and not isinstance(name, str):
            raise WrongInputType("name", type(name), ["str"])
        object.__setattr__(self, "_name", name if name is not None else generate_name(self))
        self._provider = provider
        super().__init__(arguments, **config)

    def get_name(self) -> str:
        return self._name

    @property
    def name(self):
        return self._name

    def get_provider(self):
        return self._provider

    def __str__(self):
        return self._name

    def __repr__(self):
        return f"'{self._name}' {self.get_type()}" + self._params_str(global_variables.verbosity)


class Score(Target):
    """Classification target: squared-error gradient seed, success rate, confusion matrix.

    Parameters
    ----------
    provider : Provider
        The provider whose partition (`get_partition()`) selects where scores are recorded.
    name : str, optional
        Target name and log directory (default `Score_<k>`).
    target_value, default_value : float
        Output value wanted for the labelled class / for the other classes.
    top_n : int
        Also record the top-N success when > 1.
    labels_mapping : str
        File mapping database label names to outputs (`name output` lines, `default`, `*`).
    create_missing_labels : bool
        With `labels_mapping`: add unknown names to the database (if it supports `add_label`).

    Configuration parameters (see `_parameters`) are upstream's; `binary_threshold` (single
    output nets), `data_as_target`, `confusion_range_min/max`, `confusion_quant_steps` (data as
    target) are used, the others (image-log display options, masked labels, weak target) are
    accepted and printed only.

    Calling `target(x)` returns the squared error `sum((val - x)^2) / batch_size` over the valid
    slots (upstream's loss, even after a softmax). The batch cross-entropy `-mean(log x[label])`
    (meaningful when `x` holds probabilities, e.g. a Softmax output) is available from
    `get_cross_entropy()`.
    """

    _arguments = ("target_value", "default_value", "top_n", "labels_mapping", "create_missing_labels")
    _parameters = {
        "confusion_range_min": Spec(float, 0.0),
        "confusion_range_max": Spec(float, 1.0),
        "confusion_quant_steps": Spec(int, 10),
        "data_as_target": Spec(bool, False),
        "no_display_label": Spec(int, -1),
        "labels_hue_offset": Spec(int, 0),
        "estimated_labels_value_display": Spec(bool, True),
        "masked_label": Spec(int, -1),
        "masked_label_value": Spec(bool, False),
        "binary_threshold": Spec(float, 0.5),
        "value_threshold": Spec(float, 0.0),
        "image_log_format": Spec(str, "jpg"),
        "weak_target": Spec(int, -2),
    }

    def __init__(self, provider, name=None, target_value=1.0, default_value=0.0, top_n=1, labels_mapping="",
                 create_missing_labels=False, **config):
        for key, value, types in (("target_value", target_value, "float"), ("default_value", default_value, "float"),
                                  ("top_n", top_n, "int"), ("labels_mapping", labels_mapping, "str"),
                                  ("create_missing_labels", create_missing_labels, "bool")):
            ok = {"float": isinstance(value, float),
                  "int": isinstance(value, int) and not isinstance(value, bool),
                  "str": isinstance(value, str), "bool": isinstance(value, bool)}[types]
            if not ok:
                raise WrongInputType(key, type(value), [types])
        if top_n < 1:
            raise WrongValue("top_n", top_n, ["an int >= 1"])
        arguments = {"target_value": target_value, "default_value": default_value, "top_n": top_n,
                     "labels_mapping": labels_mapping, "create_missing_labels": create_missing_labels}
        super().__init__(provider, name, arguments, **config)
        self._partitions = {}
        self._nb_targets = None
        self._deepnet = None
        self._losses = []            # every call's loss, in call order
        self._learn_losses = []      # (step, loss) of Learn calls: the training curve
        self._pass_losses = {}       # partition -> [(step, loss)] of every call (never cleared)
        self._learn_history = []     # success of every Learn batch of the run (never cleared)
        self._nb_learn_steps = 0     # Learn batches seen (never cleared): x axis of curves
        self._last_loss = None
        self._cross_entropy = None
        self._validation_points = []  # (step, validation success), see new_validation_point()
        self._max_validation = 0.0
        self._estimated = None        # host arrays of the last batch
        self._estimated_values = None
        self._last_targets = None
        self._labels_map, self._default_target = {}, None
        if labels_mapping:
            self._read_labels_mapping(labels_mapping, create_missing_labels)

    # -- accessors ------------------------------------------------------------------------------
    def get_deepnet(self):
        """The graph of the last batch this target scored (None before the first call)."""
        return self._deepnet

    def get_nb_targets(self):
        """Number of classes scored: the output channels, or 2 for a single-output net."""
        return self._nb_targets

    def _current_partition(self) -> str:
        return self._provider.get_partition()

    def _score(self, partition) -> _PartitionScore:
        score = self._partitions.get(partition)
        if score is None:
            score = self._partitions[partition] = _PartitionScore()
        return score

    def _log_dir(self) -> str:
        """The log folder, named after the target (through file_stem: the name comes from a model file)."""
        os.makedirs(file_stem(self._name), exist_ok=True)
        return file_stem(self._name)

    # -- labels -------------------------------------------------------------------------------
    def _label_database(self):
        getter = getattr(self._provider, "get_database", None)
        return getter() if callable(getter) else None

    def _label_id(self, label_name, create):
        db = self._label_database()
        if db is not None:
            if callable(getattr(db, "get_label_id", None)):
                try:
                    return int(db.get_label_id(label_name))
                except (ValueError, KeyError, RuntimeError, IndexError):
                    pass
            elif callable(getattr(db, "get_label_name", None)) and callable(getattr(db, "get_nb_labels", None)):
                for i in range(db.get_nb_labels()):
                    if db.get_label_name(i) == label_name:
                        return i
            if create and callable(getattr(db, "add_label", None)):
                return int(db.add_label(label_name))
        elif label_name.lstrip("-").isdigit():
            return int(label_name)
        return None

    def _read_labels_mapping(self, path, create):
        """Parse a labels mapping file: `name output` per line (`#` comments, `default`, `*`)."""
        if not os.path.isfile(path):
            raise RuntimeError(f"Target '{self._name}': could not open class mapping file: {path}")
        with open(path) as f:
            lines = f.read().splitlines()
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                fields = shlex.split(line)
                label_name, output = fields
                output = int(output)
            except ValueError:
                raise RuntimeError(f"Target '{self._name}': unreadable value: {line} in file {path}") from None
            if output < -1:
                raise RuntimeError(f"Target '{self._name}': unreadable value: {line} in file {path}")
            if label_name == "default":
                if self._default_target is not None:
                    raise RuntimeError(f"Target '{self._name}': default mapping already exists in file {path}")
                self._default_target = output
                continue
            label = -1 if label_name == "*" else self._label_id(label_name, create)
            if label is None:
                warnings.warn(f"Target '{self._name}': no label named '{label_name}' in the database "
                              f"(file {path}); line ignored", RuntimeWarning, stacklevel=3)
                continue
            if label in self._labels_map:
                raise RuntimeError(f"Target '{self._name}': mapping already exists for label: {line} in file {path}")
            self._labels_map[label] = output

    def _map_labels(self, labels, xp):
        """Apply the labels mapping to labels >= 0 (negative labels stay invalid slots)."""
        if not self._labels_map and self._default_target is None:
            return labels
        valid = labels >= 0
        top = max([int(labels.max()) if labels.size else 0] + [k for k in self._labels_map]) + 1
        lut = np.full(top, -2 if self._default_target is None else self._default_target, dtype=np.int64)
        for label, output in self._labels_map.items():
            if label >= 0:
                lut[label] = output
        mapped = xp.asarray(lut)[xp.where(valid, labels, 0)]
        missing = valid & (mapped == -2)
        if bool(missing.any()):
            bad = sorted(set(int(v) for v in to_host(labels[missing]).ravel()))
            raise RuntimeError(f"Target '{self._name}': incomplete class mapping: no output specified "
                               f"for label(s) {bad}")
        return xp.where(valid, mapped, -1)

    def _batch_labels(self, graph_provider):
        for provider in (graph_provider, self._provider):
            if provider is None:
                continue
            try:
                labels = provider.get_labels()
            except (NotImplementedError, RuntimeError):
                continue
            if labels is not None:
                return labels
        raise RuntimeError(f"Target '{self._name}': the batch has no labels (its provider gives none)")

    def _targets(self, labels, out_shape, xp):
        """Per-output-pixel target class [N, H, W] (-1: invalid), labels resampled to the output."""
        n, _, h, w = out_shape
        lab = labels._data if isinstance(labels, Tensor) else labels
        lab = xp.asarray(to_host(lab) if xp is np else lab).astype(np.int64)
        if lab.ndim == 0 or lab.shape[0] != n:
            raise RuntimeError(f"Target '{self._name}': labels of shape {list(lab.shape)} do not match "
                               f"the output batch of shape {list(out_shape)}")
        if lab.ndim == 4:
            lab = lab[:, 0]
        elif lab.ndim <= 2:
            per = lab.reshape(n, -1)
            if h * w == 1 or per.shape[1] == 1:
                lab = per[:, :1].reshape(n, 1, 1)
            else:
                raise RuntimeError(f"Target '{self._name}': labels of shape {list(lab.shape)} cannot "
                                   f"be matched to spatial outputs of shape {list(out_shape)}")
        hl, wl = lab.shape[1], lab.shape[2]
        if (hl, wl) != (h, w):
            # Nearest label at each output pixel's centre, as upstream.
            iy = xp.asarray(np.floor((np.arange(h) + 0.5) * hl / h).astype(np.int64))
            ix = xp.asarray(np.floor((np.arange(w) + 0.5) * wl / w).astype(np.int64))
            lab = lab[:, iy][:, :, ix]
        return self._map_labels(lab, xp)

    # -- the call -------------------------------------------------------------------------------
    def __call__(self, inputs):
        """Score a batch: seed the gradient of `inputs` (Learn partition only), return the loss tensor."""
        if not isinstance(inputs, Tensor):
            raise WrongInputType("inputs", type(inputs), ["Tensor"])
        deepnet = inputs.get_deepnet()
        graph_provider = deepnet.get_provider()
        partition = graph_provider.get_partition() if graph_provider is not None else self._current_partition()
        y = inputs._data
        if y.ndim < 2:
            raise RuntimeError(f"Target '{self._name}': output of shape {list(y.shape)} has no channel axis")
        shape4 = tuple(y.shape) + (1,) * (4 - y.ndim) if y.ndim < 4 else tuple(y.shape)
        if len(shape4) != 4:
            raise RuntimeError(f"Target '{self._name}': expected an NCHW output, got shape {list(y.shape)}")
        y4 = y.reshape(shape4)
        if self._deepnet is None and distributed.is_root():   # the other MPI ranks write nothing
            self._log_dir()
        self._deepnet = deepnet
        if self._config["data_as_target"]:
            grad, loss = self._process_data_target(y4, graph_provider, partition)
        else:
            grad, loss = self._process_labels(y4, graph_provider, partition)
        if partition == "Learn":
            deepnet.seed_gradient(inputs, grad.reshape(y.shape))
            self._nb_learn_steps += 1
            self._learn_losses.append((self._nb_learn_steps, loss))
        self._pass_losses.setdefault(partition, []).append((self._nb_learn_steps, loss))
        self._last_loss = loss
        self._losses.append(loss)
        out = Tensor._wrap(np.array([loss], dtype=np.float32), cell=LossProducer(self, deepnet))
        out._leaf = True
        return out

    def _check_nb_targets(self, nb_targets):
        if self._nb_targets is None:
            self._nb_targets = nb_targets
        elif self._nb_targets != nb_targets:
            raise RuntimeError(f"Target '{self._name}': the output now has {nb_targets} classes, "
                               f"it had {self._nb_targets} at the first call")

    def _process_labels(self, y4, graph_provider, partition):
        xp = array_module(y4)
        n, k, h, w = y4.shape
        nb_targets = k if k > 1 else 2
        top_n = self._args["top_n"]
        if top_n > k or (k == 1 and top_n > 1):
            raise RuntimeError(f"Target '{self._name}': top_n ({top_n}) must be <= the number of outputs ({k})")
        targets = self._targets(self._batch_labels(graph_provider), y4.shape, xp)  # [N, H, W]
        valid = targets >= 0
        if targets.size and int(targets.max()) >= nb_targets:   # (one reduction)
            raise RuntimeError(f"Target '{self._name}': label {int(targets.max())} out of range "
                               f"for an output of {k} channel(s) ({nb_targets} classes)")
        self._check_nb_targets(nb_targets)
        if xp is np and k > 1 and h * w == 1 and top_n == 1:
            return self._score_classes(y4, targets, valid, partition)
        return self._score_outputs(y4, targets, valid, nb_targets, partition, xp)

    def _score_outputs(self, y4, targets, valid, nb_targets, partition, xp):
        """Gradient seed, loss, cross-entropy, estimated classes and success of a batch whose
        valid per-pixel `targets` are checked: any output (spatial, single, top-N, CuPy)."""
        n, k = y4.shape[:2]
        top_n = self._args["top_n"]
        safe = xp.where(valid, targets, 0)

        # Gradient seed and loss: (output - val) on valid slots (standard sign).
        tv, dv = self._args["target_value"], self._args["default_value"]
        if k > 1:
            is_target = safe[:, None] == xp.arange(k).reshape(1, k, 1, 1)
        else:
            is_target = (safe == 1)[:, None]
        val = xp.where(is_target, y4.dtype.type(tv), y4.dtype.type(dv))
        grad = xp.where(valid[:, None], y4 - val, y4.dtype.type(0))
        loss = float((grad.astype(np.float64) ** 2).sum()) / n

        # Cross-entropy of the batch, assuming probabilities.
        if k > 1:
            p = xp.take_along_axis(y4, safe[:, None], axis=1)[:, 0]
        else:
            p = xp.where(safe == 1, y4[:, 0], 1.0 - y4[:, 0])
        nb_valid = int(valid.sum())
        ce = -xp.log(xp.clip(p.astype(np.float64), 1e-12, None))
        self._cross_entropy = float((ce * valid).sum()) / nb_valid if nb_valid else 0.0

        # Estimated classes.
        if k > 1:
            if top_n > 1:
                # Stable sort: among equal values the lowest index comes first, as argmax.
                top = xp.argsort(-y4, axis=1, kind="stable")[:, :top_n]
                est1 = top[:, 0]
            else:
                est1 = xp.argmax(y4, axis=1)
                top = est1[:, None]
            values = xp.take_along_axis(y4, top, axis=1)
        else:
            est1 = (y4[:, 0] > self._config["binary_threshold"]).astype(np.int64)
            top = est1[:, None]
            values = y4
        self._estimated = to_host(top).astype(np.int64)
        self._estimated_values = to_host(values).astype(np.float32)
        self._last_targets = to_host(targets)
        self._record_success(partition, targets, valid, est1, top, nb_targets, xp)
        return grad, loss

    def _score_classes(self, y4, targets, valid, partition):
        """`_score_outputs` for the common classifier (numpy, K > 1 outputs of 1x1, top-1): the
        same values, bit for bit, from row indexing instead of one-hot masks and
        `take_along_axis` (its numpy calls were a tenth of a compiled LeNet step's Python). A
        batch without invalid slots (the usual one) skips the masking (multiplying by a mask
        of ones changes no value)."""
        n, k = y4.shape[:2]
        y = y4.reshape(n, k)
        t = targets.reshape(n)
        v = valid.reshape(n)
        nb_valid = int(np.count_nonzero(v))
        every = nb_valid == n
        rows = _rows(n)
        safe = t if every else np.where(v, t, 0)
        one = y4.dtype.type
        p = y[rows, safe]
        grad = y - one(self._args["default_value"])
        grad[rows, safe] = p - one(self._args["target_value"])
        if not every:
            grad[~v] = 0
        squares = grad.astype(np.float64)
        loss = float(np.square(squares, out=squares).sum()) / n

        ce = np.maximum(p, 1e-12, dtype=np.float64)   # clip(., 1e-12, None) in float64, NaN kept
        ce = np.negative(np.log(ce, out=ce), out=ce)
        self._cross_entropy = float((ce if every else ce * v).sum()) / nb_valid if nb_valid else 0.0

        est1 = y.argmax(axis=1)
        self._estimated = est1.reshape(n, 1, 1, 1)
        self._estimated_values = y[rows, est1].astype(np.float32, copy=False).reshape(n, 1, 1, 1)
        self._last_targets = targets
        score = self._score(partition)
        hit = est1 == t if every else (est1 == t) & v
        if nb_valid:
            score.success.append(int(np.count_nonzero(hit)) / nb_valid)
            if partition == "Learn":
                self._learn_history.append(score.success[-1])
        pairs = t * k + est1 if every else t[v] * k + est1[v]
        counts = np.bincount(pairs, minlength=k * k).reshape(k, k)
        if score.confusion is None:
            score.confusion = np.zeros((k, k), dtype=np.int64)
        score.confusion += counts
        return grad.reshape(y4.shape), loss

    def _record_success(self, partition, targets, valid, est1, top, nb_targets, xp):
        score = self._score(partition)
        n = targets.shape[0]
        hit = (est1 == targets) & valid
        hit_n = (top == targets[:, None]).any(axis=1) & valid if self._args["top_n"] > 1 else None
        if targets.shape[1] * targets.shape[2] == 1:
            nb_valid = int(valid.sum())
            if nb_valid:
                score.success.append(int(hit.sum()) / nb_valid)
                if partition == "Learn":
                    self._learn_history.append(score.success[-1])
                if hit_n is not None:
                    score.top_n_success.append(int(hit_n.sum()) / nb_valid)
        else:
            # Spatial outputs: per image, the mean over present classes of the pixel hit rate
            # (upstream's class-balanced image success), averaged over images with a valid pixel.
            flat_t = xp.where(valid, targets, 0).reshape(n, -1)
            idx = (xp.arange(n)[:, None] * nb_targets + flat_t)
            vflat = valid.reshape(n, -1)

            def per_image(hits):
                counts = xp.bincount(idx[vflat], minlength=n * nb_targets).reshape(n, nb_targets)
                good = xp.bincount(idx[hits.reshape(n, -1)], minlength=n * nb_targets).reshape(n, nb_targets)
                present = counts > 0
                nb_present = present.sum(axis=1)
                rate = (good / xp.maximum(counts, 1)).sum(axis=1) / xp.maximum(nb_present, 1)
                keep = nb_present > 0
                return float(rate[keep].mean()) if bool(keep.any()) else None

            s = per_image(hit)
            if s is not None:
                score.success.append(s)
                if partition == "Learn":
                    self._learn_history.append(s)
                if hit_n is not None:
                    score.top_n_success.append(per_image(hit_n))
        pairs = targets[valid] * nb_targets + est1[valid]
        counts = to_host(xp.bincount(pairs.ravel(), minlength=nb_targets * nb_targets)).reshape(nb_targets, nb_targets)
        if score.confusion is None:
            score.confusion = np.zeros((nb_targets, nb_targets), dtype=np.int64)
        score.confusion += counts.astype(np.int64)

    def _process_data_target(self, y4, graph_provider, partition):
        """Auto-encoder case: the target is the input data itself."""
        xp = array_module(y4)
        provider = graph_provider if graph_provider is not None else self._provider
        data = provider.get_data()
        d = data._data if isinstance(data, Tensor) else data
        d = xp.asarray(d).astype(y4.dtype)
        if d.size != y4.size:
            raise RuntimeError(f"Target '{self._name}' (data_as_target): output shape {list(y4.shape)} does "
                               f"not match the input data shape {list(d.shape)}")
        d = d.reshape(y4.shape)
        n = y4.shape[0]
        grad = y4 - d
        sq = grad.astype(np.float64) ** 2
        loss = float(sq.sum()) / n
        self._cross_entropy = None
        steps = self._config["confusion_quant_steps"]
        self._check_nb_targets(steps)
        lo, hi = self._config["confusion_range_min"], self._config["confusion_range_max"]
        scale = (steps - 1) / (hi - lo) if hi != lo else 0.0

        def quantise(a):
            return xp.clip(xp.rint((a.astype(np.float64) - lo) * scale), 0, steps - 1).astype(np.int64)

        t, e = quantise(d), quantise(y4)
        score = self._score(partition)
        # Upstream records the per-image mean squared error as the "success" in this mode.
        score.success.append(float(sq.reshape(n, -1).mean(axis=1).mean()))
        counts = to_host(xp.bincount((t * steps + e).ravel(), minlength=steps * steps)).reshape(steps, steps)
        if score.confusion is None:
            score.confusion = np.zeros((steps, steps), dtype=np.int64)
        score.confusion += counts.astype(np.int64)
        self._estimated = to_host(e)
        self._estimated_values = to_host(y4).astype(np.float32)
        self._last_targets = to_host(t)
        return grad, loss

    # -- losses -------------------------------------------------------------------------------
    def _require_called(self, what):
        if self._last_loss is None:
            raise RuntimeError(f"Target '{self._name}': {what} needs at least one call of the target")

    def loss(self) -> float:
        """Loss of the last batch: sum((val - output)^2) / batch_size."""
        self._require_called("loss()")
        return self._last_loss

    def get_current_loss(self) -> float:
        """Same as `loss()`."""
        return self.loss()

    def get_loss(self) -> list:
        """Loss of every batch scored so far, in call order (all partitions)."""
        return list(self._losses)

    def get_cross_entropy(self) -> float:
        """Mean cross-entropy -log(x[label]) over the valid slots of the last batch.

        Meaningful when the output holds probabilities (Softmax); probabilities are clipped at
        1e-12. Single-output nets: binary cross-entropy. None with `data_as_target`.
        """
        self._require_called("get_cross_entropy()")
        return self._cross_entropy

    # -- success and scores -------------------------------------------------------------------
    @staticmethod
    def _average(values, window) -> float:
        if not isinstance(window, int) or isinstance(window, bool):
            raise WrongInputType("window", type(window), ["int"])
        if not values:
            return 0.0
        if 0 < window < len(values):
            values = values[-window:]
        return float(np.mean(values))

    def get_average_success(self, window: int = 0, partition: str = None) -> float:
        """Mean of the per-batch success rates of the current partition (last `window` batches, 0: all).

        This is upstream's number: an average *per batch*, so a partial last batch weighs as
        much as a full one (e.g. 0.90496 where 90.60 % of the test images are right). The
        stimulus-weighted rate, which every number n2d2 prints uses, is `get_success_rate()`.
        Raises RuntimeWarning when top_n != 1 (as upstream). `partition` overrides the
        provider's current partition.
        """
        if self._args["top_n"] != 1:
            raise RuntimeWarning("TopN != 1. You may want to use get_average_top_n_success()?")
        return self._average(self._score(partition or self._current_partition()).success, window)

    def get_success_rate(self, partition: str = None) -> float:
        """Stimulus-weighted success of `partition` (default: current) since its last clear:
        correct / scored, from the confusion matrix (pixels for spatial outputs); 0.0 when
        nothing was scored. n2d2 extension: upstream only has the per-batch average."""
        m = self.get_confusion_matrix(partition)
        total = int(m.sum())
        return float(np.trace(m)) / total if total else 0.0

    def get_average_top_n_success(self, window: int = 0, partition: str = None) -> float:
        """Mean of the per-batch top-N success rates of the current partition (needs top_n > 1)."""
        if self._args["top_n"] == 1:
            raise RuntimeWarning("Using this function with TopN=1 returns 0. "
                                 "You may want to use get_average_success()?")
        return self._average(self._score(partition or self._current_partition()).top_n_success, window)

    def get_average_score(self, metric: str, partition: str = None) -> float:
        """Mean over classes of a confusion-matrix metric (see the module docstring) for the current partition.

        0.0 while the partition's confusion matrix is empty; WrongValue for an unknown metric.
        """
        if metric not in METRICS:
            raise WrongValue("metric", metric, METRICS)
        confusion = self._score(partition or self._current_partition()).confusion
        if confusion is None or confusion.sum() == 0:
            return 0.0
        return float(np.mean(confusion_metrics(confusion)[metric]))

    def get_confusion_matrix(self, partition: str = None) -> np.ndarray:
        """Confusion matrix M[target, estimated] (counts) of `partition` (default: the current one)."""
        partition = partition or self._current_partition()
        score = self._partitions.get(partition)
        if score is None or score.confusion is None:
            k = self._nb_targets or 0
            return np.zeros((k, k), dtype=np.int64)
        return score.confusion.copy()

    def clear_success(self, partition: str = None):
        """Forget the success rates of `partition` (default: the current one)."""
        score = self._score(partition or self._current_partition())
        score.success.clear()
        score.top_n_success.clear()

    def clear_score(self, partition: str = None):
        """Forget the success rates and the confusion matrix of `partition` (default: the current one)."""
        partition = partition or self._current_partition()
        self.clear_success(partition)
        self._score(partition).confusion = None

    def new_validation_point(self, step: int = None, score: float = None) -> bool:
        """Record one point of the validation curve; returns True when it is the best so far.

        A training loop calls it after each validation pass (e.g. once per epoch). `score`
        defaults to the average success of the Validation partition since its last clear,
        `step` to the number of Learn batches scored so far. `log_success` in the Validation
        partition writes these points (`Success_<name>.dat`) and draws them over the learning
        curve.
        """
        if score is None:
            values = self._score("Validation").success
            if not values:
                raise RuntimeError(f"Target '{self._name}': no Validation batch scored since the last clear")
            score = float(np.mean(values))
        if step is None:
            step = self._nb_learn_steps
        if not isinstance(step, int) or isinstance(step, bool):
            raise WrongInputType("step", type(step), ["int"])
        score = float(score)
        self._validation_points.append((step, score))
        best = score > self._max_validation or len(self._validation_points) == 1
        if best:
            self._max_validation = score
        return best

    def get_validation_points(self) -> list:
        """The (step, score) points recorded by `new_validation_point`."""
        return list(self._validation_points)

    # -- logs -----------------------------------------------------------------------------------
    def _target_names(self) -> list:
        """One printable name per class: the database label name, else the class index."""
        k = self._nb_targets or 0
        db = self._label_database() if not self._config["data_as_target"] else None
        getter = getattr(db, "get_label_name", None) if db is not None else None

        def label_name(label):
            if label < 0:
                return "*"
            if callable(getter):
                try:
                    return str(getter(label))
                except (IndexError, KeyError, ValueError, RuntimeError):
                    return ""
            return str(label)

        names = []
        for t in range(k):
            if self._labels_map or self._default_target is not None:
                if t == self._default_target:
                    name = "default"
                else:
                    labels = sorted(lab for lab, o in self._labels_map.items() if o == t)
                    name = (label_name(labels[0]) + ("..." if len(labels) > 1 else "")) if labels else ""
            else:
                name = label_name(t)
            names.append("_".join(name.split()) or "-")
        return names

    def log_confusion_matrix(self, name: str, partition: str = None):
        """Write `ConfusionMatrix_<name>.dat`, `.png` and `ConfusionMatrix_<name>_score.dat` in the target directory.

        The .dat has the header `target estimated # %` then one line per (target, estimated)
        pair: count and ratio of the target's row. The score file has one line per class with
        every metric of METRICS, then an `AVG` line.
        """
        if self._nb_targets is None:
            raise RuntimeError(f"Target '{self._name}': log_confusion_matrix() needs at least one call of the target")
        m = self.get_confusion_matrix(partition)
        k = m.shape[0]
        rows = m.sum(axis=1, keepdims=True)
        ratio = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0)
        lines = ["target estimated # %"]
        lines += [f"{t} {e} {m[t, e]} {ratio[t, e]:g}" for t in range(k) for e in range(k)]
        base = os.path.join(self._log_dir(), f"ConfusionMatrix_{name}")
        atomic_write_text(base + ".dat", "\n".join(lines) + "\n")
        names = self._target_names()
        metrics = confusion_metrics(m)
        score = ["Target TargetName " + " ".join(METRICS)]
        score += [f"{t} {names[t]} " + " ".join(f"{metrics[key][t]:g}" for key in METRICS) for t in range(k)]
        score += ["", "AVG - " + " ".join(f"{float(np.mean(metrics[key])) if k else 0.0:g}" for key in METRICS)]
        atomic_write_text(base + "_score.dat", "\n".join(score) + "\n")

        plots.confusion_matrix_png(base + ".png", m, names)

    def log_success(self, name: str, partition: str = None, avg_window: int = 0):
        """Write the success curve of `partition` (default: current) in the target directory.

        - Learn: `Success_<name>.dat` (`success running_average`, one line per Learn batch of
          the whole run: line k is step k) and `.png`.
        - Test: the same for the Test batches scored since the partition's last clear.
        - Validation: `Success_<name>.dat` holds the validation points (`step score`, see
          `new_validation_point`; when none were recorded, one point for the Validation batches
          scored so far), `<name>_LearningSuccess.dat` the whole run's Learn success curve, and
          `Success_<name>.png` both curves on the same axis (Learn steps).
        - top_n > 1: also `SuccessTopN_<name>.dat` (+ `.png`) for the partition.
        - Always: `Loss_<name>.dat` and `Loss_<name>.png`, the partition's own loss: one `step
          loss` line per Learn batch, or per pass (`step` = Learn steps done, mean loss of the
          pass) for Validation and Test.
        """
        partition = partition or self._current_partition()
        directory = self._log_dir()
        path = os.path.join(directory, f"Success_{name}")
        score = self._score(partition)
        if partition == "Validation":
            points = list(self._validation_points)
            best = self._max_validation
            if not points and score.success:
                points = [(self._nb_learn_steps, float(np.mean(score.success)))]
                best = points[0][1]
            atomic_write_text(path + ".dat", "".join("%d %g\n" % p for p in points))
            learn = self._learn_history
            text, avg = _data_rate_text(learn, avg_window)
            atomic_write_text(os.path.join(directory, f"{name}_LearningSuccess.dat"), text)
            plots.success_png(path + ".png", learn, avg, validation=points, best=best if points else None)
        elif partition == "Learn":
            text, avg = _data_rate_text(self._learn_history, avg_window)
            atomic_write_text(path + ".dat", text)
            plots.success_png(path + ".png", self._learn_history, avg)
        else:
            if not score.success:
                print("Notice: no data rate recorded.")
            text, avg = _data_rate_text(score.success, avg_window)
            atomic_write_text(path + ".dat", text)
            plots.success_png(path + ".png", score.success, avg)
        if self._args["top_n"] > 1:
            text, avg = _data_rate_text(score.top_n_success, avg_window)
            top_path = os.path.join(directory, f"SuccessTopN_{name}")
            atomic_write_text(top_path + ".dat", text)
            plots.success_png(top_path + ".png", score.top_n_success, avg)
        loss_path = os.path.join(directory, f"Loss_{name}")
        points = self._loss_curve(partition)
        atomic_write_text(loss_path + ".dat", "".join("%d %g\n" % p for p in points))
        context = self._learn_losses if partition != "Learn" else None
        plots.loss_png(loss_path + ".png", [s for s, _ in points], [v for _, v in points],
                       label=f"{partition} loss", learn=context)

    def _loss_curve(self, partition: str) -> list:
        """(step, loss) points of `partition`: every Learn batch, or one point per pass (the
        mean over the pass's batches, at the number of Learn steps done) for the others."""
        if partition == "Learn":
            return list(self._learn_losses)
        by_step = {}
        for step, loss in self._pass_losses.get(partition, []):
            by_step.setdefault(step, []).append(loss)
        return [(step, float(np.mean(values))) for step, values in sorted(by_step.items())]

    def log_stats(self, dir_name: str):
        """Write the statistics of the last scored graph (`stats.log`, `stats.dat`, ...) under `dir_name`."""
        if self._deepnet is None:
            raise RuntimeError(f"Target '{self._name}': log_stats() needs at least one call of the target")

        return stats.log_stats(self._deepnet, dir_name)

    def get_estimated_labels(self) -> np.ndarray:
        """Estimated classes of the last batch, [N, top_n, H, W] (top-1 first)."""
        self._require_called("get_estimated_labels()")
        return self._estimated.copy()

    def get_estimated_labels_value(self) -> np.ndarray:
        """Output values of the estimated classes of the last batch, [N, top_n, H, W]."""
        self._require_called("get_estimated_labels_value()")
        return self._estimated_values.copy()

    def log_estimated_labels(self, path: str):
        """Write the estimated labels of the last batch to the text file `path`.

        One line per batch slot: `slot target estimated[:top_n] value[:top_n]` for 1x1
        outputs (target -1: invalid slot); for spatial outputs, `# slot <i>` followed by the
        H rows of W top-1 labels.
        """
        self._require_called("log_estimated_labels()")
        est, values, targets = self._estimated, self._estimated_values, self._last_targets
        n = est.shape[0]
        if self._config["data_as_target"] or est.ndim != 4 or est.shape[2] * est.shape[3] != 1:
            grid = est if est.ndim == 4 else est[:, None]
            lines = []
            for i in range(n):
                lines.append(f"# slot {i}")
                lines += [" ".join(str(int(v)) for v in row) for row in grid[i, 0].reshape(grid.shape[2], -1)]
            text = "\n".join(lines) + "\n"
        else:
            top = est.shape[1]
            header = "# slot target " + " ".join(f"estimated_{j}" for j in range(top)) + " " + \
                     " ".join(f"value_{j}" for j in range(top))
            lines = [header]
            flat_t = targets.reshape(n)
            vals = values.reshape(n, -1)[:, :top]
            for i in range(n):
                lines.append(f"{i} {int(flat_t[i])} " + " ".join(str(int(v)) for v in est[i, :, 0, 0]) + " " +
                             " ".join(f"{float(v):g}" for v in vals[i]))
            text = "\n".join(lines) + "\n"
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        atomic_write_text(path, text)
