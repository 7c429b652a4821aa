"""LRN (local response normalization, n2d2/ops/lrn.py): the reference against PyTorch and onnxruntime, its
gradient against autograd and finite differences, the cell, the C kernel, INI import, ONNX export, NaN."""
import warnings

import numpy as np
import pytest

import n2d2
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.frontends.ini import IniError, IniWarning, load_ini
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.types import GraphError
from n2d2.ops.lrn import lrn_backward, lrn_forward, window
from tests.conftest import fd_grad, rel_err

torch = pytest.importorskip("torch")


def _x(shape, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype) * 1.5


def _torch_lrn(x, size, alpha, beta, k):
    return torch.nn.functional.local_response_norm(torch.from_numpy(x), size, alpha=alpha, beta=beta, k=k)


# torch's window matches ONNX's (and ours) for odd sizes; even sizes are checked against onnxruntime
ODD = [(1, 1e-4, 0.75, 2.0), (3, 0.5, 0.6, 1.5), (5, 2.0, 0.75, 1.0), (7, 0.3, 1.2, 0.8), (9, 1.0, 0.5, 2.0)]


@pytest.mark.parametrize("size,alpha,beta,k", ODD)
@pytest.mark.parametrize("shape", [(2, 6, 4, 5), (3, 11, 2, 3), (2, 4, 7)])
def test_forward_matches_torch(size, alpha, beta, k, shape):
    x = _x(shape, seed=size)
    y, s = lrn_forward(x, size, alpha, beta, k)
    ref = _torch_lrn(x, size, alpha, beta, k).numpy()
    assert rel_err(y, ref) < 1e-12
    assert s.shape == x.shape and np.all(s >= k)


@pytest.mark.parametrize("size,alpha,beta,k", ODD)
def test_backward_matches_torch_autograd(size, alpha, beta, k):
    x = _x((2, 8, 3, 4), seed=10 + size)
    dy = _x(x.shape, seed=20 + size)
    y, s = lrn_forward(x, size, alpha, beta, k)
    dx = lrn_backward(dy, x, s, size, alpha, beta, k)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    torch.nn.functional.local_response_norm(xt, size, alpha=alpha, beta=beta, k=k).backward(torch.from_numpy(dy))
    assert rel_err(dx, xt.grad.numpy()) < 1e-12


@pytest.mark.parametrize("size", [1, 2, 4, 5, 6, 13])
def test_backward_matches_finite_differences(size):
    # even sizes (an asymmetric window) and a window wider than the 5 channels
    alpha, beta, k = 1.3, 0.7, 0.9
    x = _x((2, 5, 2, 3), seed=size)
    dy = _x(x.shape, seed=100 + size)
    _, s = lrn_forward(x, size, alpha, beta, k)
    dx = lrn_backward(dy, x, s, size, alpha, beta, k)
    num = fd_grad(lambda a: lrn_forward(a, size, alpha, beta, k)[0], x, dy)
    assert rel_err(dx, num) < 1e-7


def test_window_is_onnx_s():
    assert [window(n) for n in (1, 2, 3, 4, 5, 6)] == [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3)]


def _onnx_lrn(x, size, alpha, beta, bias):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=alpha, beta=beta, bias=bias)
    graph = helper.make_graph([node], "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_forward_matches_onnxruntime(size):
    x = _x((2, 7, 3, 4), seed=size, dtype=np.float32)
    y, _ = lrn_forward(x, size, 0.7, 0.75, 1.2)
    assert y.dtype == np.float32
    assert rel_err(y, _onnx_lrn(x, size, 0.7, 0.75, 1.2)) < 1e-6


@pytest.mark.parametrize("size", [2, 4, 6, 12])
def test_even_sizes_follow_the_onnx_formula(size):
    """onnxruntime and torch do not take even sizes the ONNX way (onnxruntime refuses them): the spec, looped."""
    x = _x((2, 7, 2, 3), seed=size)
    alpha, beta, bias = 0.7, 0.75, 1.2
    ref = np.empty_like(x)
    for c in range(x.shape[1]):
        lo, hi = max(0, c - (size - 1) // 2), min(x.shape[1] - 1, c + int(np.ceil((size - 1) / 2)))
        sq = sum(x[:, j] ** 2 for j in range(lo, hi + 1))
        ref[:, c] = x[:, c] / (bias + alpha / size * sq) ** beta
    assert rel_err(lrn_forward(x, size, alpha, beta, bias)[0], ref) < 1e-13


def test_nan_stays_in_the_windows_that_hold_it():
    x = _x((1, 9, 2, 2), seed=3)
    x[0, 4, 1, 0] = np.nan
    size = 4   # window [c-1, c+2]: channel 4 is in the windows of channels 2..5
    y, s = lrn_forward(x, size, 0.5, 0.75, 1.0)
    nan = np.isnan(y)
    assert nan[0, 2:6, 1, 0].all() and nan.sum() == 4
    dy = _x(x.shape, seed=4)
    dx = lrn_backward(dy, x, s, size, 0.5, 0.75, 1.0)
    assert np.isnan(dx[0, :, 1, 0]).any() and np.isfinite(dx[0, :, 0, :]).all() and np.isfinite(dx[0, :, 1, 1]).all()


# -- the IR op ---------------------------------------------------------------------------------------------
def test_opdef_shape_rule_and_errors_name_the_node():
    op = op_registry.get("LRN")
    (t,) = op.infer_types({"size": 3, "alpha": 1e-4, "beta": 0.75, "bias": 2.0},
                          [n2d2.ir.TensorType((2, 3, 4, 5)), n2d2.ir.TensorType((2, 5, 4, 5))], {}, "n1")
    assert t.shape == (2, 8, 4, 5)
    with pytest.raises(GraphError, match=r"node 'bad' \(LRN\): LRN size must be an int >= 1, got 0"):
        op.infer_types({"size": 0}, [n2d2.ir.TensorType((1, 3, 2, 2))], {}, "bad")
    with pytest.raises(GraphError, match=r"node 'b2' \(LRN\): LRN beta must be a finite number"):
        op.infer_types({"size": 3, "beta": float("nan")}, [n2d2.ir.TensorType((1, 3, 2, 2))], {}, "b2")
    with pytest.raises(GraphError, match="differ on batch or spatial dims"):
        op.infer_types({}, [n2d2.ir.TensorType((1, 3, 2, 2)), n2d2.ir.TensorType((1, 3, 2, 3))], {}, "b3")


def test_opdef_forward_backward_with_two_inputs_and_a_fused_activation():
    op = op_registry.get("LRN")
    a, b = _x((2, 3, 2, 2), seed=1), _x((2, 4, 2, 2), seed=2)
    attrs = {"size": 3, "alpha": 0.4, "beta": 0.75, "bias": 1.0, "activation": ("Tanh", (("alpha", 1.0),))}
    (y,), saved = op.forward(attrs, [a, b], {})
    ref, _ = lrn_forward(np.concatenate([a, b], axis=1), 3, 0.4, 0.75, 1.0)
    assert rel_err(y, np.tanh(ref)) < 1e-12
    dy = _x(y.shape, seed=3)
    (da, db), grads = op.backward(attrs, saved, [dy], [True, True], {})
    assert grads == {}
    for i, arr in enumerate((a, b)):
        def f(v, i=i):
            xs = [a, b]
            xs[i] = v
            return op.forward(attrs, xs, {})[0][0]
        assert rel_err((da, db)[i], fd_grad(f, arr.copy(), dy)) < 1e-7


# -- the cell ---------------------------------------------------------------------------------------------
def test_cell_forward_backward_and_arguments():
    cell = n2d2.cells.LRN(size=5, alpha=0.3, beta=0.75, k=1.5)
    assert n2d2.cells.nn.LRN is n2d2.cells.LRN and "LRN" in n2d2.cells.__all__
    assert str(cell).startswith(f"'{cell.get_name()}' LRN(Frame<float>)(size=5, alpha=0.3, beta=0.75, k=1.5")
    x = _x((2, 7, 3, 4), seed=5, dtype=np.float32)
    y = cell(n2d2.Tensor.from_numpy(x))
    assert rel_err(y.to_numpy(), _torch_lrn(x, 5, 0.3, 0.75, 1.5).numpy()) < 1e-6
    record = y.get_deepnet().records()[-1]
    dy = _x(x.shape, seed=6, dtype=np.float32)
    (dx,) = cell._backward(record.ctx, dy, [True])
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    torch.nn.functional.local_response_norm(xt, 5, alpha=0.3, beta=0.75, k=1.5).backward(torch.from_numpy(dy))
    assert rel_err(dx, xt.grad.numpy()) < 1e-5
    with pytest.raises(WrongValue, match="'size'"):
        n2d2.cells.LRN(size=0)
    with pytest.raises(WrongInputType):
        n2d2.cells.LRN(size=2.0)
    with pytest.raises(WrongValue, match="'beta'"):
        n2d2.cells.LRN(beta=float("inf"))


# -- INI -----------------------------------------------------------------------------------------------------
INI = ("[sp]\nSizeX=5\nSizeY=4\nNbChannels=6\nBatchSize=2\n"
       "[lrn]\nInput=sp\nType=LRN\nNbOutputs=6\nN=3\nAlpha=0.5\nBeta=0.6\nK=1.5\n")


def _load(tmp_path, text, backend="numpy"):
    path = tmp_path / "net.ini"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IniWarning)
        return load_ini(str(path), backend=backend)


def test_ini_section_builds_the_cell(tmp_path):
    dn = _load(tmp_path, INI)
    cell = dn["lrn"]
    assert cell.get_type() == "LRN" and (cell.size, cell.alpha, cell.beta, cell.k) == (3, 0.5, 0.6, 1.5)
    graph = dn.get_graph()
    (node,) = [n for n in graph.nodes() if graph.op(n) == "LRN"]
    assert graph.attrs(node)["size"] == 3 and graph.attrs(node)["bias"] == 1.5
    defaults = _load(tmp_path, INI.replace("N=3\nAlpha=0.5\nBeta=0.6\nK=1.5\n", ""))["lrn"]
    assert (defaults.size, defaults.alpha, defaults.beta, defaults.k) == (5, 1e-4, 0.75, 2.0)  # N2D2's defaults


@pytest.mark.parametrize("bad,fragment", [("N=0", "N"), ("Beta=x", "Beta"), ("NbOutputs=4", "NbOutputs=4 but")])
def test_ini_errors_name_the_key(tmp_path, bad, fragment):
    key = bad.split("=")[0]
    text = INI.replace(next(line for line in INI.split("\n") if line.startswith(key + "=")), bad)
    with pytest.raises(IniError) as info:
        _load(tmp_path, text)
    assert fragment in str(info.value) and info.value.section == "lrn"


# -- ONNX export ------------------------------------------------------------------------------------------------
def test_onnx_export_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    dn = _load(tmp_path, INI)
    path = str(tmp_path / "lrn.onnx")
    dn.export_onnx(path)
    x = _x((2, 6, 4, 5), seed=8, dtype=np.float32)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert rel_err(y, lrn_forward(x.astype(np.float64), 3, 0.5, 0.6, 1.5)[0]) < 1e-6


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_onnx_lrn_imports_as_the_cell_and_matches_onnxruntime(tmp_path, backend):
    """ONNX LRN (bias default 1.0, not N2D2's K=2.0) through load_from_ONNX and the ONNX backend."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from n2d2 import onnx_backend
    from tests.test_onnx_import import provider_for, run_cell

    node = helper.make_node("LRN", ["x"], ["lrn1"], size=3, alpha=0.6, beta=0.7)
    graph = helper.make_graph([node], "lrn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4, 5])],
                              [helper.make_tensor_value_info("lrn1", TensorProto.FLOAT, ["N", 6, 4, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = str(tmp_path / "lrn_in.onnx")
    onnx.save(model, path)
    x = _x((2, 6, 4, 5), seed=11, dtype=np.float32)
    (ref,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})
    dn = n2d2.cells.DeepNetCell.load_from_ONNX(provider_for((6, 4, 5)), path, backend=backend, generic_ops=False)
    cell = dn["lrn1"]
    assert type(cell).__name__ == "LRN" and cell.k == 1.0
    assert rel_err(run_cell(dn, x), ref) < 1e-5
    (y,) = onnx_backend.prepare(model).run([x])
    assert rel_err(y, ref) < 1e-5


# -- the C kernel --------------------------------------------------------------------------------------------
c_backend = pytest.importorskip("n2d2.codegen.c_backend")
needs_c = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")


def _lrn_net(shape, size, activation=None, seed=0, inputs=1):
    from tests.test_c_backend import Net

    net = Net(seed=seed, name="lrn")
    xs = [net.source(shape, name=f"in{k}") for k in range(inputs)]
    node = net.op("LRN", xs, {"size": size, "alpha": 0.9, "beta": 0.75, "bias": 1.1, "activation": activation})
    return net.output(node), node


@needs_c
@pytest.mark.parametrize("shape,size,act", [
    ((2, 7, 3, 4), 5, None), ((3, 6, 5, 2), 4, ("Tanh", (("alpha", 1.5),))), ((2, 3, 4, 4), 9, None),
    ((1, 1, 3, 3), 3, ("Logistic", ())), ((4, 16, 32, 40), 5, ("Rectifier", (("clipping", 0.0), ("leak_slope", 0.1)))),
])
def test_c_kernel_matches_the_reference_forward_and_backward(shape, size, act):
    from tests.test_c_backend import check_training

    net, node = _lrn_net(shape, size, act)
    p = check_training(net, tol=1e-5, expect_c=[node])
    assert p.geometry[node]["PAR"] == (np.prod(shape) >= 1 << 16)


@needs_c
def test_c_kernel_inference_and_the_reference_fallback_for_several_inputs():
    from tests.test_c_backend import check_inference

    net, node = _lrn_net((2, 5, 3, 3), 3)
    check_inference(net, expect_c=[node])
    net, node = _lrn_net((2, 3, 3, 3), 3, inputs=2)   # several inputs: the reference runs it, stated in `where`
    p = check_inference(net)
    assert p.where[node] == "numpy"


@needs_c
def test_c_kernel_propagates_nan(tmp_path):
    from n2d2.codegen import numpy_exec

    net, node = _lrn_net((1, 8, 2, 2), 4)
    g: Graph = net.g
    x = next(iter(net.feeds))
    net.feeds[x][0, 3, 0, 1] = np.nan
    ref = numpy_exec.run(g, net.feeds)[0]
    p = c_backend.CProgram(g, [g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    out = p.view(g.outputs[0])
    assert p.where[node] == "c"
    assert np.array_equal(np.isnan(out), np.isnan(ref)) and np.isnan(out).any() and not np.isnan(out).all()


@needs_c
def test_ini_network_runs_on_c_as_on_numpy(tmp_path):
    x = _x((2, 6, 4, 5), seed=9, dtype=np.float32)
    ys = {}
    for backend in ("numpy", "c"):
        dn = _load(tmp_path, INI, backend=backend)
        dn.test()
        ys[backend] = dn(n2d2.Tensor.from_numpy(x)).to_numpy()
    assert rel_err(ys["c"], ys["numpy"]) < 1e-6
    assert rel_err(ys["numpy"], lrn_forward(x.astype(np.float64), 3, 0.5, 0.6, 1.5)[0]) < 1e-6


# -- standalone C export ---------------------------------------------------------------------------------------
@needs_c
@pytest.mark.skipif(__import__("shutil").which("make") is None, reason="needs make")
def test_standalone_c_export_builds_with_werror_and_gives_the_cell_outputs(tmp_path):
    from n2d2.cells import Conv, Fc, Sequence, Softmax
    from n2d2.export import export_c
    from tests.test_export import _cell_outputs, _make, _one_openmp_thread, _run, _stimuli

    n2d2.global_variables.seed = 5
    rng = np.random.default_rng(2)
    database = n2d2.database.Numpy()
    xs = [rng.normal(size=(3, 6, 6)).astype(np.float32) for _ in range(8)]
    database.load(xs[:4], [0, 1, 2, 0], partition="Learn")
    database.load(xs[4:], [0, 1, 2, 1], partition="Test")
    provider = n2d2.provider.DataProvider(database, [6, 6, 3], batch_size=2)
    model = Sequence([Conv(3, 6, kernel_dims=[3, 3], padding_dims=[1, 1]), n2d2.cells.LRN(size=4, alpha=0.8, k=1.0),
                      Fc(6 * 6 * 6, 3), Softmax(with_loss=True)])
    dn = model.to_deepnet_cell(provider)
    folder = export_c(dn, export_folder_name=str(tmp_path / "lrn_export"))
    assert "(LRN)" in open(f"{folder}/src/network.c").read()
    _make(folder)
    assert "Tested 4 stimuli" in _run(folder, "bin/network_test", "-q", "-d", "4", "outputs.bin")
    inputs, _ = _stimuli(folder, (3, 6, 6))
    out = np.fromfile(f"{folder}/outputs.bin", dtype="<f4").reshape(4, 3)
    with _one_openmp_thread():
        expected = _cell_outputs(dn, inputs, 2)
    assert rel_err(out, expected) < 1e-5


# -- the CUDA kernels (host emulator; nvcc where there is one) ------------------------------------------------
def _cuda_lrn_graph():
    """LRN nodes of several sizes (even: an asymmetric window; 9 > C: a window wider than the channels), with
    and without a fused activation, on rank 4 and rank 2 (after an Fc); one concatenating LRN (two inputs)."""
    from tests.test_cuda_backend import LEAKY, SIGM, TANH, B

    b = B("lrn_cuda", seed=3)
    x = b.input("x", (2, 3, 5, 4))
    h = b.conv("c0", x, 6)
    l1 = b.op("l1", "LRN", h, size=5, alpha=0.9, beta=0.75, bias=1.1, activation=None)
    l2 = b.op("l2", "LRN", l1, size=4, alpha=1.3, beta=0.6, bias=0.8, activation=TANH)
    l3 = b.op("l3", "LRN", b.conv("c1", l2, 5), size=9, alpha=2.0, beta=1.2, bias=1.5, activation=SIGM)
    f = b.fc("f", l3, 40)
    l4 = b.op("l4", "LRN", f, size=3, alpha=0.5, beta=0.75, bias=2.0, activation=LEAKY)
    cat = b.op("cat", "LRN", [l1, l3], size=3, alpha=0.7, beta=0.75, bias=1.0, activation=None)
    b.g.set_outputs([l4, cat])
    return b.g


def test_cuda_kernels_match_the_reference_on_the_emulator():
    from n2d2.codegen.cuda_backend import compile_check, find_nvcc
    from tests.test_cuda_backend import EMU, run_training

    prog = run_training(_cuda_lrn_graph(), EMU, steps=2)
    for node in ("l1", "l2", "l3", "l4"):
        assert prog.where[node] == prog.where[f"grad:{node}"] == "cuda", node
        assert [k.macro for k in prog._node_kernels[f"grad:{node}"]] == ["bwd_t", "bwd_dx"]
    assert prog.where["cat"] == "numpy" and "one input" in prog.fallback_reasons["cat"]
    if find_nvcc() is not None:
        compile_check(prog.source)


def test_cuda_inference_matches_the_reference_on_the_emulator():
    from tests.test_cuda_backend import EMU, compare, feeds_for, inference_outputs, inference_program

    g = _cuda_lrn_graph()
    prog = inference_program(g, EMU)
    assert all(prog.where[n] == "cuda" for n in ("l1", "l2", "l3", "l4"))
    feeds = feeds_for(g, np.random.default_rng(7))
    compare(*inference_outputs(prog, g, feeds), "inference")


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_cuda_kernels_propagate_nan_and_inf_as_the_reference():
    """A NaN, a +Inf and a -Inf in the input: the same non-finite positions as the numpy executor in the
    forward and the backward (NaN only in the windows that hold it)."""
    from n2d2.codegen.cuda_backend import CudaProgram
    from n2d2.codegen.numpy_exec import Session
    from n2d2.ir.autodiff import build_training_graph
    from tests.test_cuda_backend import EMU, B, clone
    from tests.test_nan_propagation import assert_same_pattern, pattern

    b = B("lrn_nan", seed=4)
    x = b.input("x", (2, 9, 3, 2))
    h = b.conv("c0", x, 9, k=(1, 1), pad=(0, 0), groups=9, bias=False)   # keeps each value at its place
    b.g.set_outputs([b.op("l", "LRN", h, size=4, alpha=0.5, beta=0.75, bias=1.0, activation=None)])
    rng = np.random.default_rng(5)
    xv = rng.standard_normal((2, 9, 3, 2)).astype(np.float32)
    xv[0, 4, 1, 0], xv[1, 2, 0, 1], xv[1, 7, 2, 0] = np.nan, np.inf, -np.inf
    dyv = rng.standard_normal((2, 9, 3, 2)).astype(np.float32)
    tg, tr = build_training_graph(b.g), build_training_graph(clone(b.g))
    (seed_key,) = tg.grad_inputs
    prog = CudaProgram(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes,
                                  tg.update_nodes], training=True, device=EMU)
    assert prog.where["l"] == prog.where["grad:l"] == "cuda"
    session = Session(tr.graph, training=True, order=tr.forward_nodes)
    session.feed({"x": xv})
    session.run_nodes(tr.forward_nodes)
    session.feed({tr.grad_inputs[seed_key]: dyv})
    session.run_nodes(tr.backward_nodes)
    fwd, bwd = {}, {}
    prog.feed({"x": xv})
    prog.run_phase(0, record=fwd)
    prog.feed({tg.grad_inputs[seed_key]: dyv})
    prog.run_phase(1, record=bwd)
    ref = {n: session.values[n][0] for n in ("l", "grad:l")}
    out = {"l": fwd["l"][0], "grad:l": bwd["grad:l"][0]}
    assert_same_pattern(ref, out, "CUDA (emulated)")
    y = pattern(out["l"])
    assert (y[0, 2:6, 1, 0] == 1).all() and y[1, :, 0, 1].any() and not y[0, :, 0, :].any()
    finite = pattern(ref["l"]) == 0
    assert rel_err(out["l"][finite], ref["l"][finite]) < 1e-5


@pytest.mark.skipif(not n2d2.global_variables.cuda_available, reason="needs CuPy and a CUDA device")
def test_gpu_kernels_match_the_reference():
    import cupy as cp

    from n2d2.codegen.cuda_backend import CupyDevice
    from tests.test_cuda_backend import run_training

    prog = run_training(_cuda_lrn_graph(), CupyDevice(), steps=2, on_device=cp.asarray)
    assert all(prog.where[n] == prog.where[f"grad:{n}"] == "cuda" for n in ("l1", "l2", "l3", "l4"))
