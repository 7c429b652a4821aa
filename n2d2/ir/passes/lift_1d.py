"""1-D ONNX convolutions and poolings as 2-D ones, before `legalize_onnx` (ONNX import).

N2D2 holds an ONNX tensor [N, C, L] as [N, C, L, 1] (trailing axes of size 1: the same memory
order). A 1-D `OnnxConv`, `OnnxConvTranspose`, `OnnxMaxPool` or `OnnxAveragePool` over
[N, C, L], and an `OnnxBatchNormalization` of a rank-3 tensor, become here the same op over an
`OnnxReshape` view [N, C, L, 1] of their input, with a (k, 1) window (weights [O, C, k, 1]),
followed by a view back to the ONNX shape: the rules of `legalize_onnx`, which take 2-D NCHW
ops, then make their N2D2 cells, and the views make no cell (`graph_cells.is_alias`).
"""
import dataclasses

import numpy as np

from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import is_graph_output, new_param_name

_WINDOWED = ("OnnxConv", "OnnxConvTranspose", "OnnxMaxPool", "OnnxAveragePool")


def _attrs_2d(attrs):
    """The attributes of a 1-D window op for the (k, 1) window of its 2-D form."""
    a = dict(attrs)
    for key in ("kernel", "strides", "dilations"):
        if key in a:
            a[key] = (int(a[key][0]), 1)
    if "output_padding" in a:
        a["output_padding"] = (int(a["output_padding"][0]), 0)
    if "pads" in a:
        a["pads"] = (int(a["pads"][0]), 0, int(a["pads"][1]), 0)
    return a


def _liftable(graph, node):
    op = graph.op(node)
    ins = graph.inputs_of(node)
    if op not in _WINDOWED + ("OnnxBatchNormalization",) or not ins or graph.op(ins[0][0]) == "OnnxConstant":
        return False
    if len(graph.input_types(node)[0].shape) != 3 or len(graph.output_types(node)) != 1:
        return False
    return op not in _WINDOWED or len(graph.attrs(node)["strides"]) == 1


def _weights_2d(graph, node, slot, ref):
    """Input `slot` of `node` (a constant [O, C, k]) re-read as [O, C, k, 1]: a new constant."""
    src = ref[0]
    p = graph.node(src).params["value"]
    param = graph.params[p]
    name = graph.unique_name(f"{src}_2d")
    pname = new_param_name(graph, name)
    graph.add_param(pname, np.asarray(param.array).reshape(tuple(param.array.shape) + (1,)), param.trainable,
                    param.owner, param.role, param.solver)
    graph.add_op(name, "OnnxConstant", [], params={"value": pname})
    _rewire(graph, src, name, node, slot)
    if not graph.consumers(src) and not is_graph_output(graph, src):
        graph.remove_node(src)


def _rewire(graph, old, new, dst, slot):
    for key, d in list(graph.nx.get_edge_data(old, dst).items()):
        if d["slot"] == slot:
            graph.nx.remove_edge(old, dst, key)
            graph.nx.add_edge(new, dst, out=0, slot=slot)


def lift_1d(graph: Graph) -> Graph:
    """A copy of `graph` whose 1-D window ops and rank-3 batch normalizations are 2-D (above)."""
    g = graph.copy()
    for node in [n for n in g.nodes() if _liftable(g, n)]:
        ins = g.inputs_of(node)
        x = ins[0]
        t = g.output_types(x[0])[x[1]]
        view = g.add_op(g.unique_name(f"{node}_2d"), "OnnxReshape", [x], {"shape": tuple(t.shape) + (1,)})
        _rewire(g, x[0], view, node, 0)
        if g.op(node) in ("OnnxConv", "OnnxConvTranspose"):
            _weights_2d(g, node, 1, ins[1])
        data = g.nx.nodes[node]
        (old,) = data["outputs"]
        data["attrs"] = _attrs_2d(data["attrs"])
        data["outputs"] = op_registry.get(data["op"], node=node).infer(g, node)
        back = g.add_node(g.unique_name(f"{node}_view"), "OnnxReshape", [], {"shape": tuple(old.shape)},
                          outputs=[dataclasses.replace(old)])
        g.replace_uses(node, back)
        g.nx.add_edge(node, back, out=0, slot=0)
    return g
