"""Fusion of the elementwise chain after a Conv / Fc into one Epilogue node."""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import blocks_gradient, check_mode, is_identity_spec, sole_consumer, substitute


def _steps(g: Graph, node: str, slot: int, first_input: int):
    """(steps, residual inputs) that compute `node` from the chain value it reads in `slot`;
    residuals are numbered from `first_input`. None when `node` cannot join a chain (its op's
    `chain_steps` says how it joins)."""
    attrs, ins = g.attrs(node), g.inputs_of(node)
    found = op_registry.get(g.op(node), node=node).chain_steps(attrs, len(ins), slot, first_input)
    if found is None:
        return None
    steps, residual_slots = found
    spec = attrs.get("activation")
    tail = [] if is_identity_spec(spec) else [("activation", spec)]
    return list(steps) + tail, [ins[i] for i in residual_slots]


def fuse_elementwise_chains(graph: Graph, mode: str = "inference") -> Graph:
    """Replace the elementwise chain that follows a Conv / Fc / Deconv / BatchNorm by one
    `Epilogue` node (see `n2d2.ir.epilogue`), which a code generator can run on the producer's
    output before storing it.

    Rewrite: starting from the anchor A (a Conv, Fc, Deconv or BatchNorm, fused activation
    included), the chain grows through the sole consumer of the current value while that
    consumer is
    - an ElemWise "Sum" (any number of inputs, scalar or per-channel weights and shifts): the
      other inputs become residual inputs of the Epilogue (`add` steps, with their weights
      and shifts; the chain's own weight and shift become `scale` / `bias` steps),
    - a Scaling with an unclipped FloatingPointScaling (a `scale` step),
    - a single-input Activation (an `activation` step),
    each node's own fused activation following as an `activation` step. The chain (when it
    holds at least one ElemWise or Scaling node) becomes `Epilogue(A:0, residuals...)`, which
    takes the name of the chain's last node (its consumers and graph-output positions stay).
    So `Conv -> ElemWise(Sum, residual) -> Activation` becomes `Conv -> Epilogue(conv,
    residual)`. Precondition for each link: the value is read by that one edge only and is no
    graph output (the last node may have any consumers); in training, the node does not have
    `back_propagate=False`. Exact in inference and training:
    the Epilogue does the same arithmetic (for two-input sums, in the same order) and its
    backward gives the same data gradients.
    """
    g = graph.copy()
    check_mode(mode)
    for anchor in g.topological_order():
        if anchor not in g.nx or not op_registry.get(g.op(anchor), node=anchor).epilogue_anchor:
            continue
        chain, steps, residuals, worth = [], [], [], False
        current = anchor
        while True:
            use = sole_consumer(g, current)
            if use is None or blocks_gradient(g, use[0], mode):
                break
            found = _steps(g, use[0], use[1], 1 + len(residuals))
            if found is None:
                break
            chain.append(use[0])
            steps += found[0]
            residuals += found[1]
            worth = worth or op_registry.get(g.op(use[0])).epilogue_member
            current = use[0]
        if not worth:
            continue
        for name in chain[:-1]:
            g.remove_node(name)
        substitute(g, chain[-1], "Epilogue", [(anchor, 0)] + residuals, {"steps": tuple(steps)})
    return g
