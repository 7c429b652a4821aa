"""Generic ONNX cells (`load_from_ONNX(..., generic_ops=True)`): the ops the N2D2 cells cannot
express run as `OnnxNode` cells of exact ONNX semantics. The new Onnx* ops (HardSigmoid,
HardSwish, Erf, LayerNormalization) and the `OnnxNode` wrapper against PyTorch and finite
differences (float64); small graphs of each refused pattern of the torchvision zoo
(squeeze-excitation, channel shuffle, ConvNeXt block, ceil-mode pooling) against onnxruntime
on the numpy and C backends; names, summary, remove and training of the generic cells."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
from onnx import helper  # noqa: E402

import n2d2  # noqa: E402
from n2d2.cells.deepnet_cell import DeepNetCell  # noqa: E402
from n2d2.cells.nn.onnx_node import OnnxNode  # noqa: E402
from n2d2.frontends.onnx_import import ONNXUnsupportedError  # noqa: E402
from n2d2.ir import ops as op_registry  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.test_onnx_import import W, make_model, provider_for, run_cell, run_ort  # noqa: E402

F = torch.nn.functional
node = helper.make_node


# -- the ops, through their IR definitions ----------------------------------------------------------
OPS = [
    ("hard_sigmoid", "OnnxHardSigmoid", {"alpha": 0.3, "beta": 0.4}, [(2, 3, 4)],
     lambda x: torch.clamp(0.3 * x + 0.4, 0, 1)),
    ("hard_swish", "OnnxHardSwish", {}, [(2, 3, 5)], F.hardswish),
    ("erf", "OnnxErf", {}, [(3, 7)], torch.erf),
    ("gelu", "OnnxGelu", {"approximate": "none"}, [(3, 7)], F.gelu),
    ("gelu_tanh", "OnnxGelu", {"approximate": "tanh"}, [(3, 7)], lambda x: F.gelu(x, approximate="tanh")),
    ("mish", "OnnxMish", {}, [(4, 6)], F.mish),
    ("layer_norm_last", "OnnxLayerNormalization", {"axis": 3, "epsilon": 1e-5}, [(2, 3, 4, 6), (6,), (6,)],
     lambda x, s, b: F.layer_norm(x, (6,), s, b, 1e-5)),
    ("layer_norm_two_axes_no_bias", "OnnxLayerNormalization", {"axis": 1, "epsilon": 1e-3}, [(3, 4, 5), (4, 5)],
     lambda x, s: F.layer_norm(x, (4, 5), s, None, 1e-3)),
    ("wrapper_broadcast_mul", "OnnxNode",
     {"op": "OnnxMul", "attrs": {}, "slots": (("x", 0), ("x", 1)), "shapes": ((3, 1, 1), (3, 4, 5)),
      "batch_keys": ()}, [(2, 3, 1, 1), (2, 3, 4, 5)], lambda a, b: a * b),
    ("wrapper_matmul_param_rank5_view", "OnnxNode",
     {"op": "OnnxMatMul", "attrs": {}, "slots": (("x", 0), ("p", "in1", "float64")), "shapes": ((2, 3, 4, 5),),
      "batch_keys": ()}, [(2, 6, 4, 5)], None),
]


def _arrays(shapes, dtype, seed=3):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * 2).astype(dtype) for s in shapes]


def _call(op, attrs, xs, params, dy=None):
    opdef = op_registry.get(op)
    ys, saved = opdef.forward(attrs, xs, params, False)
    if dy is None:
        return ys[0], None, None
    dxs, grads = opdef.backward(attrs, saved, [dy], [True] * len(xs), params)
    return ys[0], dxs, grads


def _params(ident, dtype):
    return {"in1": _arrays([(5, 7)], dtype, seed=9)[0]} if ident == "wrapper_matmul_param_rank5_view" else {}


@pytest.mark.parametrize("ident,op,attrs,shapes,fn", [c for c in OPS if c[4] is not None], ids=lambda v: str(v))
def test_ops_match_torch(ident, op, attrs, shapes, fn):
    xs = _arrays(shapes, np.float32)
    y, _, _ = _call(op, attrs, xs, {})
    dy = np.random.default_rng(7).standard_normal(y.shape).astype(np.float32)
    y, dxs, _ = _call(op, attrs, xs, {}, dy)
    txs = [torch.tensor(x, requires_grad=True) for x in xs]
    ty = fn(*txs)
    assert rel_err(y, ty.detach().numpy()) < 1e-5
    (ty * torch.tensor(dy)).sum().backward()
    for dx, tx in zip(dxs, txs):
        assert rel_err(dx, tx.grad.numpy()) < 1e-5


@pytest.mark.parametrize("ident,op,attrs,shapes,fn", OPS, ids=lambda v: str(v))
def test_ops_finite_differences(ident, op, attrs, shapes, fn):
    xs = _arrays(shapes, np.float64)
    params = _params(ident, np.float64)
    y, _, _ = _call(op, attrs, xs, params)
    dy = np.random.default_rng(7).standard_normal(y.shape)
    _, dxs, grads = _call(op, attrs, xs, params, dy)
    targets = [(x, d) for x, d in zip(xs, dxs)] + [(params[r], grads[r]) for r in sorted(params)]
    eps = 1e-6
    for k, (a, analytic) in enumerate(targets):
        num = np.zeros(a.shape)
        flat = a.reshape(-1)
        for i in range(flat.size):
            keep = flat[i]
            flat[i] = keep + eps
            plus = float((_call(op, attrs, xs, params)[0] * dy).sum())
            flat[i] = keep - eps
            minus = float((_call(op, attrs, xs, params)[0] * dy).sum())
            flat[i] = keep
            num.reshape(-1)[i] = (plus - minus) / (2 * eps)
        assert analytic.shape == a.shape
        assert rel_err(analytic, num) < 1e-6, (k, rel_err(analytic, num))


def test_wrapper_shape_rule_names_the_node():
    from n2d2.ir.types import GraphError, TensorType

    attrs = {"op": "OnnxMul", "attrs": {}, "slots": (("x", 0), ("x", 1)), "shapes": ((3, 1, 1), (3, 4, 5)),
             "batch_keys": ()}
    out = op_registry.get("OnnxNode").infer_types(attrs, [TensorType((2, 3, 1, 1), "float32"),
                                                          TensorType((2, 3, 4, 5), "float32")], {}, "se")
    assert out[0].shape == (2, 3, 4, 5)
    with pytest.raises(GraphError, match="node 'se' .*OnnxMul.*input 1"):
        op_registry.get("OnnxNode").infer_types(attrs, [TensorType((2, 3, 1, 1), "float32"),
                                                        TensorType((2, 3, 4, 4), "float32")], {}, "se")


# -- the refused patterns of the zoo, imported -------------------------------------------------------
def _se_block():
    """MobileNetV3's squeeze-excitation: HardSigmoid gate [N, C, 1, 1] times [N, C, H, W], HardSwish."""
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             node("GlobalAveragePool", ["c"], ["g"]),
             node("Conv", ["g", "w1", "b1"], ["s"]), node("HardSigmoid", ["s"], ["h"], alpha=1 / 6, beta=0.5),
             node("Mul", ["c", "h"], ["m"]), node("HardSwish", ["m"], ["y"])]
    inits = {"w": W(4, 3, 3, 3), "b": W(4), "w1": W(4, 4, 1, 1, seed=1), "b1": W(4, seed=2)}
    return make_model(nodes, inits, [3, 6, 6], 17), (3, 6, 6)


def _channel_shuffle():
    """ShuffleNetV2: rank-5 Reshape, Transpose, Reshape back, then split by Slice and concatenated."""
    k = lambda v: np.array(v, np.int64)  # noqa: E731
    nodes = [node("Conv", ["x", "w"], ["c"]),
             node("Reshape", ["c", "s5"], ["r5"]), node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             node("Reshape", ["t5", "s4"], ["r4"]),
             node("Slice", ["r4", "st0", "en0", "ax"], ["a"]), node("Slice", ["r4", "st1", "en1", "ax"], ["b"]),
             node("Relu", ["b"], ["rb"]), node("Concat", ["a", "rb"], ["y"], axis=1)]
    inits = {"w": W(6, 3, 1, 1), "s5": k([1, 2, 3, 5, 5]), "s4": k([1, 6, 5, 5]), "st0": k([0]), "en0": k([3]),
             "st1": k([3]), "en1": k([6]), "ax": k([1])}
    model = make_model(nodes, inits, [3, 5, 5], 17)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1   # exported at batch 1, as torch does
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True), (3, 5, 5)


def _convnext_block():
    """ConvNeXt: depthwise conv, NHWC LayerNorm, MatMul over the last axis, exact GELU (Erf),
    layer scale, back to NCHW, residual."""
    c = 4
    nodes = [node("Conv", ["x", "wd", "bd"], ["d"], pads=[1, 1, 1, 1], group=c),
             node("Transpose", ["d"], ["t"], perm=[0, 2, 3, 1]),
             node("LayerNormalization", ["t", "ln_s", "ln_b"], ["ln"], axis=-1, epsilon=1e-6),
             node("MatMul", ["ln", "w1"], ["m1"]), node("Add", ["m1", "b1"], ["a1"]),
             node("Div", ["a1", "sqrt2"], ["dv"]), node("Erf", ["dv"], ["e"]), node("Add", ["e", "one"], ["e1"]),
             node("Mul", ["a1", "e1"], ["g0"]), node("Mul", ["g0", "half"], ["g"]),
             node("MatMul", ["g", "w2"], ["m2"]), node("Add", ["m2", "b2"], ["a2"]),
             node("Mul", ["a2", "gamma"], ["ls"]), node("Transpose", ["ls"], ["back"], perm=[0, 3, 1, 2]),
             node("Add", ["x", "back"], ["y"])]
    f = np.float32
    inits = {"wd": W(c, 1, 3, 3), "bd": W(c, seed=1), "ln_s": W(c, seed=2) + 1, "ln_b": W(c, seed=3),
             "w1": W(c, 4 * c, seed=4), "b1": W(4 * c, seed=5), "sqrt2": np.array(np.sqrt(2), f),
             "one": np.array(1, f), "half": np.array(0.5, f), "w2": W(4 * c, c, seed=6), "b2": W(c, seed=7),
             "gamma": W(c, seed=8)}
    return make_model(nodes, inits, [c, 5, 6], 17), (c, 5, 6)


def _ceil_pool():
    """GoogLeNet: MaxPool with ceil_mode (a last window past the border)."""
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Relu", ["c"], ["r"]),
             node("MaxPool", ["r"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)]
    return make_model(nodes, {"w": W(4, 3, 1, 1)}, [3, 8, 8], 17), (3, 8, 8)


PATTERNS = {"se_block": _se_block, "channel_shuffle": _channel_shuffle, "convnext_block": _convnext_block,
            "ceil_pool": _ceil_pool}


def _load(tmp_path, name, backend="numpy", generic_ops=True, batch=2):
    model, shape = PATTERNS[name]()
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(model, path)
    return DeepNetCell.load_from_ONNX(provider_for(shape, batch), path, backend=backend,
                                      generic_ops=generic_ops), path, shape


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_refused_patterns_import_as_generic_cells(tmp_path, name, backend):
    dn, path, shape = _load(tmp_path, name, backend)
    assert any(isinstance(c, OnnxNode) for c in dn)
    x = np.random.default_rng(5).standard_normal((2,) + shape).astype(np.float32)
    y = run_cell(dn, x)
    ref = run_ort(path, x, per_sample=True)
    assert rel_err(y.reshape(ref.shape), ref) < 1e-5


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_without_generic_ops_they_are_refused_by_name(tmp_path, name):
    with pytest.raises(ONNXUnsupportedError, match=f"{name}.onnx: node "):
        _load(tmp_path, name, generic_ops=False)


def test_generic_cells_keep_onnx_names_print_and_can_be_removed(tmp_path, capsys):
    dn, path, shape = _load(tmp_path, "se_block")
    by_name = {c.get_name(): c for c in dn}
    # HardSigmoid and HardSwish are in the activation table: a fused activation and an Activation cell
    assert by_name["s"].get_type() == "Conv" and type(by_name["s"].activation).__name__ == "HardSigmoid"
    assert by_name["y"].get_type() == "Activation" and type(by_name["y"].activation).__name__ == "HardSwish"
    assert by_name["m"].get_type() == "OnnxNode" and by_name["m"].op_type == "Mul"   # the broadcasting Mul
    assert "'m' OnnxNode(Frame)(op_type=Mul" in str(dn)
    dn.summary()
    assert "OnnxNode" in capsys.readouterr().out
    dn.remove("y")   # the HardSwish: the network now ends at the Mul
    model = onnx.load(path)
    model.graph.node.pop()
    model.graph.output[0].name = "m"
    model.graph.output[0].type.tensor_type.ClearField("shape")
    cut = str(tmp_path / "cut.onnx")
    onnx.save(model, cut)
    x = np.random.default_rng(6).standard_normal((2,) + shape).astype(np.float32)
    ref = run_ort(cut, x)
    assert rel_err(run_cell(dn, x).reshape(ref.shape), ref) < 1e-5


def test_other_batch_size_reshapes_rank5(tmp_path):
    """The rank-5 Reshape target names the file's batch (1): it follows the running batch."""
    dn, path, shape = _load(tmp_path, "channel_shuffle", batch=3)
    x = np.random.default_rng(8).standard_normal((3,) + shape).astype(np.float32)
    ref = run_ort(path, x, per_sample=True)
    assert rel_err(run_cell(dn, x).reshape(ref.shape), ref) < 1e-5


def _torch_convnext_block(x, p):
    c = p["wd"].shape[0]
    d = F.conv2d(x, p["wd"], p["bd"], padding=1, groups=c).permute(0, 2, 3, 1)
    a1 = F.layer_norm(d, (c,), p["ln_s"], p["ln_b"], 1e-6) @ p["w1"] + p["b1"]
    g = a1 * 0.5 * (1 + torch.erf(a1 / np.sqrt(2)))
    return x + ((g @ p["w2"] + p["b2"]) * p["gamma"]).permute(0, 3, 1, 2)


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_generic_parameters_train_like_torch(tmp_path, backend):
    """One step of the DeepNetCell on the ConvNeXt block: the OnnxNode constants (LayerNorm
    scale and bias, MatMul weights, layer scale) move along torch's gradient, all by the same
    solver factor."""
    dn, path, shape = _load(tmp_path, "convnext_block", backend)
    cells = {c.get_name(): c for c in dn}
    trained = {"ln_s": (cells["ln"], "in1"), "ln_b": (cells["ln"], "in2"), "w1": (cells["m1"], "in1"),
               "w2": (cells["m2"], "in1"), "gamma": (cells["ls"], "in1")}
    before = {k: c.get_constants()[r].copy() for k, (c, r) in trained.items()}
    x = np.random.default_rng(9).standard_normal((2,) + shape).astype(np.float32)
    dy = np.random.default_rng(10).standard_normal((2,) + shape).astype(np.float32)
    dn.learn()
    t = n2d2.Tensor.from_numpy(x)
    n2d2.provider.TensorPlaceholder(t)
    y = dn(t)
    deepnet = y.get_deepnet()
    deepnet.seed_gradient(y, dy)
    deepnet.back_propagate()
    deepnet.update()
    inits = {i.name: torch.tensor(onnx.numpy_helper.to_array(i).astype(np.float64), requires_grad=True)
             for i in onnx.load(path).graph.initializer}
    (_torch_convnext_block(torch.tensor(x, dtype=torch.float64), inits) * torch.tensor(dy, dtype=torch.float64)) \
        .sum().backward()
    factors = []
    for k, (c, r) in trained.items():
        delta = (before[k] - c.get_constants()[r]).astype(np.float64)
        g = inits[k].grad.numpy()
        factor = float((delta * g).sum() / (g * g).sum())
        assert factor > 0 and rel_err(delta, factor * g) < 1e-3, (k, rel_err(delta, factor * g))
        factors.append(factor)
    assert max(factors) / min(factors) < 1.001


def test_generic_ops_flag_is_checked_and_named_in_refusals(tmp_path):
    from n2d2.error_handler import WrongInputType

    model, shape = _se_block()
    path = str(tmp_path / "se.onnx")
    onnx.save(model, path)
    with pytest.raises(WrongInputType, match="generic_ops"):
        DeepNetCell.load_from_ONNX(provider_for(shape), path, generic_ops=1)
    with pytest.raises(ONNXUnsupportedError, match="Mul of activations.*no broadcasting"):
        DeepNetCell.load_from_ONNX(provider_for(shape), path, generic_ops=False)


def test_a_node_neither_path_takes_keeps_the_cell_importers_reason(tmp_path):
    """Flatten over the batch axis: refused by the cells, and its generic form would not keep the
    batch axis either; the refusal is the cell importer's."""
    nodes = [node("Flatten", ["x"], ["y"], axis=0)]
    path = str(tmp_path / "flat0.onnx")
    onnx.save(make_model(nodes, {}, [3, 5, 5], 13), path)
    with pytest.raises(ONNXUnsupportedError, match="flat0.onnx: node .*Flatten, output 'y'.*batch axis"):
        DeepNetCell.load_from_ONNX(provider_for((3, 5, 5)), path, backend="numpy", generic_ops=True)


def _refused_cases():
    from tests.test_onnx_import import REFUSED

    return {k: v for k, v in REFUSED.items() if k != "batch_axis"}


@pytest.mark.parametrize("case", sorted(_refused_cases()))
def test_every_refusal_of_the_cell_importer_imports_with_generic_ops(tmp_path, case):
    """The nodes `test_onnx_import` shows refused (but the one leaving the batch axis) import as
    OnnxNode cells and match onnxruntime."""
    nodes, inits, _ = _refused_cases()[case]
    path = str(tmp_path / f"{case}.onnx")
    onnx.save(make_model(nodes, inits, [3, 5, 5], 13), path)
    dn = DeepNetCell.load_from_ONNX(provider_for((3, 5, 5)), path, backend="numpy", generic_ops=True)
    assert any(isinstance(c, OnnxNode) for c in dn)
    x = np.random.default_rng(11).standard_normal((2, 3, 5, 5)).astype(np.float32)
    if case == "div_by_activation":
        x = np.where(np.abs(x) < 0.1, 0.5, x).astype(np.float32)
    ref = run_ort(path, x)
    assert rel_err(run_cell(dn, x).reshape(ref.shape), ref) < 1e-5


def test_generic_constants_round_trip_through_parameter_files(tmp_path):
    dn, path, shape = _load(tmp_path, "convnext_block")
    x = np.random.default_rng(12).standard_normal((2,) + shape).astype(np.float32)
    y = run_cell(dn, x)
    folder = str(tmp_path / "params")
    dn.export_free_parameters(folder, verbose=False)
    cells = {c.get_name(): c for c in dn}
    scale = cells["ln"].get_constants()["in1"]
    saved = scale.copy()
    scale[...] = 0.0
    assert rel_err(run_cell(dn, x), y) > 1e-3
    dn.import_free_parameters(folder)
    assert np.array_equal(scale, saved)
    assert rel_err(run_cell(dn, x), y) < 1e-7


def test_onnx_node_cell_trains_eagerly_like_torch():
    """An OnnxNode cell on its own (no DeepNetCell): forward, back-propagation to its input and
    its constants, one SGD step, against torch."""
    rng = np.random.default_rng(13)
    scale, bias = rng.standard_normal(5).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    cell = OnnxNode("LayerNormalization", "OnnxLayerNormalization", {"axis": 3, "epsilon": 1e-5},
                    [("x", 0), ("p", "in1"), ("p", "in2")], [(3, 4, 5)], {"in1": scale, "in2": bias}, name="ln")
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    t = n2d2.Tensor.from_numpy(x)
    n2d2.provider.TensorPlaceholder(t)
    pre = n2d2.cells.Activation(None, name="pre")   # a cell before: the gradient reaches a producer
    cell.learn()
    y = cell(pre(t))
    tx = torch.tensor(x, requires_grad=True)
    ts, tb = torch.tensor(scale, requires_grad=True), torch.tensor(bias, requires_grad=True)
    ty = F.layer_norm(tx, (5,), ts, tb, 1e-5)
    assert rel_err(y.to_numpy(), ty.detach().numpy()) < 1e-5
    deepnet = y.get_deepnet()
    deepnet.seed_gradient(y, dy)
    deepnet.back_propagate()
    (ty * torch.tensor(dy)).sum().backward()
    # N2D2's sign: diff outputs are minus the gradient
    assert rel_err(-cell.get_diffoutputs(0).to_numpy(), tx.grad.numpy()) < 1e-5
    lr = cell.solver.learning_rate
    deepnet.update()
    constants = cell.get_constants()
    assert rel_err(scale - constants["in1"], lr / 2 * ts.grad.numpy()) < 1e-4
    assert rel_err(bias - constants["in2"], lr / 2 * tb.grad.numpy()) < 1e-4
    assert str(cell).startswith("'ln' OnnxNode(Frame)(op_type=LayerNormalization")


@pytest.mark.parametrize("op_type,attrs,opset", [("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20),
                                                 ("Mish", {}, 18), ("HardSigmoid", {"alpha": 0.3}, 17),
                                                 ("HardSwish", {}, 17), ("Erf", {}, 17)])
def test_zoo_activations_import_and_match_onnxruntime(tmp_path, op_type, attrs, opset):
    nodes = [node("Conv", ["x", "w"], ["c"]), node(op_type, ["c"], ["y"], **attrs)]
    path = str(tmp_path / f"{op_type}.onnx")
    onnx.save(make_model(nodes, {"w": W(4, 3, 1, 1)}, [3, 4, 5], opset), path)
    dn = DeepNetCell.load_from_ONNX(provider_for((3, 4, 5)), path, backend="numpy", generic_ops=True)
    # activations of the table fuse into the Conv (named after its output); Erf stays a generic cell
    assert [c.get_name() for c in dn] == (["c", "y"] if op_type == "Erf" else ["c"])
    x = np.random.default_rng(14).standard_normal((2, 3, 4, 5)).astype(np.float32) * 3
    ref = run_ort(path, x)
    assert rel_err(run_cell(dn, x), ref) < 1e-5


def test_ini_sections_reach_generic_cells(tmp_path):
    """`[<output>]` sections of the import INI set an OnnxNode's solver and BackPropagate."""
    model, shape = _convnext_block()
    path = str(tmp_path / "block.onnx")
    onnx.save(model, path)
    ini = tmp_path / "import.ini"
    ini.write_text("[ln]\nSolvers.LearningRate=0.5\nBackPropagate=0\n[m1]\nWeightsSolver.LearningRate=0.5\n")
    with pytest.raises(ONNXUnsupportedError, match=r"WeightsSolver.LearningRate.*does not apply to OnnxNode 'm1'"):
        DeepNetCell.load_from_ONNX(provider_for(shape), path, ini_file=str(ini), generic_ops=True)
    ini.write_text("[ln]\nSolvers.LearningRate=0.5\nBackPropagate=0\n")
    dn = DeepNetCell.load_from_ONNX(provider_for(shape), path, ini_file=str(ini), backend="numpy", generic_ops=True)
    ln = {c.get_name(): c for c in dn}["ln"]
    assert ln.solver.learning_rate == 0.5 and ln.back_propagate is False
    graph = dn.get_graph()
    assert graph.attrs("ln")["back_propagate"] is False


def test_a_generic_node_that_converts_to_nothing_is_an_alias(tmp_path):
    """Expand to the tensor's own shape: its conversion is the identity, no cell is made."""
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Expand", ["c", "one"], ["e"]), node("Relu", ["e"], ["y"])]
    path = str(tmp_path / "expand.onnx")
    onnx.save(make_model(nodes, {"w": W(4, 3, 1, 1), "one": np.array([1], np.int64)}, [3, 4, 5], 13), path)
    dn = DeepNetCell.load_from_ONNX(provider_for((3, 4, 5)), path, backend="numpy", generic_ops=True)
    assert not any(isinstance(c, OnnxNode) for c in dn)
    x = np.random.default_rng(15).standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref = run_ort(path, x)
    assert rel_err(run_cell(dn, x), ref) < 1e-6
