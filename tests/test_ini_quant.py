"""INI quantization keys (reference: n2d2-ini-and-export.md 4.6): `QWeight=SAT|LSQ` on Conv/Fc and
`QAct=SAT|LSQ` on layers with an activation give the same quantizer objects as the Python API,
the same forward; wrong sub-keys are errors naming the section and line."""
import warnings

import numpy as np
import pytest

from n2d2.activation import Linear, Rectifier
from n2d2.cells import BatchNorm2d, Conv, Fc, Pool2d, Sequence, Softmax
from n2d2.filler import Xavier
from n2d2.frontends.ini import IniError, IniWarning, load_ini
from n2d2.quantizer import LSQAct, LSQCell, SATAct, SATCell
from n2d2.solver import SGD, Adam
from n2d2.tensor import Tensor

# The SAT LeNet flow of upstream's docs/quant/qat.rst (base sections Conv_def / Bn_def), with an
# LSQ activation quantizer (Adam solver, docs' spellings StepOptInitStepSize / QAct.Solver) and an
# LSQ weight quantizer (code spellings SetOptInitStepSize / QWeightSolver) added.
QAT_INI = """DefaultModel=Frame
[sp]
SizeX=32
SizeY=32
BatchSize=4

[Conv_def]
Type=Conv
ActivationFunction=Linear
WeightsFiller=XavierFiller
WeightsFiller.VarianceNorm=FanOut
WeightsFiller.Scaling=1.0
QWeight=SAT
QWeight.ApplyScaling=0
QWeight.ApplyQuantization=1 ; quantize phase
QWeight.Range=15
ConfigSection=common.config

[Bn_def]
Type=BatchNorm
ActivationFunction=Linear ; the SAT quantizer is the non-linearity
QAct=SAT
QAct.Alpha=6.0
QAct.Range=15
QActSolver=SGD
QActSolver.LearningRate=0.05
QActSolver.Momentum=0.0
ConfigSection=bn.config

[conv1] Conv_def
Input=sp
KernelDims=5 5
NbOutputs=6
QWeight.Range=255 ; first layer 8 bits

[bn1] Bn_def
Input=conv1
NbOutputs=[conv1]NbOutputs

[pool1]
Input=bn1
Type=Pool
PoolDims=2 2
NbOutputs=[conv1]NbOutputs
Stride=2
Pooling=Max
Mapping.Size=1

[conv2] Conv_def
Input=pool1
KernelDims=5 5
NbOutputs=16
QWeight.Mode=Symmetric

[bn2] Bn_def
Input=conv2
NbOutputs=[conv2]NbOutputs

[fc1]
Input=bn2
Type=Fc
NbOutputs=32
ActivationFunction=Rectifier
QWeight=SAT
QWeight.ApplyScaling=1
QWeight.Range=15
QAct=LSQ
QAct.Range=15
QAct.StepOptInitStepSize=0
QAct.StepSize=0.25
QAct.Solver=Adam
QActSolver.LearningRate=0.002
ConfigSection=common.config

[fc2]
Input=fc1
Type=Fc
NbOutputs=10
QWeight=LSQ
QWeight.Range=255
QWeight.SetOptInitStepSize=0
QWeight.StepSize=0.01
QWeightSolver=SGD
QWeightSolver.LearningRate=0.001
QWeightSolver.Momentum=0.9
ConfigSection=common.config

[softmax]
Input=fc2
Type=Softmax
NbOutputs=[fc2]NbOutputs
WithLoss=1

[softmax.Target]

[common.config]
NoBias=1
Solvers.LearningRate=0.05

[bn.config]
Solvers.LearningRate=0.05
"""


def _build(tmp_path, text):
    path = tmp_path / "qat.ini"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IniWarning)
        return load_ini(str(path), backend="numpy")


def _python_network(quantized=True):
    """The same network through the Python API (upstream's SAT example style); without its
    quantizers when `quantized` is False."""
    def q(quantizer):
        return quantizer if quantized else None

    def sgd(**kw):
        return SGD(learning_rate=0.05, **kw)

    def conv(name, nb_in, nb_out, quantizer):
        return Conv(nb_in, nb_out, kernel_dims=[5, 5], activation=Linear(), no_bias=True, name=name,
                    weights_filler=Xavier(variance_norm="FanOut", scaling=1.0), weights_solver=sgd(),
                    bias_solver=sgd(), quantizer=q(quantizer))

    def bn(name, nb):
        act = Linear(quantizer=q(SATAct(alpha=6.0, range=15, solver=SGD(learning_rate=0.05, momentum=0.0))))
        return BatchNorm2d(nb, activation=act, scale_solver=sgd(), bias_solver=sgd(), name=name)

    return Sequence([
        conv("conv1", 1, 6, SATCell(apply_scaling=False, apply_quantization=True, range=255)),
        bn("bn1", 6),
        Pool2d([2, 2], stride_dims=[2, 2], pooling="Max", name="pool1"),
        conv("conv2", 6, 16, SATCell(apply_scaling=False, apply_quantization=True, range=15, quant_mode="Symmetric")),
        bn("bn2", 16),
        Fc(16 * 10 * 10, 32, no_bias=True, name="fc1", weights_solver=sgd(), bias_solver=sgd(),
           activation=Rectifier(quantizer=q(LSQAct(range=15, set_opt_init_step_size=False, step_size=0.25,
                                                   solver=Adam(learning_rate=0.002)))),
           quantizer=q(SATCell(apply_scaling=True, range=15))),
        Fc(32, 10, no_bias=True, name="fc2", weights_solver=sgd(), bias_solver=sgd(),
           quantizer=q(LSQCell(range=255, set_opt_init_step_size=False, step_size=0.01,
                               solver=SGD(learning_rate=0.001, momentum=0.9)))),
        Softmax(with_loss=True, name="softmax"),
    ])


def test_ini_qat_lenet_equals_the_python_network(tmp_path):
    dn = _build(tmp_path, QAT_INI)
    seq = _python_network()
    for cell in seq:
        ini_cell = dn[cell.get_name()]
        # same parameters, quantizers and their solvers included (the printing shows them)
        assert str(ini_cell).split(")(")[0] == str(cell).split(")(")[0], cell.get_name()
    assert "quantizer=SATCell(apply_quantization=True, apply_scaling=False, quant_mode=Default, range=255)" \
        in str(dn["conv1"])
    assert "quantizer=SATAct(alpha=6.0, range=15, solver=SGD(" in str(dn["bn1"])
    assert "quantizer=LSQAct(range=15, set_opt_init_step_size=False, step_size=0.25, solver=Adam(" in str(dn["fc1"])
    assert type(dn["fc2"].quantizer) is LSQCell and dn["fc2"].quantizer.get_step_size() == pytest.approx(0.01)
    # same forward on random input once the INI network's parameters are copied
    rng = np.random.default_rng(5)
    plain = _python_network(quantized=False)
    copied = 0
    for cell, float_cell in zip(seq, plain):
        for attr in ("_weights", "_scales", "_biases", "_means", "_variances"):
            value = getattr(dn[cell.get_name()], attr, None)
            if isinstance(value, np.ndarray) and value.size:
                low, high = (0.5, 2.0) if attr in ("_variances", "_scales") else (-0.3, 0.3)
                value[...] = rng.uniform(low, high, value.shape).astype(value.dtype)
                getattr(cell, attr)[...] = value
                getattr(float_cell, attr)[...] = value
                copied += 1
    assert copied == 12   # conv1, conv2, fc1, fc2 weights; bn1, bn2 scales, biases, means, variances
    x = Tensor.from_numpy(rng.uniform(0.0, 1.0, (4, 1, 32, 32)).astype(np.float32))
    for net in (dn, seq, plain):
        net.test()
    ours, theirs, unquantized = (net(x).to_numpy() for net in (dn, seq, plain))
    assert ours.shape == (4, 10, 1, 1) and np.ptp(ours) > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
    assert np.abs(ours - unquantized).max() > 1e-3   # the quantizers are in effect


def _error(tmp_path, old, new):
    assert old in QAT_INI
    with pytest.raises(IniError) as info:
        _build(tmp_path, QAT_INI.replace(old, new, 1))
    return str(info.value)


def test_unknown_quantizer_sub_key_names_section_and_line(tmp_path):
    text = QAT_INI.replace("QWeight.Mode=Symmetric", "QWeight.Alpha=2.0")
    line = text.splitlines().index("QWeight.Alpha=2.0") + 1
    msg = _error(tmp_path, "QWeight.Mode=Symmetric", "QWeight.Alpha=2.0")
    assert f":{line}: [conv2] 'QWeight.Alpha' is not a parameter of the SAT weight quantizer (SATCell)" in msg
    assert "QWeight.ApplyScaling" in msg   # the expected keys


@pytest.mark.parametrize("old, new, expected", [
    ("QAct.StepSize=0.25", "QAct.Alpha=0.25", "[fc1] 'QAct.Alpha' is not a parameter of the LSQ activation quantizer"),
    # parameters without the type key
    ("QAct=LSQ\n", "", "[fc1] 'QAct.Range' without a QAct key"),
    ("QWeight=LSQ\n", "", "'QWeight.Range' without a QWeight key"),
    # the documented QuantMode "Integer" is invalid, as in upstream's code
    ("QWeight.Mode=Symmetric", "QWeight.Mode=Integer", "Integer"),
    # one parameter, two spellings
    ("QWeight.Mode=Symmetric", "QWeight.Mode=Symmetric\nQWeight.QuantMode=Default", "set the same parameter"),
    # a type other than SAT / LSQ; a weight quantizer on a layer without weights
    ("QAct=LSQ", "QAct=PACT", "QAct='PACT' is not a valid value"),
    ("Pooling=Max\n", "Pooling=Max\nQWeight=SAT\n", "unknown key 'QWeight' for a Pool layer"),
    # solver keys
    ("QWeightSolver=SGD\n", "", "'QWeightSolver.LearningRate' without a QWeightSolver key"),
    ("QWeightSolver.Momentum=0.9", "QWeightSolver.Beta1=0.9", "'QWeightSolver.Beta1' is not a parameter of the SGD"),
    ("QAct.Solver=Adam", "QAct.Solver=Adam\nQActSolver=SGD", "QActSolver and QAct.Solver both name the solver"),
])
def test_quantizer_key_errors(tmp_path, old, new, expected):
    assert expected in _error(tmp_path, old, new)


def test_sat_weight_solver_is_ignored_with_a_warning(tmp_path):
    text = QAT_INI.replace("QWeight.Mode=Symmetric", "QWeight.Mode=Symmetric\nQWeightSolver=SGD\n"
                           "QWeightSolver.LearningRate=0.1")
    path = tmp_path / "w.ini"
    path.write_text(text)
    with pytest.warns(IniWarning, match="QWeightSolver': the SAT weight quantizer has no learned parameter"):
        dn = load_ini(str(path), backend="numpy")
    assert type(dn["conv2"].quantizer) is SATCell


def test_qact_without_activation_function_is_a_linear_activation(tmp_path):
    text = QAT_INI.replace("ActivationFunction=Linear ; the SAT quantizer is the non-linearity\n", "")
    dn = _build(tmp_path, text)
    act = dn["bn1"].activation
    assert type(act) is Linear and type(act.get_quantizer()) is SATAct
    assert act.get_quantizer().get_alpha() == 6.0


def test_n2d2_run_trains_the_ini_quantizers(tmp_path, monkeypatch):
    """`n2d2 run -learn` on an INI network with QWeight/QAct: SATAct's alpha is learnt by its QActSolver
    and saved in upstream's file next to the weights."""
    from n2d2.frontends.ini import runner
    from tests.test_ini_runner import tiny_model

    monkeypatch.chdir(tmp_path)
    model = tiny_model(tmp_path, validation=0.0)
    with open(model) as f:
        text = f.read()
    keys = ("QWeight=SAT\nQWeight.Range=15\nQAct=SAT\nQAct.Alpha=3.0\nQAct.Range=15\nQActSolver=SGD\n"
            "QActSolver.LearningRate=0.05\n")
    with open(model, "w") as f:
        f.write(text.replace("WeightsFiller=HeFiller\n", "WeightsFiller=HeFiller\n" + keys))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.run(model, learn=96, log=96, test=True, output=str(tmp_path / "o"), seed=3, backend="numpy")
    dn = result["deepnet"]
    assert type(dn["conv1"].quantizer) is SATCell and dn["conv1"].quantizer.get_range() == 15
    alpha = dn["conv1"].activation.get_quantizer().get_alpha()
    assert alpha != 3.0 and abs(alpha - 3.0) < 0.5
    saved = np.loadtxt(tmp_path / "o" / "weights" / "conv1_QAct_SAT_Alpha.syntxt")
    assert float(saved) == pytest.approx(alpha, rel=1e-6)
    assert result["test"] > 0.8


def test_n2d2_run_exports_the_ini_qat_network_with_qat_sat(tmp_path, monkeypatch):
    """`n2d2 run -learn N -export CPP -qat-sat`: the INI SAT network's learned ranges give the integer
    project (n2d2.quantizer.fuse_qat), which builds and runs; its success rate equals the fused
    network's simulation on the same stimuli."""
    from n2d2.frontends.ini import runner
    from n2d2.quantization.ptq import read_stimuli
    from n2d2.quantization.qat import fuse_qat
    from tests.test_ini_runner import tiny_model
    from tests.test_run_export import _make_run

    monkeypatch.chdir(tmp_path)
    model = tiny_model(tmp_path, validation=0.0)
    with open(model) as f:
        text = f.read()
    keys = "QWeight=SAT\nQWeight.Range=255\nQAct=SAT\nQAct.Alpha=4.0\nQAct.Range=255\n"
    with open(model, "w") as f:
        f.write(text.replace("WeightsFiller=HeFiller\n", "WeightsFiller=HeFiller\n" + keys))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = runner.run(model, learn=96, log=96, output=str(tmp_path / "o"), seed=3, backend="numpy",
                            export=dict(export_type="CPP", nb_bits=8, qat_sat=True, calibration=16,
                                        export_nb_stimuli_max=20))
        network = fuse_qat(result["deepnet"], result["deepnet"].get_provider(), act_scaling_mode="FLOAT_MULT",
                           nb_bits=8, calibration=16)
    folder = tmp_path / "o" / "export_CPP_int8"
    assert result["export"] == str(folder)
    rate, scored = _make_run(folder)
    x, y = read_stimuli(result["deepnet"].get_provider(), "Test", 20)
    assert scored == 20 and rate == pytest.approx(100 * network.accuracy(x, y), abs=0.006)
