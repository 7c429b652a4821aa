"""ONNX import of large files stays fast without changing results: weights read from the file
are not drawn by fillers first, initializer bytes are read once, and the ONNX checker and shape
inference see large float initializers as typed inputs (bench/bench_onnx_import.py measures)."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import n2d2  # noqa: E402
from n2d2.cells.deepnet_cell import DeepNetCell  # noqa: E402
from n2d2.frontends import onnx_limits  # noqa: E402
from n2d2.frontends.onnx_import import ONNXFormatError, load_model, load_model_arrays  # noqa: E402


def _model(tmp_path, k=1024, o=600, gemm_in=None):
    """Conv 3->4 (3x3, pads 1) + Flatten + Gemm [o, k] (transB, a 2.4 MB weight: 'large')."""
    rng = np.random.default_rng(0)
    inits = {"cw": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "cb": rng.standard_normal(4).astype(np.float32),
             "fw": rng.standard_normal((o, gemm_in or k)).astype(np.float32),
             "fb": rng.standard_normal(o).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "speed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", o])],
                              [numpy_helper.from_array(v, n) for n, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = str(tmp_path / "speed.onnx")
    onnx.save(model, path)
    return path, inits


def _provider():
    return n2d2.provider.DataProvider(n2d2.database.Numpy(), [16, 16, 3], batch_size=2)



def _weighted(dn):
    from n2d2.cells.nn.weighted import WeightedCell

    return {c.get_name(): c for c in dn._cell_of.values() if isinstance(c, WeightedCell)}


def test_file_weights_are_not_drawn_by_fillers_first(tmp_path, monkeypatch):
    path, inits = _model(tmp_path)
    draws = []
    original = n2d2.filler.Normal._draw
    monkeypatch.setattr(n2d2.filler.Normal, "_draw", lambda self, *a: draws.append(a[0]) or original(self, *a))
    dn = DeepNetCell.load_from_ONNX(_provider(), path, backend="numpy")
    assert draws == []
    cells = _weighted(dn)
    np.testing.assert_array_equal(np.asarray(cells["c"]._weights), inits["cw"])
    np.testing.assert_array_equal(np.asarray(cells["c"]._biases), inits["cb"])
    np.testing.assert_array_equal(np.asarray(cells["y"]._weights), inits["fw"])
    np.testing.assert_array_equal(np.asarray(cells["y"]._biases), inits["fb"])
    # the fillers stay configured: a refill draws from them, and cells built later draw as usual
    cells["y"].refill_weights()
    assert draws and not np.array_equal(np.asarray(cells["y"]._weights), inits["fw"])
    n2d2.cells.Fc(3, 2)
    assert len(draws) >= 3


def test_onnx_init_0_still_draws_fillers(tmp_path, monkeypatch):
    path, inits = _model(tmp_path)
    ini = tmp_path / "import.ini"
    ini.write_text("[onnx]\nONNX_init=0\n")
    draws = []
    original = n2d2.filler.Normal._draw
    monkeypatch.setattr(n2d2.filler.Normal, "_draw", lambda self, *a: draws.append(a[0]) or original(self, *a))
    dn = DeepNetCell.load_from_ONNX(_provider(), path, ini_file=str(ini), backend="numpy")
    assert (600, 1024) in draws
    assert not np.array_equal(np.asarray(_weighted(dn)["y"]._weights), inits["fw"])


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64, np.int32, np.int8, np.uint8,
                                   np.uint16, np.bool_])
def test_arrays_read_by_the_limits_check_equal_numpy_helper(dtype):
    values = (np.arange(24).reshape(2, 3, 4) % 7 - 3).astype(dtype)
    tensor = numpy_helper.from_array(values, "t")
    graph = helper.make_graph([], "g", [], [], [tensor])
    raw = {}
    onnx_limits.check_model(helper.make_model(graph), "m", raw=raw)
    expected = numpy_helper.to_array(tensor)
    assert raw["t"].dtype == expected.dtype and raw["t"].shape == expected.shape
    np.testing.assert_array_equal(raw["t"], expected)
    assert not raw["t"].flags.writeable  # shared with the bytes read: never written through


def test_checker_and_shape_inference_get_large_initializers_as_inputs(tmp_path, monkeypatch):
    path, _ = _model(tmp_path)
    seen = []
    checker = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model",
                        lambda m, *a, **k: seen.append(m.ByteSize()) or checker(m, *a, **k))
    model, inferred, arrays = load_model_arrays(path)
    assert seen and max(seen) < 100_000  # the 2.4 MB Gemm weight is not serialized for the checker
    assert len(model.graph.initializer) == 4 and model.graph.initializer[2].raw_data  # the model keeps its data
    full = onnx.shape_inference.infer_shapes(onnx.load(path), check_type=True, strict_mode=True)
    shapes = lambda m: {v.name: str(v.type) for v in list(m.graph.value_info) + list(m.graph.output)}  # noqa: E731
    assert shapes(inferred) == shapes(full)
    assert sorted(arrays) == ["cb", "cw", "fb", "fw"]


def test_large_initializer_of_the_wrong_size_is_still_rejected(tmp_path):
    path, _ = _model(tmp_path, gemm_in=1000)  # Gemm weight [600, 1000] for a 1024-wide input
    with pytest.raises(ONNXFormatError, match="shape inference fails"):
        load_model(path)


def _branchy_model(tmp_path):
    """Conv, a per-channel Add folded into its bias after the call, BatchNorm, Relu, MaxPool, a
    Concat of two branches, Flatten, Gemm: the importer reads shapes and rewrites cells."""
    rng = np.random.default_rng(1)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = {"w1": f32(6, 3, 3, 3), "add": f32(1, 6, 1, 1), "s": f32(6), "b": f32(6), "m": f32(6),
             "v": np.abs(f32(6)) + 0.5, "w2": f32(4, 6, 1, 1), "fw": f32(5, 10 * 4 * 4)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c1", "add"], ["a1"]),
             helper.make_node("BatchNormalization", ["a1", "s", "b", "m", "v"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["c2"]),
             helper.make_node("Concat", ["p", "c2"], ["cat"], axis=1),
             helper.make_node("Flatten", ["cat"], ["f"]),
             helper.make_node("Gemm", ["f", "fw"], ["y"], transB=1, alpha=0.5)]
    graph = helper.make_graph(nodes, "branchy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(v, n) for n, v in inits.items()])
    path = str(tmp_path / "branchy.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _describe(graph):
    nodes = sorted((n, d["op"], repr(sorted(d["attrs"].items())), repr(graph.output_types(n)))
                   for n, d in graph.nx.nodes(data=True))
    edges = sorted((a, b, d["out"], d["slot"]) for a, b, d in graph.nx.edges(data=True))
    params = sorted((k, p.array.shape, np.asarray(p.array).tobytes()) for k, p in graph.params.items())
    return nodes, edges, params


@pytest.mark.parametrize("which", ["branchy", "speed"])
def test_tracing_without_a_forward_gives_the_same_graph(tmp_path, monkeypatch, which):
    import contextlib

    import n2d2.cells.nn.base as base
    from n2d2.ops import conv as conv_ops

    path = _branchy_model(tmp_path) if which == "branchy" else _model(tmp_path)[0]
    size = [8, 8, 3] if which == "branchy" else [16, 16, 3]
    provider = lambda: n2d2.provider.DataProvider(n2d2.database.Numpy(), size, batch_size=3)  # noqa: E731
    calls = []
    forward = conv_ops.conv2d_forward
    monkeypatch.setattr(conv_ops, "conv2d_forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    fast = DeepNetCell.load_from_ONNX(provider(), path, backend="numpy")
    assert calls == []  # no numpy forward of the dummy batch while importing
    monkeypatch.setattr(base, "deferred_values", contextlib.nullcontext)
    eager = DeepNetCell.load_from_ONNX(provider(), path, backend="numpy")
    assert calls  # the old way runs every cell
    assert _describe(fast.get_graph()) == _describe(eager.get_graph())
    x = np.random.default_rng(2).standard_normal([3] + size[::-1]).astype(np.float32)
    outs = []
    for dn in (fast, eager):
        dn.test()
        t = n2d2.Tensor.from_numpy(x)
        n2d2.provider.TensorPlaceholder(t)
        outs.append(dn(t).to_numpy())
    np.testing.assert_array_equal(outs[0], outs[1])


def test_a_deferred_output_is_computed_when_read():
    from n2d2.cells.nn.base import deferred_values

    x = n2d2.Tensor.from_numpy(np.random.default_rng(3).standard_normal((2, 3, 5, 5)).astype(np.float32))
    n2d2.provider.TensorPlaceholder(x)
    conv = n2d2.cells.Conv(3, 4, [3, 3], name="deferred_conv").test()
    with deferred_values():
        y = conv(x)
    assert y.shape() == [2, 4, 3, 3] and y._h is None  # not computed yet
    expected = conv(x).to_numpy()  # an eager call of the same cell
    np.testing.assert_array_equal(y.to_numpy(), expected)
