"""Upstream spellings that stopped real N2D2 scripts (issue 10): `n2d2.cells.DeepNetCell`, the
`Transformation` cell, `import n2d2.global_variables`, GPU settings on a machine without one,
WrongValue for enum-like parameters, falsy Tensor values, `DeepNetCell.remove` across shapes."""
import importlib
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

import n2d2
from n2d2.backend import CudaUnavailableWarning
from n2d2.cells import ElemWise, Fc, Pool, Resize, Sequence, Softmax
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.filler import He, Normal, Xavier
from n2d2.solver import SGD, Adam
from n2d2.transform import ChannelExtraction, ColorSpace, Flip, PadCrop, RangeAffine, Rescale
from tests.conftest import SHARED_MODELS, rel_err

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(SHARED_MODELS, "LeNet.onnx")
no_gpu = pytest.mark.skipif(n2d2.global_variables.cuda_available, reason="checks the CPU fallback without a GPU")


def _python(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _database(n=48, size=8, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.random((1, size, size)).astype(np.float32) for _ in range(n)]
    ys = [int(x[0, :, : size // 2].mean() > x[0, :, size // 2:].mean()) for x in xs]
    db = n2d2.database.Numpy()
    db.load(xs[: n * 3 // 4], ys[: n * 3 // 4], partition="Learn")
    db.load(xs[n * 3 // 4:], ys[n * 3 // 4:], partition="Test")
    return db


def _c_available():
    from n2d2.codegen.c_backend import available

    return available()


# -- n2d2.cells.DeepNetCell / n2d2.cells.Transformation ---------------------------------------------
def test_deepnet_cell_and_transformation_are_exported_lazily():
    out = _python("import sys, n2d2\n"
                  "before = sorted(m for m in ('n2d2.cells.deepnet_cell', 'n2d2.cells.nn.transformation') "
                  "if m in sys.modules)\n"
                  "from n2d2.cells.deepnet_cell import DeepNetCell\n"
                  "from n2d2.cells.nn.transformation import Transformation\n"
                  "assert n2d2.cells.DeepNetCell is DeepNetCell and n2d2.cells.Transformation is Transformation\n"
                  "assert n2d2.cells.nn.Transformation is Transformation\n"
                  "assert 'DeepNetCell' in dir(n2d2.cells)\n"
                  "print(before)\n"
                  "from n2d2.cells import *\n"
                  "assert Transformation is n2d2.cells.nn.transformation.Transformation\n")
    assert out.strip() == "[]"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        n2d2.cells.Nope


def test_transformation_cell_applies_the_transformation_to_each_sample():
    x = np.random.default_rng(0).random((3, 2, 4, 5)).astype(np.float32)
    cell = n2d2.cells.Transformation(Flip(horizontal_flip=True))
    y = cell(n2d2.Tensor.from_numpy(x))
    np.testing.assert_array_equal(y.to_numpy(), x[:, :, :, ::-1])
    assert str(cell).startswith(f"'{cell.get_name()}' Transformation(Frame)(transformation=Flip(")
    resized = n2d2.cells.Transformation(Rescale(width=10, height=8))(n2d2.Tensor.from_numpy(x))
    assert resized.shape() == [3, 2, 8, 10]
    with pytest.raises(WrongInputType, match="transformation"):
        n2d2.cells.Transformation([1, 0, 2, 3])  # upstream's broken `perm` signature
    with pytest.raises(ValueError, match=r"Cell 'gray' \(Transformation\): ColorSpace cannot transform an input of "
                                         r"shape \[3, 2, 4, 5\]"):
        n2d2.cells.Transformation(ColorSpace("HSV"), name="gray")(n2d2.Tensor.from_numpy(x))


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_transformation_cell_inside_a_deepnet_cell(backend):
    if backend == "c" and not _c_available():
        pytest.skip("no C compiler")
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=4)
    model = Sequence([n2d2.cells.Transformation(Flip(vertical_flip=True)),
                      n2d2.cells.Transformation(PadCrop(6, 6)), Fc(36, 2), Softmax(with_loss=True)])
    model.set_solver(SGD(learning_rate=0.1))
    dn = model.to_deepnet_cell(provider, backend=backend)
    provider.set_partition("Test")
    dn.test()
    x = provider.read_batch(0)
    got = dn(x).to_numpy()
    model.test()
    want = model(n2d2.Tensor.from_numpy(x.to_numpy())).to_numpy()
    assert rel_err(got, want) < 1e-5
    fc_before = dn[2]._weights.copy()
    dn.fit(1)
    assert not np.array_equal(dn[2]._weights, fc_before)


# -- import n2d2.global_variables --------------------------------------------------------------------
def test_global_variables_module_writes_reach_the_settings():
    import n2d2.global_variables as gv
    from n2d2 import global_variables

    module = importlib.import_module("n2d2.global_variables")
    assert gv is global_variables is n2d2.global_variables
    gv.default_datatype = "float"
    module.seed = 7
    assert n2d2.global_variables.seed == 7 and gv.seed == 7 and module.seed == 7
    first = Fc(3, 2, weights_filler=Normal()).get_weights()
    gv.seed = 7
    assert [[w[0] for w in row] for row in first] == [[w[0] for w in row] for row in
                                                      Fc(3, 2, weights_filler=Normal()).get_weights()]
    module.verbosity = module.Verbosity.graph_only  # the setter runs: the cells print accordingly
    assert str(Fc(3, 2, name="f")) == "'f' Fc(Frame<float>)"
    with pytest.raises(WrongValue):
        module.default_datatype = "double"
    with pytest.raises(WrongValue):
        module.default_model = "Spike"
    assert module.GlobalVariables is type(n2d2.global_variables)
    assert str(module) == str(n2d2.global_variables)


def test_import_global_variables_first_in_a_fresh_interpreter():
    out = _python("import n2d2.global_variables\n"
                  "import n2d2.global_variables as gv\n"
                  "from n2d2.global_variables import Verbosity\n"
                  "gv.verbosity = Verbosity.short\n"
                  "import n2d2\n"
                  "print(n2d2.global_variables.verbosity, gv is n2d2.global_variables)")
    assert out.split() == ["Verbosity.short", "True"]


# -- CUDA settings on a machine without a GPU ---------------------------------------------------------
def _one_warning(action, match):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action()
    messages = [str(w.message) for w in caught if issubclass(w.category, CudaUnavailableWarning)]
    assert len(messages) == 1 and match in messages[0] and "using Frame (CPU)" in messages[0], messages
    return result


@no_gpu
def test_script_level_cuda_settings_warn_and_use_the_cpu():
    gv = importlib.import_module("n2d2.global_variables")
    _one_warning(lambda: setattr(gv, "default_model", "Frame_CUDA"), "default_model = 'Frame_CUDA'")
    assert n2d2.global_variables.default_model == "Frame"
    assert Fc(2, 2).get_model() == "Frame"
    _one_warning(lambda: setattr(n2d2.global_variables, "cuda_device", 1), "cuda_device = 1")
    _one_warning(lambda: n2d2.global_variables.set_cuda_device(0), "set_cuda_device(0)")
    assert n2d2.global_variables.cuda_device == 0
    t = _one_warning(lambda: n2d2.Tensor([2, 3], value=2.0, cuda=True), "Tensor(..., cuda=True)")
    assert not t.is_cuda and t.to_numpy().sum() == 12.0
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=4)
    dn = Sequence([Fc(64, 2)]).to_deepnet_cell(provider)
    assert dn.get_backend() in ("c", "numpy")


@no_gpu
def test_explicit_cuda_requests_still_raise():
    from n2d2.codegen.programs import select_backend

    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        select_backend("cuda")
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=4)
    with pytest.raises(RuntimeError, match="backend 'cuda'"):
        Sequence([Fc(64, 2)]).to_deepnet_cell(provider, backend="cuda")
    with pytest.raises(TypeError):
        n2d2.global_variables.cuda_device = "0"
    with pytest.raises(RuntimeError):
        n2d2.Tensor([2]).cuda()


# -- WrongValue for enum-like parameters -------------------------------------------------------------
def test_enum_like_parameters_raise_wrong_value_for_any_other_value():
    for make in (lambda: He(variance_norm=1), lambda: Xavier(distribution=1), lambda: Xavier(variance_norm=None),
                 lambda: SGD(learning_rate_policy=1), lambda: SGD(clamping=1), lambda: Adam(clamping=1),
                 lambda: SGD(clamping="min:max"), lambda: ChannelExtraction(1), lambda: ColorSpace(1),
                 lambda: RangeAffine(1, 2.0), lambda: RangeAffine("Plus", 2.0, second_operator=0),
                 lambda: PadCrop(2, 2, border_type=0), lambda: Resize(4, 4, 0),
                 lambda: Fc(2, 2, weights_export_format=1)):
        with pytest.raises(WrongValue):
            make()
    solver = SGD()
    with pytest.raises(WrongValue):
        solver.clamping = 0.5
    with pytest.raises(WrongValue, match='"MIN:MAX", ":MAX", "MIN:" or ""') as info:
        Adam(clamping=1)
    assert "numbers" in str(info.value) and "got 1 (int)" in str(info.value)
    assert SGD(clamping="-1.5:2").clamping == "-1.5:2" and Adam(clamping=":0.5").clamping == ":0.5"
    # numbers keep their type check, and so do the cell arguments upstream's test_inputs checks by type
    for make in (lambda: SGD(learning_rate=1), lambda: He(scaling="a"), lambda: Pool([1, 1], pooling=1),
                 lambda: ElemWise(operation=1), lambda: ElemWise(mode=1)):
        with pytest.raises(WrongInputType):
            make()


# -- Tensor values -------------------------------------------------------------------------------------
def test_falsy_tensor_values_are_not_type_checked():
    for value in (0, 0.0, False, None):
        t = n2d2.Tensor([2, 2], datatype="float", value=value)
        assert t.to_numpy().dtype == np.float32 and not t.to_numpy().any()
    with pytest.raises(TypeError):
        n2d2.Tensor([2, 2], datatype="float", value=1)


# -- DeepNetCell.remove ----------------------------------------------------------------------------------
def test_remove_reconnects_across_a_shape_change(capsys):
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=4)
    fc1, fc2, softmax = Fc(64, 50), Fc(50, 10), Softmax(with_loss=True)
    seq = Sequence([fc1, fc2, softmax])
    seq.set_solver(SGD(learning_rate=0.1))
    dn = seq.to_deepnet_cell(provider, backend="numpy")
    dn.remove(fc2.get_name(), reconnect=True)
    assert [c.get_name() for c in dn] == [fc1.get_name(), softmax.get_name()]
    dn.summary()
    out = capsys.readouterr().out
    assert f"{softmax.get_name()} (Softmax)  (4, 50, 1, 1)" in out and "Total params:  3,250" in out
    provider.set_partition("Test")
    dn.test()
    x = provider.read_batch(0)
    y = dn(x).to_numpy()
    assert y.shape == (4, 50, 1, 1)
    fc1.test()
    assert rel_err(y, Softmax()(fc1(n2d2.Tensor.from_numpy(x.to_numpy()))).to_numpy()) < 1e-5
    before = fc1._weights.copy()
    dn.fit(1)
    assert not np.array_equal(fc1._weights, before)


def test_remove_refuses_when_a_parameter_cell_no_longer_fits():
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=4)
    fc1, fc2, fc3 = Fc(64, 50), Fc(50, 10), Fc(10, 2, name="last")
    dn = Sequence([fc1, fc2, fc3]).to_deepnet_cell(provider, backend="numpy")
    with pytest.raises(RuntimeError, match=r"cell 'last' \(Fc\) can no longer accept its input \[\(4, 50, 1, 1\)\]"):
        dn.remove(fc2.get_name())
    assert len(dn) == 3  # unchanged, and still runs
    provider.set_partition("Test")
    assert dn.test()(provider.read_batch(0)).shape() == [4, 2, 1, 1]
    with pytest.raises(RuntimeError, match="network's output"):
        dn.remove("last", reconnect=False)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_lenet_onnx_remove_softmax_then_run_and_train(backend, capsys):
    """Upstream's lenet_onnx.py: load LeNet.onnx, `model.remove("18")` (the softmax), keep using it."""
    pytest.importorskip("onnx")
    if not os.path.exists(LENET):
        pytest.skip("LeNet.onnx not available")
    if backend == "c" and not _c_available():
        pytest.skip("no C compiler")
    provider = n2d2.provider.DataProvider(_database(n=32, size=28), [28, 28, 1], batch_size=8)
    model = n2d2.cells.DeepNetCell.load_from_ONNX(provider, LENET, backend=backend)
    provider.set_partition("Test")
    model.test()
    x = provider.read_batch(0)
    probabilities = model(x).to_numpy()
    model.remove("18")
    assert [c.get_name() for c in model] == ["9", "11", "13", "15", "17"]
    assert model.get_output_cells() == ["17"]
    logits = model.test()(x).to_numpy()
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert rel_err(e / e.sum(axis=1, keepdims=True), probabilities) < 1e-5
    capsys.readouterr()
    model.summary()
    out = capsys.readouterr().out
    assert "18 (Softmax)" not in out and "Features (output)  (8, 10, 1, 1)" in out
    before = model["17"]._weights.copy()
    model.fit(1)
    assert not np.array_equal(model["17"]._weights, before)
    assert 0.0 <= model.run_test() <= 1.0


def test_deepnet_cell_embedded_in_a_sequence_on_a_raw_tensor():
    """The Cells chapter: `Sequence([model, Softmax(with_loss=True)])(Tensor(DIMS))` with a
    DeepNetCell loaded from ONNX (a raw Tensor, not a provider's)."""
    pytest.importorskip("onnx")
    provider = n2d2.provider.DataProvider(_database(n=32, size=28), [28, 28, 1], batch_size=4)
    model = n2d2.cells.DeepNetCell.load_from_ONNX(provider, LENET)
    model.remove("18")
    model.test()
    data = np.random.default_rng(5).random((4, 1, 28, 28)).astype(np.float32)
    out = Sequence([model, Softmax(with_loss=True)])(n2d2.Tensor.from_numpy(data)).to_numpy()
    assert out.shape == (4, 10, 1, 1)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    logits = model(n2d2.provider.TensorPlaceholder(n2d2.Tensor.from_numpy(data)).get_data()).to_numpy()
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
