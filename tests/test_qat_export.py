"""Export of a QAT-trained network (n2d2.quantizer.fuse_qat, n2d2.quantization.qat): the integer
network from the learned ranges (no calibration), its agreement with the QAT model, and the
exported integer C program equal to the integer simulation bit for bit."""
import os
import re
import warnings

import numpy as np
import pytest

import n2d2
from n2d2.export import export_c, export_cpp
from n2d2.quantization.integer import QuantizationError
from n2d2.quantization.ptq import quantize_network, read_stimuli
from n2d2.quantizer import fuse_qat
from tests.test_export_int import _make, _run, needs_make
from tests.test_quantizer import _database, _eager_epoch, _lenet_like


def _trained(kind, bn):
    provider = n2d2.provider.DataProvider(_database(n=192), [8, 8, 1], batch_size=8)
    model = _lenet_like(kind, bn)
    for _ in range(2):
        _eager_epoch(model, provider)
    dn = model.to_deepnet_cell(provider, backend="numpy")
    x, y = read_stimuli(provider, "Test", -1)
    dn.test()
    qat = dn(n2d2.Tensor.from_numpy(x)).to_numpy().reshape(len(x), -1)
    return {"dn": dn, "provider": provider, "x": x, "y": y, "qat": qat}


@pytest.fixture(scope="module")
def sat():
    return _trained("SAT", True)


@pytest.fixture(scope="module")
def lsq():
    return _trained("LSQ", False)


def test_fused_network_uses_the_learned_ranges(sat):
    """SAT + BatchNorm: BN folded, the activation quantizer's alpha is the clip and grid of its
    convolution, 8-bit integers everywhere; no stimulus read (a provider-less call works)."""
    dn = sat["dn"]
    net = fuse_qat(dn, None, "FIXED_MULT32")
    assert dn._integer_network is net and net.options["qat_sat"]
    ops = [n["op"] for n in net.nodes]
    assert ops == ["Conv", "Pool", "Fc", "Fc", "Softmax"]          # BatchNorm folded, quantizers gone
    g = dn.get_graph()
    alphas = [g.params[g.node(n).params["quant_param"]].array[0] for n in g.topological_order()
              if g.op(n) == "FakeQuantize"]
    conv, fc = net.nodes[0], net.nodes[2]
    assert len(alphas) == 2 and np.allclose(conv["T"], abs(alphas[0])) and np.allclose(fc["T"], abs(alphas[1]))
    assert conv["relu"] and not conv["signed"] and conv["Q"] == 255
    assert all(np.abs(n["weights"]).max() <= 127 for n in net.nodes if "weights" in n)
    # the integer network predicts what the QAT model predicts
    agree = np.mean(net.predict(sat["x"]) == sat["qat"].argmax(axis=1))
    assert agree >= 0.95, agree
    # the float weights and quantizers of the cell are untouched
    assert any(dn.get_graph().attrs(n).get("weight_quantizer") for n in dn.get_graph().nx)


def test_run_test_qat_sat_reports_the_fused_integer_network(sat):
    """Upstream's `-test -qat-sat`: run_test(qat_sat=True) fuses (when not done yet) and scores
    the integer simulation."""
    dn = sat["dn"]
    dn._integer_network = None
    try:
        rate = dn.run_test(qat_sat=True, act_scaling_mode="SINGLE_SHIFT")
        net = dn._integer_network
        assert net is not None and net.act_scaling_mode == "SINGLE_SHIFT"
        assert rate == pytest.approx(net.accuracy(sat["x"], sat["y"]))
    finally:
        dn._integer_network = None


def test_lsq_network_fuses_and_agrees(lsq):
    net = fuse_qat(lsq["dn"], lsq["provider"], "NONE", "RINTF", "RINTF", "RINTF")
    assert net.act_scaling_mode == "FLOAT_MULT"
    assert np.mean(net.predict(lsq["x"]) == lsq["qat"].argmax(axis=1)) >= 0.95


def test_refusals(sat):
    with pytest.raises(KeyError, match="w_mode"):
        fuse_qat(sat["dn"], None, "FLOAT_MULT", w_mode="ROUND")
    with pytest.raises(KeyError, match="act_scaling_mode"):
        fuse_qat(sat["dn"], None, "FLOATING")
    with pytest.raises(n2d2.error_handler.WrongInputType):
        fuse_qat(sat["dn"], None, 3)
    with pytest.raises(QuantizationError, match="fuse_qat"):   # PTQ of a QAT graph points to the fusion
        quantize_network(sat["dn"], sat["provider"], calibration=8)


@needs_make
@pytest.mark.parametrize("mode", ["FIXED_MULT32", "SINGLE_SHIFT", "DOUBLE_SHIFT", "FLOAT_MULT"])
def test_exported_qat_program_equals_the_simulation(sat, tmp_path, mode):
    """export_c / export_cpp(qat_sat=True): the fused network's C program, built and run on the
    exported Test stimuli, outputs the simulation's integers bit for bit (FLOAT_MULT too: one
    float64 multiply, as the simulation)."""
    dn, x, y = sat["dn"], sat["x"], sat["y"]
    folder = str(tmp_path / "qat")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "FLOAT_MULT":
            folder = export_cpp(dn, nb_bits=8, qat_sat=True, export_folder_name=folder,
                                export_nb_stimuli_max=len(x))
        else:
            folder = export_c(dn, nb_bits=8, qat_sat=True, act_scaling_mode=mode, export_folder_name=folder,
                              export_nb_stimuli_max=len(x))
    net = dn._integer_network
    assert net.act_scaling_mode == mode and net.options["qat_sat"]
    _make(folder)
    stdout = _run(folder, "bin/network_test", "-q", "-d", str(len(x)), "outputs.bin")
    out = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<i4").reshape(len(x), -1)
    ref = net.run(net.quantize_input(x)).reshape(len(x), -1)
    assert np.array_equal(out, ref), int(np.sum(out != ref))
    rate = float(re.search(r"Success rate = ([0-9.]+)%", stdout).group(1))
    assert rate == pytest.approx(100 * net.accuracy(x, y), abs=0.006)
    # calibration=0 reuses the fused network (upstream: fuse_qat, then export)
    again = export_c(dn, nb_bits=8, calibration=0, act_scaling_mode="SINGLE_SHIFT",
                     export_folder_name=str(tmp_path / "again"), export_nb_stimuli_max=0) \
        if mode == "SINGLE_SHIFT" else None
    assert again is None or os.path.isdir(again)
