"""Shape inference: every node's output types recomputed from its op's shape rule."""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph, GraphError


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
