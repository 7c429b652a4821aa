"""Legalization of ONNX-semantics nodes: `Onnx*` ops (`n2d2.onnx_backend`'s conversion) rewritten
into the N2D2 ops (`Conv`, `Pool`, `BatchNorm`, `Activation`, `ElemWise`, `Concat`, `Softmax`)
where both compute exactly the same thing; the other passes (activation fusion, BatchNorm
folding, elementwise chains...) and the C/CUDA kernels then apply to them.

One small rule per `Onnx*` op type, registered with `@rule("OnnxConv")` (a rule may later live
next to its op). A rule reads the node and returns the N2D2 replacement `(op, inputs, attrs,
params)`, or None when the node is outside what the N2D2 op expresses (rank other than 4
NCHW, asymmetric pads, ceil-mode windows that differ from N2D2's, broadcasting, a weight
computed from activations...): such a node stays an `Onnx*` node, which still runs (its
reference on every backend). A replacement is only made when the N2D2 op's shape rule gives
the node's output type; its node keeps the name (the ONNX output name).

Constant operands (`OnnxConstant` nodes holding a parameter) become the N2D2 op's parameters
(role `weights`, `biases`, `scales`, `means`, `variances`; a constant several nodes read stays
one shared parameter); the `OnnxConstant` nodes left without consumers are removed. Exact in inference and training
(same forward, same gradients to inputs and parameters).

The decomposed GELU that exporters emit below opset 20, x * 0.5 * (1 + Erf(x / sqrt 2))
(`Div` or `Mul` by 1/sqrt 2, `Erf`, `Add` 1, `Mul` by x, `Mul` by 0.5, in either order, operands
commuted), becomes one `Activation` Gelu node (`fuse_decomposed_gelu`) when its intermediate
tensors have no other reader; the activation then fuses into its producer like any other. The
pattern (`gelu_pattern`) reads the graph through a view: `DeepNetCell.load_from_ONNX` matches
the same one on the ONNX graph.

Activations: an `Onnx<T>` activation of the activation table (`n2d2.ops.activation`, whose
`onnx_import` reads its parameters from the ONNX attributes) becomes an `Activation` node of that
table entry (`_table_activation`, one rule for all of them); `Clip` becomes the activation
`n2d2.ops.activation.clip_activation` gives (a clipped ReLU, a Saturation), as in the importer.
"""
import dataclasses

from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import check_mode, sole_consumer, substitute
from n2d2.ir.types import GraphError
from n2d2.ops import activation as act_table

#: op type -> rule(graph, node) -> (op, inputs, attrs, params) or None
RULES = {}


def rule(*op_types):
    """Register the decorated function as the legalization rule of `op_types`."""
    def deco(fn):
        for op_type in op_types:
            RULES[op_type] = fn
        return fn
    return deco


# -- reading a node ----------------------------------------------------------------------------------
def _const(graph, ref):
    """The parameter name behind input `ref` when it is an OnnxConstant, else None. A constant
    read by several nodes (exporters share equal initializers) stays one parameter: autodiff sums
    its gradients."""
    src, out = ref
    if graph.op(src) != "OnnxConstant":
        return None
    return graph.node(src).params["value"]


def _activation_input(graph, ref, rank=4):
    """True when `ref` is a float32 activation (not a constant) of rank `rank`."""
    src, out = ref
    t = graph.output_types(src)[out]
    return graph.op(src) != "OnnxConstant" and len(t.shape) == rank and t.dtype == "float32"


def _only_output_0(graph, node):
    return all(out == 0 for _, _, out in graph.consumers(node)) and \
        all(out == 0 for n, out in graph.outputs if n == node)


def _symmetric(pads):
    half = len(pads) // 2
    return tuple(pads[:half]) == tuple(pads[half:])


def known_activation(name, **config):
    """The activation spec `(name, sorted params)` when the activation table
    (`n2d2.ops.activation`) has `name` and takes `config`, else None. Asked when a rule runs, so
    activations added to the table later are used without touching the rules."""
    d = act_table.ACTIVATIONS.get(name)
    if d is None:
        return None
    try:
        params = d.resolve(config)
    except ValueError:
        return None
    return (name, tuple(sorted(params.items())))


# -- rules ---------------------------------------------------------------------------------------------
@rule("OnnxConv")
def _conv(graph, node):
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    params = {"weights": _const(graph, ins[1])}
    if len(ins) > 2:
        params["biases"] = _const(graph, ins[2])
    if not _activation_input(graph, ins[0]) or None in params.values() or not _symmetric(a["pads"]) \
            or len(a["strides"]) != 2:
        return None
    attrs = {"stride": tuple(a["strides"]), "padding": tuple(a["pads"][:2]), "dilation": tuple(a["dilations"]),
             "groups": int(a["group"]), "mapping": None, "sub_sample": (1, 1), "activation": None}
    return "Conv", ins[:1], attrs, params


def _pool(graph, node, pooling):
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    if not _activation_input(graph, ins[0]) or len(a["kernel"]) != 2 or tuple(a["dilations"]) != (1, 1) \
            or not _symmetric(a["pads"]) or a.get("indices") or a.get("storage_order", 0):
        return None
    if pooling == "Average" and any(a["pads"]) and not a.get("count_include_pad"):
        return None   # N2D2 divides by the full window
    attrs = {"pooling": pooling, "pool": tuple(a["kernel"]), "stride": tuple(a["strides"]),
             "padding": tuple(a["pads"][:2]), "mapping": None, "activation": None}
    return "Pool", ins, attrs, {}   # a ceil-mode window N2D2 lacks changes the shape: not replaced


@rule("OnnxMaxPool")
def _max_pool(graph, node):
    return _pool(graph, node, "Max")


@rule("OnnxAveragePool")
def _average_pool(graph, node):
    return _pool(graph, node, "Average")


@rule("OnnxReduceMean")
def _global_average(graph, node):
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    if not _activation_input(graph, ins[0]) or tuple(a["axes"]) != (2, 3) or not a.get("keepdims", True):
        return None
    _, _, h, w = graph.output_types(ins[0][0])[ins[0][1]].shape
    return "Pool", ins, {"pooling": "Average", "pool": (h, w), "stride": (1, 1), "padding": (0, 0),
                         "mapping": None, "activation": None}, {}


@rule("OnnxBatchNormalization")
def _batchnorm(graph, node):
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    if a.get("training_mode") or not _activation_input(graph, ins[0]):
        return None
    params = {role: _const(graph, ref) for role, ref in zip(("scales", "biases", "means", "variances"), ins[1:])}
    if len(params) != 4 or None in params.values():
        return None
    return "BatchNorm", ins[:1], {"epsilon": float(a["epsilon"]), "momentum": round(1.0 - a["momentum"], 12),
                                  "unbiased": False, "activation": None}, params


def _activation(graph, node, spec):
    ins = graph.inputs_of(node)
    if spec is None or not _activation_input(graph, ins[0]):
        return None
    return "Activation", ins[:1], {"activation": spec}, {}


@rule("OnnxClip")
def _clip(graph, node):
    a = graph.attrs(node)
    low = float("-inf") if a.get("min") is None else float(a["min"])
    high = float("inf") if a.get("max") is None else float(a["max"])
    found = act_table.clip_activation(low, high)
    return None if found is None else _activation(graph, node, known_activation(found[0], **found[1]))


@rule(*(f"Onnx{op_type}" for op_type in act_table.onnx_import_ops()))
def _table_activation(graph, node):
    """An `Onnx<T>` activation of the table (`n2d2.ops.activation`: Relu, LeakyRelu, Sigmoid,
    Tanh, Softplus, Gelu, Mish, HardSigmoid, HardSwish...): the table's activation, with the
    parameters its `onnx_import` reads from the node's attributes; one rule for all of them."""
    d, params = act_table.onnx_import_params(graph.op(node)[len("Onnx"):], graph.attrs(node))
    return _activation(graph, node, known_activation(d.name, **params))


def _elemwise(graph, node, operation, weights):
    ins = graph.inputs_of(node)
    shapes = {tuple(graph.output_types(src)[out].shape) for src, out in ins}
    if len(shapes) != 1 or not all(_activation_input(graph, ref) for ref in ins):
        return None   # broadcasting, or a constant operand: stays an Onnx* node
    return "ElemWise", ins, {"operation": operation, "weights": list(weights), "shifts": [0.0] * len(ins),
                             "activation": None}, {}


@rule("OnnxAdd")
def _add(graph, node):
    return _elemwise(graph, node, "Sum", [1.0, 1.0])


@rule("OnnxSub")
def _sub(graph, node):
    return _elemwise(graph, node, "Sum", [1.0, -1.0])


@rule("OnnxMul")
def _mul(graph, node):
    return _elemwise(graph, node, "Prod", [1.0, 1.0])


@rule("OnnxSum")
def _sum(graph, node):
    return _elemwise(graph, node, "Sum", [1.0] * len(graph.inputs_of(node)))


@rule("OnnxConcat")
def _concat(graph, node):
    ins = graph.inputs_of(node)
    if graph.attrs(node)["axis"] != 1 or not all(_activation_input(graph, ref) for ref in ins):
        return None
    return "Concat", ins, {}, {}


@rule("OnnxSoftmax")
def _softmax(graph, node):
    ins = graph.inputs_of(node)
    if tuple(graph.attrs(node)["axes"]) != (1,) or not _activation_input(graph, ins[0]):
        return None
    return "Softmax", ins, {"group_size": 0, "with_loss": False, "activation": None}, {}


# -- the decomposed GELU --------------------------------------------------------------------------------
# The pattern reads its graph through a view, so that the ONNX importer matches the same pattern on
# an ONNX graph (`n2d2.frontends.onnx_import`): `op(name)` (op type, "OnnxMul", "OnnxConstant"...),
# `inputs_of(name)` ([(src, out)]), `scalar(ref)` (the float of a one-element constant, else None),
# `read_once(name)` (output 0 of `name` is read by one edge and is no graph output).
_SQRT2 = 2.0 ** 0.5


class IRView:
    """An IR graph as `gelu_pattern` reads it."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.op = graph.op
        self.inputs_of = graph.inputs_of

    def scalar(self, ref):
        p = _const(self.graph, ref)
        a = None if p is None else self.graph.params[p].array
        return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None

    def read_once(self, name):
        return sole_consumer(self.graph, name) is not None


def _scalar(view, ref, value):
    """True when `ref` is a one-element constant equal to `value` (float32 rounding)."""
    v = view.scalar(ref)
    return v is not None and abs(v - value) <= 1e-6 * abs(value)


def _other(view, node, ref_test):
    """The input of binary `node` that is not the one `ref_test` accepts (None when neither is)."""
    ins = view.inputs_of(node)
    if len(ins) != 2:
        return None
    for k in (0, 1):
        if ref_test(ins[k]):
            return ins[1 - k]
    return None


def _private(view, ref, op):
    """The node behind `ref` when it is an `op` node read only there (output 0, one consumer,
    not a graph output), else None."""
    src, out = ref
    if out != 0 or view.op(src) != op or not view.read_once(src):
        return None
    return src


def _erf_plus_one(view, ref):
    """(x, nodes) when `ref` is 1 + Erf(x / sqrt 2) read only there, else None."""
    add = _private(view, ref, "OnnxAdd")
    if add is None:
        return None
    e = _other(view, add, lambda r: _scalar(view, r, 1.0))
    erf = None if e is None else _private(view, e, "OnnxErf")
    if erf is None or len(view.inputs_of(erf)) != 1:
        return None
    (scaled,) = view.inputs_of(erf)
    div = _private(view, scaled, "OnnxDiv")
    if div is not None:
        ins = view.inputs_of(div)
        x = ins[0] if len(ins) == 2 and _scalar(view, ins[1], _SQRT2) else None
    else:
        div = _private(view, scaled, "OnnxMul")
        x = None if div is None else _other(view, div, lambda r: _scalar(view, r, 1.0 / _SQRT2))
    return None if x is None else (x, [add, erf, div])


def gelu_pattern(view, node):
    """(x, inner nodes) when the OnnxMul `node` ends a decomposed GELU of x (read through `view`:
    an `IRView`, or the ONNX importer's view of an ONNX graph), else None."""
    if view.op(node) != "OnnxMul":
        return None
    ins = view.inputs_of(node)
    if len(ins) != 2:
        return None
    # x * (1 + erf) then * 0.5
    rest = _other(view, node, lambda r: _scalar(view, r, 0.5))
    inner = None if rest is None else _private(view, rest, "OnnxMul")
    if inner is not None and len(view.inputs_of(inner)) == 2:
        a, b = view.inputs_of(inner)
        for x, e in ((a, b), (b, a)):
            found = _erf_plus_one(view, e)
            if found is not None and found[0] == x:
                return x, [inner] + found[1]
    # (x * 0.5) * (1 + erf)
    for h, e in (ins, ins[::-1]):
        half = _private(view, h, "OnnxMul")
        x = None if half is None else _other(view, half, lambda r: _scalar(view, r, 0.5))
        found = None if x is None else _erf_plus_one(view, e)
        if found is not None and found[0] == x:
            return x, [half] + found[1]
    return None


def fuse_decomposed_gelu(graph: Graph, node: str) -> bool:
    """Replace the decomposed GELU ending at `node` by an `Activation` Gelu node of the same
    name (its inner nodes and their constants left unread are removed); True when done."""
    spec = known_activation("Gelu")
    found = gelu_pattern(IRView(graph), node)
    if spec is None or found is None:
        return False
    x, inner = found
    xt, yt = graph.output_types(x[0])[x[1]], graph.output_types(node)[0]
    if not _activation_input(graph, x) or tuple(xt.shape) != tuple(yt.shape) or not _only_output_0(graph, node):
        return False
    consts = {src for n in [node] + inner for src, _ in graph.inputs_of(n) if graph.op(src) == "OnnxConstant"}
    substitute(graph, node, "Activation", [x], {"activation": spec}, {}, outputs=[yt])
    for n in inner:                           # consumers first: each is read only by the previous
        graph.remove_node(n)
    for src in consts:
        if not graph.consumers(src) and not any(n == src for n, _ in graph.outputs):
            graph.remove_node(src)
    return True


# -- the pass ----------------------------------------------------------------------------------------
def legalize_node(graph: Graph, node: str) -> bool:
    """Apply the rule of `node`'s op in place; True when the node was replaced."""
    fn = RULES.get(graph.op(node))
    if fn is None or not _only_output_0(graph, node):
        return False
    found = fn(graph, node)
    if found is None:
        return False
    op, inputs, attrs, params = found
    opdef = op_registry.get(op, node=node)
    in_types = [graph.output_types(src)[out] for src, out in inputs]
    shapes = {role: graph.params[p].shape for role, p in params.items()}
    try:
        new_types = opdef.infer_types(attrs, in_types, shapes, node)
    except GraphError:
        return False
    old = graph.output_types(node)[0]
    if tuple(new_types[0].shape) != tuple(old.shape) or new_types[0].dtype != old.dtype:
        return False   # e.g. a ceil-mode pooling window N2D2 does not make
    sources = sorted({src for src, _ in graph.inputs_of(node) if graph.op(src) == "OnnxConstant"})
    sole = {graph.node(src).params["value"] for src in sources if len(graph.consumers(src)) == 1}
    substitute(graph, node, op, inputs, attrs, params, outputs=[new_types[0]])
    for role, p in params.items():   # graph copies share Param objects: replace, do not mutate
        if p in sole:
            graph.params[p] = dataclasses.replace(graph.params[p], owner=node, role=role)
    for src in sources:
        if not graph.consumers(src) and not any(n == src for n, _ in graph.outputs):
            graph.remove_node(src)
    return True


def legalize_onnx(graph: Graph, mode: str = "inference") -> Graph:
    """Rewrite the `Onnx*` nodes that an N2D2 op computes exactly (see the module docstring);
    the others are left as they are. Exact in inference and training."""
    check_mode(mode)
    g = graph.copy()
    for node in g.topological_order():   # first: a rule would take a GELU's inner x * (1 + erf)
        if node in g.nx:
            fuse_decomposed_gelu(g, node)
    for node in g.topological_order():
        if node in g.nx:
            legalize_node(g, node)
    return g
