"""The legalize pass (`n2d2.ir.passes.legalize_onnx`): `Onnx*` nodes of `n2d2.onnx_backend`'s
conversion rewritten into N2D2 ops where exact. PyTorch exports (ResNet, MobileNetV2) and the
zoo patterns: outputs against onnxruntime before and after, the N2D2 passes applying after
it (activation fusion), parameter gradients unchanged (autodiff), names kept, and what must
stay an `Onnx*` node (broadcasting Mul, ceil-mode pooling, NHWC LayerNorm)."""
import collections

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from n2d2 import onnx_backend  # noqa: E402
from n2d2.codegen import numpy_exec  # noqa: E402
from n2d2.ir import autodiff  # noqa: E402
from n2d2.ir.passes import PASSES, optimize  # noqa: E402
from n2d2.ir.passes.legalize_onnx import (  # noqa: E402
    RULES,
    fold_constant_operands,
    known_activation,
    legalize_node,
    legalize_onnx,
    rule,
)
from n2d2.solver import SGD  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.test_onnx_generic import PATTERNS  # noqa: E402
from tests.test_onnx_import import MobileNetV2, ResNet18, torch_export  # noqa: E402


def _ops(graph):
    return collections.Counter(graph.op(n) for n in graph.nodes())


def _graph(path_or_model, x):
    model = onnx.load(path_or_model) if isinstance(path_or_model, str) else path_or_model
    rep = onnx_backend.prepare(model)
    name = rep.input_names[0]
    return rep.build({name: x}), name


def _run(graph, name, x):
    return np.asarray(numpy_exec.run(graph, {name: x})[0])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("legalize")
    return {"resnet": torch_export(ResNet18(width=16), (3, 32, 32), str(folder / "resnet.onnx"), 13),
            "mobilenet_v2": torch_export(MobileNetV2(), (3, 32, 32), str(folder / "mbv2.onnx"), 13, fold=False)}


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2"])
def test_cnn_legalizes_to_n2d2_ops_and_keeps_its_outputs(exports, name):
    path = exports[name]
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    graph, in_name = _graph(path, x)
    legal = legalize_onnx(graph)
    before, after = _ops(graph), _ops(legal)
    assert after["Conv"] == before["OnnxConv"] > 0 and "OnnxConv" not in after
    for op in ("OnnxRelu", "OnnxMaxPool", "OnnxBatchNormalization", "OnnxClip"):
        assert op not in after, op
    assert after["ElemWise"] == before["OnnxAdd"]
    assert after["Fc"] == before["OnnxGemm"] == 1 and "OnnxConstant" not in after   # Gemm: an Fc
    assert {n for n in graph.nodes() if graph.op(n) == "OnnxConv"} == \
        {n for n in legal.nodes() if legal.op(n) == "Conv"}   # names kept
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
    assert rel_err(_run(graph, in_name, x), ref) < 1e-5
    assert rel_err(_run(legal, in_name, x), ref) < 1e-5
    fused = optimize(legal)   # the N2D2 passes now apply: activations fuse into their producers
    assert "Activation" not in _ops(fused) and after["Activation"] > 0
    assert rel_err(_run(fused, in_name, x), ref) < 1e-5
    assert graph.op(next(n for n in graph.nodes() if graph.op(n) == "OnnxConv")) == "OnnxConv"  # input untouched


def test_parameter_gradients_are_unchanged(exports):
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    graph, in_name = _graph(exports["resnet"], x)
    for p in graph.params.values():
        p.solver = SGD() if p.trainable else None
    legal = legalize_onnx(graph)
    seed = np.random.default_rng(2).standard_normal(graph.output_types(graph.outputs[0][0])[0].shape)
    grads = []
    for g in (graph, legal):
        tg = autodiff.build_training_graph(g)
        session = numpy_exec.Session(tg.graph, training=False)
        session.feed(dict({in_name: x}, **{name: seed.astype(np.float32) for name in tg.grad_inputs.values()}))
        session.run_nodes(tg.forward_nodes + tg.backward_nodes)
        grads.append({p: np.asarray(session.values[node][k]) for p, (node, k) in tg.param_grads.items()})
    assert set(grads[0]) == set(grads[1]) and len(grads[0]) > 10
    for p in grads[0]:
        assert rel_err(grads[1][p], grads[0][p]) < 1e-5, p


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_what_n2d2_ops_cannot_express_stays_onnx(tmp_path, name):
    model, shape = PATTERNS[name]()
    x = np.random.default_rng(3).standard_normal((1,) + shape).astype(np.float32)
    graph, in_name = _graph(model, x)
    legal = legalize_onnx(graph)
    after = _ops(legal)
    hard_sigmoid = known_activation("HardSigmoid", alpha=1 / 6, beta=0.5) is not None
    hard_swish = known_activation("HardSwish") is not None
    gelu = known_activation("Gelu") is not None   # the decomposed GELU becomes one Activation
    expected = {
        "se_block": {"OnnxMul": 1, "OnnxHardSigmoid": 0 if hard_sigmoid else 1,
                     "OnnxHardSwish": 0 if hard_swish else 1, "Conv": 2, "Pool": 1},
        "channel_shuffle": {"OnnxReshape": 2, "OnnxTranspose": 1, "OnnxSlice": 2, "Concat": 1, "Activation": 1},
        "convnext_block": {"OnnxLayerNormalization": 1, "OnnxMatMul": 2, "OnnxErf": 0 if gelu else 1,
                           "Activation": 1 if gelu else 0, "Conv": 1},
        "ceil_pool": {"OnnxMaxPool": 1, "Conv": 1, "Activation": 1},
    }[name]
    for op, count in expected.items():
        assert after[op] == count, (op, dict(after))
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
    assert rel_err(_run(legal, in_name, x), ref) < 1e-5


def test_rules_are_registered_by_op_type_and_the_pass_by_name():
    assert known_activation("Rectifier", leak_slope=0.1) == ("Rectifier", (("clipping", 0.0), ("leak_slope", 0.1)))
    assert known_activation("NoSuchActivation") is None and known_activation("Tanh", beta=2.0) is None
    assert {"OnnxConv", "OnnxMaxPool", "OnnxRelu", "OnnxAdd", "OnnxBatchNormalization"} <= set(RULES)
    assert PASSES["legalize_onnx"] is legalize_onnx

    @rule("OnnxTestOnly")
    def _never(graph, node):
        return None
    assert RULES.pop("OnnxTestOnly") is _never


def test_every_rule_on_a_small_graph(tmp_path):
    """Sub, Sum, Mul, Relu, Sigmoid, Tanh, LeakyRelu, Clip, AveragePool (pads counted), global
    average, Concat and Softmax over channels: all become N2D2 ops, and compute the same."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    node = helper.make_node
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"], ["a"]),
             node("Sigmoid", ["c"], ["s"]), node("Sub", ["a", "s"], ["d"]), node("Tanh", ["d"], ["t"]),
             node("LeakyRelu", ["t"], ["l"], alpha=0.2), node("Clip", ["l", "lo", "hi"], ["k"]),
             node("AveragePool", ["k"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
             node("Mul", ["p", "d"], ["m"]), node("Concat", ["m", "a"], ["cc"], axis=1),
             node("Softmax", ["cc"], ["sm"], axis=1), node("Sum", ["sm", "cc", "sm"], ["su"]),
             node("GlobalAveragePool", ["su"], ["g"]), node("Add", ["g", "g"], ["y"])]
    inits = {"w": W(4, 3, 3, 3), "b": W(4), "lo": np.array(0.0, np.float32), "hi": np.array(0.5, np.float32)}
    model = make_model(nodes, inits, [3, 6, 5], 13)
    x = np.random.default_rng(4).standard_normal((2, 3, 6, 5)).astype(np.float32)
    graph, in_name = _graph(model, x)
    legal = legalize_onnx(graph)
    assert set(_ops(legal)) == {"Input", "Conv", "Activation", "ElemWise", "Pool", "Concat", "Softmax"}, _ops(legal)
    path = str(tmp_path / "small.onnx")
    onnx.save(model, path)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
    assert rel_err(_run(legal, in_name, x), ref) < 1e-5
    assert rel_err(_run(optimize(legal), in_name, x), ref) < 1e-5


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v2"])
def test_onnx_backend_runs_the_legalized_graph_compiled_in_c(exports, name):
    """`n2d2.onnx_backend.prepare(model, backend="c")`: legalized, optimised, compiled; the Conv
    nodes have C kernels, the Gemm is an Fc."""
    from n2d2.codegen.programs import program_source

    path = exports[name]
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 32)).astype(np.float32)
    rep = onnx_backend.prepare(onnx.load(path), backend="c")
    y = rep.run([x])[0]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    in_name = session.get_inputs()[0].name
    ref = np.concatenate([session.run(None, {in_name: x[i:i + 1]})[0] for i in range(2)])
    assert rel_err(y, ref) < 1e-5
    program = rep.program({in_name: x})
    ops = _ops(program.graph)
    assert ops["Conv"] > 0 and "OnnxConv" not in ops and ops["Fc"] == 1 and "OnnxGemm" not in ops
    assert program_source(program) is not None and "conv" in program_source(program).lower()
    with pytest.raises(ValueError, match="backend 'tpu'"):
        onnx_backend.prepare(onnx.load(path), backend="tpu")


def test_shared_constants_stay_shared_parameters(tmp_path):
    """Exporters share equal initializers (zero biases, a BatchNorm mean equal to its bias): the
    nodes still legalize, the parameter stays one, and its gradient is the sum of its uses."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b"], ["c1"], pads=[1, 1, 1, 1]), node("Relu", ["c1"], ["r"]),
             node("Conv", ["r", "w2", "b"], ["c2"]),
             node("BatchNormalization", ["c2", "s", "z", "z", "v"], ["y"])]
    inits = {"w1": W(4, 3, 3, 3), "w2": W(4, 4, 1, 1, seed=1), "b": W(4, seed=2), "s": W(4, seed=3) + 1,
             "z": W(4, seed=4), "v": np.abs(W(4, seed=5)) + 0.5}
    model = make_model(nodes, inits, [3, 5, 6], 13)
    x = np.random.default_rng(7).standard_normal((2, 3, 5, 6)).astype(np.float32)
    graph, in_name = _graph(model, x)
    for p in graph.params.values():
        p.solver = SGD() if p.trainable else None
    legal = legalize_onnx(graph)
    assert set(_ops(legal)) == {"Input", "Conv", "Activation", "BatchNorm"}
    path = str(tmp_path / "shared.onnx")
    onnx.save(model, path)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
    assert rel_err(_run(legal, in_name, x), ref) < 1e-5
    seed = np.random.default_rng(8).standard_normal(ref.shape).astype(np.float32)
    grads = []
    for g in (graph, legal):
        tg = autodiff.build_training_graph(g)
        session = numpy_exec.Session(tg.graph, training=False)
        session.feed(dict({in_name: x}, **{name: seed for name in tg.grad_inputs.values()}))
        session.run_nodes(tg.forward_nodes + tg.backward_nodes)
        grads.append({p: np.asarray(session.values[node][k]) for p, (node, k) in tg.param_grads.items()})
    assert set(grads[0]) == set(grads[1]) >= {"b", "w1", "w2", "s"}
    for p in grads[0]:
        assert rel_err(grads[1][p], grads[0][p]) < 1e-5, p


def test_every_activation_of_the_table_legalizes(tmp_path):
    """One rule for the activations of the table (`n2d2.ops.activation`'s `onnx_import`):
    Softplus, Mish, HardSigmoid (its alpha, beta), HardSwish, Gelu in both approximations,
    LeakyRelu, and a symmetric Clip (`clip_activation`: Saturation) become Activation nodes of
    the table's specs, and compute what onnxruntime does."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    node = helper.make_node
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), node("Softplus", ["c"], ["a"]),
             node("Mish", ["a"], ["m"]), node("HardSigmoid", ["m"], ["h"], alpha=0.3, beta=0.4),
             node("HardSwish", ["c"], ["s"]), node("Gelu", ["s"], ["g"], approximate="tanh"),
             node("Gelu", ["g"], ["e"]), node("LeakyRelu", ["e"], ["l"], alpha=0.1),
             node("Clip", ["l", "lo", "hi"], ["k"]), node("Add", ["h", "k"], ["y"])]
    for n in nodes:
        n.name = n.output[0]
    inits = {"w": W(4, 3, 3, 3), "b": W(4), "lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)}
    model = make_model(nodes, inits, [3, 6, 5], 20)
    x = (np.random.default_rng(5).standard_normal((2, 3, 6, 5)) * 2).astype(np.float32)
    graph, in_name = _graph(model, x)
    legal = legalize_onnx(graph)
    assert set(_ops(legal)) == {"Input", "Conv", "Activation", "ElemWise"}, _ops(legal)
    specs = {n: legal.attrs(n)["activation"] for n in legal.nodes() if legal.op(n) == "Activation"}
    assert specs["h"] == known_activation("HardSigmoid", alpha=0.3, beta=0.4)
    assert specs["g"] == known_activation("Gelu", approximate="tanh") != specs["e"] == known_activation("Gelu")
    assert specs["l"] == known_activation("Rectifier", leak_slope=0.1)
    assert specs["k"] == known_activation("Saturation", threshold=0.5)   # Clip(-t, t), as the importer makes it
    assert {specs[n][0] for n in ("a", "m", "s")} == {"Softplus", "Mish", "HardSwish"}
    path = str(tmp_path / "table.onnx")
    onnx.save(model, path)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
    assert rel_err(_run(legal, in_name, x), ref) < 1e-5
    assert rel_err(_run(optimize(legal), in_name, x), ref) < 1e-5


def _grads(graph, in_name, x, seed):
    """{parameter: gradient} of the graph's parameters for the output gradient `seed`."""
    for p in graph.params.values():
        p.solver = SGD() if p.trainable else None
    tg = autodiff.build_training_graph(graph)
    session = numpy_exec.Session(tg.graph, training=False)
    session.feed(dict({in_name: x}, **{name: seed for name in tg.grad_inputs.values()}))
    session.run_nodes(tg.forward_nodes + tg.backward_nodes)
    return {p: np.asarray(session.values[node][k]) for p, (node, k) in tg.param_grads.items()}


def test_fc_global_pools_pads_and_asymmetric_windows(tmp_path):
    """Gemm (transB=0 here) and MatMul by a constant become Fc nodes (their [I, O] matrix stored
    transposed, its gradient with it) whose rank-2 ONNX output is an `OnnxReshape` view
    `<node>_view` (the Add of two such views an ElemWise of the Fc outputs, then a view);
    ReduceMax over (2, 3) a global Max Pool; a zero Pad a Padding; asymmetric pads of a Conv,
    an AveragePool and a MaxPool of a non-negative input a Padding node `<node>_padding` first.
    Outputs and parameter gradients as before, against onnxruntime."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    node = helper.make_node
    nodes = [node("Conv", ["x", "w", "b"], ["c"], pads=[0, 1, 1, 0]), node("Relu", ["c"], ["r"]),
             node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], pads=[1, 0, 0, 1]),
             node("Pad", ["m", "pads"], ["p"]),
             node("AveragePool", ["p"], ["a"], kernel_shape=[3, 3], pads=[0, 0, 1, 1], count_include_pad=1),
             node("ReduceMax", ["a"], ["g"], axes=[2, 3], keepdims=0), node("Gemm", ["g", "fw", "fb"], ["f"]),
             node("Flatten", ["a"], ["fl"]), node("MatMul", ["fl", "mw"], ["mm"]), node("Add", ["f", "mm"], ["y"])]
    inits = {"w": W(4, 3, 3, 3), "b": W(4), "pads": np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64),
             "fw": W(4, 5, seed=1), "fb": W(5, seed=2), "mw": W(4 * 7 * 5, 5, seed=3)}
    model = make_model(nodes, inits, [3, 6, 5], 13)
    x = np.random.default_rng(9).standard_normal((2, 3, 6, 5)).astype(np.float32)
    graph, in_name = _graph(model, x)
    legal = legalize_onnx(graph)
    ops = {n: legal.op(n) for n in legal.nodes()}
    assert {n: o for n, o in ops.items() if o != "Input"} == {
        "c_padding": "Padding", "c": "Conv", "r": "Activation", "m_padding": "Padding", "m": "Pool", "p": "Padding",
        "a_padding": "Padding", "a": "Pool", "g": "Pool", "g_view": "OnnxReshape", "f": "Fc", "fl": "OnnxReshape",
        "mm": "Fc", "y": "ElemWise", "y_view": "OnnxReshape"}, ops   # the Add of two views: on the Fc outputs
    assert legal.params["mw"].shape == (5, 140) and graph.params["mw"].shape == (140, 5)   # the input untouched
    path = str(tmp_path / "fc.onnx")
    onnx.save(model, path)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
    assert rel_err(_run(graph, in_name, x), ref) < 1e-5
    assert rel_err(_run(legal, in_name, x), ref) < 1e-5
    assert rel_err(_run(optimize(legal), in_name, x), ref) < 1e-5
    seed = np.random.default_rng(10).standard_normal(ref.shape).astype(np.float32)
    before, after = _grads(graph, in_name, x, seed), _grads(legal, in_name, x, seed)
    assert set(before) == set(after) == set(inits) - {"pads"}
    for p in before:
        assert rel_err(after[p].T if p in ("mw", "fw") else after[p], before[p]) < 1e-5, p


def test_rules_state_why_a_node_stays_onnx():
    """A node no N2D2 op computes stays an `Onnx*` node and `legalize_node` says why (the reason
    `load_from_ONNX(generic_ops=False)` refuses it with)."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    node = helper.make_node
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Mul", ["c", "k"], ["bm"]),
             node("MaxPool", ["bm"], ["cp"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             node("MaxPool", ["cp"], ["ap"], kernel_shape=[2, 2], pads=[1, 0, 0, 1]),
             node("Flatten", ["ap"], ["fl"]), node("Gemm", ["fl", "gw"], ["g"], alpha=0.5),
             node("Softmax", ["g"], ["sm"], axis=0), node("Erf", ["sm"], ["y"])]
    inits = {"w": W(4, 3, 3, 3), "k": W(1, 1, 1, 3), "gw": W(24, 5, seed=1)}
    model = make_model(nodes, inits, [3, 7, 5], 13)
    x = np.random.default_rng(11).standard_normal((2, 3, 7, 5)).astype(np.float32)
    graph, _ = _graph(model, x)
    reasons = {n: legalize_node(graph, n) for n in ("bm", "cp", "ap", "g", "sm", "y")}
    assert "broadcasting" in reasons["bm"] and "[2, 4, 5, 3]" in reasons["bm"]
    assert "gives a [2, 4, 2, 1] output where ONNX gives [2, 4, 3, 2]" in reasons["cp"]
    assert "asymmetric pads on an input that may be negative" in reasons["ap"]
    assert "alpha=0.5" in reasons["g"] and "Softmax over axes [0]" in reasons["sm"]
    assert reasons["y"] == "no N2D2 op computes 'Erf'"
    assert legalize_node(graph, "c") is None and graph.op("c") == "Conv"
    assert {graph.op(n) for n in reasons} == {"OnnxMul", "OnnxMaxPool", "OnnxGemm", "OnnxSoftmax", "OnnxErf"}


@pytest.mark.parametrize("pads,output_padding,crop", [([1, 1, 1, 1], [0, 0], False), ([0, 1, 2, 1], [0, 0], True),
                                                       ([1, 0, 2, 2], [1, 1], True)])
def test_conv_transpose_and_transpose(tmp_path, pads, output_padding, crop):
    """ConvTranspose: a Deconv (grouped here), its asymmetric pads (less output_padding) cropped
    after it by `<node>_padding`; a Transpose keeping the batch first the N2D2 Transpose, one
    moving only size-1 axes a view. Outputs and parameter gradients as before."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    node = helper.make_node
    nodes = [node("ConvTranspose", ["x", "w", "b"], ["d"], strides=[2, 2], pads=pads, group=2,
                  output_padding=output_padding),
             node("Relu", ["d"], ["r"]), node("Transpose", ["r"], ["t"], perm=[0, 1, 3, 2]),
             node("GlobalAveragePool", ["t"], ["g"]), node("Transpose", ["g"], ["v"], perm=[0, 2, 1, 3]),
             node("Flatten", ["v"], ["y"])]
    inits = {"w": W(4, 3, 3, 3), "b": W(6)}
    model = make_model(nodes, inits, [4, 5, 6], 13)
    x = np.random.default_rng(12).standard_normal((2, 4, 5, 6)).astype(np.float32)
    graph, in_name = _graph(model, x)
    legal = legalize_onnx(graph)
    ops = {n: legal.op(n) for n in legal.nodes() if legal.op(n) != "Input"}
    assert ops == dict({"d": "Deconv", "r": "Activation", "t": "Transpose", "g": "Pool", "v": "OnnxReshape",
                        "y": "OnnxReshape"}, **({"d_padding": "Padding"} if crop else {}))
    assert legal.attrs("t")["perm"] == (1, 0, 2, 3)
    path = str(tmp_path / "deconv.onnx")
    onnx.save(model, path)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
    assert rel_err(_run(legal, in_name, x), ref) < 1e-5
    assert rel_err(_run(optimize(legal), in_name, x), ref) < 1e-5
    seed = np.random.default_rng(13).standard_normal(ref.shape).astype(np.float32)
    before, after = _grads(graph, in_name, x, seed), _grads(legal, in_name, x, seed)
    assert set(before) == set(after) == {"w", "b"}
    for p in before:
        assert rel_err(after[p], before[p]) < 1e-5, p


@pytest.mark.parametrize("mode,ctm,legal_op", [
    ("nearest", "asymmetric", "Resize"), ("linear", "half_pixel", "Resize"), ("linear", "align_corners", "Resize"),
    ("linear", "asymmetric", "Resize"), ("cubic", "half_pixel", "OnnxResize")])
def test_resize(tmp_path, mode, ctm, legal_op):
    """Resize of H and W by the ratio of the sizes: N2D2's Resize in the modes it interpolates
    (cubic stays an OnnxResize, with its reason); the same outputs as onnxruntime."""
    from onnx import helper

    from tests.test_onnx_import import make_model

    attrs = dict(mode=mode, coordinate_transformation_mode=ctm, **({"nearest_mode": "floor"} if mode == "nearest"
                                                                    else {}))
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Resize", ["r", "", "scales"], ["y"], **attrs)]
    model = make_model(nodes, {"scales": np.array([1, 1, 2, 3], np.float32)}, [3, 4, 5], 13)
    x = np.random.default_rng(14).standard_normal((2, 3, 4, 5)).astype(np.float32)
    graph, in_name = _graph(model, x)
    legal = legalize_onnx(graph)
    assert legal.op("y") == legal_op
    if legal_op == "OnnxResize":
        assert "cubic Resize" in legalize_node(legal, "y")
    path = str(tmp_path / "resize.onnx")
    onnx.save(model, path)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
    assert rel_err(_run(legal, in_name, x), ref) < 1e-5


def test_constant_operands_fold_into_producers_or_become_elemwise_and_scaling(tmp_path):
    """The importer's arithmetic by constants (`fold_constant_operands`): into the producer's
    bias and weights (Conv without bias, Fc of a Gemm through its view, BatchNorm), else an
    ElemWise shift (scalar, per channel, c - x) or a Scaling; not into a producer whose
    parameter another node shares; adding 0 removed. Same outputs as onnxruntime."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    f, node = np.float32, helper.make_node
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Add", ["c", "bias"], ["c1"]), node("Mul", ["scale", "c1"], ["c2"]),
             node("Div", ["c2", "two"], ["c3"]), node("Relu", ["c3"], ["r"]), node("Mul", ["r", "chan"], ["s"]),
             node("Add", ["s", "one"], ["e"]), node("Sub", ["e", "chan4"], ["e2"]), node("Sub", ["one", "e2"], ["e3"]),
             node("Add", ["e3", "zero"], ["e4"]),
             node("Conv", ["e4", "w2", "b2"], ["k1"]), node("Conv", ["e4", "w3", "b2"], ["k2"]),
             node("Add", ["k1", "one"], ["k3"]), node("Add", ["k3", "k2"], ["k4"]),
             node("BatchNormalization", ["k4", "s4", "b4", "m4", "v4"], ["bn"]), node("Mul", ["bn", "chan4"], ["bm"]),
             node("GlobalAveragePool", ["bm"], ["g"]), node("Flatten", ["g"], ["fl"]),
             node("Gemm", ["fl", "fw", "fb"], ["z"], transB=1), node("Sub", ["z", "zb"], ["y"])]
    inits = {"w": W(3, 4, 3, 3), "bias": W(1, 3, 1, 1), "scale": W(3, 1, 1), "two": f(2.0),
             "chan": W(1, 3, 1, 1, seed=5), "one": f(1.0), "chan4": W(3, 1, 1, seed=7), "zero": f(0.0),
             "w2": W(3, 3, 1, 1, seed=8), "w3": W(3, 3, 1, 1, seed=9), "b2": W(3, seed=10), "s4": W(3, seed=11) + 1,
             "b4": W(3, seed=12), "m4": W(3, seed=13), "v4": np.abs(W(3, seed=14)) + 0.5, "fw": W(5, 3, seed=15),
             "fb": W(5, seed=16), "zb": W(5, seed=17)}
    model = make_model(nodes, inits, [4, 6, 6], 13)
    x = np.random.default_rng(15).standard_normal((2, 4, 6, 6)).astype(np.float32)
    graph, in_name = _graph(model, x)
    folded = fold_constant_operands(legalize_onnx(graph))
    ops = {n: folded.op(n) for n in folded.nodes() if folded.op(n) != "Input"}
    assert ops == {"c": "Conv", "r": "Activation", "s": "Scaling", "e": "ElemWise", "e2": "ElemWise",
                   "e3": "ElemWise", "k1": "Conv", "k2": "Conv", "k3": "ElemWise", "k4": "ElemWise",
                   "bn": "BatchNorm", "g": "Pool", "fl": "OnnxReshape", "z": "Fc",
                   "z_view": "OnnxReshape"}, ops   # k3: k1 shares its bias with k2
    assert folded.attrs("e2")["shifts"] == [[-float(v) for v in inits["chan4"].reshape(-1)]]
    assert folded.attrs("e3")["weights"] == [-1.0] and folded.attrs("e3")["shifts"] == [1.0]
    assert set(folded.node("c").params) == {"weights", "biases"}
    path = str(tmp_path / "consts.onnx")
    onnx.save(model, path)
    ref = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})[0]
    assert rel_err(_run(folded, in_name, x), ref) < 1e-5
    assert rel_err(_run(optimize(folded), in_name, x), ref) < 1e-5
    assert rel_err(_run(graph, in_name, x), ref) < 1e-5 and graph.params["w"] is not folded.params["w"]


def _ort(model, tmp_path, in_name, x, name="m.onnx"):
    path = str(tmp_path / name)
    onnx.save(model, path)
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {in_name: x})


def _same_with_nan(out, ref):
    """NaN exactly where the reference has it, the other values within float32 tolerance."""
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    keep = ~np.isnan(ref)
    assert rel_err(out[keep], ref[keep]) < 1e-5


def test_clip_max_min_prelu_abs_neg_rules(tmp_path):
    """A general Clip: ElemWise `<node>_shift` (clipped ReLU of x - low, or ReLU of high - x)
    then the node's ElemWise adding low back (high - it); Min by a scalar of a ReLU read only
    there: one clipped ReLU over the ReLU's input (the ReLU removed); Max / Min by scalars
    Clips; PRelu by one slope a leaky ReLU; Abs an ElemWise AbsSum; Max of activations an
    ElemWise Max; Neg a Mul by -1 (a Scaling once folded). NaN where onnxruntime has it, the
    conv's weight gradient as before."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    f, node = np.float32, helper.make_node
    nodes = [node("Conv", ["x", "w"], ["c"]), node("Clip", ["c", "lo", "hi"], ["c1"]),
             node("Clip", ["c1", "", "half"], ["c2"]), node("Relu", ["c2"], ["r"]),
             node("Min", ["r", "three"], ["r6"]), node("Neg", ["r6"], ["n"]), node("Max", ["n", "m1", "m3"], ["lo2"]),
             node("PRelu", ["lo2", "slope"], ["p"]), node("Abs", ["p"], ["a"]), node("Max", ["a", "c"], ["y"])]
    inits = {"w": W(3, 2, 3, 3, scale=2.0), "lo": f(-1.0), "hi": f(2.0), "half": f(0.5), "three": f(3.0),
             "m1": f(-1.0), "m3": f(-3.0), "slope": np.array([0.2], f)}
    model = make_model(nodes, inits, [2, 6, 6], 13)
    x = np.random.default_rng(21).standard_normal((2, 2, 6, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    graph, in_name = _graph(model, x)
    legal = legalize_onnx(graph)
    ops = {n: legal.op(n) for n in legal.nodes() if legal.op(n) not in ("Input", "OnnxConstant")}
    assert ops == {"c": "Conv", "c1_shift": "ElemWise", "c1": "ElemWise", "c2_shift": "ElemWise", "c2": "ElemWise",
                   "r6": "Activation", "n": "OnnxMul", "lo2_shift": "ElemWise", "lo2": "ElemWise", "p": "Activation",
                   "a": "ElemWise", "y": "ElemWise"}, ops
    assert legal.attrs("c1_shift")["activation"] == known_activation("Rectifier", clipping=3.0)
    assert legal.attrs("c2_shift")["weights"] == [-1.0] and legal.attrs("c2")["shifts"] == [0.5]
    assert legal.attrs("r6")["activation"] == known_activation("Rectifier", clipping=3.0)   # the ReLU taken over
    assert legal.inputs_of("r6") == [("c2", 0)]
    assert legal.attrs("p")["activation"] == known_activation("Rectifier", leak_slope=0.2)
    assert legal.attrs("a")["operation"] == "AbsSum" and legal.attrs("y")["operation"] == "Max"
    assert fold_constant_operands(legal).op("n") == "Scaling"
    (ref,) = _ort(model, tmp_path, in_name, x)
    for g in (graph, legal, optimize(fold_constant_operands(legal))):
        _same_with_nan(_run(g, in_name, x), ref)
    x = np.nan_to_num(x)
    seed = np.random.default_rng(22).standard_normal(ref.shape).astype(np.float32)
    assert rel_err(_grads(legal, in_name, x, seed)["w"], _grads(graph, in_name, x, seed)["w"]) < 1e-5


def test_max_min_reasons_and_identities():
    """Max / Min of one activation and a non-scalar constant, Min of activations, PRelu by a
    per-channel slope and LogSoftmax stay `Onnx*` nodes, with the reason; Max of one input and
    Clip without bounds are views."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    node = helper.make_node
    nodes = [node("Max", ["x", "vec"], ["mv"]), node("Min", ["mv", "x"], ["mn"]),
             node("PRelu", ["mn", "slopes"], ["p"]), node("Max", ["p"], ["one"]), node("Clip", ["one"], ["cl"]),
             node("LogSoftmax", ["cl"], ["y"], axis=1)]
    model = make_model(nodes, {"vec": W(3, 1, 1), "slopes": W(3, 1, 1, seed=1)}, [3, 4, 4], 13)
    x = np.random.default_rng(23).standard_normal((2, 3, 4, 4)).astype(np.float32)
    graph, _ = _graph(model, x)
    reasons = {n: legalize_node(graph, n) for n in ("mv", "mn", "p", "one", "cl", "y")}
    assert "only for Max/Min of one activation and scalar constants" in reasons["mv"]
    assert "Min of activations is not supported" in reasons["mn"]
    assert "n2d2's Rectifier has one leak slope" in reasons["p"] and "LogSoftmax is imported only" in reasons["y"]
    assert reasons["one"] is None and reasons["cl"] is None and graph.op("one") == graph.op("cl") == "OnnxReshape"


def test_reshapes_concat_of_flattened_and_gemm_factors(tmp_path):
    """A non-view Reshape or Flatten: an N2D2 Reshape (to the ONNX shape padded to 4-D) and a
    view to the ONNX shape; a Flatten only Fc nodes read stays a view; a Concat of flattened
    tensors concatenates their 4-D Reshapes (legalized late); a Gemm with alpha and beta: B
    and C scaled by `fold_constant_operands`, then an Fc (its Softmax then legalized too).
    Same outputs as onnxruntime."""
    from onnx import helper

    from tests.test_onnx_import import W, make_model

    node = helper.make_node
    nodes = [node("Conv", ["x", "wa"], ["a"]), node("Conv", ["x", "wb"], ["b"]), node("Flatten", ["a"], ["fa"]),
             node("Flatten", ["b"], ["fb"]), node("Concat", ["fa", "fb"], ["cat"], axis=1),
             node("Gemm", ["cat", "gw", "gb"], ["g"], alpha=0.5, beta=2.0, transB=1), node("Softmax", ["g"], ["s"]),
             node("Reshape", ["b", "shape"], ["rs"]), node("Conv", ["rs", "wc"], ["rc"]),
             node("Flatten", ["rc"], ["fr"]),
             node("Gemm", ["fr", "gw2"], ["g2"], transB=1), node("Concat", ["s", "g2"], ["y"], axis=1)]
    inits = {"wa": W(2, 3, 3, 3), "wb": W(3, 3, 3, 3, seed=1), "gw": W(5, 2 * 16 + 3 * 16, seed=2), "gb": W(5, seed=3),
             "shape": np.array([0, 12, 2, 2], np.int64), "wc": W(4, 12, 1, 1, seed=4), "gw2": W(3, 16, seed=5)}
    model = make_model(nodes, inits, [3, 6, 6], 13)
    x = np.random.default_rng(24).standard_normal((2, 3, 6, 6)).astype(np.float32)
    graph, in_name = _graph(model, x)
    legal = legalize_onnx(graph)
    assert legal.op("g") == "OnnxGemm" and "alpha=0.5" in legalize_node(legal.copy(), "g")
    folded = legalize_onnx(fold_constant_operands(legal))
    ops = {n: folded.op(n) for n in folded.nodes() if folded.op(n) not in ("Input", "OnnxConstant")}
    assert ops == {"a": "Conv", "b": "Conv", "fa": "Reshape", "fb": "Reshape", "cat": "Concat",
                   "cat_view": "OnnxReshape", "g": "Fc", "s": "Softmax", "rs": "Reshape", "rc": "Conv",
                   "fr": "OnnxReshape", "g2": "Fc", "y": "Concat", "y_view": "OnnxReshape"}, ops   # views read through
    assert folded.attrs("rs")["shape"] == (12, 2, 2) and folded.attrs("fa")["shape"] == (32, 1, 1)
    assert folded.inputs_of("cat") == [("fa", 0), ("fb", 0)]
    np.testing.assert_allclose(folded.params["gw"].array, 0.5 * inits["gw"], rtol=1e-6)
    np.testing.assert_allclose(folded.params["gb"].array, 2.0 * inits["gb"], rtol=1e-6)
    assert graph.params["gw"].array is not folded.params["gw"].array   # the input graph untouched
    (ref,) = _ort(model, tmp_path, in_name, x)
    for g in (graph, legal, folded, optimize(folded)):
        assert rel_err(_run(g, in_name, x), ref) < 1e-5


@pytest.mark.parametrize("low,high", [(0.0, float("inf")), (0.0, 6.0), (-2.5, 2.5)])
def test_clamp_bounds_inverts_clip_activation(low, high):
    """`clamp_bounds` (what the Clip rule merges with) reads back the bounds `clip_activation`
    made an activation of; a leaky ReLU is no clamp."""
    from n2d2.ops import activation as act_table

    name, params = act_table.clip_activation(low, high)
    assert act_table.clamp_bounds(known_activation(name, **params)) == (low, high)
    assert act_table.clamp_bounds(known_activation("Rectifier", leak_slope=0.1)) is None
