"""Merge the Epilogue that reads a BatchNorm into it (one pass over the map instead of two)."""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import blocks_gradient, check_mode, is_identity_spec, sole_consumer, substitute


def _fusable(g: Graph, anchor: str, mode: str):
    """The chain-holding node that `anchor` may absorb, or None."""
    attrs = g.attrs(anchor)
    if not is_identity_spec(attrs.get("activation")) or attrs.get("synchronised") or len(g.inputs_of(anchor)) != 1:
        return None
    use = sole_consumer(g, anchor)
    if use is None or use[1] != 0 or blocks_gradient(g, anchor, mode):
        return None
    node = use[0]
    if not op_registry.get(g.op(node), node=node).holds_chain or not is_identity_spec(g.attrs(node).get("activation")) \
            or blocks_gradient(g, node, mode) or any(src == anchor for src, _ in g.inputs_of(node)[1:]):
        return None
    return node


def fuse_batchnorm_epilogue(graph: Graph, mode: str = "inference") -> Graph:
    """Replace `A -> E` by one node of op `A.absorbs_chain` (a BatchNorm and its Epilogue:
    `BatchNormEpilogue`, n2d2.ops.batchnorm_epilogue), named as E (its consumers and graph-output
    positions stay), reading A's input then E's residuals, with A's params and attributes and E's
    steps.

    Precondition: A's op declares `absorbs_chain`; A has one input, no fused activation (an
    identity one is dropped) and is not synchronised (a synchronised BatchNorm runs on the
    reference, between collectives); E (an op that `holds_chain`) is A's sole consumer, through
    input 0, has no fused activation of its own (or an identity one) and no other input from A;
    in training, neither stops gradients. Exact in inference and training: the fused op
    computes the two references in turn.
    """
    g = graph.copy()
    check_mode(mode)
    for anchor in g.topological_order():
        if anchor not in g.nx:
            continue
        fused_op = op_registry.get(g.op(anchor), node=anchor).absorbs_chain
        node = _fusable(g, anchor, mode) if fused_op else None
        if node is None:
            continue
        attrs = dict(g.attrs(anchor), steps=g.attrs(node)["steps"])
        attrs.pop("activation", None)
        params = dict(g.nx.nodes[anchor]["params"])
        inputs = g.inputs_of(anchor) + g.inputs_of(node)[1:]
        g.remove_node(anchor)
        substitute(g, node, fused_op, inputs, attrs, params)
    return g
