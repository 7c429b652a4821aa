"""IR graph: building, verification errors that name the node, dumps, tracing, autodiff."""
import numpy as np
import pytest

import n2d2
from n2d2.activation import Rectifier
from n2d2.cells import BatchNorm2d, Conv, ElemWise, Fc, Layer, Pool2d, Sequence, Softmax
from n2d2.codegen import numpy_exec
from n2d2.ir import Graph, GraphError
from n2d2.ir.autodiff import build_training_graph
from n2d2.ir.trace import trace
from tests.conftest import rel_err


def _small_graph():
    g = Graph("small")
    g.add_input("x", (2, 3, 8, 8))
    g.add_param("w", np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32))
    g.add_op("conv", "Conv", ["x"], attrs=dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1)),
             params={"weights": "w"})
    g.add_op("pool", "Pool", ["conv"], attrs=dict(pooling="Max", pool=(2, 2), stride=(2, 2), padding=(0, 0)))
    g.set_outputs(["pool"])
    return g


def test_build_verify_and_dump(tmp_path):
    g = _small_graph()
    assert g.verify()
    text = g.dump()
    assert "conv = Conv(x)" in text and "float32[2x4x4x4]" in text
    assert '"conv" -> "pool" [label="float32[2x4x8x8]"]' in g.to_dot()
    g.draw(str(tmp_path / "g.png"))
    assert (tmp_path / "g.png").stat().st_size > 0


def test_unknown_op_names_the_node():
    g = _small_graph()
    g.add_node("mystery", "Frobnicate", ["pool"], outputs=list(g.output_types("pool")))
    with pytest.raises(GraphError, match="node 'mystery': unknown op 'Frobnicate'"):
        g.verify()


def test_shape_mismatch_names_the_node():
    g = _small_graph()
    g.nx.nodes["pool"]["outputs"] = [type(g.output_types("pool")[0])((2, 4, 5, 5))]
    with pytest.raises(GraphError, match="node 'pool' \\(Pool\\)"):
        g.verify()
    g2 = Graph("bad")
    g2.add_input("x", (2, 5, 1, 1))
    g2.add_param("w", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(GraphError, match="node 'fc' \\(Fc\\)"):
        g2.add_op("fc", "Fc", ["x"], params={"weights": "w"})
    assert "fc" not in g2.nodes()


def test_cycle_names_a_node():
    g = _small_graph()
    g.nx.add_edge("pool", "conv", out=0, slot=1)
    with pytest.raises(GraphError, match="cycle"):
        g.topological_order()


def test_dangling_input_and_bad_slots():
    g = _small_graph()
    with pytest.raises(GraphError, match="unknown node 'nowhere'"):
        g.add_node("n", "Identity", ["nowhere"])
    g.add_node("id", "Identity", ["pool"], outputs=list(g.output_types("pool")))
    g.nx.add_edge("conv", "id", out=0, slot=3)
    with pytest.raises(GraphError, match="node 'id'"):
        g.verify()


def test_trace_residual_network_and_run():
    n2d2.global_variables.seed = 4
    main = Sequence([Conv(4, 4, [3, 3], padding_dims=[1, 1], activation=Rectifier()), BatchNorm2d(4)])
    block = Sequence([Conv(2, 4, [3, 3], padding_dims=[1, 1]), Layer([main, Sequence([])]), ElemWise(),
                      Pool2d([2, 2], stride_dims=[2, 2]), Fc(4 * 3 * 3, 3), Softmax()])
    block.test()
    x = n2d2.Tensor([2, 2, 6, 6])
    x.to_numpy()[...] = np.random.default_rng(2).standard_normal((2, 2, 6, 6))
    y = block(x)
    result = trace(y.get_deepnet())
    g = result.graph
    assert g.verify()
    assert [g.op(n) for n in g.topological_order()].count("ElemWise") == 1
    out = numpy_exec.run(g, {"input": x.to_numpy()})[0]
    assert rel_err(out, y.to_numpy()) < 1e-6


def test_autodiff_matches_eager_gradients():
    n2d2.global_variables.seed = 4
    fc = Fc(6, 6, activation=Rectifier())
    net = Sequence([Conv(1, 2, [3, 3]), BatchNorm2d(2), Fc(2 * 4 * 4, 6), fc, fc, Softmax(with_loss=True)])
    x = n2d2.Tensor([3, 1, 6, 6])
    x.to_numpy()[...] = np.random.default_rng(3).random((3, 1, 6, 6))
    y = net(x)
    tg = build_training_graph(trace(y.get_deepnet()).graph)
    assert tg.graph.verify()
    session = numpy_exec.Session(tg.graph, training=True, order=tg.forward_nodes)
    session.feed({"input": x.to_numpy()})
    session.run_nodes(tg.forward_nodes)
    dy = np.random.default_rng(5).standard_normal(y.shape()).astype(np.float32)
    session.feed({list(tg.grad_inputs.values())[0]: dy})
    session.run_nodes(tg.backward_nodes)
    deepnet = y.get_deepnet()
    deepnet.seed_gradient(y, dy)
    deepnet.back_propagate()
    for pname, (node, k) in tg.param_grads.items():
        param = tg.graph.params[pname]
        cell = net[param.owner]
        assert rel_err(session.values[node][k], cell._param_grads[param.role]) < 1e-5, pname
