"""The numpy executor: runs an IR graph node by node with the reference op definitions.

It is the fallback backend and the oracle the passes are tested against: `run(graph, feeds)`
evaluates every node in topological order. Arrays may be numpy or cupy (the op definitions
are array-module generic).
"""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import GraphError


def run(graph, feeds: dict, training: bool = False, keep: bool = False):
    """Evaluate `graph` on `feeds` {input name: array}; returns the list of graph outputs.

    With `keep=True`, returns `(outputs, values, saved)`: every node's outputs and saved
    contexts (what a backward pass needs).
    """
    values, saved = {}, {}
    for name in graph.inputs:
        if name not in feeds:
            raise GraphError(f"graph '{graph.name}': no value fed for input '{name}'")
    for name in graph.topological_order():
        node = graph.node(name)
        if node.op == "Input":
            values[name] = [feeds[name]]
            continue
        opdef = op_registry.get(node.op, node=name)
        xs = [values[src][out] for src, out in graph.inputs_of(name)]
        params = {role: graph.params[p].array for role, p in node.params.items()}
        ys, ctx = opdef.forward(node.attrs, xs, params, training)
        values[name] = ys
        saved[name] = ctx
    outputs = [values[n][o] for n, o in graph.outputs]
    if keep:
        return outputs, values, saved
    return outputs
