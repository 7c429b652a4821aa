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
    monkeypatch.setattr(onnx.checker, "check_model", lambda m, *a, **k: seen.append(m.ByteSize()) or checker(m, *a, **k))
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
