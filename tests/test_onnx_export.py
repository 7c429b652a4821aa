"""ONNX export: n2d2 networks (a residual Sequence-like block, a zoo of every exportable cell)
and imported models written as ONNX, checked by onnx.checker and run by onnxruntime with the
DeepNetCell's outputs; refusals name the node; files are written atomically."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from n2d2.activation import Linear, Logistic, Rectifier, Saturation, Softplus, Tanh  # noqa: E402
from n2d2.cells import (  # noqa: E402
    Activation,
    BatchNorm2d,
    Block,
    Conv,
    ConvDepthWise,
    Deconv,
    Dropout,
    ElemWise,
    Fc,
    GlobalPool2d,
    Padding,
    Pool,
    Pool2d,
    Reshape,
    Resize,
    Scaling,
    Softmax,
    Transpose,
)
from n2d2.cells.deepnet_cell import DeepNetCell  # noqa: E402
from n2d2.frontends.onnx_export import export_onnx  # noqa: E402
from n2d2.frontends.onnx_import import ONNXUnsupportedError  # noqa: E402
from n2d2.mapping import Mapping  # noqa: E402
from n2d2.scaling import FixedPointScaling, FloatingPointScaling  # noqa: E402
from n2d2.tensor import Interface, Tensor  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.test_onnx_import import LENET, ResNet18, needs_lenet, provider_for, run_cell, run_ort, torch_export  # noqa: E402

TOL = 1e-4


class Residual(Block):
    """conv -> bn(relu) -> conv, + skip (ElemWise Sum, relu) -> max pool -> avg pool -> fc -> softmax."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.bn = BatchNorm2d(8, activation=Rectifier())
        for attr, lo, hi in (("_scales", 0.5, 1.5), ("_biases", -0.5, 0.5), ("_means", -0.5, 0.5),
                             ("_variances", 0.5, 1.5)):
            getattr(self.bn, attr)[...] = rng.uniform(lo, hi, 8).astype(np.float32)
        self.c1 = Conv(3, 8, [3, 3], padding_dims=[1, 1])
        self.c2 = Conv(8, 8, [3, 3], padding_dims=[1, 1], no_bias=True)
        self.add = ElemWise("Sum", activation=Rectifier())
        self.pool = Pool2d([2, 2], stride_dims=[2, 2])
        self.avg = Pool2d([3, 3], padding_dims=[1, 1], pooling="Average")
        self.fc = Fc(8 * 6 * 6, 10)
        self.sm = Softmax(with_loss=True)
        super().__init__([self.c1, self.bn, self.c2, self.add, self.pool, self.avg, self.fc, self.sm])

    def __call__(self, x):
        y = self.bn(self.c1(x))
        y = self.add(Interface([y, self.c2(y)]))
        return self.sm(self.fc(self.avg(self.pool(y))))


class Zoo(Block):
    """Every exportable cell at least once (shapes in comments, input [N, 4, 8, 8])."""

    def __init__(self):
        rng = np.random.default_rng(1)
        table = rng.random((4, 5)) < 0.5
        table[0, :] = True
        self.pad = Padding(1, 0, 2, 1)                                                     # 4x9x11
        self.grouped = Conv(4, 6, [3, 3], mapping=Mapping(nb_groups=2).create_mapping(4, 6),
                            activation=Tanh(alpha=0.5))                                     # 6x7x9
        self.irregular = Conv(4, 5, [3, 3], mapping=Tensor.from_numpy(table), activation=Logistic())  # 5x7x9
        self.mix = Conv(11, 6, [1, 1], activation=Rectifier(leak_slope=0.1, clipping=1.5))  # on the concat
        self.dw = ConvDepthWise(6, [3, 3], padding_dims=[1, 1], activation=Saturation(threshold=0.8))
        self.ew_sum = ElemWise("Sum", mode="PerChannel", weights=[float(v) for v in rng.uniform(-1, 1, 12)],
                               shifts=[float(v) for v in rng.uniform(-1, 1, 12)])
        self.ew_max = ElemWise("Max")
        self.ew_prod = ElemWise("Prod", activation=Linear(clipping=0.9))
        self.ew_abs = ElemWise("AbsSum", mode="PerInput", weights=[0.5, 2.0])
        self.ew_euc = ElemWise("EuclideanSum", weights=[1.5], shifts=[0.3])
        self.scale = Scaling(FloatingPointScaling([float(v) for v in rng.uniform(0.5, 2, 6)], is_clipped=True,
                                                  clipping=[float(v) for v in rng.uniform(0.5, 1, 6)]))
        self.up = Resize(12, 10, "Bilinear")                                                # 6x10x12
        self.near = Resize(17, 13, "NearestNeighbor")
        self.tf = Resize(9, 8, "BilinearTF", align_corners=True)
        self.tf2 = Resize(11, 7, "BilinearTF", align_corners=False)                         # 6x7x11
        self.swap = Transpose([1, 0, 2, 3], activation=Softplus())                          # 6x11x7
        self.act = Activation(Tanh())
        self.drop = Dropout(dropout=0.5)
        self.deconv = Deconv(6, 3, [3, 3], stride_dims=[2, 2], padding_dims=[1, 1])         # 3x21x13
        self.avg = Pool2d([3, 3], stride_dims=[2, 2], padding_dims=[1, 1], pooling="Average")  # 3x11x7
        self.gmax = GlobalPool2d(pooling="Max")
        self.reshape = Reshape([7, 11, 3])
        self.fc = Fc(2 * 3 * 11 * 7, 8)                                                    # two inputs
        self.fc_g = Fc(3, 8, no_bias=True)
        self.join = ElemWise("Sum")
        self.sm = Softmax(group_size=4, with_loss=False)
        super().__init__([v for k, v in vars(self).items() if not k.startswith("_")])

    def __call__(self, x):
        p = self.pad(x)
        a, b = self.grouped(p), self.irregular(p)
        m = self.mix(Interface([a, b]))
        d = self.dw(m)
        y = self.ew_sum(Interface([m, d]))
        y = self.ew_max(Interface([y, d]))
        y = self.ew_prod(Interface([y, m]))
        y = self.ew_abs(Interface([y, d]))
        y = self.ew_euc(y)
        y = self.scale(y)
        y = self.tf2(self.tf(self.near(self.up(y))))
        y = self.drop(self.act(self.swap(y)))
        y = self.avg(self.deconv(y))
        z = self.reshape(y)
        return self.sm(self.join(Interface([self.fc(Interface([z, y])), self.fc_g(self.gmax(y))])))


def exported_matches(dn, shape, path, opset, seed=0):
    """Export `dn`, run onnxruntime and the DeepNetCell on one random batch of 2."""
    model = dn.export_onnx(path, opset=opset)
    x = np.random.default_rng(seed).standard_normal((2,) + tuple(shape)).astype(np.float32)
    ref = run_cell(dn, x)
    out = run_ort(path, x)
    assert out.shape == ref.shape
    assert rel_err(out, ref) < TOL
    return model


@pytest.mark.parametrize("opset", [9, 13, 17])
def test_residual_block_round_trips_through_onnxruntime(tmp_path, opset):
    dn = DeepNetCell.from_block(Residual(), provider_for((3, 12, 12)), backend="numpy")
    model = exported_matches(dn, (3, 12, 12), str(tmp_path / "residual.onnx"), opset)
    ops = [n.op_type for n in model.graph.node]
    assert ops[:4] == ["Conv", "BatchNormalization", "Relu", "Conv"]
    assert "AveragePool" in ops and "Gemm" in ops and ops.count("Sum") == 1
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_every_exportable_cell(tmp_path, opset):
    """Every cell's output is a graph output, so that each is compared with the eager cells."""
    from n2d2.ir.trace import trace

    zoo = Zoo()
    zoo.test()
    x = np.random.default_rng(5).standard_normal((2, 4, 8, 8)).astype(np.float32)
    y = zoo(Tensor.from_numpy(x))
    cells = [c for c in zoo.get_cells().values()]
    outputs = [c.get_outputs() for c in cells]
    path = str(tmp_path / "zoo.onnx")
    model = export_onnx(trace(y.get_deepnet(), outputs=outputs), path, opset=opset)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    results = session.run(None, {"input": x})
    for cell, out, got in zip(cells, outputs, results):
        assert got.shape == tuple(out.shape()), cell.get_name()
        assert rel_err(got, out.to_numpy()) < TOL, cell.get_name()
    dn = DeepNetCell.from_block(zoo, provider_for((4, 8, 8)), backend="numpy")
    exported_matches(dn, (4, 8, 8), str(tmp_path / "zoo_dn.onnx"), opset)
    ops = {n.op_type for n in model.graph.node}
    assert {"Pad", "Conv", "ConvTranspose", "Resize", "Transpose", "Reshape", "Softmax", "Max", "Abs", "Sqrt",
            "GlobalMaxPool", "Concat", "Gemm", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "Softplus"} <= ops
    assert "Dropout" not in ops


@needs_lenet
@pytest.mark.parametrize("opset", [9, 17])
def test_imported_lenet_exports_and_reimports(tmp_path, opset):
    dn = DeepNetCell.load_from_ONNX(provider_for((1, 28, 28)), LENET, backend="numpy")
    path = str(tmp_path / "lenet.onnx")
    dn.export_onnx(path, opset=opset)
    x = np.random.default_rng(3).random((2, 1, 28, 28), dtype=np.float32)
    ref = run_ort(LENET, x, per_sample=True)
    assert rel_err(run_ort(path, x).reshape(ref.shape), ref) < TOL
    again = DeepNetCell.load_from_ONNX(provider_for((1, 28, 28)), path, backend="numpy")
    assert [c.get_name() for c in again] == ["9", "11", "13", "15", "17", "18"]
    assert rel_err(run_cell(again, x).reshape(ref.shape), ref) < TOL


def test_imported_resnet_exports_like_the_original(tmp_path):
    original = torch_export(ResNet18(width=16), (3, 32, 32), str(tmp_path / "resnet.onnx"), 13)
    dn = DeepNetCell.load_from_ONNX(provider_for((3, 32, 32)), original, backend="numpy")
    path = str(tmp_path / "again.onnx")
    dn.export_onnx(path, opset=13)
    x = np.random.default_rng(4).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = run_ort(original, x, per_sample=True)
    assert rel_err(run_ort(path, x).reshape(ref.shape), ref) < TOL


def test_refusals_name_the_node(tmp_path):
    x = Tensor([2, 4, 6, 6])
    cross = Pool([2, 2], name="cross")  # default mapping: every output pools every channel
    y = cross(x)
    from n2d2.ir.trace import trace

    with pytest.raises(ONNXUnsupportedError, match="node 'cross' \\(Pool\\): pooling across channels"):
        export_onnx(trace(y.get_deepnet()), str(tmp_path / "cross.onnx"))
    fixed = Scaling(FixedPointScaling(4, [3, 3, 3, 3]), name="fixed")
    y = fixed(Tensor([2, 4, 6, 6]))
    with pytest.raises(ONNXUnsupportedError, match="node 'fixed' \\(Scaling\\): FixedPointScaling"):
        export_onnx(trace(y.get_deepnet()).graph, str(tmp_path / "fixed.onnx"))
    graph = trace(Conv(4, 2, [1, 1], name="c")(Tensor([1, 4, 3, 3])).get_deepnet()).graph
    graph.add_node("mystery", "Epilogue", [("c", 0)])
    graph.set_outputs(["mystery"])
    with pytest.raises(ONNXUnsupportedError, match="node 'mystery' \\(Epilogue\\): this op has no ONNX export"):
        export_onnx(graph, str(tmp_path / "mystery.onnx"))
    with pytest.raises(ValueError, match="opset 5 is not supported"):
        export_onnx(graph, str(tmp_path / "old.onnx"), opset=5)
    with pytest.raises(TypeError, match="expected a DeepNetCell"):
        export_onnx("graph", str(tmp_path / "str.onnx"))


def test_written_atomically(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous contents")
    y = Pool([2, 2], name="cross")(Tensor([1, 2, 4, 4]))
    from n2d2.ir.trace import trace

    with pytest.raises(ONNXUnsupportedError):
        export_onnx(trace(y.get_deepnet()), str(path))
    assert path.read_bytes() == b"previous contents"
    dn = DeepNetCell.from_block(Residual(), provider_for((3, 12, 12)), backend="numpy")
    dn.export_onnx(str(path))
    assert onnx.load(str(path)).graph.node[0].op_type == "Conv"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]
