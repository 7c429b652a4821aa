"""`n2d2.frontends.graph_cells`: an IR graph (ONNX converted by `n2d2.onnx_backend`, legalized,
activations fused) built as cells, one per node: the cells compute what the graph computes
(numpy executor) on a random batch, named after the nodes, N2D2 cells for N2D2 ops, `OnnxNode`
cells for the `Onnx*` nodes left, no cell for views, Interfaces for a channel concatenation."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402

import n2d2  # noqa: E402
from n2d2 import onnx_backend  # noqa: E402
from n2d2.codegen import numpy_exec  # noqa: E402
from n2d2.frontends.graph_cells import CellBuilder, activation  # noqa: E402
from n2d2.ir.passes.fuse_activation import fuse_activation  # noqa: E402
from n2d2.ir.passes.legalize_onnx import known_activation, legalize_onnx  # noqa: E402
from n2d2.provider import TensorPlaceholder  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.test_onnx_import import W, make_model  # noqa: E402


def _graph(model, x):
    rep = onnx_backend.prepare(model)
    graph = rep.build({rep.input_names[0]: x})
    return fuse_activation(legalize_onnx(graph)), rep.input_names[0], graph.nodes()


def test_cells_compute_what_the_graph_computes():
    node = helper.make_node
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], pads=[0, 1, 2, 1]), node("Relu", ["c1"], ["r1"]),
             node("Conv", ["x", "w2"], ["c2"], pads=[1, 1, 1, 1], group=3),
             node("Concat", ["r1", "c2"], ["cc"], axis=1),
             node("Conv", ["cc", "w3", "b3"], ["y"]), node("Mul", ["cc", "k"], ["m"]),
             node("GlobalAveragePool", ["m"], ["g"]), node("Flatten", ["g"], ["f"]),
             node("Gemm", ["f", "fw", "fb"], ["z"], transB=1), node("Tanh", ["z"], ["t"]),
             node("Softmax", ["t"], ["s"], axis=1)]
    inits = {"w1": W(4, 3, 3, 3), "b1": W(4), "w2": W(6, 1, 3, 3, seed=1), "w3": W(5, 10, 1, 1, seed=2),
             "b3": W(5, seed=3), "k": W(1, 10, 1, 1, seed=4), "fw": W(6, 10, seed=5), "fb": W(6, seed=6)}
    model = make_model(nodes, inits, [3, 6, 5], 13, outputs=("y", "s"))
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 5)).astype(np.float32)
    graph, name, order = _graph(model, x)
    builder = CellBuilder(graph, order=order)
    t = n2d2.Tensor.from_numpy(x)
    TensorPlaceholder(t)
    outs = builder.build(t)
    cells = {c.get_name(): c for c in builder.cells}
    assert [(n, c.get_type()) for n, c in cells.items()] == [
        ("c1_padding", "Padding"), ("c1", "Conv"), ("c2", "Conv"), ("y", "Conv"), ("cc", "Activation"),
        ("m", "OnnxNode"), ("g", "GlobalPool2d"), ("z", "Fc"), ("s", "Softmax")]
    assert cells["y"].get_input_cells() == ["c1", "c2"]   # the Concat as an Interface
    assert cells["c1"].get_activation().__class__.__name__ == "Rectifier"
    assert cells["z"].get_activation().__class__.__name__ == "Tanh" and cells["s"].with_loss
    assert cells["c2"].mapping.dims() == [6, 3]   # 3 groups
    refs = numpy_exec.run(graph, {name: x})
    for y, ref in zip(outs, refs):
        assert rel_err(y.to_numpy().reshape(ref.shape), np.asarray(ref)) < 1e-5


def test_activation_objects_from_specs():
    spec = known_activation("Rectifier", leak_slope=0.1, clipping=6.0)
    act = activation(spec)
    assert type(act).__name__ == "Rectifier" and act.leak_slope == 0.1 and act.clipping == 6.0
    assert activation(None) is None
