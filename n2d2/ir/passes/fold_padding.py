"""Folding of explicit zero Padding nodes into the padding of the Conv / Pool they feed."""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import blocks_gradient, check_mode, is_graph_output, is_identity_spec, is_non_negative, pair


def _target_ok(g: Graph, pad: str, dst: str, mode: str) -> bool:
    """Whether `dst` (a consumer of `pad`) can absorb the padding exactly."""
    if g.inputs_of(dst) != [(pad, 0)]:
        return False  # several inputs: the padding would have to apply to all of them
    how = op_registry.get(g.op(dst), node=dst).absorbs_padding(g.attrs(dst))
    if how == "exact":
        return True
    if how != "non_negative":
        return False
    # e.g. Max pool: padded positions are -inf in the op, zeros here. Equal forward when the
    # input is known >= 0; gradients may differ on ties with a zero, so only in inference.
    return mode == "inference" and all(is_non_negative(g, src) for src, _ in g.inputs_of(pad))


def fold_padding(graph: Graph, mode: str = "inference") -> Graph:
    """Fold `Padding(top, bot, left, right)` into the padding of each Conv / Pool that reads it.

    Rewrite: `Conv(Padding(x))` -> `Conv'(x)` with Conv' padding = Conv padding + (top, left)
    (the Conv's own padding may be negative: a crop), likewise for an Average Pool (exact: the
    op counts padded positions as zeros) and, in inference mode only, for a Max Pool whose
    input is provably non-negative (e.g. after a Rectifier; the op pads with -inf).
    Several Padding inputs (a concatenation) become the inputs of the consumer, which
    concatenates the same way. The Padding node goes when no other consumer is left.
    Precondition: pads >= 0 and symmetric (top == bot, left == right; the ops pad
    symmetrically), no fused activation on the Padding (it would apply to the zeros), the
    consumer reads only the Padding; in training, the Padding does not have
    `back_propagate=False`. Exact in training for Conv and Average Pool.
    """
    g = graph.copy()
    check_mode(mode)
    for pad in g.topological_order():
        if pad not in g.nx or g.op(pad) != "Padding":
            continue
        a = g.attrs(pad)
        top, bot, left, right = (int(a[k]) for k in ("top", "bot", "left", "right"))
        if top != bot or left != right or top < 0 or left < 0 or not is_identity_spec(a.get("activation")) \
                or blocks_gradient(g, pad, mode):
            continue
        srcs = g.inputs_of(pad)
        for dst, slot, out in g.consumers(pad):
            if not _target_ok(g, pad, dst, mode):
                continue
            for key, d in list(g.nx.get_edge_data(pad, dst).items()):
                if d["slot"] == slot:
                    g.nx.remove_edge(pad, dst, key)
            for i, (src, src_out) in enumerate(srcs):
                g.nx.add_edge(src, dst, out=src_out, slot=i)
            attrs = g.nx.nodes[dst]["attrs"]
            ph, pw = pair(attrs.get("padding", (0, 0)))
            attrs["padding"] = (ph + top, pw + left)
        if not g.consumers(pad) and not is_graph_output(g, pad):
            g.remove_node(pad)
    return g
