"""Fusion of the elementwise chain after a Conv / Fc into one Epilogue node."""
import numpy as np

from n2d2.ir import epilogue as _epilogue  # noqa: F401  (registers the Epilogue op)
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import blocks_gradient, check_mode, is_identity_spec, sole_consumer, substitute

ANCHORS = ("Conv", "Fc", "Deconv", "BatchNorm")


def _coef(v):
    """A scalar or per-channel coefficient as plain data (float or tuple of floats)."""
    a = np.asarray(v, dtype=np.float64)
    return float(a) if a.ndim == 0 else tuple(float(x) for x in a.reshape(-1))


def _is(v, value) -> bool:
    return bool(np.all(np.asarray(v, dtype=np.float64) == value))


def _floating_point_scales(scaling):
    """The per-channel factors of an unclipped FloatingPointScaling object, else None."""
    if type(scaling).__name__ != "FloatingPointScaling":
        return None
    args = getattr(scaling, "_args", {})
    if args.get("is_clipped") or "scaling_per_output" not in args:
        return None
    return _coef(args["scaling_per_output"])


def _steps(g: Graph, node: str, slot: int, first_input: int):
    """(steps, residual inputs) that compute `node` from the chain value it reads in `slot`;
    residuals are numbered from `first_input`. None when `node` cannot join a chain."""
    op, attrs, ins = g.op(node), g.attrs(node), g.inputs_of(node)
    spec = attrs.get("activation")
    tail = [] if is_identity_spec(spec) else [("activation", spec)]
    if op == "Activation":
        return (tail, []) if len(ins) == 1 else None
    if op == "Scaling":
        scales = _floating_point_scales(attrs.get("scaling"))
        if len(ins) != 1 or scales is None:
            return None
        return [("scale", scales)] + tail, []
    if op == "ElemWise":
        weights, shifts = attrs.get("weights"), attrs.get("shifts")
        if attrs.get("operation") != "Sum" or weights is None or shifts is None \
                or len(weights) < len(ins) or len(shifts) < len(ins):
            return None
        steps = []
        if not _is(weights[slot], 1.0):
            steps.append(("scale", _coef(weights[slot])))
        if not _is(shifts[slot], 0.0):
            steps.append(("bias", _coef(shifts[slot])))
        residuals = []
        for i, src in enumerate(ins):
            if i != slot:
                steps.append(("add", first_input + len(residuals), _coef(weights[i]), _coef(shifts[i])))
                residuals.append(src)
        return steps + tail, residuals
    return None


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
        if anchor not in g.nx or g.op(anchor) not in ANCHORS:
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
            worth = worth or g.op(use[0]) in ("ElemWise", "Scaling")
            current = use[0]
        if not worth:
            continue
        for name in chain[:-1]:
            g.remove_node(name)
        substitute(g, chain[-1], "Epilogue", [(anchor, 0)] + residuals, {"steps": tuple(steps)})
    return g
