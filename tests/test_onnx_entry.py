"""Models entering the one ONNX import path (`_Importer._through_the_ir`, issue 12) for reasons of
their entry, not of their ops: a rank-2/3 input, Reshape targets naming the file's batch size,
`ignore_cells`, an INI `[onnx]` section reading inner ONNX values, and models the converter
refuses. Each is imported with the node-by-node importer disabled (`one_path`: its `_visit`
fails the test) and compared with onnxruntime and with what that importer built (`node_by_node`)."""
import contextlib
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

import n2d2  # noqa: E402
from n2d2.cells.deepnet_cell import DeepNetCell  # noqa: E402
from n2d2.frontends import onnx_import  # noqa: E402
from n2d2.frontends.onnx_import import ONNXFormatError, ONNXUnsupportedError  # noqa: E402
from n2d2.provider import TensorPlaceholder  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.test_onnx_generic import _channel_shuffle  # noqa: E402
from tests.test_onnx_import import (  # noqa: E402
    W,
    compare,
    make_model,
    names,
    node,
    provider_for,
    run_cell,
    run_ort,
    types,
)

_NODE_BY_NODE = onnx_import._Importer._visit


def _visit(self, node):
    raise AssertionError(f"node {node.output[0]} went through the node-by-node importer")


@pytest.fixture
def one_path(monkeypatch):
    """The node-by-node importer fails the test if it runs."""
    monkeypatch.setattr(onnx_import._Importer, "_visit", _visit)


@contextlib.contextmanager
def node_by_node():
    """The node-by-node importer only (what the import built before the one path took the model)."""
    saved = onnx_import._Importer._through_the_ir, onnx_import._Importer._visit
    onnx_import._Importer._through_the_ir = lambda self, *args: None
    onnx_import._Importer._visit = _NODE_BY_NODE
    try:
        yield
    finally:
        onnx_import._Importer._through_the_ir, onnx_import._Importer._visit = saved


def _same_cells(new, old):
    assert names(new) == names(old) and types(new) == types(old)
    for a, b in zip(new, old):
        assert repr(a.get_activation()) == repr(b.get_activation()), a.get_name()


def _old(path, in_shape, batch=2, **kwargs):
    with node_by_node():
        return DeepNetCell.load_from_ONNX(provider_for(in_shape, batch), path, backend="numpy", **kwargs)


# -- input ranks -------------------------------------------------------------------------------------
def test_rank2_input(tmp_path, one_path):
    """[N, F] held as [N, F, 1, 1]: Gemm, Relu, Gemm, Softmax as the importer made them."""
    nodes = [node("Gemm", ["x", "w1", "b1"], "g", transB=1), node("Relu", ["g"], "r"),
             node("Gemm", ["r", "w2", "b2"], "m"), node("Softmax", ["m"], "y", axis=1)]
    inits = {"w1": W(5, 6), "b1": W(5), "w2": W(5, 3), "b2": W(3)}
    model = make_model(nodes, inits, [6], 13)
    dn = compare(model, (6, 1, 1), tmp_path, batch=3)
    assert types(dn) == ["Fc", "Fc", "Softmax"] and names(dn) == ["g", "m", "y"]
    _same_cells(dn, _old(str(tmp_path / "model_0.onnx"), (6, 1, 1), batch=3))


def test_rank3_input(tmp_path, one_path):
    """[N, C, L] held as [N, C, L, 1]: a 1-D Conv (asymmetric pads: a Padding cell), BatchNorm,
    Relu, 1-D MaxPool and AveragePool, Flatten, Gemm: the cells of the node-by-node importer."""
    nodes = [node("Conv", ["x", "w", "b"], "c", pads=[2, 1], strides=[2]),
             node("BatchNormalization", ["c", "s", "o", "mu", "var"], "bn"), node("Relu", ["bn"], "r"),
             node("MaxPool", ["r"], "m", kernel_shape=[2], strides=[2]),
             node("AveragePool", ["m"], "p", kernel_shape=[3], pads=[1, 1], strides=[1], count_include_pad=1),
             node("Flatten", ["p"], "f"), node("Gemm", ["f", "wf"], "y", transB=1)]
    inits = {"w": W(3, 4, 3), "b": W(3), "s": W(3) + 1, "o": W(3), "mu": W(3), "var": np.abs(W(3)) + 0.5,
             "wf": W(2, 3 * 4)}
    model = make_model(nodes, inits, [4, 15], 13)
    dn = compare(model, (4, 15, 1), tmp_path)
    assert types(dn) == ["Padding", "Conv", "BatchNorm2d", "Pool", "Pool", "Fc"]
    _same_cells(dn, _old(str(tmp_path / "model_0.onnx"), (4, 15, 1)))


# -- the file's batch size -----------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
def test_channel_shuffle_follows_the_provider_batch(tmp_path, one_path, batch):
    """ShuffleNet's channel shuffle exported at batch 1 (Reshape targets [1, 2, 3, 5, 5], [1, 6, 5, 5])
    run at the provider's batch, as the node-by-node importer ran it."""
    model, shape = _channel_shuffle()
    path = str(tmp_path / "shuffle.onnx")
    onnx.save(model, path)
    dn = DeepNetCell.load_from_ONNX(provider_for(shape, batch), path, backend="numpy")
    x = np.random.default_rng(batch).standard_normal((batch,) + shape).astype(np.float32)
    ref = run_ort(path, x, per_sample=True)
    assert rel_err(run_cell(dn, x).reshape(ref.shape), ref) < 1e-5
    # the rank-5 -> 4 Reshape back is an OnnxNode cell here; the node-by-node importer relabelled it
    assert [n for n in names(dn) if n != "r4"] == names(_old(path, shape, batch=batch))


def test_flatten_to_the_file_batch(tmp_path, one_path):
    """A torch `x.view(1, -1)` exported at batch 1 feeding a Gemm: at batch 3 the view keeps the batch."""
    nodes = [node("Conv", ["x", "w"], "c"), node("Reshape", ["c", "shape"], "v"),
             node("Gemm", ["v", "wf"], "y", transB=1)]
    model = make_model(nodes, {"w": W(2, 3, 3, 3), "shape": np.array([1, -1], np.int64), "wf": W(4, 2 * 3 * 3)},
                       [3, 5, 5], 13)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    path = str(tmp_path / "view.onnx")
    onnx.save(model, path)
    dn = DeepNetCell.load_from_ONNX(provider_for((3, 5, 5), 3), path, backend="numpy")
    x = np.random.default_rng(4).standard_normal((3, 3, 5, 5)).astype(np.float32)
    ref = run_ort(path, x, per_sample=True)
    assert types(dn) == ["Conv", "Fc"] and rel_err(run_cell(dn, x).reshape(ref.shape), ref) < 1e-5


# -- ignore_cells -----------------------------------------------------------------------------------------
def test_ignore_cells_edge_cases(tmp_path, one_path):
    """An ignored node that makes no IR node (Dropout) or whose op the converter would refuse is
    bypassed; one without an activation input is refused by name, as before."""
    nodes = [node("Conv", ["x", "w"], "c"), node("Dropout", ["c"], "d"), node("Erf", ["d"], "e"),
             node("Relu", ["e"], "y")]
    path = str(tmp_path / "ignored.onnx")
    onnx.save(make_model(nodes, {"w": W(2, 3, 3, 3)}, [3, 5, 5], 13), path)
    dn = DeepNetCell.load_from_ONNX(provider_for((3, 5, 5)), path, backend="numpy", ignore_cells=["d", "e"],
                                    generic_ops=False)
    assert names(dn) == ["c"] and types(dn) == ["Conv"]   # the Relu is the Conv's activation
    without = str(tmp_path / "without.onnx")
    onnx.save(make_model([nodes[0], node("Relu", ["c"], "y")], {"w": W(2, 3, 3, 3)}, [3, 5, 5], 13), without)
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 5)).astype(np.float32)
    assert rel_err(run_cell(dn, x), run_ort(without, x)) < 1e-5
    nodes = [node("Shape", ["x"], "s"), node("Cast", ["s"], "sf", to=onnx.TensorProto.FLOAT),
             node("ReduceSum", ["sf"], "k", keepdims=1), node("Add", ["x", "k"], "y")]
    path = str(tmp_path / "const.onnx")
    onnx.save(make_model(nodes, {}, [3, 5, 5], 13), path)
    with pytest.raises(ONNXUnsupportedError, match="const.onnx: node .*ReduceSum, output 'k'.*no activation input"):
        DeepNetCell.load_from_ONNX(provider_for((3, 5, 5)), path, ignore_cells=["k"])


# -- refusals ----------------------------------------------------------------------------------------------
def test_conversion_refusals_name_file_and_node(tmp_path, one_path):
    """What the converter refuses is refused, not passed to the node-by-node importer: a Gemm
    that cannot take the provider's larger maps (ignore_input_size) names its node; a bound of
    `onnx_limits` stays a format error naming the file."""
    nodes = [node("Flatten", ["x"], "f"), node("Gemm", ["f", "wf"], "y", transB=1)]
    path = str(tmp_path / "fixed.onnx")
    onnx.save(make_model(nodes, {"wf": W(4, 3 * 5 * 5)}, [3, 5, 5], 13), path)
    with pytest.raises(ONNXUnsupportedError, match=r"fixed.onnx: node \(Gemm, output 'y'\).*do not match"):
        DeepNetCell.load_from_ONNX(provider_for((3, 6, 6)), path, ignore_input_size=True)
    nodes = [helper.make_node("Shape", ["x"], ["s"], end=1),
             helper.make_node("Concat", ["s", "big"], ["shape"], axis=0),
             helper.make_node("ConstantOfShape", ["shape"], ["c"]),
             helper.make_node("ReduceSum", ["c"], ["r"], keepdims=0), helper.make_node("Add", ["x", "r"], ["y"])]
    path = str(tmp_path / "bomb.onnx")
    onnx.save(make_model(nodes, {"big": np.array([1 << 40], np.int64)}, [3, 5, 5], 15), path)
    with pytest.raises(ONNXFormatError, match="bomb.onnx: node .*ConstantOfShape, output 'c'.*limit"):
        DeepNetCell.load_from_ONNX(provider_for((3, 5, 5)), path)


# -- INI [onnx] sections -------------------------------------------------------------------------------------
INI = ("[sp]\nSizeX=28\nSizeY=28\nBatchSize=2\n[onnx]\nInput=sp\nType=ONNX\nFile=model.onnx\n"
       "[fc]\nInput=onnx,{value}\nType=Fc\nNbOutputs=3\n[fc.Target]\n")


@pytest.mark.parametrize("value", ["Convolution28_Output_0", "ReLU32_Output_0", "Pooling66_Output_0",
                                   "Flat_Output_0", "Times418_Output_0"])
def test_ini_onnx_section_reads_inner_values(tmp_path, monkeypatch, value):
    """`Input=onnx,<value>` of any activation of the graph: a Conv output whose Relu was fused into
    it, the fused Relu's own output, a pooling, a Flatten (its Reshape cell made on demand), the
    Gemm: the same cells and outputs as the node-by-node importer's."""
    from n2d2.frontends.ini import load_ini
    from tests.test_ini_upstream import _write_cntk_like_onnx

    _write_cntk_like_onnx(tmp_path / "model.onnx")
    path = tmp_path / "mixed.ini"
    path.write_text(INI.format(value=value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with node_by_node():
            old = load_ini(str(path), backend="numpy")
        monkeypatch.setattr(onnx_import._Importer, "_visit", _visit)
        new = load_ini(str(path), backend="numpy")
    _same_cells(new, old)
    new["fc"]._weights[...] = old["fc"]._weights
    new["fc"]._biases[...] = old["fc"]._biases
    x = np.random.default_rng(1).random((2, 1, 28, 28)).astype(np.float32)
    outs = []
    for dn in (new, old):
        dn.test()
        t = n2d2.Tensor.from_numpy(x)
        TensorPlaceholder(t)
        outs.append(np.asarray(dn(t).to_numpy()))
    assert rel_err(outs[0], outs[1]) < 1e-6
