"""Tests of n2d2.stats: parameter, MAC and data counts per cell, and the files log_stats writes."""
import os

import numpy as np
import pytest

import n2d2
from n2d2 import stats
from n2d2.deepnet import CallRecord, DeepNet
from n2d2.provider import TensorPlaceholder
from n2d2.tensor import Tensor


def _input(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = Tensor.from_numpy(rng.normal(size=shape).astype(np.float32))
    TensorPlaceholder(x)
    return x


def test_fc_fc_counts_and_files():
    x = _input((5, 6, 1, 1))
    fc1 = n2d2.cells.Fc(6, 4)
    fc2 = n2d2.cells.Fc(4, 3, no_bias=True)
    y = fc2(fc1(x))
    result = stats.compute_stats(y.get_deepnet())
    assert [(s.name, s.nb_parameters, s.macs, s.nb_outputs) for s in result] == [
        (fc1.get_name(), 6 * 4 + 4, 24, 4), (fc2.get_name(), 12, 12, 3)]
    stats.log_stats(y.get_deepnet(), "out")
    assert open("out/stats.dat").read() == (
        "Cell ParamMemory Computing DataMemory\n"
        f"{fc1.get_name()} 112 24 16\n"
        f"{fc2.get_name()} 48 12 12\n")
    assert open("out/stats_relative.dat").read() == (
        "Cell ParamMemory(%) Computing(%) DataMemory(%)\n"
        f"{fc1.get_name()} 70.00 66.67 57.14\n"
        f"{fc2.get_name()} 30.00 33.33 42.86\n")
    log = open("out/stats.log").read()
    assert "Total number of parameters: 40" in log
    assert "Total number of connections (MACs per image): 36" in log
    assert "Total number of output values per image: 7" in log
    assert "Input data (float-32 bits): 0.024 kB" in log
    assert "Free parameters (float-32 bits): 0.16 kB" in log
    assert "MACS / input data: 3.6e-05M" in log
    assert os.path.getsize("out/stats.png") > 100
    assert not [f for f in os.listdir("out") if f.startswith(".tmp_")]


def test_fc_spatial_input():
    x = _input((2, 3, 4, 4))
    fc = n2d2.cells.Fc(48, 5)
    (s,) = stats.compute_stats(fc(x).get_deepnet())
    assert (s.nb_parameters, s.macs, s.nb_outputs) == (48 * 5 + 5, 240, 5)


def test_cell_called_twice_counts_parameters_once():
    x = _input((2, 4, 1, 1))
    fc = n2d2.cells.Fc(4, 4)
    y = fc(fc(x))
    (s,) = stats.compute_stats(y.get_deepnet())
    assert (s.nb_parameters, s.macs, s.nb_outputs) == (20, 32, 8)


def test_masked_fc_counts_connected_weights():
    class MaskedFc(n2d2.cells.Fc):
        pass

    fc = MaskedFc(4, 3)
    assert stats.nb_parameters(fc) == 15
    fc._weights_mask = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=bool)
    assert stats.connected_weights(fc) == 6
    assert stats.nb_parameters(fc) == 6 + 3
    (s,) = stats.compute_stats(fc(_input((2, 4, 1, 1))).get_deepnet())
    assert s.macs == 6


# -- duck-typed cells: the rules by class name --------------------------------------------------
class _FakeCell:
    def __init__(self, name, weights=None, biases=None, **attrs):
        self._name = name
        self._weights = weights
        self._biases = biases
        self._args = {}
        self._config = {}
        self.__dict__.update(attrs)

    def get_name(self):
        return self._name


class Conv(_FakeCell):
    pass


class ConvDepthWise(Conv):
    pass


class Deconv(_FakeCell):
    pass


class Pool2d(_FakeCell):
    pass


class BatchNorm2d(_FakeCell):
    pass


def _graph(*calls):
    """A DeepNet with one record per (cell, input shape, output shape)."""
    net = DeepNet()
    for cell, in_shape, out_shape in calls:
        t_in = Tensor.from_numpy(np.zeros(in_shape, np.float32))
        t_out = Tensor.from_numpy(np.zeros(out_shape, np.float32))
        net.add(CallRecord(cell, [t_in], t_out, None, [False]))
    return net


def test_rules_by_cell_type():
    conv = Conv("conv", np.ones((8, 3, 3, 3), np.float32), np.ones(8, np.float32))
    dw = ConvDepthWise("dw", np.ones((8, 1, 3, 3), np.float32), None)
    deconv = Deconv("deconv", np.ones((4, 8, 2, 2), np.float32), np.ones(4, np.float32))
    pool = Pool2d("pool", _args={"pool_dims": [2, 2]})
    gpool = Pool2d("gpool")
    bn = BatchNorm2d("bn", _scales=np.ones(8, np.float32), _bias=np.ones(8, np.float32))
    net = _graph((conv, (2, 3, 10, 10), (2, 8, 8, 8)),
                 (dw, (2, 8, 8, 8), (2, 8, 6, 6)),
                 (deconv, (2, 8, 6, 6), (2, 4, 12, 12)),
                 (pool, (2, 4, 12, 12), (2, 4, 6, 6)),
                 (gpool, (2, 4, 6, 6), (2, 4, 1, 1)),
                 (bn, (2, 8, 6, 6), (2, 8, 6, 6)))
    got = {s.name: (s.nb_parameters, s.macs, s.nb_outputs) for s in stats.compute_stats(net)}
    assert got == {
        "conv": (8 * 27 + 8, 8 * 27 * 64, 8 * 64),
        "dw": (72, 72 * 36, 8 * 36),
        "deconv": (128 + 4, 128 * 36, 4 * 144),
        "pool": (0, 4 * 36 * 4, 4 * 36),
        "gpool": (0, 4 * 36, 4),
        "bn": (16, 8 * 36, 8 * 36),
    }


def test_mapping_parameter_masks_conv_weights():
    # 4 channels -> 2 outputs; output 0 reads channels 0, 1; output 1 reads channels 2, 3.
    table = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=bool)
    conv = Conv("conv", np.ones((2, 4, 3, 3), np.float32), np.ones(2, np.float32),
                _config={"mapping": Tensor.from_numpy(table)})
    assert stats.connected_weights(conv) == 4 * 9
    (s,) = stats.compute_stats(_graph((conv, (1, 4, 5, 5), (1, 2, 3, 3))))
    assert (s.nb_parameters, s.macs) == (36 + 2, 36 * 9)


def test_parameter_hook():
    cell = _FakeCell("custom", _stats_parameter_arrays=lambda: [np.ones(7), None, np.ones((2, 3))])
    assert stats.nb_parameters(cell) == 13


@pytest.mark.parametrize("shape", [(1, 6, 1, 1), (3, 6, 1, 1)])
def test_counts_are_per_image(shape):
    x = _input(shape)
    fc = n2d2.cells.Fc(6, 2)
    (s,) = stats.compute_stats(fc(x).get_deepnet())
    assert (s.macs, s.nb_outputs, s.data_memory, s.param_memory) == (12, 2, 8, 56)
