"""Shape inference: every node's output types recomputed from its op's shape rule."""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph, GraphError
from n2d2.ir.types import TensorType


def shape_inference(graph: Graph, strict: bool = True) -> Graph:
    """Recompute the output types of every node, in topological order, from its op's rule.

    Rewrite: nodes created without output types get them; the others are checked.
    Precondition: none (this is the check). Raises GraphError naming the node when its op's
    rule rejects its inputs (arity, shapes, parameters), when an Input node has no type, or,
    with `strict` (the default), when a recorded type differs from the inferred one (with
    `strict=False` the inferred type replaces it, for passes that change shapes on purpose).
    """
    g = graph.copy()
    for name in g.topological_order():
        d = g.nx.nodes[name]
        opdef = op_registry.get(d["op"], node=name)
        if d["op"] == "Input" and not d["outputs"]:
            raise GraphError(f"node '{name}' (Input): no output type given")
        inferred = opdef.infer(g, name)
        recorded = d["outputs"]
        if strict and recorded and [(tuple(t.shape), t.dtype) for t in recorded] != \
                [(tuple(t.shape), t.dtype) for t in inferred]:
            raise GraphError(f"node '{name}' ({d['op']}): recorded output types "
                             f"{[str(t) for t in recorded]} but its inputs give {[str(t) for t in inferred]}")
        d["outputs"] = list(inferred)
    for name, out in g.outputs:
        if name not in g.nx:
            raise GraphError(f"graph '{g.name}': output refers to unknown node '{name}'")
        if out >= len(g.output_types(name)):
            raise GraphError(f"graph '{g.name}': output {out} of node '{name}' does not exist "
                             f"({len(g.output_types(name))} outputs)")
    return g


def rebatch(graph, batch_size: int):
    """A copy of `graph` whose inputs (and every shape after them) have batch `batch_size`."""
    g = graph.copy()
    for name in g.inputs:
        t = g.output_types(name)[0]
        g.nx.nodes[name]["outputs"] = [TensorType((batch_size,) + tuple(t.shape[1:]), t.dtype)]
    for name in g.topological_order():
        op = g.op(name)
        if op == "Input":
            continue
        if op == "Grad":
            attrs = g.attrs(name)
            fwd_inputs = g.inputs_of(name)[1:-1]
            outs = [g.output_types(s)[o] for (s, o), n in zip(fwd_inputs, attrs["input_needs"]) if n]
            outs += [TensorType(g.params[g.node(attrs["of"]).params[r]].shape) for r in attrs["roles"]]
            g.nx.nodes[name]["outputs"] = outs
            continue
        g.nx.nodes[name]["outputs"] = op_registry.get(op, node=name).infer(g, name)
    return g
