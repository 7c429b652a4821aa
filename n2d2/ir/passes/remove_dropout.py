"""Removal of Dropout nodes for inference."""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import check_mode
from n2d2.ir.passes.remove_identities import drop_passthrough


def remove_dropout(graph: Graph, mode: str = "inference") -> Graph:
    """Bypass every Dropout node (inference only: there Dropout is the identity, N2D2 does not
    rescale the kept values).

    Rewrite: as `remove_identities` (a fused activation leaves an Activation node, several
    inputs a Concat). Precondition: `mode == "inference"`; in training mode the graph is
    returned unchanged (Dropout draws a mask there).
    """
    g = graph.copy()
    if check_mode(mode) != "inference":
        return g
    for name in g.topological_order():
        if op_registry.get(g.op(name), node=name).passthrough == "inference":
            drop_passthrough(g, name)
    return g
