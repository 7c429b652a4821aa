"""Fusion of Activation nodes into the op that produces their input."""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import (
    blocks_gradient,
    bypass,
    check_mode,
    is_idempotent_spec,
    is_identity_spec,
    needs_input_spec,
    sole_consumer,
    substitute,
)


def fuse_activation(graph: Graph, mode: str = "inference") -> Graph:
    """Move single-input Activation nodes into their producer's fused activation.

    Rewrite, for an Activation node A with spec f reading output 0 of node P:
    - P's op `carries_activation` (Conv, Fc, Deconv, ElemWise, BatchNorm, Pool), its fused
      activation is None (or Linear without clipping), A is P's only consumer and P no graph output: P gets
      `activation = f`, A is removed (P computes f(op(x)) with the same saved pre-activation,
      so forward and gradients are unchanged); in training, not when f's derivative needs
      its input (Swish, Gelu, Mish, HardSwish): the producer's backward kernel has only f(z),
      the standalone Activation's has z;
    - f is idempotent (Rectifier without leak, Linear, Saturation; same parameters) and P
      already applies exactly f: A is removed (f(f(z)) == f(z), same backward mask), whatever
      P is and whoever else reads it;
    - f is None or Linear without clipping: A is removed (the identity).
    Precondition: A has one input (with several it concatenates) and reads output 0; in
    training, A does not have `back_propagate=False`. Exact in inference and training.

    In training, first the reverse for such an input-derivative activation f already fused
    into a one-output node P (a traced `Conv(activation=Swish())`): P's op moves to a new node
    `<P>/preact` (same inputs, parameters and attributes, no activation) and P becomes
    `Activation(f)` reading it; P's name, consumers and graph-output positions are kept.
    """
    g = graph.copy()
    check_mode(mode)
    if mode == "training":
        for name in g.topological_order():
            if not op_registry.get(g.op(name), node=name).backward_sees_input \
                    and needs_input_spec(g.attrs(name).get("activation")):
                split_activation(g, name)
    for act in g.topological_order():
        if act not in g.nx or g.op(act) != "Activation" or blocks_gradient(g, act, mode):
            continue
        ins = g.inputs_of(act)
        if len(ins) != 1 or ins[0][1] != 0:
            continue
        src = ins[0][0]
        spec = g.attrs(act).get("activation")
        action = fusion(spec, g.attrs(src).get("activation"), op_registry.get(g.op(src), node=src).carries_activation,
                        sole_consumer(g, src) == (act, 0), mode)
        if action == "drop":
            bypass(g, act)
        elif action == "fuse":
            g.nx.nodes[src]["attrs"]["activation"] = spec
            g.replace_uses(act, src)
            g.remove_node(act)
    return g


def fusion(spec, inner, carries: bool, sole: bool, mode: str = "inference"):
    """The rule of `fuse_activation` for an activation `spec` applied to the output of a producer
    whose fused activation is `inner` (`carries`: the producer can hold one; `sole`: the
    activation is its only reader): "drop" (the activation is the identity, or an idempotent
    one the producer already applies), "fuse" (it becomes the producer's), or None (it stays).
    Also the rule of the ONNX importer's cells (`n2d2.frontends.onnx_import`)."""
    if is_identity_spec(spec) or (inner == spec and is_idempotent_spec(spec)):
        return "drop"
    if carries and is_identity_spec(inner) and sole and not (mode == "training" and needs_input_spec(spec)):
        return "fuse"
    return None


def split_activation(g: Graph, name: str) -> str:
    """Move node `name`'s fused activation into a standalone Activation node (see
    `fuse_activation`, training); returns the name of the node computing the pre-activation."""
    d = g.node(name)
    if len(d.outputs) != 1:
        return name
    core = g.unique_name(f"{name}/preact")
    attrs = dict(d.attrs, activation=None)
    g.add_node(core, d.op, g.inputs_of(name), attrs, dict(d.params), outputs=list(d.outputs))
    substitute(g, name, "Activation", [(core, 0)], {"activation": d.attrs["activation"]}, params={})
    return core
