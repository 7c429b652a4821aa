"""Legalization of ONNX-semantics nodes: `Onnx*` ops (`n2d2.onnx_backend`'s conversion) rewritten
into the N2D2 ops (`Conv`, `Pool`, `BatchNorm`, `Activation`, `ElemWise`, `Concat`, `Softmax`)
where both compute exactly the same thing; the other passes (activation fusion, BatchNorm
folding, elementwise chains...) and the C/CUDA kernels then apply to them.

One small rule per `Onnx*` op type, registered with `@rule("OnnxConv")` (a rule may later live
next to its op). A rule reads the node and returns a `Rewrite` (the N2D2 op, its inputs, attrs
and params), or a `str`: the reason the node is outside what the N2D2 op expresses (rank other
than 4 NCHW, broadcasting, a weight computed from activations...), which `legalize_node` returns
and `DeepNetCell.load_from_ONNX(generic_ops=False)` refuses the node with. Such a node stays an
`Onnx*` node, which still runs (its reference on every backend). A replacement is only made when
the N2D2 op's shape rule gives the node's output, or a view of it in the same memory order (an
Fc's [N, O, 1, 1] for a Gemm's [N, O]): the ONNX shape is then an `OnnxReshape` node
`<node>_view` after it. The replacement keeps the node's name (the ONNX output name).

Rules beyond one-to-one: Gemm and MatMul by a constant matrix become an Fc (a [I, O] matrix, read
only there, stored transposed); ConvTranspose a Deconv (asymmetric pads cropped
after it by a Padding `<node>_padding`); Transpose keeping the batch first an N2D2 Transpose;
Resize of H and W in the modes N2D2 interpolates a Resize; ReduceMean/ReduceMax over the spatial axes a global
Pool; a zero Pad of H and W a Padding; asymmetric pads of a Conv or a pooling a `Padding` node
`<node>_padding` before it (for a MaxPool only when its input is non-negative).

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
table entry (`_table_activation`, one rule for all of them); `Clip`, and Max / Min of one
activation by scalar constants, becomes the activation `n2d2.ops.activation.clip_activation`
gives (a clipped ReLU, a Saturation; over the input of a ReLU only it reads), else two ElemWise
(`<node>_shift` first), as the importer made them (`clip_rewrite`); PRelu by one slope a leaky
ReLU; Abs an ElemWise AbsSum; Max of activations an ElemWise Max.

Reshapes: a Reshape / Flatten keeping the batch that is no view becomes an N2D2 `Reshape` (and
its view to the ONNX rank), except a flatten only Fc nodes read (they flatten the same way);
Reshape and Concat are legalized after the other nodes (`LATE`), so that a Concat of flattened
tensors concatenates the 4-D Reshapes. `legalize_onnx_with_reasons` also returns why each node
left `Onnx*` stays so (the ONNX importer's refusals with `generic_ops=False`).
"""
import dataclasses

import numpy as np

from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.passes._common import (
    check_mode,
    is_graph_output,
    is_non_negative,
    new_param_name,
    sole_consumer,
    substitute,
)
from n2d2.ir.types import GraphError
from n2d2.ops import activation as act_table

#: op type -> rule(graph, node) -> Rewrite, or the reason (str) the node stays as it is
RULES = {}


def rule(*op_types):
    """Register the decorated function as the legalization rule of `op_types`."""
    def deco(fn):
        for op_type in op_types:
            RULES[op_type] = fn
        return fn
    return deco


# -- reading a node ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Rewrite:
    """What a rule makes of its node: an N2D2 op node of the same name over `inputs` with `attrs`
    and `params` ({role: parameter name}); `pad` (top, bot, left, right), when given, is a
    `Padding` node `<node>_padding` put before it (asymmetric pads, as the ONNX importer does);
    `crop`, a `Padding` node `<node>_padding` cropping its output (a ConvTranspose's asymmetric
    pads), which then carries the ONNX output; the matrices of the roles in `transposed` (read
    by this node only) are stored transposed, which trains the same (elementwise solvers, the
    gradient transposed with them); `pre` (suffix, op, attrs), another node `<node><suffix>` put
    before it (a general Clip's `<node>_shift`).
    A rule that cannot rewrite its node returns instead a `str`: the reason, which
    `DeepNetCell.load_from_ONNX(generic_ops=False)` gives in its refusal."""

    op: str
    inputs: list
    attrs: dict
    params: dict = dataclasses.field(default_factory=dict)
    pad: tuple = None
    crop: tuple = None       # (top, bot, left, right) removed after it: a Padding `<node>_padding` of minus these
    transposed: tuple = ()   # roles whose matrix the op reads transposed: stored so once rewritten
    pre: tuple = None        # (suffix, op, attrs): a node `<node><suffix>` computing the op's input first


def _const(graph, ref):
    """The parameter name behind input `ref` when it is an OnnxConstant, else None. A constant
    read by several nodes (exporters share equal initializers) stays one parameter: autodiff sums
    its gradients."""
    src, out = ref
    if graph.op(src) != "OnnxConstant":
        return None
    return graph.node(src).params["value"]


def _type(graph, ref):
    return graph.output_types(ref[0])[ref[1]]


def _not_activation(graph, ref, rank=4):
    """Why `ref` is not a float32 activation of rank `rank` (not a constant), or None when it is."""
    t = _type(graph, ref)
    if graph.op(ref[0]) == "OnnxConstant":
        return f"input '{ref[0]}' is a constant where n2d2 needs an activation"
    if t.dtype != "float32":
        return f"input '{ref[0]}' is {t.dtype}; n2d2 cells compute float32"
    if rank is not None and len(t.shape) != rank:
        return f"input '{ref[0]}' of shape {list(t.shape)} has rank {len(t.shape)}; the n2d2 op takes rank {rank}"
    return None


def _activation_input(graph, ref, rank=4):
    """True when `ref` is a float32 activation (not a constant) of rank `rank`."""
    return _not_activation(graph, ref, rank) is None


def _only_output_0(graph, node):
    return all(out == 0 for _, _, out in graph.consumers(node)) and \
        all(out == 0 for n, out in graph.outputs if n == node)


def _symmetric(pads):
    half = len(pads) // 2
    return tuple(pads[:half]) == tuple(pads[half:])


def _padding(pads):
    """(N2D2 symmetric padding, asymmetric `Rewrite.pad` or None) of ONNX 2-D pads."""
    if _symmetric(pads):
        return tuple(pads[:2]), None
    return (0, 0), (pads[0], pads[2], pads[1], pads[3])


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
def _weights_and_bias(graph, ins, a, what):
    """The constant weights (and bias) of a 2-D (transposed) convolution, or why it stays Onnx*."""
    if len(a["strides"]) != 2:
        return f"a {len(a['strides'])}-D {what}"
    params = {"weights": _const(graph, ins[1])}
    if len(ins) > 2:
        params["biases"] = _const(graph, ins[2])
    if None in params.values():
        return "its weights or bias are computed from activations; n2d2 needs constants"
    return params


@rule("OnnxConv")
def _conv(graph, node):
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    params = _weights_and_bias(graph, ins, a, "convolution; n2d2 convolutions are 2-D")
    if isinstance(params, str):
        return params
    padding, pad = _padding(a["pads"])
    attrs = {"stride": tuple(a["strides"]), "padding": padding, "dilation": tuple(a["dilations"]),
             "groups": int(a["group"]), "mapping": None, "sub_sample": (1, 1), "activation": None}
    return _not_activation(graph, ins[0]) or Rewrite("Conv", ins[:1], attrs, params, pad)


def _pool(graph, node, pooling):
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    if len(a["kernel"]) != 2:
        return f"{len(a['kernel'])}-D pooling; n2d2 pools 2-D windows"
    if tuple(a["dilations"]) != (1, 1):
        return f"pooling dilations {list(a['dilations'])} are not supported"
    if a.get("indices") or a.get("storage_order", 0):
        return "MaxPool indices output is not supported"
    if pooling == "Average" and any(a["pads"]) and not a.get("count_include_pad"):
        return ("AveragePool with count_include_pad=0 and padding: n2d2's average pooling divides by the full "
                "window (count_include_pad=1)")
    pads, shape = list(a["pads"]), _type(graph, ins[0]).shape
    sizes = [((i + b + e - k) // st + 1, -(-(i + b + e - k) // st) + 1, i, k, st)
             for i, k, st, b, e in zip(shape[2:], a["kernel"], a["strides"], pads[:2], pads[2:])]
    for floor_size, ceil_size, i, k, st in sizes:
        if a.get("ceil_mode") and ceil_size != floor_size:
            return (f"the Pool op gives a {list(shape[:2]) + [z[0] for z in sizes]} output where ONNX gives "
                    f"{list(graph.output_types(node)[0].shape)}: ceil_mode=1 gives {ceil_size} outputs where n2d2's "
                    f"floor rule gives {floor_size} (input {i}, window {k}, stride {st}); not supported")
    padding, pad = _padding(pads)
    if pad is not None and pooling == "Max" and not is_non_negative(graph, ins[0][0]):
        return ("MaxPool with asymmetric pads on an input that may be negative: a zero Padding would change "
                "the result")
    attrs = {"pooling": pooling, "pool": tuple(a["kernel"]), "stride": tuple(a["strides"]),
             "padding": padding, "mapping": None, "activation": None}
    # a ceil-mode window N2D2 lacks changes the shape: refused by legalize_node's shape check
    return _not_activation(graph, ins[0]) or Rewrite("Pool", ins, attrs, {}, pad)


@rule("OnnxMaxPool")
def _max_pool(graph, node):
    return _pool(graph, node, "Max")


@rule("OnnxAveragePool")
def _average_pool(graph, node):
    return _pool(graph, node, "Average")


def _global_pool(graph, node, pooling):
    """A reduction over the spatial axes (GlobalAveragePool, GlobalMaxPool, ReduceMean/Max over
    (2, 3)): a Pool whose window is the input; without keepdims, a rank-2 view of its output."""
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    if tuple(a["axes"]) != (2, 3):
        return (f"{graph.op(node)[4:]} over axes {list(a['axes'])}; n2d2 supports the spatial axes (2, 3) "
                "(global pooling)")
    why = _not_activation(graph, ins[0])
    if why:
        return why
    _, _, h, w = _type(graph, ins[0]).shape
    return Rewrite("Pool", ins, {"pooling": pooling, "pool": (h, w), "stride": (1, 1), "padding": (0, 0),
                                 "mapping": None, "activation": None})


@rule("OnnxReduceMean")
def _global_average(graph, node):
    return _global_pool(graph, node, "Average")


@rule("OnnxReduceMax")
def _global_max(graph, node):
    return _global_pool(graph, node, "Max")


@rule("OnnxBatchNormalization")
def _batchnorm(graph, node):
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    if a.get("training_mode"):
        return "BatchNormalization with training_mode=1 is not supported (export in eval mode)"
    params = {role: _const(graph, ref) for role, ref in zip(("scales", "biases", "means", "variances"), ins[1:])}
    if len(params) != 4 or None in params.values():
        return "its scale, bias, mean or variance is computed from activations; n2d2 needs constants"
    return _not_activation(graph, ins[0]) or Rewrite(
        "BatchNorm", ins[:1], {"epsilon": act_table._f32(a["epsilon"]),
                               "momentum": round(1.0 - act_table._f32(a["momentum"]), 12),
                               "unbiased": False, "activation": None}, params)


def _through_view(graph, ref):
    """The 4-D tensor that `ref` views with its channels on axis 1 ([N, C, 1, 1] for [N, C]) when
    `ref` is such a view, else `ref`: a channel-wise op (activation, Softmax over axis 1) computes
    the same on either, and reading the 4-D one lets it fuse into the op that made it (the Fc of a
    Gemm, whose ONNX output is a view)."""
    src = ref[0]
    if ref[1] != 0 or not is_view(graph, src):
        return ref
    (inner,) = graph.inputs_of(src)
    old, new = _type(graph, ref).shape, _type(graph, inner).shape
    return inner if len(new) == 4 and len(old) >= 2 and old[1] == new[1] else ref


def _activation(graph, node, spec, what):
    return _activation_of(graph, graph.inputs_of(node)[0], spec, what)


def _activation_of(graph, x, spec, what):
    """An Activation node of `spec` over `x` (read through a channel view)."""
    x = _through_view(graph, x)
    if spec is None:
        return f"{what} is not an activation of n2d2's table (n2d2.ops.activation)"
    return _not_activation(graph, x) or Rewrite("Activation", [x], {"activation": spec})


def _clamp_read_here(graph, node, ref):
    """(low, high) of the clamp activation (`clamp_bounds`: ReLU, clipped ReLU, Saturation) of the
    Activation node behind `ref` when `node` alone reads it, else None."""
    src = ref[0]
    if graph.op(src) != "Activation" or ref[1] != 0 or sole_consumer(graph, src) != (node, 0) \
            or is_graph_output(graph, src):
        return None
    return act_table.clamp_bounds(graph.attrs(src)["activation"])


def clip_rewrite(graph, node, x, low, high):
    """min(max(x, low), high) of activation `x` with N2D2 ops, as the importer made it: nothing
    (a view) when unbounded; the activation `clip_activation` gives (clipped ReLU, Saturation),
    over the input of a clamp activation only this node reads (the bounds intersected) or on an
    input that is never negative (low raised to 0); else two ElemWise, `<node>_shift` computing
    relu_clip(x - low, high - low) (relu(high - x) without low) and the node adding low back
    (high - it). Exact but for the rounding of the shift."""
    if np.isnan(low) or np.isnan(high):
        return f"Clip bounds ({low}, {high}) are not numbers"
    if low >= high:
        return f"Clip(min={low}, max={high}) gives a constant; not supported"
    shape = _type(graph, x).shape
    if low == -np.inf and high == np.inf:
        return Rewrite("OnnxReshape", [x], {"shape": tuple(shape)})
    inner = _clamp_read_here(graph, node, x)
    if inner is not None and max(low, inner[0]) < min(high, inner[1]):   # clip(clip(x)) = one clip
        x, low, high = graph.inputs_of(x[0])[0], max(low, inner[0]), min(high, inner[1])
    elif low <= 0.0 < high and is_non_negative(graph, x[0]):
        low = 0.0
    found = act_table.clip_activation(low, high)
    if found is not None:
        spec = known_activation(found[0], **found[1])
        return _activation_of(graph, x, spec, f"Clip({low}, {high})")
    why = _not_activation(graph, x)
    if why:
        return why
    if np.isfinite(low):
        relu = known_activation("Rectifier", clipping=0.0 if high == np.inf else high - low)
        first, second = ([1.0], [-low]), ([1.0], [low])
    else:
        relu = known_activation("Rectifier")
        first = second = ([-1.0], [high])
    pre = ("_shift", "ElemWise", {"operation": "Sum", "weights": first[0], "shifts": first[1], "activation": relu})
    return Rewrite("ElemWise", [x], {"operation": "Sum", "weights": second[0], "shifts": second[1],
                                     "activation": None}, pre=pre)


@rule("OnnxClip")
def _clip(graph, node):
    a = graph.attrs(node)
    low = float("-inf") if a.get("min") is None else act_table._f32(a["min"])
    high = float("inf") if a.get("max") is None else act_table._f32(a["max"])
    return clip_rewrite(graph, node, graph.inputs_of(node)[0], low, high)


def _scalar_value(graph, ref):
    """The float of a one-element constant `ref` (a float32 as its shortest decimal: 0.7, not
    0.699999988), else None."""
    p = _const(graph, ref)
    a = None if p is None else np.asarray(graph.params[p].array)
    return act_table._f32(a.reshape(-1)[0]) if a is not None and a.size == 1 else None


@rule("OnnxMax", "OnnxMin")
def _max_min(graph, node):
    """Max of activations of one shape: an ElemWise Max; Max / Min of one activation and scalar
    constants: a Clip from below / above (`clip_rewrite`); of one activation: a view."""
    op = graph.op(node)[4:]
    ins = graph.inputs_of(node)
    bounds = [_scalar_value(graph, ref) for ref in ins]
    acts = [ref for ref, b in zip(ins, bounds) if _const(graph, ref) is None]
    if len(acts) != len(ins):
        out = graph.output_types(node)[0].shape
        if len(acts) != 1 or None in [b for ref, b in zip(ins, bounds) if ref not in acts] \
                or tuple(_type(graph, acts[0]).shape) != tuple(out):
            return (f"{op} mixing constants and activations is supported only for Max/Min of one activation "
                    "and scalar constants")
        consts = [b for ref, b in zip(ins, bounds) if ref not in acts]
        low, high = (max(consts), np.inf) if op == "Max" else (-np.inf, min(consts))
        return clip_rewrite(graph, node, acts[0], low, high)
    if len(ins) == 1:
        return Rewrite("OnnxReshape", ins, {"shape": tuple(_type(graph, ins[0]).shape)})
    if op == "Min":
        return "Min of activations is not supported (n2d2's ElemWise has Max, not Min)"
    return _elemwise(graph, node, "Max", [1.0] * len(ins))


@rule("OnnxPRelu")
def _prelu(graph, node):
    """PRelu by one constant slope: a leaky ReLU (Rectifier's leak slope)."""
    x, slope = graph.inputs_of(node)
    value = _scalar_value(graph, slope)
    if value is None:
        return (f"PRelu with a slope of shape {list(_type(graph, slope).shape)}: n2d2's Rectifier has one leak "
                "slope" if _const(graph, slope) is not None else "PRelu with a slope computed from activations")
    return _activation(graph, node, known_activation("Rectifier", leak_slope=value), f"PRelu({value})")


@rule("OnnxAbs")
def _abs(graph, node):
    """|x|: an ElemWise AbsSum of one input."""
    x = _through_view(graph, graph.inputs_of(node)[0])
    return _not_activation(graph, x) or Rewrite("ElemWise", [x], {"operation": "AbsSum", "weights": [1.0],
                                                                  "shifts": [0.0], "activation": None})


@rule("OnnxCast")
def _cast(graph, node):
    """A Cast of a float32 activation to float32: nothing (a view)."""
    x = graph.inputs_of(node)[0]
    t = _type(graph, x)
    if t.dtype != "float32" or graph.attrs(node)["dtype"] != "float32":
        return f"Cast of a {t.dtype} tensor to {graph.attrs(node)['dtype']}: n2d2 computes in float32"
    return Rewrite("OnnxReshape", [x], {"shape": tuple(t.shape)})


@rule("OnnxDiv")
def _div(graph, node):
    """No N2D2 op divides: a Div by a scalar or per-channel constant is folded by
    `fold_constant_operands`; this gives the reason for the others."""
    divisor = graph.inputs_of(node)[1]
    if _const(graph, divisor) is None:
        return "Div is supported only by a constant divisor"
    return (f"Div by a constant of shape {list(_type(graph, divisor).shape)}: n2d2 divides by scalar or "
            "per-channel constants")


@rule(*(f"Onnx{op_type}" for op_type in act_table.onnx_import_ops()))
def _table_activation(graph, node):
    """An `Onnx<T>` activation of the table (`n2d2.ops.activation`: Relu, LeakyRelu, Sigmoid,
    Tanh, Softplus, Gelu, Mish, HardSigmoid, HardSwish...): the table's activation, with the
    parameters its `onnx_import` reads from the node's attributes; one rule for all of them."""
    d, params = act_table.onnx_import_params(graph.op(node)[len("Onnx"):], graph.attrs(node))
    return _activation(graph, node, known_activation(d.name, **params), f"{d.name}{params}")


def _elemwise(graph, node, operation, weights):
    ins = graph.inputs_of(node)
    shapes = [list(_type(graph, ref).shape) for ref in ins]
    inner = [_through_view(graph, ref) for ref in ins]   # [N, O] views of [N, O, 1, 1] (Fc outputs...)
    if len({tuple(_type(graph, ref).shape) for ref in inner}) == 1:
        ins = inner
    if any(s != shapes[0] for s in shapes):
        return (f"{graph.op(node)[4:]} of activations of shapes {shapes}: n2d2's ElemWise needs equal shapes "
                "(no broadcasting)")
    why = next((w for w in (_not_activation(graph, ref) for ref in ins) if w), None)
    return why or Rewrite("ElemWise", ins, {"operation": operation, "weights": list(weights),
                                            "shifts": [0.0] * len(ins), "activation": None})


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
    """A concatenation of channels (axis 1) of 4-D activations, or of [N, C] views of [N, C, 1, 1]
    ones (flattened Reshape outputs, Fc outputs: legalized late, after them)."""
    ins = [_through_view(graph, ref) for ref in graph.inputs_of(node)]
    if graph.attrs(node)["axis"] != 1:
        return f"Concat over axis {graph.attrs(node)['axis']}; n2d2 concatenates channels (axis 1)"
    why = next((w for w in (_not_activation(graph, ref) for ref in ins) if w), None)
    return why or Rewrite("Concat", ins, {})


@rule("OnnxSoftmax")
def _softmax(graph, node):
    x = _through_view(graph, graph.inputs_of(node)[0])
    if tuple(graph.attrs(node)["axes"]) != (1,):
        return (f"Softmax over axes {list(graph.attrs(node)['axes'])}; n2d2's Softmax normalises the channel "
                "axis (1)")
    return _not_activation(graph, x) or Rewrite("Softmax", [x], {"group_size": 0, "with_loss": False,
                                                                     "activation": None})


@rule("OnnxLogSoftmax")
def _log_softmax(graph, node):
    """No N2D2 op computes log-probabilities: the reason (the ONNX importer imports a LogSoftmax
    that is the network's output as a Softmax, with a warning)."""
    return ("LogSoftmax is imported only as the last op of the network (as a Softmax whose outputs are the "
            "probabilities, exp of the ONNX outputs)")


@rule("OnnxPad")
def _pad(graph, node):
    """Zero pads of the spatial axes of an NCHW tensor: a Padding node (negative pads crop)."""
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    pads = list(a["pads"])
    if a["mode"] != "constant" or a["value"] != 0:
        return f"Pad mode '{a['mode']}' with value {a['value']}; n2d2 pads with zeros"
    if len(pads) != 8 or any(pads[k] for k in (0, 1, 4, 5)):
        return f"pads {pads} of a rank-{len(pads) // 2} tensor; n2d2 pads the H and W axes of NCHW tensors"
    return _not_activation(graph, ins[0]) or Rewrite(
        "Padding", ins[:1], {"top": pads[2], "bot": pads[6], "left": pads[3], "right": pads[7], "activation": None})


@rule("OnnxConvTranspose")
def _deconv(graph, node):
    """A 2-D ConvTranspose with constant weights: a Deconv; asymmetric pads (less the end's
    output_padding) are cropped after it by a `<node>_padding` Padding, as the importer did."""
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    params = _weights_and_bias(graph, ins, a, "transposed convolution; n2d2's Deconv is 2-D")
    if isinstance(params, str):
        return params
    begin, end = list(a["pads"][:2]), [e - p for e, p in zip(a["pads"][2:], a["output_padding"])]
    if min(end) < 0:
        return f"output_padding {list(a['output_padding'])} larger than the end pads {list(a['pads'][2:])}"
    crop = None if begin == end else (begin[0], end[0], begin[1], end[1])
    attrs = {"stride": tuple(a["strides"]), "padding": (0, 0) if crop else tuple(begin),
             "dilation": tuple(a["dilations"]), "groups": int(a["group"]), "mapping": None, "activation": None}
    return _not_activation(graph, ins[0]) or Rewrite("Deconv", ins[:1], attrs, params, crop=crop)


@rule("OnnxTranspose")
def _transpose(graph, node):
    """A Transpose of an NCHW tensor keeping the batch first: the N2D2 Transpose (perm in N2D2's
    [X, Y, Z, B] axes); one that moves only axes of size 1 a view (`OnnxReshape`)."""
    x = graph.inputs_of(node)[0]
    perm, shape = list(graph.attrs(node)["perm"]), _type(graph, x).shape
    if perm[0] != 0:
        return f"Transpose with perm {perm} moves the batch axis"
    moved = [p for p in perm if shape[p] != 1]
    if moved == sorted(moved):
        return Rewrite("OnnxReshape", [x], {"shape": tuple(shape[p] for p in perm)})
    why = _not_activation(graph, x)
    return why or Rewrite("Transpose", [x], {"perm": tuple(3 - perm[3 - i] for i in range(4)), "activation": None})


#: ONNX (mode, coordinate_transformation_mode) -> N2D2 Resize (mode, align_corners)
_RESIZE_MODES = {("nearest", "asymmetric"): ("NearestNeighbor", True),
                 ("linear", "half_pixel"): ("Bilinear", True), ("linear", "pytorch_half_pixel"): ("Bilinear", True),
                 ("linear", "align_corners"): ("BilinearTF", True), ("linear", "asymmetric"): ("BilinearTF", False)}


@rule("OnnxResize")
def _resize(graph, node):
    """A Resize of H and W of an NCHW tensor by the ratio of the sizes, in a mode N2D2's Resize
    computes (`_RESIZE_MODES`; nearest with nearest_mode floor: PyTorch's 'nearest')."""
    x = graph.inputs_of(node)[0]
    a = graph.attrs(node)
    found = _RESIZE_MODES.get((a["mode"], a["coordinate_mode"]))
    if a["antialias"] or a["exclude_outside"]:
        return "Resize with antialias or exclude_outside is not supported"
    if any(spec is not None for spec in a["axes"][:2]) or len(a["axes"]) != 4:
        return f"Resize to {list(a['shape'])}: n2d2 resizes the H and W axes of NCHW tensors"
    if any(spec is not None and abs(spec[0] / spec[1] - spec[2]) > 1e-6 for spec in a["axes"]):
        return "Resize scales that are not the ratio of the sizes: n2d2 interpolates with the ratio of the sizes"
    if found is None or (a["mode"] == "nearest" and a["nearest_mode"] != "floor"):
        return (f"{a['mode']} Resize with coordinate_transformation_mode={a['coordinate_mode']}, nearest_mode="
                f"{a['nearest_mode']}: n2d2 supports nearest (asymmetric, floor) and linear (half_pixel, "
                "pytorch_half_pixel, align_corners, asymmetric)")
    if found[0] == "Bilinear" and a["coordinate_mode"] == "half_pixel" and min(a["shape"][2:]) == 1:
        return "half_pixel linear Resize to a size of 1 is not supported"
    return _not_activation(graph, x) or Rewrite("Resize", [x], {
        "height": int(a["shape"][2]), "width": int(a["shape"][3]), "mode": found[0], "align_corners": found[1],
        "activation": None})


def _fc(graph, node, x, weights, bias):
    """An Fc node over activation `x` (rank >= 2: Fc flattens C*H*W in memory order), with the
    parameters `weights` ([O, I] in that order) and `bias`."""
    t = _type(graph, x)
    why = _not_activation(graph, x, rank=None)
    if why or len(t.shape) < 2:
        return why or f"input '{x[0]}' of shape {list(t.shape)}; a fully connected op reads [N, ...]"
    params = {"weights": weights} if bias is None else {"weights": weights, "biases": bias}
    return Rewrite("Fc", [x], {"activation": None}, params)


def _private_param(graph, ref):
    """The parameter behind constant `ref` when this is its only reader, else None."""
    p = _const(graph, ref)
    readers = [n for n in graph.nodes() if p in graph.node(n).params.values()]
    return p if p is not None and readers == [ref[0]] and len(graph.consumers(ref[0])) == 1 else None


@rule("OnnxGemm")
def _gemm(graph, node):
    """x @ B^T + C (transB=1; with transB=0 a B read only here, stored transposed) with constant
    B and C ([O]): an Fc (its output a view)."""
    ins = graph.inputs_of(node)
    a = graph.attrs(node)
    consts = [_const(graph, ref) for ref in ins[1:]]
    if a["trans_a"] or a["alpha"] != 1.0 or (len(ins) > 2 and a["beta"] != 1.0):
        return (f"Gemm transA={int(a['trans_a'])}, alpha={a['alpha']}, beta={a['beta']}; n2d2's Fc reads its "
                "weights as they are (transA=0, alpha=beta=1)")
    if None in consts:
        return "Gemm of two activations; n2d2 maps a Gemm by constant weights to an Fc cell"
    if not a["trans_b"] and _private_param(graph, ins[1]) is None:
        return "Gemm transB=0 by a matrix other nodes read too; n2d2's Fc would store it transposed"
    o = _type(graph, ins[1]).shape[0 if a["trans_b"] else 1]
    if len(ins) > 2 and _type(graph, ins[2]).shape != (o,):
        return f"Gemm bias C of shape {list(_type(graph, ins[2]).shape)}; an Fc bias has one value per output"
    found = _fc(graph, node, ins[0], consts[0], consts[1] if len(consts) > 1 else None)
    return found if isinstance(found, str) or a["trans_b"] else dataclasses.replace(found, transposed=("weights",))


@rule("OnnxMatMul")
def _matmul(graph, node):
    """x @ W with a constant matrix W [I, O] read only here, over [N, I] (or [N, 1.., I]): an Fc
    whose weights are W stored transposed."""
    ins = graph.inputs_of(node)
    w = _const(graph, ins[1])
    shape = _type(graph, ins[0]).shape
    if w is None:
        return "MatMul of two activations; n2d2 maps MatMul by a constant matrix to an Fc cell"
    if len(graph.params[w].shape) != 2:
        return f"MatMul by a constant of shape {list(graph.params[w].shape)}; n2d2 supports a matrix"
    if len(shape) < 2 or int(np.prod(shape[1:-1])) != 1:
        return (f"MatMul over the last axis of a {list(shape)} input is not a fully connected layer; n2d2 "
                "supports [N, F] inputs")
    why = _not_activation(graph, ins[0], rank=None)
    if why:
        return why
    if _private_param(graph, ins[1]) is None:
        return "MatMul by a matrix other nodes read too; n2d2's Fc would store it transposed"
    found = _fc(graph, node, ins[0], w, None)
    return found if isinstance(found, str) else dataclasses.replace(found, transposed=("weights",))


@rule("OnnxReshape")
def _reshape(graph, node):
    """A reshape keeping the batch axis to a rank of 2 to 4 that is no view: an N2D2 Reshape to
    the ONNX shape padded to [N, C, H, W] (then viewed as the ONNX shape). Legalized after the
    other nodes (`LATE`): a flatten that only Fc nodes read makes no copy (they flatten the same
    way), nor does a view."""
    x = _through_view(graph, graph.inputs_of(node)[0])
    old, new = _type(graph, x).shape, graph.output_types(node)[0].shape
    if is_view(graph, node):
        return "a view of its input in the same memory order: no op"
    if not new or new[0] != old[0]:
        return f"reshaping {list(old)} to {list(new)} changes the batch axis; not supported"
    if len(new) == 2 and {graph.op(dst) for dst, _, _ in graph.consumers(node)} == {"Fc"} \
            and not is_graph_output(graph, node):
        return "a flatten only Fc nodes read: they flatten the same way (no copy)"
    if not 2 <= len(new) <= 4:
        return f"reshaping to rank {len(new)} ({list(new)}): n2d2 tensors have rank 2 to 4"
    why = _not_activation(graph, x, rank=None)
    if why or len(old) > 4:
        return why or f"input '{x[0]}' of rank {len(old)}; n2d2 tensors have rank 4 at most"
    return Rewrite("Reshape", [x], {"shape": tuple(new[1:]) + (1,) * (4 - len(new)), "activation": None})


#: op types legalized after the others (their rule reads what the others became)
LATE = ("OnnxReshape", "OnnxConcat")


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
        if not graph.consumers(src) and not is_graph_output(graph, src):
            graph.remove_node(src)
    return True


# -- the pass ----------------------------------------------------------------------------------------
def _view(old, new):
    """True when a tensor of type `new` holds one of type `old` in the same memory order (same
    dtype and size, equal once axes of size 1 are dropped): [N, O, 1, 1] for [N, O]."""
    return old.dtype == new.dtype and [d for d in old.shape if d != 1] == [d for d in new.shape if d != 1] \
        and int(np.prod(old.shape)) == int(np.prod(new.shape))


def is_view(graph: Graph, node: str) -> bool:
    """True when `node` is an `OnnxReshape` whose output is its input in the same memory order
    relabelled (`_view`): the `<node>_view` nodes this pass adds, a Flatten, an Unsqueeze..."""
    return graph.op(node) == "OnnxReshape" and _view(graph.input_types(node)[0], graph.output_types(node)[0])


def legalize_node(graph: Graph, node: str):
    """Apply the rule of `node`'s op in place. None when the node was replaced, else the reason
    it stays an `Onnx*` node (a str)."""
    fn = RULES.get(graph.op(node))
    if fn is None:
        return f"no N2D2 op computes '{graph.op(node)[4:]}'" if graph.op(node).startswith("Onnx") else \
            f"'{graph.op(node)}' is not an ONNX op"
    if not _only_output_0(graph, node):
        return "an optional output of the op is used; n2d2 computes only the first one"
    found = fn(graph, node)
    if isinstance(found, str):
        return found
    opdef = op_registry.get(found.op, node=node)
    in_types = [_type(graph, ref) for ref in found.inputs]
    pad, crop = (None if p is None else dict(zip(("top", "bot", "left", "right"), p), activation=None)
                 for p in (found.pad, None if found.crop is None else tuple(-v for v in found.crop)))
    shapes = {role: graph.params[p].shape[::-1 if role in found.transposed else 1]
              for role, p in found.params.items()}
    pre = None if pad is None else ("_padding", "Padding", pad)
    pre = found.pre or pre
    try:
        if pre is not None:
            in_types = op_registry.get(pre[1]).infer_types(pre[2], in_types, {}, node)
        new = opdef.infer_types(found.attrs, in_types, shapes, node)[0]
        final = new if crop is None else op_registry.get("Padding").infer_types(crop, [new], {}, node)[0]
    except GraphError as e:
        return f"the {found.op} op refuses it: {e}"
    old = graph.output_types(node)[0]
    if not _view(old, final):   # e.g. a ceil-mode pooling window N2D2 does not make
        return f"the {found.op} op gives a {list(final.shape)} output where ONNX gives {list(old.shape)}"
    inputs = found.inputs
    if pre is not None:
        inputs = [(graph.add_op(graph.unique_name(f"{node}{pre[0]}"), pre[1], inputs, pre[2]), 0)]
    # the node's former sources that it alone read (constants, views, an activation a Clip took
    # over) are removed once left unread
    sources = sorted({src for src, _ in graph.inputs_of(node) if graph.op(src) != "Input"
                      and src not in {s for s, _ in inputs}})
    sole = {graph.node(src).params["value"] for src in sources
            if graph.op(src) == "OnnxConstant" and len(graph.consumers(src)) == 1}
    substitute(graph, node, found.op, inputs, found.attrs, found.params, outputs=[new])
    last = node
    for name, op, attrs, t in ((f"{node}_padding", "Padding", crop, final),   # the crop, then the ONNX shape
                               (f"{node}_view", "OnnxReshape", {"shape": tuple(old.shape)}, old)):
        if attrs is not None and (op == "Padding" or tuple(final.shape) != tuple(old.shape)):
            after = graph.unique_name(name)
            graph.add_node(after, op, [], attrs, outputs=[t])
            graph.replace_uses(last, after)
            graph.nx.add_edge(last, after, out=0, slot=0)
            last = after
    for role, p in found.params.items():   # graph copies share Param objects: replace, do not mutate
        if p in sole:
            graph.params[p] = dataclasses.replace(graph.params[p], owner=node, role=role)
        if role in found.transposed:
            graph.params[p] = dataclasses.replace(graph.params[p], array=graph.params[p].array.T.copy())
    for src in sources:
        if not graph.consumers(src) and not is_graph_output(graph, src):
            graph.remove_node(src)
    return None


# -- constant operands (the ONNX importer's) ---------------------------------------------------------------
def _per_channel(graph, ref, shape):
    """The constant `ref` as one float per channel of an activation of `shape` (a scalar
    repeated), or None when it varies along another axis or broadcasts `shape`."""
    c = np.asarray(graph.params[_const(graph, ref)].array, dtype=np.float64)
    try:
        if np.broadcast_shapes(tuple(shape), c.shape) != tuple(shape):
            return None
    except ValueError:
        return None
    c = c.reshape((1,) * (len(shape) - c.ndim) + c.shape)
    if any(n != 1 for ax, n in enumerate(c.shape) if ax != 1):
        return None
    return np.broadcast_to(c.reshape(-1), (shape[1],)).astype(np.float32)


def _fold_into_producer(graph, x, operation, vec):
    """Fold `x + vec` ("Sum") or `x * vec` ("Prod") into the Conv, Fc or BatchNorm that makes
    `x` (no fused activation, read only here, parameters its own): new bias / weight arrays.
    True when done."""
    src = x[0]
    if graph.op(src) not in ("Conv", "Fc", "BatchNorm") or graph.attrs(src).get("activation") is not None \
            or len(graph.consumers(src)) != 1 or is_graph_output(graph, src):
        return False
    params = dict(graph.node(src).params)
    if any(p in graph.node(n).params.values() for p in params.values() for n in graph.nodes() if n != src):
        return False
    roles = ("biases",) if operation == "Sum" else ("scales", "biases") if graph.op(src) == "BatchNorm" else \
        ("weights", "biases")
    if "biases" not in params and operation == "Sum":
        params["biases"] = new_param_name(graph, f"{src}_biases")
        graph.add_param(params["biases"], np.zeros(vec.shape, np.float32), owner=src, role="biases")
    for role in (r for r in roles if r in params):
        a = np.asarray(graph.params[params[role]].array, dtype=np.float32)
        a = a + vec if operation == "Sum" else a * vec.reshape((-1,) + (1,) * (a.ndim - 1))
        graph.params[params[role]] = dataclasses.replace(graph.params[params[role]], array=a)
    graph.nx.nodes[src]["params"] = params
    return True


def _fold_gemm_factors(graph, node):
    """A Gemm by constants B and C read only here whose alpha or beta is not 1: alpha * B and
    beta * C stored (as the importer folded them), the Gemm then legalized into an Fc."""
    a, ins = graph.attrs(node), graph.inputs_of(node)
    if a["trans_a"] or (a["alpha"] == 1.0 and (len(ins) < 3 or a["beta"] == 1.0)):
        return
    if any(_private_param(graph, ref) is None for ref in ins[1:]):
        return
    for ref, factor in zip(ins[1:], (a["alpha"], a["beta"])):
        p = _const(graph, ref)
        array = graph.params[p].array
        graph.params[p] = dataclasses.replace(graph.params[p], array=array * array.dtype.type(factor))
    graph.nx.nodes[node]["attrs"] = dict(a, alpha=1.0, beta=1.0)
    legalize_node(graph, node)


def fold_constant_operands(graph: Graph) -> Graph:
    """The ONNX importer's arithmetic by constants, on a legalized graph: a Gemm's alpha and beta
    folded into its own B and C (`_fold_gemm_factors`); Add, Sub, Mul, Div of an
    NCHW activation by a scalar or per-channel constant is folded into the Conv, Fc or BatchNorm
    that makes the activation (its bias, or its weights and bias), else becomes an ElemWise
    (shift, `c - x`) or a floating-point Scaling node of the same name; adding 0 or multiplying
    by 1 is removed. The constants become attributes or are folded into copies of the
    producer's parameters, as N2D2's importer does: exact in inference, the constants are no
    longer trained."""
    g = graph.copy()
    for node in g.topological_order():
        op = g.op(node) if node in g.nx else None
        if op == "OnnxGemm":
            _fold_gemm_factors(g, node)
        if op not in ("OnnxAdd", "OnnxSub", "OnnxMul", "OnnxDiv") or not _only_output_0(g, node):
            continue
        ins = g.inputs_of(node)
        consts = [k for k, ref in enumerate(ins) if _const(g, ref) is not None]
        if len(ins) != 2 or len(consts) != 1 or (op == "OnnxDiv" and consts != [1]):
            continue
        x = ins[1 - consts[0]]
        inner = _through_view(g, x)
        if _not_activation(g, inner) or tuple(_type(g, x).shape) != tuple(g.output_types(node)[0].shape):
            continue
        vec = _per_channel(g, ins[consts[0]], _type(g, x).shape)   # broadcast as ONNX does
        if vec is None or (op == "OnnxDiv" and not vec.all()):
            continue
        if op == "OnnxDiv":
            vec = (1.0 / vec.astype(np.float64)).astype(np.float32)
        elif op == "OnnxSub" and consts == [1]:   # x - c
            vec = -vec
        operation = "Sum" if op in ("OnnxAdd", "OnnxSub") else "Prod"
        const_src = ins[consts[0]][0]
        negated = op == "OnnxSub" and consts == [0]   # c - x
        identity = not vec.any() if operation == "Sum" else (vec == 1.0).all()
        if not negated and (identity or _fold_into_producer(g, inner, operation, vec)):
            g.replace_uses(node, *x)
            g.remove_node(node)
        else:
            if operation == "Prod":
                new_op, attrs = "Scaling", {"scaling": ("FloatingPoint", tuple(float(v) for v in vec), None)}
            else:
                w = -1.0 if negated else 1.0
                uniform = bool((vec == vec[0]).all())
                shifts = [float(vec[0])] if uniform else [[float(v) for v in vec]]
                weights = [w] if uniform else [[w] * len(vec)]
                new_op, attrs = "ElemWise", {"operation": "Sum", "weights": weights, "shifts": shifts,
                                             "activation": None}
            out = op_registry.get(new_op, node=node).infer_types(attrs, [_type(g, inner)], {}, node)[0]
            substitute(g, node, new_op, [inner], attrs, {}, outputs=[out])
            if tuple(out.shape) != tuple(_type(g, x).shape):
                view = g.unique_name(f"{node}_view")
                g.add_node(view, "OnnxReshape", [], {"shape": tuple(_type(g, x).shape)}, outputs=[_type(g, x)])
                g.replace_uses(node, view)
                g.nx.add_edge(node, view, out=0, slot=0)
        if not g.consumers(const_src) and not any(n == const_src for n, _ in g.outputs):
            g.remove_node(const_src)
    return g


def legalize_onnx(graph: Graph, mode: str = "inference") -> Graph:
    """Rewrite the `Onnx*` nodes that an N2D2 op computes exactly (see the module docstring);
    the others are left as they are. Exact in inference and training."""
    return legalize_onnx_with_reasons(graph, mode)[0]


def legalize_onnx_with_reasons(graph: Graph, mode: str = "inference"):
    """`legalize_onnx`, and {node: the reason its rule gave} for the nodes left `Onnx*` (what
    `DeepNetCell.load_from_ONNX(generic_ops=False)` refuses them with)."""
    check_mode(mode)
    g = graph.copy()
    for node in g.topological_order():   # first: a rule would take a GELU's inner x * (1 + erf)
        if node in g.nx:
            fuse_decomposed_gelu(g, node)
    reasons = {}
    for late in (False, True):
        for node in g.topological_order():
            if node in g.nx and g.op(node).startswith("Onnx") and (g.op(node) in LATE) == late:
                why = legalize_node(g, node)
                if why is not None:
                    reasons[node] = why
    return g, {n: why for n, why in reasons.items() if n in g.nx and g.op(n).startswith("Onnx")}
