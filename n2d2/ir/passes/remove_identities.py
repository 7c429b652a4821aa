"""Removal of pass-through nodes: Identity, and Activation nodes that compute nothing."""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import blocks_gradient, bypass, check_mode, is_identity_spec, set_op


def drop_passthrough(graph: Graph, name: str):
    """Rewrite pass-through node `name` (identity on the channel concatenation of its inputs,
    then its fused activation) into the cheapest equivalent, in place:

    - one input, no activation (or Linear without clipping): removed, consumers read the input;
    - one input, an activation: an Activation node with that spec;
    - several inputs, no activation: a Concat node;
    - several inputs, an activation: an Activation node (it concatenates too).
    """
    spec = graph.attrs(name).get("activation")
    single = len(graph.inputs_of(name)) == 1
    if is_identity_spec(spec):
        if single:
            bypass(graph, name)
        else:
            set_op(graph, name, "Concat", {})
    elif graph.op(name) != "Activation":
        set_op(graph, name, "Activation", {"activation": spec})


def remove_identities(graph: Graph, mode: str = "inference") -> Graph:
    """Bypass Identity nodes, and Activation nodes whose spec is None or Linear without clipping.

    Rewrite: see `drop_passthrough` (an Identity with a fused activation becomes an Activation
    node; with several inputs a Concat keeps the concatenation). Precondition: in training
    mode, the node does not have `back_propagate=False` (it stops gradients). Exact in
    inference and in training (forward and gradients).
    """
    g = graph.copy()
    check_mode(mode)
    for name in g.topological_order():
        if blocks_gradient(g, name, mode):
            continue
        # an always-passthrough op (Identity, Activation); drop_passthrough leaves an Activation
        # whose spec computes something as it is
        if op_registry.get(g.op(name), node=name).passthrough == "always":
            drop_passthrough(g, name)
    return g
