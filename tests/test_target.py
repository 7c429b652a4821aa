"""Tests of n2d2.target: gradient seeds, losses, success, confusion matrix, metrics, logs, training."""
import os
import sys

import numpy as np
import pytest

import n2d2
from n2d2.activation import Tanh
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.provider import TensorPlaceholder
from n2d2.provider.base import Provider
from n2d2.solver import SGD
from n2d2.target import METRICS, Score, Target, confusion_metrics
from n2d2.tensor import Tensor
from n2d2.utils import reset_name_counters
from tests.conftest import requires_cuda


class ArrayProvider(Provider):
    """A minimal DataProvider stand-in: batches of numpy arrays, a fresh graph per batch.

    Slots past the end of the data are invalid (zero data, label -1), as DataProvider.read_batch.
    """

    def __init__(self, data, labels, batch_size, partition="Learn", name=None):
        super().__init__(name)
        self._x, self._y, self._bs = data, labels, batch_size
        self._partition = partition
        self._batch = self._labels = None

    def read_batch(self, idx):
        self._new_graph()
        x = np.zeros((self._bs,) + self._x.shape[1:], dtype=np.float32)
        y = np.full((self._bs,) + self._y.shape[1:], -1, dtype=np.int32)
        chunk = self._x[idx:idx + self._bs]
        x[:len(chunk)] = chunk
        y[:len(chunk)] = self._y[idx:idx + self._bs]
        t = Tensor.from_numpy(x)
        t.cell = self
        self._batch, self._labels = t, Tensor.from_numpy(y)
        return t

    def get_labels(self):
        return self._labels

    def get_data(self):
        return self._batch


def _batch(outputs, labels, partition="Learn"):
    """A tensor holding `outputs` whose producer is a TensorPlaceholder with `labels`."""
    x = Tensor.from_numpy(np.asarray(outputs, dtype=np.float32))
    provider = TensorPlaceholder(x, Tensor.from_numpy(np.asarray(labels, dtype=np.int32)))
    provider.set_partition(partition)
    return x, provider


def _seeds(x):
    return [g for t, g in x.get_deepnet()._seeds if t is x]


PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]], dtype=np.float32).reshape(3, 3, 1, 1)


# -- construction ------------------------------------------------------------------------------
def test_target_is_abstract():
    x, p = _batch(PROBS, [0, 1, 2])
    with pytest.raises(TypeError):
        Target(p)


def test_names_printing_and_config():
    reset_name_counters()
    x, p = _batch(PROBS, [0, 1, 2])
    t0, t1 = Score(p), Score(p, name="mine")
    t2 = Score(p)
    assert (str(t0), str(t1), str(t2)) == ("Score_0", "mine", "Score_1")
    assert t0.get_name() == "Score_0"
    text = repr(Score(p, binary_threshold=0.3, image_log_format="png", confusion_quant_steps=4))
    assert text.startswith("'Score_2' Score(target_value=1.0, default_value=0.0, top_n=1, labels_mapping=, "
                           "create_missing_labels=False | confusion_range_min=0.0")
    for key in ("confusion_range_max=1.0", "confusion_quant_steps=4", "data_as_target=False",
                "no_display_label=-1", "labels_hue_offset=0", "estimated_labels_value_display=True",
                "masked_label=-1", "masked_label_value=False", "binary_threshold=0.3", "value_threshold=0.0",
                "image_log_format=png", "weak_target=-2"):
        assert key in text
    assert not os.path.exists("Score_0")  # the directory comes with the first call


def test_argument_checks():
    x, p = _batch(PROBS, [0, 1, 2])
    with pytest.raises(WrongInputType):
        Score(p, target_value=1)
    with pytest.raises(WrongInputType):
        Score(p, top_n=2.0)
    with pytest.raises(WrongValue):
        Score(p, top_n=0)
    with pytest.raises(WrongInputType):
        Score(p, binary_threshold=1)
    with pytest.raises(ValueError):
        Score(p, not_a_parameter=1.0)
    with pytest.raises(WrongInputType):
        Score("provider")
    with pytest.raises(WrongInputType):
        Score(p)(PROBS)


def test_import_does_not_load_matplotlib():
    import subprocess

    code = ("import sys, n2d2, n2d2.target, n2d2.stats, n2d2.plots; "
            "sys.exit(1 if 'matplotlib' in sys.modules else 0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


# -- seeds and loss ----------------------------------------------------------------------------
def test_seed_and_loss_with_invalid_slot():
    x, p = _batch(PROBS, [0, 2, -1])
    target = Score(p)
    loss = target(x)
    expected_grad = np.array([[-0.3, 0.2, 0.1], [0.1, 0.3, -0.4], [0.0, 0.0, 0.0]]).reshape(3, 3, 1, 1)
    (grad,) = _seeds(x)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)
    assert grad.dtype == np.float32 and list(grad.shape) == x.shape()
    expected_loss = (0.09 + 0.04 + 0.01 + 0.01 + 0.09 + 0.16) / 3
    assert loss.is_leaf() and loss.shape() == [1] and loss.data_type() == "float"
    assert loss[0] == pytest.approx(expected_loss, rel=1e-6)
    assert target.loss() == pytest.approx(expected_loss, rel=1e-6)
    assert target.get_current_loss() == target.loss()
    assert target.get_loss() == [target.loss()]
    assert target.get_cross_entropy() == pytest.approx((-np.log(0.7) - np.log(0.6)) / 2, rel=1e-6)
    assert os.path.isdir(target.get_name())


def test_target_and_default_values():
    x, p = _batch(PROBS, [1, 0, 2])
    target = Score(p, target_value=0.9, default_value=0.1)
    loss = target(x)
    val = np.array([[0.1, 0.9, 0.1], [0.9, 0.1, 0.1], [0.1, 0.1, 0.9]])
    diff = PROBS.reshape(3, 3) - val
    np.testing.assert_allclose(_seeds(x)[0].reshape(3, 3), diff, atol=1e-6)
    assert loss[0] == pytest.approx((diff ** 2).sum() / 3, rel=1e-5)


def test_validation_partition_does_not_seed():
    x, p = _batch(PROBS, [0, 2, 0], partition="Validation")
    target = Score(p)
    loss = target(x)
    assert _seeds(x) == []
    with pytest.raises(RuntimeError):
        loss.back_propagate()
    # The loss is still the squared error of the batch outside Learn.
    assert loss[0] == pytest.approx((0.09 + 0.04 + 0.01 + 0.01 + 0.09 + 0.16 + 0.64 + 0.25 + 0.09) / 3, rel=1e-5)
    assert target.get_average_success() == pytest.approx(2 / 3)
    p.set_partition("Learn")
    assert target.get_average_success() == 0.0


def test_single_output_binary():
    out = np.array([0.8, 0.3, 0.6, 0.1], dtype=np.float32).reshape(4, 1, 1, 1)
    x, p = _batch(out, [1, 0, 0, -1])
    target = Score(p)
    loss = target(x)
    np.testing.assert_allclose(_seeds(x)[0].ravel(), [-0.2, 0.3, 0.6, 0.0], atol=1e-6)
    assert loss[0] == pytest.approx((0.04 + 0.09 + 0.36) / 4, rel=1e-5)
    assert target.get_nb_targets() == 2
    assert target.get_average_success() == pytest.approx(2 / 3)
    np.testing.assert_array_equal(target.get_confusion_matrix(), [[1, 1], [0, 1]])
    # binary_threshold moves the decision
    x2, p2 = _batch(out, [1, 0, 0, -1])
    t2 = Score(p2, binary_threshold=0.7)
    t2(x2)
    assert t2.get_average_success() == 1.0


def _assert_same_scoring(fast, general, partition):
    """The classifier fast path left the same scoring state as the general path, bit for bit."""
    ce1, ce2 = fast._cross_entropy, general._cross_entropy
    assert ce1 == ce2 or (np.isnan(ce1) and np.isnan(ce2))
    for attr in ("_estimated", "_estimated_values", "_last_targets"):
        a, b = getattr(fast, attr), getattr(general, attr)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(fast.get_confusion_matrix(partition), general.get_confusion_matrix(partition))
    assert fast._score(partition).success == general._score(partition).success


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classifier_fast_path_equals_general_path(dtype, tmp_path, monkeypatch):
    """The classifier path (`_score_classes`) gives the general path's values bit for bit:
    seeds, loss, cross-entropy, estimated labels and values, success, confusion matrix, on fresh
    random outputs with NaN, infinities, ties and invalid slots, in Learn and Validation."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(15)
    for trial in range(6):
        n, k = int(rng.integers(1, 40)), int(rng.integers(2, 12))
        y = rng.standard_normal((n, k, 1, 1)).astype(dtype)
        y[rng.random(y.shape) < 0.05] = np.nan
        y[rng.random(y.shape) < 0.03] = np.inf
        y[rng.random(y.shape) < 0.03] = -np.inf
        y[0, :2] = 0.5          # a tie: the lowest index wins
        labels = rng.integers(-1, k, n).astype(np.int32)
        partition = ("Learn", "Validation")[trial % 2]
        fast, general = Score(ArrayProvider(y, labels, n), target_value=0.9, default_value=0.1), \
            Score(ArrayProvider(y, labels, n), target_value=0.9, default_value=0.1)
        for target in (fast, general):
            target._provider.set_partition(partition)
            target._provider.read_batch(0)
        monkeypatch.setattr(fast, "_score_outputs", None)    # the fast target never takes the general path
        monkeypatch.setattr(general, "_score_classes", lambda y4, t, v, part, g=general:
                            g._score_outputs(y4, t, v, k, part, np))
        results = []
        for target in (fast, general):
            for _ in range(2):     # the confusion matrix and success lists accumulate
                grad, loss = target._process_labels(y, target._provider, partition)
                results.append((grad, loss))
        for (g1, l1), (g2, l2) in zip(results[:2], results[2:]):
            assert g1.dtype == g2.dtype and g1.shape == g2.shape
            np.testing.assert_array_equal(g1, g2)
            assert l1 == l2 or (np.isnan(l1) and np.isnan(l2))
        _assert_same_scoring(fast, general, partition)
        assert fast._learn_history == general._learn_history


def test_label_out_of_range():
    x, p = _batch(PROBS, [0, 3, 1])
    with pytest.raises(RuntimeError, match="out of range"):
        Score(p)(x)


def test_back_propagate_through_cells():
    """The loss tensor runs the batch's graph: the seed reaches the Fc as -(y - onehot) (N2D2 sign)."""
    rng = np.random.default_rng(3)
    inputs = Tensor.from_numpy(rng.normal(size=(4, 5, 1, 1)).astype(np.float32))
    TensorPlaceholder(inputs, Tensor.from_numpy(np.array([0, 1, 2, 1], dtype=np.int32)))
    fc = n2d2.cells.Fc(5, 3)
    target = Score(inputs.cell)
    y = fc(inputs)
    loss = target(y)
    w0 = fc._weights.copy()
    loss.back_propagate()
    onehot = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]].reshape(4, 3, 1, 1)
    np.testing.assert_allclose(fc.get_diffinputs().to_numpy(), onehot - y.to_numpy(), atol=1e-6)
    loss.update()
    assert not np.array_equal(w0, fc._weights)
    assert loss.cell.get_deepnet() is inputs.get_deepnet() is target.get_deepnet()


# -- spatial outputs ---------------------------------------------------------------------------
def test_spatial_seed_success_and_resampling():
    rng = np.random.default_rng(0)
    out = rng.random((2, 3, 2, 2)).astype(np.float32)
    # Labels at 4x4 resolution: the output pixel (y, x) reads label (2y+1, 2x+1).
    labels = np.full((2, 1, 4, 4), -1, dtype=np.int32)
    small = np.array([[[0, 1], [2, -1]], [[1, 1], [0, 2]]], dtype=np.int32)
    labels[:, 0, 1::2, 1::2] = small
    x, p = _batch(out, labels)
    target = Score(p)
    loss = target(x)
    onehot = (small[:, None] == np.arange(3)[None, :, None, None]).astype(np.float32)
    valid = (small >= 0)[:, None]
    diff = np.where(valid, out - onehot, 0.0)
    np.testing.assert_allclose(_seeds(x)[0], diff, atol=1e-6)
    assert loss[0] == pytest.approx((diff ** 2).sum() / 2, rel=1e-5)
    est = out.argmax(axis=1)
    conf = np.zeros((3, 3), dtype=np.int64)
    per_image = []
    for n in range(2):
        hits, counts = np.zeros(3), np.zeros(3)
        for i in range(2):
            for j in range(2):
                t = small[n, i, j]
                if t >= 0:
                    conf[t, est[n, i, j]] += 1
                    counts[t] += 1
                    hits[t] += est[n, i, j] == t
        per_image.append(np.mean(hits[counts > 0] / counts[counts > 0]))
    np.testing.assert_array_equal(target.get_confusion_matrix(), conf)
    assert target.get_average_success() == pytest.approx(np.mean(per_image))
    assert target.get_estimated_labels().shape == (2, 1, 2, 2)


# -- success, top-N, confusion matrix, metrics --------------------------------------------------
def _one_hot_scores(estimated, k, second=None):
    """Outputs whose argmax is `estimated` (and second best `second`)."""
    out = np.full((len(estimated), k), 0.01, dtype=np.float32)
    out[np.arange(len(estimated)), estimated] = 0.9
    if second is not None:
        out[np.arange(len(estimated)), second] = 0.5
    return out.reshape(len(estimated), k, 1, 1)


def test_average_success_window_and_clear():
    p = ArrayProvider(np.zeros((1, 4, 1, 1), np.float32), np.zeros(1, np.int32), 4)
    target = Score(p)
    # Three batches with 4/4, 2/4 and 1/3 (one invalid slot) correct.
    for est, lab in (([0, 1, 2, 3], [0, 1, 2, 3]), ([0, 1, 2, 3], [0, 1, 0, 0]), ([0, 1, 2, 3], [0, 0, 0, -1])):
        x, bp = _batch(_one_hot_scores(est, 4), lab)
        target(x)
    assert target.get_average_success() == pytest.approx((1.0 + 0.5 + 1 / 3) / 3)
    assert target.get_average_success(window=2) == pytest.approx((0.5 + 1 / 3) / 2)
    assert target.get_average_success(window=10) == pytest.approx((1.0 + 0.5 + 1 / 3) / 3)
    with pytest.raises(RuntimeWarning):
        target.get_average_top_n_success()
    assert target.get_confusion_matrix().sum() == 11
    target.clear_success()
    assert target.get_average_success() == 0.0
    assert target.get_confusion_matrix().sum() == 11  # clear_success keeps the matrix
    target.clear_score()
    assert target.get_confusion_matrix().sum() == 0


def test_top_n_success():
    x, p = _batch(_one_hot_scores([0, 1, 2, 3], 4, second=[1, 2, 3, 0]), [1, 1, 0, 0])
    target = Score(p, top_n=2)
    target(x)
    with pytest.raises(RuntimeWarning):
        target.get_average_success()
    # top-1 hits: slot 1 only; top-2 hits: slots 0, 1, 3
    assert target.get_average_top_n_success() == pytest.approx(3 / 4)
    assert target._score("Learn").success == [pytest.approx(1 / 4)]
    np.testing.assert_array_equal(target.get_estimated_labels()[:, :, 0, 0], [[0, 1], [1, 2], [2, 3], [3, 0]])
    x3, p3 = _batch(_one_hot_scores([0, 1], 2), [0, 1])
    with pytest.raises(RuntimeError, match="top_n"):
        Score(p3, top_n=3)(x3)


# targets [0,0,0,1,1,2], estimated [0,0,1,1,2,2] -> M = [[2,1,0],[0,1,1],[0,0,1]]
_T, _E = [0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 2, 2]
_PER_CLASS = {  # hand-computed from TP/FN/FP/TN = (2,1,0,3), (1,1,1,3), (1,0,1,4)
    "Sensitivity": [2 / 3, 1 / 2, 1], "Specificity": [1, 3 / 4, 4 / 5], "Precision": [1, 1 / 2, 1 / 2],
    "NegativePredictiveValue": [3 / 4, 3 / 4, 1], "Accuracy": [5 / 6, 4 / 6, 5 / 6],
    "F1Score": [0.8, 0.5, 2 / 3], "IU": [2 / 3, 1 / 3, 1 / 2],
}
_PER_CLASS.update({
    "MissRate": [1 - v for v in _PER_CLASS["Sensitivity"]], "FallOut": [1 - v for v in _PER_CLASS["Specificity"]],
    "FalseDiscoveryRate": [1 - v for v in _PER_CLASS["Precision"]],
    "FalseOmissionRate": [1 - v for v in _PER_CLASS["NegativePredictiveValue"]],
    "Informedness": [a + b - 1 for a, b in zip(_PER_CLASS["Sensitivity"], _PER_CLASS["Specificity"])],
    "Markedness": [a + b - 1 for a, b in zip(_PER_CLASS["Precision"], _PER_CLASS["NegativePredictiveValue"])],
})


def test_confusion_matrix_and_metrics():
    x, p = _batch(_one_hot_scores(_E, 3), _T, partition="Test")
    target = Score(p)
    target(x)
    np.testing.assert_array_equal(target.get_confusion_matrix(), [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(target.get_confusion_matrix("Test"), target.get_confusion_matrix())
    assert target.get_confusion_matrix("Learn").sum() == 0
    assert set(_PER_CLASS) == set(METRICS)
    per_class = confusion_metrics(target.get_confusion_matrix())
    for metric in METRICS:
        np.testing.assert_allclose(per_class[metric], _PER_CLASS[metric], err_msg=metric)
        assert target.get_average_score(metric) == pytest.approx(np.mean(_PER_CLASS[metric])), metric
    with pytest.raises(WrongValue):
        target.get_average_score("Recall")
    # A class never seen gets 0 for ratios with an empty numerator, as upstream.
    m = confusion_metrics(np.array([[3, 0], [0, 0]]))
    assert m["Sensitivity"][1] == 0.0 and m["Precision"][1] == 0.0 and m["Specificity"][1] == 1.0


def test_confusion_accumulates_over_batches():
    p = ArrayProvider(np.zeros((1, 3, 1, 1), np.float32), np.zeros(1, np.int32), 3, partition="Test")
    target = Score(p)
    for _ in range(2):
        x, bp = _batch(_one_hot_scores(_E, 3), _T, partition="Test")
        target(x)
    np.testing.assert_array_equal(target.get_confusion_matrix(), 2 * np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]]))


# -- logs --------------------------------------------------------------------------------------
def _assert_png(path):
    assert os.path.isfile(path) and os.path.getsize(path) > 100
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def _no_temp_files(directory):
    assert not [f for f in os.listdir(directory) if f.startswith(".tmp_")]


def test_log_confusion_matrix_files():
    x, p = _batch(_one_hot_scores(_E, 3), _T, partition="Test")
    target = Score(p, name="tgt")
    with pytest.raises(RuntimeError):
        target.log_confusion_matrix("early")
    target(x)
    target.log_confusion_matrix("cm")
    lines = open("tgt/ConfusionMatrix_cm.dat").read().splitlines()
    assert lines[0] == "target estimated # %"
    assert len(lines) == 1 + 9
    assert lines[1:4] == ["0 0 2 0.666667", "0 1 1 0.333333", "0 2 0 0"]
    assert lines[-1] == "2 2 1 1"
    score = open("tgt/ConfusionMatrix_cm_score.dat").read().splitlines()
    assert score[0].startswith("Target TargetName Sensitivity Specificity Precision")
    assert score[0].split() == ["Target", "TargetName"] + list(METRICS)
    assert len(score) == 1 + 3 + 2 and score[4] == ""
    row0 = score[1].split()
    assert row0[:2] == ["0", "0"]
    np.testing.assert_allclose([float(v) for v in row0[2:]], [_PER_CLASS[m][0] for m in METRICS], atol=1e-5)
    avg = score[5].split()
    assert avg[0] == "AVG"
    np.testing.assert_allclose([float(v) for v in avg[2:]], [np.mean(_PER_CLASS[m]) for m in METRICS], atol=1e-5)
    _assert_png("tgt/ConfusionMatrix_cm.png")
    _no_temp_files("tgt")
    assert "matplotlib" in sys.modules  # loaded by the plot, not by `import n2d2`


def test_log_success_test_partition():
    p = ArrayProvider(np.zeros((1, 2, 1, 1), np.float32), np.zeros(1, np.int32), 2, partition="Test")
    target = Score(p)
    for est, lab in (([0, 1], [0, 1]), ([0, 1], [0, 0])):
        x, bp = _batch(_one_hot_scores(est, 2), lab, partition="Test")
        target(x)
    target.log_success("run")
    d = target.get_name()
    assert open(f"{d}/Success_run.dat").read() == "1 1\n0.5 0.75\n"
    _assert_png(f"{d}/Success_run.png")
    assert os.path.isfile(f"{d}/Loss_run.dat")
    _assert_png(f"{d}/Loss_run.png")
    _no_temp_files(d)


def test_log_success_validation_curve_and_loss():
    rng = np.random.default_rng(1)
    provider = ArrayProvider(np.zeros((1, 3, 1, 1), np.float32), np.zeros(1, np.int32), 3)
    target = Score(provider, name="val")
    expected_losses, validation_losses = [], []
    for epoch in range(2):
        provider.set_partition("Learn")
        for _ in range(3):
            out = rng.random((3, 3, 1, 1)).astype(np.float32)
            x, bp = _batch(out, [0, 1, 2])
            expected_losses.append(float(target(x)[0]))
        provider.set_partition("Validation")
        target.clear_success()
        x, bp = _batch(_one_hot_scores([0, 1, 2], 3), [0, 1, 2 if epoch else 0], partition="Validation")
        validation_losses.append(float(target(x)[0]))
        assert target.new_validation_point()  # first point, then a better one
    assert target.get_validation_points() == [(3, pytest.approx(2 / 3)), (6, 1.0)]
    assert not target.new_validation_point(step=7, score=0.5)
    target.log_success("curve")
    assert open("val/Success_curve.dat").read().splitlines() == ["3 0.666667", "6 1", "7 0.5"]
    learning = open("val/curve_LearningSuccess.dat").read().splitlines()
    assert len(learning) == 6 and all(len(line.split()) == 2 for line in learning)
    _assert_png("val/Success_curve.png")
    # the Validation partition's own loss: one point per pass, at the Learn step where it ran
    losses = open("val/Loss_curve.dat").read().splitlines()
    assert [int(line.split()[0]) for line in losses] == [3, 6]
    np.testing.assert_allclose([float(line.split()[1]) for line in losses], validation_losses, rtol=1e-5)
    _assert_png("val/Loss_curve.png")
    provider.set_partition("Learn")
    target.log_success("learn")
    losses = open("val/Loss_learn.dat").read().splitlines()
    assert [int(line.split()[0]) for line in losses] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([float(line.split()[1]) for line in losses], expected_losses, rtol=1e-5)
    assert len(target.get_loss()) == 8  # 6 Learn + 2 Validation batches


def test_log_stats_and_estimated_labels():
    x, p = _batch(PROBS, [0, 2, -1])
    target = Score(p)
    with pytest.raises(RuntimeError):
        target.log_stats("stats_dir")
    with pytest.raises(RuntimeError):
        target.log_estimated_labels("est.txt")
    fc = n2d2.cells.Fc(3, 3)
    target(fc(x))
    target.log_stats("stats_dir")
    assert open("stats_dir/stats.dat").read().splitlines() == ["Cell ParamMemory Computing DataMemory",
                                                                f"{fc.get_name()} 48 9 12"]
    assert os.path.isfile("stats_dir/stats.log") and os.path.isfile("stats_dir/stats_relative.dat")
    _assert_png("stats_dir/stats.png")
    target.log_estimated_labels("logs/est.txt")
    lines = open("logs/est.txt").read().splitlines()
    est = fc.get_outputs().to_numpy().argmax(axis=1).ravel()
    assert lines[0] == "# slot target estimated_0 value_0"
    assert [line.split()[:3] for line in lines[1:]] == [["0", "0", str(est[0])], ["1", "2", str(est[1])],
                                                        ["2", "-1", str(est[2])]]


# -- labels mapping, data as target --------------------------------------------------------------
def test_labels_mapping_file():
    with open("mapping.dat", "w") as f:
        f.write("# label output\n0 1\n1 0\n\ndefault 2  # everything else\n")
    x, p = _batch(PROBS, [0, 1, 5])
    target = Score(p, labels_mapping="mapping.dat")
    target(x)
    # targets become [1, 0, 2]
    val = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=np.float32)
    np.testing.assert_allclose(_seeds(x)[0].reshape(3, 3), PROBS.reshape(3, 3) - val, atol=1e-6)
    with pytest.raises(RuntimeError, match="class mapping"):
        Score(p, labels_mapping="missing.dat")
    with open("incomplete.dat", "w") as f:
        f.write("0 1\n")
    x2, p2 = _batch(PROBS, [0, 1, 2])
    with pytest.raises(RuntimeError, match="incomplete class mapping"):
        Score(p2, labels_mapping="incomplete.dat")(x2)


def test_data_as_target():
    rng = np.random.default_rng(2)
    data = rng.random((2, 1, 3, 3)).astype(np.float32)
    inputs = Tensor.from_numpy(data)
    provider = TensorPlaceholder(inputs)
    target = Score(provider, data_as_target=True, confusion_quant_steps=4)
    out = Tensor.from_numpy(rng.random((2, 1, 3, 3)).astype(np.float32))
    out.cell = provider
    loss = target(out)
    np.testing.assert_allclose(_seeds(out)[0], out.to_numpy() - data, atol=1e-6)
    assert loss[0] == pytest.approx(((out.to_numpy() - data) ** 2).sum() / 2, rel=1e-5)
    assert target.get_confusion_matrix().shape == (4, 4) and target.get_confusion_matrix().sum() == 18


# -- training ----------------------------------------------------------------------------------
def test_training_reaches_high_accuracy():
    """Fc -> Fc (no softmax) trained by the squared-error seed on a linearly separable set."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)).astype(np.float32) * 2.0
    labels = rng.integers(0, 3, 600).astype(np.int32)
    data = (centers[labels] + rng.normal(scale=0.7, size=(600, 8))).astype(np.float32).reshape(600, 8, 1, 1)
    provider = ArrayProvider(data, labels, 32)
    fc1 = n2d2.cells.Fc(8, 16, activation=Tanh())
    fc2 = n2d2.cells.Fc(16, 3)
    fc1.solver = SGD(learning_rate=0.1)
    fc2.solver = SGD(learning_rate=0.1)
    target = Score(provider)
    first = None
    for _ in range(4):
        for i in range(0, 480, 32):
            loss = target(fc2(fc1(provider.read_batch(i))))
            first = first if first is not None else target.loss()
            loss.back_propagate()
            loss.update()
    assert target.loss() < first
    provider.set_partition("Test")
    fc1.test()
    fc2.test()
    for i in range(480, 600, 32):  # the last batch has invalid slots
        target(fc2(fc1(provider.read_batch(i))))
    assert target.get_average_success() > 0.9
    assert target.get_confusion_matrix("Test").sum() == 120


@requires_cuda
def test_gpu_matches_cpu():
    rng = np.random.default_rng(5)
    out = rng.random((4, 3, 2, 2)).astype(np.float32)
    labels = rng.integers(-1, 3, (4, 1, 2, 2)).astype(np.int32)
    x_cpu, p_cpu = _batch(out, labels)
    t_cpu = Score(p_cpu, top_n=2)
    loss_cpu = t_cpu(x_cpu)
    x_gpu, p_gpu = _batch(out, labels)
    x_gpu.cuda()
    t_gpu = Score(p_gpu, top_n=2)
    loss_gpu = t_gpu(x_gpu)
    np.testing.assert_allclose(_seeds(x_gpu)[0].get(), _seeds(x_cpu)[0], atol=1e-6)
    assert loss_gpu[0] == pytest.approx(loss_cpu[0], rel=1e-6)
    np.testing.assert_array_equal(t_gpu.get_confusion_matrix(), t_cpu.get_confusion_matrix())
    assert t_gpu.get_average_top_n_success() == pytest.approx(t_cpu.get_average_top_n_success())
    np.testing.assert_array_equal(t_gpu.get_estimated_labels(), t_cpu.get_estimated_labels())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classifier_fast_path_without_invalid_slots(dtype, tmp_path, monkeypatch):
    """A batch with every slot valid (the classifier path's unmasked branch) scores as the
    general path, bit for bit, outputs with NaN, infinities and ties included."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(16)
    for trial in range(4):
        n, k = int(rng.integers(1, 140)), int(rng.integers(2, 12))
        y = rng.standard_normal((n, k, 1, 1)).astype(dtype)
        y[rng.random(y.shape) < 0.05] = np.nan
        y[rng.random(y.shape) < 0.03] = np.inf
        y[rng.random(y.shape) < 0.03] = -np.inf
        y[0, :2] = 0.5
        y[-1, 0] = 1.0          # a zero cross-entropy term
        labels = rng.integers(0, k, n).astype(np.int32)
        labels[-1] = 0
        partition = ("Learn", "Validation")[trial % 2]
        fast, general = Score(ArrayProvider(y, labels, n)), Score(ArrayProvider(y, labels, n))
        for target in (fast, general):
            target._provider.set_partition(partition)
            target._provider.read_batch(0)
        monkeypatch.setattr(fast, "_score_outputs", None)
        monkeypatch.setattr(general, "_score_classes", lambda y4, t, v, part, g=general:
                            g._score_outputs(y4, t, v, k, part, np))
        got = [target._process_labels(y, target._provider, partition) for target in (fast, general)]
        (g1, l1), (g2, l2) = got
        assert g1.dtype == g2.dtype
        np.testing.assert_array_equal(g1, g2)
        assert l1 == l2 or (np.isnan(l1) and np.isnan(l2))
        _assert_same_scoring(fast, general, partition)
