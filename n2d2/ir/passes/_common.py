"""Small graph-rewriting helpers shared by the passes (not a pass)."""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ops import activation as act_table

#: Options every pass may receive from the pass manager.
MODES = ("inference", "training")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"pass mode must be one of {MODES}, got {mode!r}")
    return mode


def blocks_gradient(graph: Graph, name: str, mode: str) -> bool:
    """True in training mode for a node whose attrs say `back_propagate=False` (its cell sends
    no gradient to its inputs): removing or merging it would let gradients through."""
    return mode == "training" and graph.attrs(name).get("back_propagate", True) is False


def is_graph_output(graph: Graph, name: str) -> bool:
    return any(n == name for n, _ in graph.outputs)


def sole_consumer(graph: Graph, name: str):
    """(dst, slot) when output 0 of `name` is read by exactly one edge and is no graph output.

    Anything else (several uses, a use of another output, a graph output) gives None: the
    value must then stay materialised, so it cannot be folded into its consumer.
    """
    uses = graph.consumers(name)
    if len(uses) != 1 or is_graph_output(graph, name):
        return None
    dst, slot, out = uses[0]
    return (dst, slot) if out == 0 else None


def bypass(graph: Graph, name: str):
    """Remove single-input node `name`; its consumers (and graph outputs) read its input instead."""
    (src, out), = graph.inputs_of(name)
    graph.replace_uses(name, src, 0, out)
    graph.remove_node(name)


def substitute(graph: Graph, old: str, op: str, inputs, attrs=None, params=None, outputs=None):
    """Replace single-output node `old` by a new node of the same name (consumers and graph
    output positions are kept); `inputs` may not read `old` itself."""
    uses = graph.consumers(old)
    kept_outputs = list(graph.outputs)
    outputs = list(graph.output_types(old)) if outputs is None else outputs
    graph.remove_node(old)
    graph.add_node(old, op, inputs, attrs, params, outputs=outputs)
    for dst, slot, out in uses:
        graph.nx.add_edge(old, dst, out=out, slot=slot)
    graph.outputs = kept_outputs


def set_op(graph: Graph, name: str, op: str, attrs: dict):
    """Change a node's op and attributes in place (edges, params and outputs kept)."""
    graph.nx.nodes[name]["op"] = op
    graph.nx.nodes[name]["attrs"] = dict(attrs)


def new_param_name(graph: Graph, base: str) -> str:
    name, k = base, 1
    while name in graph.params:
        name = f"{base}_{k}"
        k += 1
    return name


def pair(value):
    """An int or a 2-sequence as a (height, width) tuple of ints."""
    if isinstance(value, (list, tuple)):
        a, b = value
        return int(a), int(b)
    return int(value), int(value)


def is_identity_spec(spec) -> bool:
    """True for no activation and for an identity one (Linear without clipping)."""
    return act_table.prop(spec, "identity", True)


def is_idempotent_spec(spec) -> bool:
    """f(f(z)) == f(z) with the same backward mask: plain/clipped ReLU, clipping Linear, Saturation."""
    return act_table.prop(spec, "idempotent", True)


def needs_input_spec(spec) -> bool:
    """True for an activation whose derivative is written from its input (Swish, Gelu, Mish,
    HardSwish): in training it stays where its backward kernel sees that input."""
    return act_table.needs_input(spec)


# Specs whose output is >= 0 whatever the input, and specs that keep a non-negative input >= 0.
def _spec_non_negative(spec) -> bool:
    return act_table.prop(spec, "non_negative", False)


def _spec_keeps_sign(spec) -> bool:
    return act_table.prop(spec, "keeps_sign", True)


def is_non_negative(graph: Graph, name: str, depth: int = 16) -> bool:
    """True when every value of `name`'s output is provably >= 0 (conservative: False if unsure)."""
    spec = graph.attrs(name).get("activation")
    if _spec_non_negative(spec):
        return True
    if depth <= 0 or not _spec_keeps_sign(spec):
        return False
    if op_registry.get(graph.op(name), node=name).preserves_sign(graph.attrs(name)):
        ins = graph.inputs_of(name)
        return bool(ins) and all(is_non_negative(graph, src, depth - 1) for src, _ in ins)
    return False
