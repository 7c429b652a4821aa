"""C kernels of the ONNX-semantics ops (issue 12): broadcasting OnnxAdd / Sub / Mul / Div,
OnnxLayerNormalization, OnnxSlice, OnnxTranspose, OnnxReshape (templates/c/onnx.c.j2) and the
`OnnxNode` wrapper running them. Each kernel against the numpy reference on fresh random inputs,
forward and backward (several broadcast patterns, scalars, rank 5, LayerNorm over one and three
axes, negative and strided slices), NaN propagation, the stated fallbacks, and the refused
torchvision patterns (squeeze-excitation, ConvNeXt block, channel shuffle) imported through
`DeepNetCell.load_from_ONNX` and `onnx_backend.prepare` on C: the Onnx* nodes run in C and the
outputs match onnxruntime."""
import numpy as np
import pytest

from n2d2.ir import lowering as low
from tests.conftest import rel_err

c_backend = pytest.importorskip("n2d2.codegen.c_backend")
pytestmark = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")


def _const(net, array, name="const"):
    return net.op("OnnxConstant", [], {}, {"value": np.asarray(array, np.float32)}, name=name)


def _rank5(net, x, shape):
    return net.op("OnnxReshape", [x], {"shape": shape})


BINARY = ["OnnxAdd", "OnnxSub", "OnnxMul", "OnnxDiv"]


def _away_from_zero(a):
    return np.where(np.abs(a) < 0.3, np.sign(a) * 0.3 + (a == 0) * 0.3, a).astype(np.float32)


def _binary_cases(net):
    """(node, op, a shape, b shape) of every binary op on several broadcast patterns."""
    rng = net.rng
    x = net.source((2, 3, 4, 5), "x")
    gate = net.source((2, 3, 1, 1), "gate")            # squeeze-excitation's [N, C, 1, 1]
    row = net.source((2, 1, 4, 1), "row")
    x5 = _rank5(net, x, (2, 3, 2, 2, 5))
    nodes = []
    for op in BINARY:
        div = op == "OnnxDiv"
        cases = [
            (x, gate, "[N,C,H,W] x [N,C,1,1]"),
            (gate, x, "[N,C,1,1] x [N,C,H,W]"),
            (x, x, "same tensor"),
            (x, _const(net, _away_from_zero(rng.standard_normal(())) if div else rng.standard_normal(()), "scalar"),
             "scalar"),
            (_const(net, _away_from_zero(rng.standard_normal((5,))) if not div else rng.standard_normal((5,)), "w"),
             x, "[W] x [N,C,H,W]"),
            (row, _const(net, _away_from_zero(rng.standard_normal((3, 1, 5))), "chw"), "[N,1,H,1] x [C,1,W]"),
            (x5, _const(net, _away_from_zero(rng.standard_normal((1, 3, 1, 2, 1))), "r5"), "rank 5"),
        ]
        for a, b, what in cases:
            if div and a == b:
                continue
            nodes.append((net.op(op, [a, b], {}), op, what))
    return nodes


def test_binary_kernels_forward_and_backward_match_the_reference():
    from tests.test_c_backend import Net, check_training

    net = Net(seed=11, name="binary")
    cases = _binary_cases(net)
    net.output(*[n for n, _, _ in cases])
    p = check_training(net, tol=1e-5, expect_c=[n for n, _, _ in cases])
    for node, op, what in cases:
        assert p.where[f"grad:{node}"] == "c", (op, what)


def test_broadcast_geometry_merges_axes():
    g = low.strided_geometry((2, 3, 4, 5), [(0, low.broadcast_strides((2, 3, 1, 1), (2, 3, 4, 5))),
                                            (0, low.broadcast_strides((2, 3, 4, 5), (2, 3, 4, 5)))])
    assert g["DIMS"] == [6, 20] and g["OPS"][0]["STR"] == [1, 0] and g["OPS"][1]["STR"] == [20, 1]
    g = low.strided_geometry((2, 3), [(0, low.broadcast_strides((), (2, 3)))])
    assert g["DIMS"] == [6] and g["OPS"][0]["STR"] == [0]


def _wrapped_ln(net):
    """`ln(xs, axis, eps)` building LayerNorm as an OnnxNode (one output; scale and bias as its
    parameters), for the harness that compares every output of every node (Mean, InvStdDev)."""
    def ln(xs, axis, eps=1e-5):
        x = xs[0]
        shape = net.g.output_types(x)[0].shape
        params = {f"in{k}": net.g.params[net.g.node(c).params["value"]].array.copy() for k, c in enumerate(xs[1:])}
        slots = (("x", 0),) + tuple(("p", role, "float32") for role in params)
        return net.op("OnnxNode", [x], {"op": "OnnxLayerNormalization", "attrs": {"axis": axis, "epsilon": eps},
                                        "slots": slots, "shapes": (tuple(shape[1:]),), "batch_keys": ()}, params)
    return ln


def _layout_cases(net, wrap_ln=False):
    rng = net.rng
    x = net.source((2, 3, 4, 5), "x")
    x5 = _rank5(net, x, (2, 3, 2, 2, 5))
    out = []
    ln = lambda xs, axis, eps=1e-5: net.op("OnnxLayerNormalization", xs, {"axis": axis, "epsilon": eps})  # noqa: E731
    if wrap_ln:
        ln = _wrapped_ln(net)
    out.append(ln([x, _const(net, 1 + rng.standard_normal(5)), _const(net, rng.standard_normal(5))], 3))
    out.append(ln([x, _const(net, 1 + rng.standard_normal((3, 4, 5)))], 1, 1e-3))      # last 3 axes, no bias
    out.append(ln([x, _const(net, 1 + rng.standard_normal((4, 1))),                    # broadcast scale / bias
                   _const(net, rng.standard_normal((1, 5)))], 2))
    out.append(ln([x5, _const(net, 1 + rng.standard_normal(())), _const(net, rng.standard_normal((2, 5)))], 3))
    out.append(net.op("OnnxSlice", [x], {"starts": [3, 0], "ends": [-100, 5], "axes": [2, 3], "steps": [-2, 2]}))
    out.append(net.op("OnnxSlice", [x5], {"starts": [1, -4], "ends": [3, 100], "axes": [1, -1], "steps": [1, 1]}))
    out.append(net.op("OnnxSlice", [x], {"starts": [-1], "ends": [-1000], "axes": [1], "steps": [-1]}))
    out.append(net.op("OnnxTranspose", [x5], {"perm": (0, 2, 4, 1, 3)}))
    out.append(net.op("OnnxTranspose", [x5], {"perm": (4, 3, 2, 1, 0)}))
    out.append(net.op("OnnxTranspose", [x], {"perm": (0, 2, 3, 1)}))
    out.append(net.op("OnnxReshape", [net.op("OnnxTranspose", [x5], {"perm": (0, 2, 1, 3, 4)})], {"shape": (2, 6, 10)}))
    return out


def test_layer_norm_slice_transpose_reshape_forward_and_backward_match_the_reference():
    from tests.test_c_backend import Net, check_training

    net = Net(seed=12, name="layout")
    nodes = _layout_cases(net)
    net.output(*nodes)
    p = check_training(net, tol=1e-5, expect_c=[n for n in nodes if not n.startswith("onnxconstant")])
    assert all(p.where[f"grad:{n}"] == "c" for n in nodes)
    assert [p.geometry[n]["KIND"] for n in nodes[:4]] == ["layernorm"] * 4
    assert p.geometry[nodes[1]]["INNER"] == 60 and p.geometry[nodes[1]]["OUTER"] == 2


def test_large_inputs_use_the_thread_team():
    from tests.test_c_backend import Net, check_inference

    net = Net(seed=13, name="large")
    x = net.input((8, 32, 32, 32))
    gate = net.input((8, 32, 1, 1), "gate")
    m = net.op("OnnxMul", [x, gate], {})
    t = net.op("OnnxTranspose", [x], {"perm": (0, 2, 3, 1)})
    ln = net.op("OnnxLayerNormalization", [t, _const(net, 1 + net.rng.standard_normal(32))], {"axis": 3})
    net.output(m, ln)
    p = check_inference(net, expect_c=[m, t, ln])
    assert p.geometry[m]["PAR"] and p.geometry[t]["PAR"] and p.geometry[ln]["PAR"]


def _run_c(net):
    from n2d2.codegen import numpy_exec

    ref = numpy_exec.run(net.g, net.feeds)
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    return p, ref, [p.view(t) for t in net.g.outputs]


def test_nan_propagates_as_in_the_reference():
    from tests.test_c_backend import Net

    net = Net(seed=14, name="nan")
    x = net.input((2, 3, 4, 5))
    gate = net.input((2, 3, 1, 1), "gate")
    nodes = [net.op(op, [x, gate], {}) for op in BINARY]
    nodes.append(net.op("OnnxLayerNormalization", [x, _const(net, np.ones(5))], {"axis": 3}))
    nodes.append(net.op("OnnxLayerNormalization", [x, _const(net, np.ones((3, 4, 5)))], {"axis": 1}))
    nodes.append(net.op("OnnxSlice", [x], {"starts": [1], "ends": [4], "axes": [2], "steps": [2]}))
    nodes.append(net.op("OnnxTranspose", [x], {"perm": (3, 1, 0, 2)}))
    net.output(*nodes)
    net.feeds[x][0, 1, 3, 2] = np.nan
    net.feeds[gate][1, 2, 0, 0] = np.nan
    net.feeds[x][1, 0, 1, 1] = np.inf
    p, ref, outs = _run_c(net)
    for node, out, r in zip(nodes, outs, ref):
        assert p.where[node] == "c"
        assert np.array_equal(np.isnan(out), np.isnan(r)), node
        assert np.isnan(out).any(), node
        fin = np.isfinite(r)
        assert np.array_equal(out[~fin & ~np.isnan(r)], r[~fin & ~np.isnan(r)]), node
        assert rel_err(out[fin], r[fin]) < 1e-5, node


def test_stated_fallbacks_and_layer_norm_statistics():
    from tests.test_c_backend import Net

    net = Net(seed=15, name="fallback")
    x = net.input((2, 3, 4, 5))
    ln = net.op("OnnxLayerNormalization", [x, _const(net, np.ones(5))], {"axis": 3})
    empty = net.op("OnnxSlice", [x], {"starts": [2], "ends": [2], "axes": [3]})
    split = net.op("OnnxLayerNormalization", [x, _const(net, np.ones((3, 1, 5)))], {"axis": 1})
    net.g.set_outputs([(ln, 0), (ln, 1), (empty, 0), (split, 0)])
    p, ref, outs = _run_c(net)
    assert p.where[ln] == "c"   # Y, Mean and InvStdDev (compared below)
    assert p.where[empty] == "numpy" and "empty output" in p.fallback_reasons[empty]
    assert p.where[split] == "numpy" and "split axes" in p.fallback_reasons[split]
    for out, r in zip(outs, ref):
        assert rel_err(out, r) < 1e-5


# -- imported models ----------------------------------------------------------------------------------
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("name,inner", [
    ("se_block", {"OnnxMul"}),
    ("convnext_block", {"OnnxLayerNormalization", "OnnxAdd", "OnnxMul"}),
    ("channel_shuffle", {"OnnxReshape", "OnnxTranspose", "OnnxSlice"}),
])
def test_imported_generic_cells_run_in_c(tmp_path, name, inner):
    from tests.test_onnx_generic import _load
    from tests.test_onnx_import import run_cell, run_ort

    dn, path, shape = _load(tmp_path, name, "c")
    x = np.random.default_rng(21).standard_normal((2,) + shape).astype(np.float32)
    y = run_cell(dn, x)
    ref = run_ort(path, x, per_sample=True)
    assert rel_err(y.reshape(ref.shape), ref) < 1e-5
    p = dn._programs[("inference", 2)]._c
    g = p.graph
    ran = {g.attrs(n)["op"] for n in g.nodes() if g.op(n) == "OnnxNode" and p.where[n] == "c"}
    assert inner <= ran, (ran, p.fallback_reasons)


def test_imported_generic_cells_train_with_c_kernels(tmp_path):
    """The OnnxNode kernels in a training program: forward and backward (the gradients of the
    inputs and of the parameters, LayerNorm's scale and bias included) in C, as the reference."""
    from tests.test_c_backend import _rng, _seeds, run_c_training, run_numpy_training
    from tests.test_onnx_generic import _load

    dn, _, shape = _load(tmp_path, "convnext_block", "c")
    tg = dn._graph_for("training", 2)
    x = np.random.default_rng(22).standard_normal((2,) + shape).astype(np.float32)
    feeds = {n: x for n in tg.graph.inputs if n not in tg.grad_inputs.values()}
    seeds = _seeds(tg, _rng(23))
    ref = run_numpy_training(tg, feeds, seeds)
    out, p = run_c_training(tg, feeds, seeds)
    generic = [n for n in tg.forward_nodes if tg.graph.op(n) == "OnnxNode"
               and tg.graph.attrs(n)["op"] in ("OnnxLayerNormalization", "OnnxAdd", "OnnxMul")]
    assert len(generic) >= 4 and all(p.where[n] == "c" and p.where[f"grad:{n}"] == "c" for n in generic), p.where
    for k in ref:
        assert rel_err(out[k], ref[k]) < 1e-4, k


def test_onnx_backend_runs_the_onnx_ops_in_c():
    from onnx import TensorProto, helper, numpy_helper

    from n2d2 import onnx_backend

    rng = np.random.default_rng(24)
    inits = [numpy_helper.from_array(rng.standard_normal((3, 1, 1)).astype(np.float32), "g"),
             numpy_helper.from_array(1 + rng.standard_normal(5).astype(np.float32), "s"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([1, 0], np.int64), "st"),
             numpy_helper.from_array(np.array([4, 3], np.int64), "en"),
             numpy_helper.from_array(np.array([2, 1], np.int64), "ax"),
             numpy_helper.from_array(np.array([2, 1], np.int64), "sp")]
    nodes = [helper.make_node("Mul", ["x", "g"], ["m"]),
             helper.make_node("Sub", ["m", "x"], ["d"]),
             helper.make_node("LayerNormalization", ["d", "s", "b"], ["ln"], axis=-1, epsilon=1e-5),
             helper.make_node("Transpose", ["ln"], ["t"], perm=[0, 3, 2, 1]),
             helper.make_node("Slice", ["t", "st", "en", "ax", "sp"], ["y"])]
    graph = helper.make_graph(nodes, "onnxk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 2, 3])], inits)
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = helper.find_min_ir_version_for(opsets)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rep = onnx_backend.prepare(model, backend="c")
    y = rep.run(x)[0]
    assert rel_err(y, ref) < 1e-5
    p = rep.program({"x": x})._c
    g = p.graph
    ops = {g.op(n): p.where[n] for n in g.nodes() if g.op(n).startswith("Onnx") and g.op(n) != "OnnxConstant"}
    assert ops and all(w == "c" for w in ops.values()), (ops, p.fallback_reasons)


# -- CUDA (the host emulator runs the generated source; nvcc compiles it where there is one) ----------
@pytest.mark.parametrize("build", [_binary_cases, lambda net: _layout_cases(net, wrap_ln=True)],
                         ids=["binary", "layout"])
def test_cuda_kernels_match_the_reference_on_the_emulator(build):
    from n2d2.codegen.cuda_backend import compile_check, find_nvcc
    from n2d2.solver import SGD
    from tests.test_c_backend import Net
    from tests.test_cuda_backend import EMU, run_training

    net = Net(seed=16, name="cuda")
    built = build(net)
    nodes = [n[0] if isinstance(n, tuple) else n for n in built]
    net.output(*nodes)
    for param in net.g.params.values():
        if net.g.op(param.owner) == "OnnxConstant":
            # the harness records a numpy node's output as the object it returns: for a constant, the
            # parameter itself, which the update then changes; a zero step keeps it comparable
            param.solver = SGD(learning_rate=0.0, momentum=0.0)
    prog = run_training(net.g, EMU, steps=1, tol=5e-5)   # sums in another order than numpy's
    ran = [n for n in nodes if net.g.op(n) != "OnnxConstant"]
    assert sum(net.g.op(n) == "OnnxNode" for n in ran) in (0, 4)
    assert all(prog.where[n] == "cuda" and prog.where[f"grad:{n}"] == "cuda" for n in ran), \
        {n: prog.where[n] for n in ran}
    if find_nvcc() is not None:
        compile_check(prog.source)


def check_standalone_export(tmp_path, monkeypatch, name, seed):
    """`export_c` of the ONNX pattern `name` (tests/test_onnx_generic.PATTERNS) imported on C: built
    by make, run on 4 exported stimuli, outputs as onnxruntime's."""
    import os
    import shutil
    import subprocess

    import n2d2
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.export import export_c
    from tests.test_onnx_generic import PATTERNS
    from tests.test_onnx_import import run_ort

    if shutil.which("make") is None:
        pytest.skip("needs make")
    model, shape = PATTERNS[name]()
    path = str(tmp_path / f"{name}.onnx")
    onnx.save(model, path)
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    database = n2d2.database.Numpy()
    database.load(xs, [0, 1, 2, 0], partition="Test")
    provider = n2d2.provider.DataProvider(database, [shape[2], shape[1], shape[0]], batch_size=2)
    dn = DeepNetCell.load_from_ONNX(provider, path, backend="c")
    monkeypatch.chdir(tmp_path)
    folder = export_c(dn, export_folder_name="export")
    for cmd in (["make"], [os.path.join(folder, "bin/network_test"), "-q", "-d", "4", "outputs.bin"]):
        r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
    out = np.fromfile(os.path.join(folder, "outputs.bin"), dtype="<f4").reshape(4, -1)
    ref = run_ort(path, np.stack(xs), per_sample=True).reshape(4, -1)
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("name", ["se_block", "channel_shuffle"])
def test_standalone_export_runs_the_generic_cells(tmp_path, monkeypatch, name):
    """`export_c` of an imported model whose generic cells now have C kernels: built by make,
    run on the exported stimuli, outputs as onnxruntime's."""
    check_standalone_export(tmp_path, monkeypatch, name, seed=31)
