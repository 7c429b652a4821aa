"""Models entering the one ONNX import path (`_Importer._through_the_ir`, issue 12) for reasons of
their entry, not of their ops: a rank-2/3 input, Reshape targets naming the file's batch size,
`ignore_cells`, an INI `[onnx]` section reading inner ONNX values, and models the converter
refuses. Each is compared with onnxruntime and with the cells the node-by-node importer (deleted
since) built for it, recorded here."""
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import helper  # noqa: E402

import n2d2  # noqa: E402
from n2d2.cells.deepnet_cell import DeepNetCell  # noqa: E402
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


def _cells_are(dn, expected):
    """Names, types and activations (None: no activation) of the cells, in order."""
    got = [(c.get_name(), type(c).__name__, None if c.get_activation() is None else type(c.get_activation()).__name__)
           for c in dn]
    assert got == expected


# -- input ranks -------------------------------------------------------------------------------------
def test_rank2_input(tmp_path):
    """[N, F] held as [N, F, 1, 1]: Gemm, Relu, Gemm, Softmax as the importer made them."""
    nodes = [node("Gemm", ["x", "w1", "b1"], "g", transB=1), node("Relu", ["g"], "r"),
             node("Gemm", ["r", "w2", "b2"], "m"), node("Softmax", ["m"], "y", axis=1)]
    inits = {"w1": W(5, 6), "b1": W(5), "w2": W(5, 3), "b2": W(3)}
    model = make_model(nodes, inits, [6], 13)
    dn = compare(model, (6, 1, 1), tmp_path, batch=3)
    _cells_are(dn, [("g", "Fc", "Rectifier"), ("m", "Fc", None), ("y", "Softmax", None)])


def test_rank3_input(tmp_path):
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
    _cells_are(dn, [("c_padding", "Padding", None), ("c", "Conv", None), ("bn", "BatchNorm2d", "Rectifier"),
                    ("m", "Pool", None), ("p", "Pool", None), ("y", "Fc", None)])


# -- the file's batch size -----------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3])
def test_channel_shuffle_follows_the_provider_batch(tmp_path, batch):
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
    assert [n for n in names(dn) if n != "r4"] == ["c", "r5", "t5", "a", "b", "rb", "y"]


def test_flatten_to_the_file_batch(tmp_path):
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
def test_ignore_cells_edge_cases(tmp_path):
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
def test_conversion_refusals_name_file_and_node(tmp_path):
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
def test_ini_onnx_section_reads_inner_values(tmp_path, value):
    """`Input=onnx,<value>` of any activation of the graph: a Conv output whose Relu was fused into
    it (its cell's output: after the Relu, as N2D2's cell of that name), the fused Relu's own
    output, a pooling, a Flatten (its Reshape cell made on demand), the Gemm: the cells the
    node-by-node importer made, and the INI's Fc applied to onnxruntime's value of that name."""
    from onnx import TensorProto

    from n2d2.frontends.ini import load_ini
    from tests.test_ini_upstream import _write_cntk_like_onnx

    model = _write_cntk_like_onnx(tmp_path / "model.onnx")
    path = tmp_path / "mixed.ini"
    path.write_text(INI.format(value=value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dn = load_ini(str(path), backend="numpy")
    onnx_cells = [("Convolution28_Output_0", "Conv", "Rectifier"), ("Pooling66_Output_0", "Pool", None),
                  ("Times418_Output_0", "Fc", None)]
    reshape = [("Flat_Output_0", "Reshape", None)] if value == "Flat_Output_0" else []
    _cells_are(dn, onnx_cells + reshape + [("fc", "Fc", None)])
    inner = {"Convolution28_Output_0": "ReLU32_Output_0"}.get(value, value)
    model.graph.output.append(helper.make_tensor_value_info(inner, TensorProto.FLOAT, None))
    inner_path = str(tmp_path / "inner.onnx")
    onnx.save(model, inner_path)
    import onnxruntime as ort

    x = np.random.default_rng(1).random((2, 1, 28, 28)).astype(np.float32)
    sess = ort.InferenceSession(inner_path, providers=["CPUExecutionProvider"])
    v = np.concatenate([sess.run([inner], {"Input3": x[i:i + 1]})[0] for i in range(2)]).reshape(2, -1)
    fc = dn["fc"]
    ref = v @ np.asarray(fc._weights).reshape(3, -1).T + np.asarray(fc._biases).reshape(-1)
    dn.test()
    t = n2d2.Tensor.from_numpy(x)
    TensorPlaceholder(t)
    assert rel_err(np.asarray(dn(t).to_numpy()).reshape(2, -1), ref) < 1e-5
