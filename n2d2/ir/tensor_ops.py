"""IR op definitions with ONNX semantics (`Onnx*`): any rank, numpy broadcasting, explicit dtypes.

The N2D2-shaped ops of `n2d2.ir.ops` (NCHW, channel concat, symmetric padding) cannot hold a
general ONNX node; these can. They register in the same registry, so the numpy executor,
autodiff and the verifier handle them like any other op. The math is in
`n2d2.ops.tensor_ops` (and `n2d2.ops.activation` for Relu, LeakyRelu, Sigmoid, Tanh).

Conventions: every tensor operand is an input edge (weights included: initializers are
`OnnxConstant` nodes holding a parameter, so autodiff trains them through the ordinary input
gradients); attributes are fully resolved by the importer (`n2d2.onnx_backend`): static axes,
target shapes, explicit pads. The shape rule returns (shape, dtype) per output, so integer and
boolean tensors keep their dtype. Some ops have several outputs (MaxPool indices, Dropout mask,
BatchNormalization running statistics); gradients flow through output 0 only. No fused
activation (`attrs["activation"]`) on these ops.
"""
import numpy as np

from n2d2.backend import array_module, to_device
from n2d2.ir import lowering as low
from n2d2.ir import ops as op_registry
from n2d2.ir.lowering import Unsupported
from n2d2.ir.ops import OpDef, register
from n2d2.ir.types import GraphError, TensorType
from n2d2.ops import activation as act_ops
from n2d2.ops import tensor_ops as T
from n2d2.settings import global_variables


class OnnxOp(OpDef):
    """Base of the ONNX-semantics ops: dtype-aware shape rule, list outputs, no fused activation.

    Subclasses implement `_types(attrs, in_types) -> [(shape, dtype)]` (default: like input 0),
    `_forward(attrs, xs, training) -> (y or [ys], saved)` and
    `_backward(attrs, saved, dy, needs) -> [dx or None per input]`.
    """

    def infer_types(self, attrs, in_types, param_shapes, node="?"):
        self.check_arity(node, len(in_types))
        try:
            types = self._types(attrs, list(in_types))
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise GraphError(f"node '{node}' ({self.name}): {e}") from None
        return [TensorType(tuple(int(v) for v in s), str(np.dtype(d))) for s, d in types]

    def _types(self, attrs, in_types):
        return [(in_types[0].shape, in_types[0].dtype)]

    def forward(self, attrs, xs, params, training=False):
        ys, saved = self._forward(attrs, xs, training)
        ys = ys if isinstance(ys, list) else [ys]
        return [np.asarray(y) if isinstance(y, np.generic) else y for y in ys], saved   # 0-d results

    def backward(self, attrs, saved, dys, needs, params):
        dxs = self._backward(attrs, saved, dys[0], needs)
        return [d if n else None for d, n in zip(dxs, needs)], {}

    #: `c_geometry(attrs, in_shapes, out_shape)`: the geometry of the op's kernel in
    #: templates/c/onnx.c.j2 (an Unsupported when it does not apply); None: no C kernel
    c_geometry = None


class _CKernel:
    """Mixin (before OnnxOp in the bases) of the ops with a C kernel (templates/c/ops/<Op>.c.j2
    over the shared templates/c/onnx.c.j2): `lower_c` through the op's `c_geometry`."""

    def lower_c(self, graph, node, training):
        """The geometry of templates/c/ops/<Op>.c.j2 (through `c_geometry`), or why none applies."""
        if graph.attrs(node).get("activation") is not None:
            return Unsupported(f"{self.name} kernels take no fused activation")
        ins, outs = low.shapes(graph, node)
        return self.c_geometry(graph.attrs(node), ins, outs[0])

    def cuda_refusal(self, g, training):
        """Why the CUDA kernels of cuda/onnx.cu.j2 do not take the C geometry `g`, or None."""
        return None

    def lower_cuda(self, graph, node, training):
        """The C geometry, for templates/cuda/ops/<Op>.cu.j2 (cuda/onnx.cu.j2)."""
        g = self.lower_c(graph, node, training)
        if isinstance(g, Unsupported):
            return g
        why = self.cuda_refusal(g, training)
        return Unsupported(f"{self.name}: {why}") if why else dict(g, PAR=False)

    def plan_cuda_forward(self, n, g, k):
        return _cuda_forward_plan(g, k)

    def plan_cuda_backward(self, n, g, k):
        return _cuda_backward_plan(g, [d is not None for d in n.dx], k)


def _cuda_forward_plan(g, k):
    if g["KIND"] == "layernorm":
        return [k.elementwise("fwd", g["OUTER"], part="ln")]
    if g["KIND"] == "erf":
        return [k.elementwise("fwd", g["SIZE"], part="erf")]
    if g["KIND"] == "matmul":
        return [k.elementwise("fwd", g["BATCH"] * g["M"] * g["N"], part="mm")]
    return [k.elementwise("fwd", g["SIZE"], part="map")]


def _cuda_backward_plan(g, needs, k):
    """The kernels of cuda/onnx.cu.j2 that write the gradients of the inputs in `needs`."""
    specs = []
    if g["KIND"] == "erf":
        if needs[0]:
            specs.append(k.elementwise("bwd", g["SIZE"], part="erf_dx"))
    elif g["KIND"] == "matmul":
        if needs[0]:
            specs.append(k.elementwise("bwd", g["BATCH"] * g["M"] * g["K"], part="mm_da"))
        if needs[1]:
            specs.append(k.elementwise("bwd", g["BATCH"] * g["K"] * g["N"], part="mm_db"))
    elif g["KIND"] == "gather":
        if needs[0]:
            if g["ZERO"]:
                specs.append(k.elementwise("bwd", g["INSIZE"][0], part="zero"))
            specs.append(k.elementwise("bwd", g["SIZE"], part="scatter"))
    elif g["KIND"] == "binary":
        for j in (0, 1):
            if needs[j] and g["BCAST"][j]:
                mine, other = g["OPS"][j]["STR"], g["OPS"][1 - j]["STR"]
                kept = [(d, s, o, t) for d, s, o, t in zip(g["DIMS"], mine, g["OSTR"], other) if s]
                red = [(d, o, t) for d, s, o, t in zip(g["DIMS"], mine, g["OSTR"], other) if not s]
                specs.append(k.elementwise("bwd", g["INSIZE"][j], part="reduce", inp=j, KEPT=kept, RED=red,
                                           R=int(np.prod([d for d, _, _ in red]))))
        if any(n and not b for n, b in zip(needs, g["BCAST"])):
            specs.append(k.elementwise("bwd", g["SIZE"], part="dx"))
    elif any(needs):
        stats = k.elementwise("bwd", g["OUTER"], part="ln_stats")
        stats.scratch = 8 * g["OUTER"]        # (mean, 1/std) per row, read by the next kernels
        specs.append(stats)
        if needs[0]:
            specs.append(k.elementwise("bwd", g["OUTER"], part="ln_dx"))
        for j in range(1, len(needs)):
            if needs[j]:
                specs.append(k.elementwise("bwd", g["INSIZE"][j], part="ln_dp", inp=j))
    return specs


def _broadcast(in_types):
    return tuple(np.broadcast_shapes(*[tuple(t.shape) for t in in_types]))


def _check_float(op, dtype):
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise GraphError(f"{op}: no gradient through a {dtype} tensor")


# -- parameters -----------------------------------------------------------------------------------
@register
class OnnxConstant(OnnxOp):
    """A parameter (initializer or folded constant) as a tensor: params value (its gradient is
    the parameter's when the parameter is trainable)."""

    name = "OnnxConstant"
    min_inputs = max_inputs = 0
    params = ("value",)
    trainable = ("value",)

    def infer(self, graph, node):
        param = graph.params[graph.nx.nodes[node]["params"]["value"]]
        return [TensorType(tuple(param.shape), str(param.array.dtype))]

    def forward(self, attrs, xs, params, training=False):
        return [params["value"]], None

    def backward(self, attrs, saved, dys, needs, params):
        return [], {"value": dys[0]}


# -- element-wise binary (broadcasting) ----------------------------------------------------------
class _Binary(OnnxOp):
    min_inputs = max_inputs = 2
    opc = None   # the C operator of the kernel (templates/c/onnx.c.j2, KIND binary)

    def _types(self, attrs, in_types):
        return [(_broadcast(in_types), in_types[0].dtype)]

    def c_geometry(self, attrs, in_shapes, out_shape):
        if self.opc is None:
            return Unsupported(f"{self.name} has no C kernel")
        if int(np.prod(out_shape)) == 0:
            return Unsupported(f"{self.name}: an empty output {list(out_shape)}")
        g = low.strided_geometry(out_shape, [(0, low.broadcast_strides(s, out_shape)) for s in in_shapes])
        sizes = [int(np.prod(s)) for s in in_shapes]
        g.update(KIND="binary", OPC=self.opc, INSIZE=sizes, BCAST=[n < g["SIZE"] for n in sizes])
        return g


class _Arithmetic(_CKernel, _Binary):
    """Add, Sub, Mul, Div: `reference`, the (forward, backward) of `n2d2.ops.tensor_ops`; the
    backward reads the operands (`reads_operands`) or only their shapes."""

    reads_operands = False

    def _forward(self, attrs, xs, training):
        return self.reference[0](*xs), (xs if self.reads_operands else (xs[0].shape, xs[1].shape))

    def _backward(self, attrs, saved, dy, needs):
        return list(self.reference[1](dy, *saved))


@register
class OnnxAdd(_Arithmetic):
    name, opc, reference = "OnnxAdd", "+", (T.add_forward, T.add_backward)


@register
class OnnxSub(_Arithmetic):
    name, opc, reference = "OnnxSub", "-", (T.sub_forward, T.sub_backward)


@register
class OnnxMul(_Arithmetic):
    name, opc, reference, reads_operands = "OnnxMul", "*", (T.mul_forward, T.mul_backward), True


@register
class OnnxDiv(_Arithmetic):
    name, opc, reference, reads_operands = "OnnxDiv", "/", (T.div_forward, T.div_backward), True


class _Comparison(_Binary):
    """Boolean output of `reference` (`n2d2.ops.tensor_ops`); no gradient."""

    def _types(self, attrs, in_types):
        return [(_broadcast(in_types), "bool")]

    def _forward(self, attrs, xs, training):
        return self.reference(*xs), None

    def _backward(self, attrs, saved, dy, needs):
        raise GraphError(f"{self.name} has no gradient")


@register
class OnnxLess(_Comparison):
    name, reference = "OnnxLess", staticmethod(T.less_forward)


@register
class OnnxEqual(_Comparison):
    name, reference = "OnnxEqual", staticmethod(T.equal_forward)


@register
class OnnxSum(OnnxOp):
    name = "OnnxSum"
    max_inputs = None

    def _types(self, attrs, in_types):
        return [(_broadcast(in_types), in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        return T.sum_forward(xs), [x.shape for x in xs]

    def _backward(self, attrs, saved, dy, needs):
        return T.sum_backward(dy, saved)


@register
class OnnxMax(OnnxOp):
    name = "OnnxMax"
    max_inputs = None

    def _types(self, attrs, in_types):
        return [(_broadcast(in_types), in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        y = T.max_forward(xs)
        return y, (xs, y)

    def _backward(self, attrs, saved, dy, needs):
        return T.max_backward(dy, *saved)


@register
class OnnxMin(OnnxMax):
    name = "OnnxMin"

    def _forward(self, attrs, xs, training):
        y = T.min_forward(xs)
        return y, (xs, y)


@register
class OnnxPRelu(_Binary):
    """inputs: x, slope (broadcast to x's shape)."""

    name = "OnnxPRelu"

    def _forward(self, attrs, xs, training):
        return T.prelu_forward(*xs), xs

    def _backward(self, attrs, saved, dy, needs):
        return list(T.prelu_backward(dy, *saved))


@register
class OnnxWhere(OnnxOp):
    """inputs: condition (bool), a, b; no gradient to the condition."""

    name = "OnnxWhere"
    min_inputs = max_inputs = 3

    def _types(self, attrs, in_types):
        return [(_broadcast(in_types), in_types[1].dtype)]

    def _forward(self, attrs, xs, training):
        return T.where_forward(*xs), (xs[0], xs[1].shape, xs[2].shape)

    def _backward(self, attrs, saved, dy, needs):
        cond, a_shape, b_shape = saved
        if needs[0]:
            raise GraphError("OnnxWhere: no gradient to the condition")
        return [None] + list(T.where_backward(dy, cond, a_shape, b_shape))


# -- the activations of the table (n2d2/ops/activation.py): one op per ONNX type it imports ---------
def _table_activation_op(onnx_type, definition, to_params):
    """Register `Onnx<onnx_type>`: the table's `definition` with the parameters `to_params` reads
    from the node's ONNX attributes (so an activation is declared once, in the table)."""

    class TableActivation(OnnxOp):
        elementwise = True

        def _forward(self, attrs, xs, training):
            return definition.forward(xs[0], **to_params(attrs)), xs[0]

        def _backward(self, attrs, x, dy, needs):
            return [definition.backward(dy, x, **to_params(attrs))]

    TableActivation.name = TableActivation.__name__ = TableActivation.__qualname__ = f"Onnx{onnx_type}"
    TableActivation.__doc__ = f"ONNX {onnx_type}, ONNX attributes: the activation table's {definition.name}."
    return register(TableActivation)


for _definition in act_ops.ACTIVATIONS.values():
    for _onnx_type, _to_params in _definition.onnx_import.items():
        globals()[f"Onnx{_onnx_type}"] = _table_activation_op(_onnx_type, _definition, _to_params)


# -- one input, one reference pair ---------------------------------------------------------------
class _Unary(OnnxOp):
    """y = forward(x, *args), dx = backward(dy, saved, *args): `reference` is the (forward,
    backward) of `n2d2.ops.tensor_ops`, `args(attrs)` the attributes both take, `saves` what the
    backward reads: "x", "y" or "shape" (x's)."""

    saves = "x"

    def args(self, attrs):
        return ()

    def _forward(self, attrs, xs, training):
        y = self.reference[0](xs[0], *self.args(attrs))
        return y, {"x": xs[0], "y": y, "shape": xs[0].shape}[self.saves]

    def _backward(self, attrs, saved, dy, needs):
        return [self.reference[1](dy, saved, *self.args(attrs))]


# -- element-wise unary --------------------------------------------------------------------------
@register
class OnnxExp(_Unary):
    name, elementwise, reference, saves = "OnnxExp", True, (T.exp_forward, T.exp_backward), "y"


@register
class OnnxAbs(_Unary):
    name, elementwise, reference = "OnnxAbs", True, (T.abs_forward, T.abs_backward)


@register
class OnnxLog(_Unary):
    name, elementwise, reference = "OnnxLog", True, (T.log_forward, T.log_backward)


@register
class OnnxErf(_CKernel, _Unary):
    name, elementwise, reference = "OnnxErf", True, (T.erf_forward, T.erf_backward)

    def c_geometry(self, attrs, in_shapes, out_shape):
        size = int(np.prod(out_shape))
        if size == 0:
            return Unsupported(f"{self.name}: an empty output {list(out_shape)}")
        # erff / expf cost tens of flops an element (a binary op one): the team pays off sooner
        return dict(KIND="erf", SIZE=size, INSIZE=[size], PAR=size >= low.PARALLEL_MIN_ELEMENTS // 4)


@register
class OnnxClip(_Unary):
    """attrs: min, max (None: unbounded)."""

    name, elementwise, reference = "OnnxClip", True, (T.clip_forward, T.clip_backward)

    def args(self, attrs):
        return attrs.get("min"), attrs.get("max")


@register
class OnnxCast(OnnxOp):
    """attrs: dtype (numpy dtype name)."""

    name = "OnnxCast"

    def _types(self, attrs, in_types):
        return [(in_types[0].shape, attrs["dtype"])]

    def _forward(self, attrs, xs, training):
        return T.cast_forward(xs[0], attrs["dtype"]), xs[0].dtype

    def _backward(self, attrs, x_dtype, dy, needs):
        _check_float("OnnxCast", x_dtype)
        return [T.cast_backward(dy, x_dtype)]


# -- softmax and reductions ----------------------------------------------------------------------
class _Softmax(_Unary):
    """attrs: axes (normalised tuple)."""

    saves = "y"

    def args(self, attrs):
        return (tuple(attrs["axes"]),)


@register
class OnnxSoftmax(_Softmax):
    name, reference = "OnnxSoftmax", (T.softmax_forward, T.softmax_backward)


@register
class OnnxLogSoftmax(_Softmax):
    name, reference = "OnnxLogSoftmax", (T.log_softmax_forward, T.log_softmax_backward)


class _Reduce(_Unary):
    """attrs: axes (normalised tuple), keepdims (bool)."""

    saves = "shape"

    def args(self, attrs):
        return tuple(attrs["axes"]), attrs.get("keepdims", True)

    def _types(self, attrs, in_types):
        shape, axes = in_types[0].shape, tuple(attrs["axes"])
        if attrs.get("keepdims", True):
            out = tuple(1 if i in axes else s for i, s in enumerate(shape))
        else:
            out = tuple(s for i, s in enumerate(shape) if i not in axes)
        return [(out, in_types[0].dtype)]


@register
class OnnxReduceSum(_Reduce):
    name, reference = "OnnxReduceSum", (T.reduce_sum_forward, T.reduce_sum_backward)


@register
class OnnxReduceMean(_Reduce):
    name, reference = "OnnxReduceMean", (T.reduce_mean_forward, T.reduce_mean_backward)


@register
class OnnxReduceMax(_Reduce):
    name = "OnnxReduceMax"

    def _forward(self, attrs, xs, training):
        y = T.reduce_max_forward(xs[0], *self.args(attrs))
        return y, (xs[0], y)

    def _backward(self, attrs, saved, dy, needs):
        return [T.reduce_max_backward(dy, *saved, *self.args(attrs))]


@register
class OnnxLayerNormalization(_CKernel, OnnxOp):
    """attrs: axis (normalised), epsilon; inputs X, Scale and optionally B. Outputs Y, Mean and
    InvStdDev (the statistics keep the normalised axes as size 1); gradients through Y."""

    name = "OnnxLayerNormalization"
    min_inputs = 2
    max_inputs = 3

    def _types(self, attrs, in_types):
        x = tuple(in_types[0].shape)
        axis = attrs["axis"]
        for t in in_types[1:]:
            np.broadcast_shapes(tuple(t.shape), x[axis:])
        stats = x[:axis] + (1,) * (len(x) - axis)
        return [(x, in_types[0].dtype), (stats, "float32"), (stats, "float32")]

    def _forward(self, attrs, xs, training):
        bias = xs[2] if len(xs) > 2 else None
        y, mean, inv_std, x_hat = T.layer_norm_forward(xs[0], xs[1], bias, attrs["axis"], attrs.get("epsilon", 1e-5))
        return [y, mean.astype("float32"), inv_std.astype("float32")], \
            (x_hat, inv_std, xs[1], None if bias is None else bias.shape)

    def _backward(self, attrs, saved, dy, needs):
        x_hat, inv_std, scale, bias_shape = saved
        dx, dscale, dbias = T.layer_norm_backward(dy, x_hat, inv_std, scale, attrs["axis"], bias_shape)
        return [dx, dscale] + ([] if bias_shape is None else [dbias])

    def c_geometry(self, attrs, in_shapes, out_shape):
        x = tuple(in_shapes[0])
        axis = attrs["axis"] % len(x) if x else 0
        outer, inner = int(np.prod(x[:axis])), int(np.prod(x[axis:]))
        if outer * inner == 0:
            return Unsupported(f"{self.name}: an empty input {list(x)}")
        index = []   # (DIV, MOD): element i of the normalised block reads scale / bias at (i / DIV) % MOD
        for role, shape in zip(("scale", "bias"), in_shapes[1:]):
            block = _block_index(tuple(shape), x[axis:])
            if block is None:
                return Unsupported(f"{self.name}: a {role} of shape {list(shape)} broadcast over {list(x[axis:])} "
                                   f"along split axes (the kernel takes one run of axes)")
            index.append((1, 0) if block == (1, inner) else block)
        return dict(KIND="layernorm", OUTER=outer, INNER=inner, EPS=float(attrs.get("epsilon", 1e-5)),
                    SDIV=index[0][0], SMOD=index[0][1], BDIV=index[-1][0], BMOD=index[-1][1],
                    HAS_BIAS=len(in_shapes) > 2,
                    INSIZE=[int(np.prod(s)) for s in in_shapes],
                    PAR=outer * inner >= low.PARALLEL_MIN_ELEMENTS and outer > 1)

    #: the kernels write Mean and InvStdDev too (`ys` in their template context)
    kernel_writes_all_outputs = True


def _block_index(shape, full):
    """(div, mod) such that element i of a contiguous `full` block reads a tensor of `shape`
    broadcast to it at (i / div) % mod; None when its non-broadcast axes are not one run."""
    shape = tuple(shape)
    while len(shape) > len(full) and shape[0] == 1:
        shape = shape[1:]
    if len(shape) > len(full):
        return None
    shape = (1,) * (len(full) - len(shape)) + shape
    kept = [k for k, (d, f) in enumerate(zip(shape, full)) if d != 1 or f == 1]
    kept = [k for k in kept if full[k] != 1]
    if not kept:
        return 1, 1
    a, b = kept[0], kept[-1] + 1
    if any(shape[k] != full[k] for k in range(a, b)):
        return None
    return int(np.prod(full[b:])), int(np.prod(full[a:b]))


# -- matrix products -----------------------------------------------------------------------------
@register
class OnnxMatMul(_CKernel, OnnxOp):
    name = "OnnxMatMul"
    min_inputs = max_inputs = 2

    def c_geometry(self, attrs, in_shapes, out_shape):
        return _matmul_geometry(self.name, in_shapes, out_shape)

    def cuda_refusal(self, g, training):
        if training and (g["ABC"] or g["BBC"]):
            return ("an operand shared by several batch products (its gradient sums over them): no CUDA "
                    "backward kernel, the C one does it")
        return None

    def _types(self, attrs, in_types):
        return [(_matmul_shape(in_types[0].shape, in_types[1].shape), in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        return T.matmul_forward(*xs), xs

    def _backward(self, attrs, saved, dy, needs):
        return list(T.matmul_backward(dy, *saved))


def _matmul_shape(a, b):
    a, b = tuple(a), tuple(b)
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ValueError(f"MatMul: shapes {list(a)} and {list(b)} do not match")
    batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _matmul_geometry(op, in_shapes, out_shape):
    """Geometry of KIND "matmul" (templates/c/onnx.c.j2): BATCH products Y[t] = A[t] B[t] of
    [M, K] x [K, N], contiguous; product t (row-major over the output's batch axes) reads A and
    B at the offsets of BAX (0 strides on a broadcast axis). A batched A times a B shared
    by every product (a weight) is one product of BATCH * M rows. ABC / BBC: the operand is
    shared by several products (its gradient is accumulated)."""
    a, b = tuple(in_shapes[0]), tuple(in_shapes[1])
    a2 = (1,) + a if len(a) == 1 else a
    b2 = b + (1,) if len(b) == 1 else b
    m, k, n = a2[-2], a2[-1], b2[-1]
    if m * k * n == 0 or int(np.prod(out_shape)) == 0:
        return Unsupported(f"{op}: an empty operand {list(a)} x {list(b)}")
    batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    astr = low.broadcast_strides(a2[:-2], batch) if batch else []
    bstr = low.broadcast_strides(b2[:-2], batch) if batch else []
    astr = [int(s) * m * k for s in astr]
    bstr = [int(s) * k * n for s in bstr]
    size = int(np.prod(batch)) if batch else 1
    if size > 1 and not any(bstr) and int(np.prod(a2[:-2])) == size:   # B shared, A full: fold rows
        m, size, batch, astr, bstr = m * size, 1, (), [], []
    nbatch_a = int(np.prod(a2[:-2])) if a2[:-2] else 1
    nbatch_b = int(np.prod(b2[:-2])) if b2[:-2] else 1
    bax = [(int(np.prod(batch[d + 1:])), int(batch[d]), astr[d], bstr[d]) for d in range(len(batch))
           if batch[d] != 1]   # per batch axis (DIV, MOD, A stride, B stride): index (t / DIV) % MOD
    return dict(KIND="matmul", M=int(m), K=int(k), N=int(n), BATCH=size, BAX=bax,
                ABC=nbatch_a < size, BBC=nbatch_b < size,
                INSIZE=[int(np.prod(a)), int(np.prod(b))],
                PAR=m * n * k >= low.PARALLEL_MIN_ELEMENTS)


@register
class OnnxGemm(OnnxOp):
    """attrs: alpha, beta, trans_a, trans_b; inputs A, B and optionally C."""

    name = "OnnxGemm"
    min_inputs = 2
    max_inputs = 3

    def _types(self, attrs, in_types):
        a, b = in_types[0].shape, in_types[1].shape
        m, k = (a[1], a[0]) if attrs.get("trans_a") else a
        k2, n = (b[1], b[0]) if attrs.get("trans_b") else b
        if k != k2:
            raise ValueError(f"Gemm: A {list(a)} and B {list(b)} do not match (transA={attrs.get('trans_a')}, "
                             f"transB={attrs.get('trans_b')})")
        if len(in_types) > 2:
            np.broadcast_shapes(tuple(in_types[2].shape), (m, n))
        return [((m, n), in_types[0].dtype)]

    def _args(self, attrs):
        return dict(alpha=attrs.get("alpha", 1.0), beta=attrs.get("beta", 1.0), trans_a=attrs.get("trans_a", False),
                    trans_b=attrs.get("trans_b", False))

    def _forward(self, attrs, xs, training):
        c = xs[2] if len(xs) > 2 else None
        return T.gemm_forward(xs[0], xs[1], c, **self._args(attrs)), (xs[0], xs[1], None if c is None else c.shape)

    def _backward(self, attrs, saved, dy, needs):
        a, b, c_shape = saved
        da, db, dc = T.gemm_backward(dy, a, b, c_shape, **self._args(attrs))
        return [da, db] + ([dc] if c_shape is not None else [])


# -- layout ----------------------------------------------------------------------------------------
class _GatherKernel(_CKernel, OnnxOp):
    """An op whose C kernel reads y[q] = x[offset + sum i_k strides_k] (templates/c/onnx.c.j2,
    KIND gather), (offset, strides) from `_c_read(attrs, in_shape, out_shape)`."""

    def c_geometry(self, attrs, in_shapes, out_shape):
        if int(np.prod(out_shape)) == 0:
            return Unsupported(f"{self.name}: an empty output {list(out_shape)}")
        g = low.strided_geometry(out_shape, [self._c_read(attrs, tuple(in_shapes[0]), out_shape)])
        size = int(np.prod(in_shapes[0]))
        g.update(KIND="gather", INSIZE=[size], ZERO=g["SIZE"] < size)
        return g


@register
class OnnxReshape(_GatherKernel):
    """attrs: shape (the full target shape, resolved). Reshape, Flatten, Squeeze, Unsqueeze."""

    name = "OnnxReshape"

    def _types(self, attrs, in_types):
        shape = tuple(attrs["shape"])
        if int(np.prod(shape)) != int(np.prod(in_types[0].shape)):
            raise ValueError(f"cannot reshape {list(in_types[0].shape)} to {list(shape)}")
        return [(shape, in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        return T.reshape_forward(xs[0], attrs["shape"]), xs[0].shape

    def _backward(self, attrs, x_shape, dy, needs):
        return [T.reshape_backward(dy, x_shape)]

    def _c_read(self, attrs, shape, out_shape):
        return 0, low.contiguous_strides(out_shape)


@register
class OnnxTranspose(_GatherKernel):
    """attrs: perm."""

    name = "OnnxTranspose"

    def _types(self, attrs, in_types):
        shape, perm = in_types[0].shape, tuple(attrs["perm"])
        if sorted(perm) != list(range(len(shape))):
            raise ValueError(f"perm {list(perm)} is not a permutation of the {len(shape)} axes")
        return [(tuple(shape[p] for p in perm), in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        return T.transpose_forward(xs[0], attrs["perm"]), None

    def _backward(self, attrs, saved, dy, needs):
        return [T.transpose_backward(dy, attrs["perm"])]

    def _c_read(self, attrs, shape, out_shape):
        strides = low.contiguous_strides(shape)
        return 0, [strides[p] for p in attrs["perm"]]


@register
class OnnxConcat(OnnxOp):
    """attrs: axis (normalised)."""

    name = "OnnxConcat"
    max_inputs = None

    def _types(self, attrs, in_types):
        axis = attrs["axis"]
        first = tuple(in_types[0].shape)
        for t in in_types[1:]:
            s = tuple(t.shape)
            if len(s) != len(first) or s[:axis] + s[axis + 1:] != first[:axis] + first[axis + 1:]:
                raise ValueError(f"inputs {[list(t.shape) for t in in_types]} differ outside axis {axis}")
        total = sum(t.shape[axis] for t in in_types)
        return [(first[:axis] + (total,) + first[axis + 1:], in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        return T.concat_forward(xs, attrs["axis"]), [x.shape for x in xs]

    def _backward(self, attrs, shapes, dy, needs):
        return T.concat_backward(dy, shapes, attrs["axis"])


@register
class OnnxGather(OnnxOp):
    """attrs: axis (normalised); inputs data, indices (integers; no gradient)."""

    name = "OnnxGather"
    min_inputs = max_inputs = 2

    def _types(self, attrs, in_types):
        s, axis = tuple(in_types[0].shape), attrs["axis"]
        return [(s[:axis] + tuple(in_types[1].shape) + s[axis + 1:], in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        return T.gather_forward(xs[0], xs[1], attrs["axis"]), (xs[0].shape, xs[1])

    def _backward(self, attrs, saved, dy, needs):
        x_shape, indices = saved
        if needs[1]:
            raise GraphError("OnnxGather: no gradient to the indices")
        return [T.gather_backward(dy, x_shape, indices, attrs["axis"]), None]


@register
class OnnxSlice(_GatherKernel):
    """attrs: starts, ends, axes, steps (ONNX Slice, constants)."""

    name = "OnnxSlice"

    def _index(self, attrs, shape):
        return T.slice_index(shape, attrs["starts"], attrs["ends"], attrs.get("axes"), attrs.get("steps"))

    def _types(self, attrs, in_types):
        shape = tuple(in_types[0].shape)
        out = np.empty(shape, dtype=np.bool_)[self._index(attrs, shape)].shape   # numpy's own slice rule
        return [(out, in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        index = self._index(attrs, xs[0].shape)
        return T.slice_forward(xs[0], index), (xs[0].shape, index)

    def _backward(self, attrs, saved, dy, needs):
        return [T.slice_backward(dy, *saved)]

    def _c_read(self, attrs, shape, out_shape):
        strides, offset, steps = low.contiguous_strides(shape), 0, []
        for d, (n, sl) in enumerate(zip(shape, self._index(attrs, shape))):
            start, _, step = sl.indices(n)
            offset += start * strides[d]
            steps.append(step * strides[d])
        return offset, steps


@register
class OnnxExpand(OnnxOp):
    """attrs: shape (the Expand shape input, broadcast with the input's)."""

    name = "OnnxExpand"

    def _types(self, attrs, in_types):
        return [(tuple(np.broadcast_shapes(tuple(in_types[0].shape), tuple(attrs["shape"]))), in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        return T.expand_forward(xs[0], attrs["shape"]), xs[0].shape

    def _backward(self, attrs, x_shape, dy, needs):
        return [T.expand_backward(dy, x_shape)]


@register
class OnnxPad(OnnxOp):
    """attrs: pads (ONNX order over every axis), mode, value."""

    name = "OnnxPad"

    def _types(self, attrs, in_types):
        shape = T.pad_output_shape(in_types[0].shape, attrs["pads"])
        if min(shape, default=1) < 0:
            raise ValueError(f"pads {list(attrs['pads'])} crop more than the input {list(in_types[0].shape)}")
        return [(shape, in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        mode = attrs.get("mode", "constant")
        return T.pad_forward(xs[0], attrs["pads"], mode, attrs.get("value", 0.0)), xs[0].shape

    def _backward(self, attrs, x_shape, dy, needs):
        return [T.pad_backward(dy, x_shape, attrs["pads"], attrs.get("mode", "constant"))]


# -- convolution and pooling -----------------------------------------------------------------------
@register
class OnnxConv(OnnxOp):
    """attrs: strides, pads (explicit, ONNX order), dilations, group; inputs X, W, optional B."""

    name = "OnnxConv"
    min_inputs = 2
    max_inputs = 3

    def _types(self, attrs, in_types):
        x, w = tuple(in_types[0].shape), tuple(in_types[1].shape)
        if len(x) != len(w) or len(x) < 3 or x[1] != w[1] * attrs.get("group", 1):
            raise ValueError(f"input {list(x)} and weights {list(w)} do not match (group {attrs.get('group', 1)})")
        shape = T.conv_output_shape(x, w, attrs["strides"], attrs["pads"], attrs["dilations"])
        if min(shape[2:]) < 1:
            raise ValueError(f"input {list(x)} too small for weights {list(w)}")
        return [(shape, in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        b = xs[2] if len(xs) > 2 else None
        return T.conv_forward(xs[0], xs[1], b, attrs["strides"], attrs["pads"], attrs["dilations"],
                              attrs.get("group", 1))

    def _backward(self, attrs, ctx, dy, needs):
        dx, dw, db = T.conv_backward(dy, ctx, need_dx=needs[0], need_dw=needs[1])
        return [dx, dw] + ([db] if ctx.has_bias else [])


@register
class OnnxConvTranspose(OnnxOp):
    """attrs: strides, pads (explicit), dilations, group, output_padding; inputs X, W, optional B."""

    name = "OnnxConvTranspose"
    min_inputs = 2
    max_inputs = 3

    def _types(self, attrs, in_types):
        x, w = tuple(in_types[0].shape), tuple(in_types[1].shape)
        if len(x) != len(w) or len(x) < 3 or x[1] != w[0]:
            raise ValueError(f"input {list(x)} and weights {list(w)} do not match")
        shape = T.conv_transpose_output_shape(x, w, attrs["strides"], attrs["pads"], attrs["dilations"],
                                              attrs.get("group", 1), attrs.get("output_padding"))
        return [(shape, in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        b = xs[2] if len(xs) > 2 else None
        return T.conv_transpose_forward(xs[0], xs[1], b, attrs["strides"], attrs["pads"], attrs["dilations"],
                                        attrs.get("group", 1), attrs.get("output_padding"))

    def _backward(self, attrs, ctx, dy, needs):
        dx, dw, db = T.conv_transpose_backward(dy, ctx, need_dx=needs[0], need_dw=needs[1])
        return [dx, dw] + ([db] if ctx.has_bias else [])


def _pool_types(attrs, in_types):
    x = tuple(in_types[0].shape)
    out, _ = T.pool_geometry(x[2:], attrs["kernel"], attrs["strides"], attrs["pads"], attrs["dilations"],
                             attrs.get("ceil_mode", False))
    return x[:2] + out


@register
class OnnxMaxPool(OnnxOp):
    """attrs: kernel, strides, pads, dilations, ceil_mode, storage_order, indices (a second
    int64 output of flat input indices)."""

    name = "OnnxMaxPool"

    def _types(self, attrs, in_types):
        shape = _pool_types(attrs, in_types)
        out = [(shape, in_types[0].dtype)]
        if attrs.get("indices"):
            out.append((shape, "int64"))
        return out

    def _forward(self, attrs, xs, training):
        y, indices, ctx = T.max_pool_forward(xs[0], attrs["kernel"], attrs["strides"], attrs["pads"],
                                             attrs["dilations"], attrs.get("ceil_mode", False),
                                             bool(attrs.get("indices")), attrs.get("storage_order", 0))
        return ([y, indices] if attrs.get("indices") else y), ctx

    def _backward(self, attrs, ctx, dy, needs):
        return [T.max_pool_backward(dy, ctx)]


@register
class OnnxAveragePool(OnnxOp):
    """attrs: kernel, strides, pads, dilations, ceil_mode, count_include_pad."""

    name = "OnnxAveragePool"

    def _types(self, attrs, in_types):
        return [(_pool_types(attrs, in_types), in_types[0].dtype)]

    def _forward(self, attrs, xs, training):
        return T.avg_pool_forward(xs[0], attrs["kernel"], attrs["strides"], attrs["pads"], attrs["dilations"],
                                  attrs.get("ceil_mode", False), attrs.get("count_include_pad", False))

    def _backward(self, attrs, ctx, dy, needs):
        return [T.avg_pool_backward(dy, ctx)]


# -- normalisation and regularisation --------------------------------------------------------------
@register
class OnnxBatchNormalization(OnnxOp):
    """attrs: epsilon, momentum, training_mode; inputs X, scale, B, mean, var. In training mode
    (the attribute, or a training run) the batch statistics normalise and outputs 1 and 2 are
    the updated running mean and variance (nothing is updated in place)."""

    name = "OnnxBatchNormalization"
    min_inputs = max_inputs = 5

    def _types(self, attrs, in_types):
        x = tuple(in_types[0].shape)
        for t in in_types[1:]:
            if tuple(t.shape) != (x[1],):
                raise ValueError(f"per-channel inputs must be [{x[1]}], got {list(t.shape)}")
        out = [(x, in_types[0].dtype)]
        if attrs.get("training_mode"):
            out += [((x[1],), in_types[3].dtype), ((x[1],), in_types[4].dtype)]
        return out

    def _forward(self, attrs, xs, training):
        x, scale, bias, mean, var = xs
        eps = attrs.get("epsilon", 1e-5)
        if attrs.get("training_mode") or training:
            y, rmean, rvar, ctx = T.batchnorm_train_forward(x, scale, bias, mean, var, eps,
                                                            attrs.get("momentum", 0.9))
            saved = (ctx, True, scale)
            return ([y, rmean, rvar] if attrs.get("training_mode") else y), saved
        y, ctx = T.batchnorm_forward(x, scale, bias, mean, var, eps)
        return y, (ctx, False, scale)

    def _backward(self, attrs, saved, dy, needs):
        ctx, train, scale = saved
        if needs[3] or needs[4]:
            raise GraphError("OnnxBatchNormalization: no gradient to the running statistics")
        backward = T.batchnorm_train_backward if train else T.batchnorm_backward
        dx, dscale, dbias = backward(dy, ctx, scale)
        return [dx, dscale.astype(scale.dtype), dbias.astype(scale.dtype), None, None]


@register
class OnnxDropout(OnnxOp):
    """attrs: ratio, training_mode, mask (a second boolean output). Kept values are scaled by
    1 / (1 - ratio) (ONNX, PyTorch); identity unless training."""

    name = "OnnxDropout"

    def _types(self, attrs, in_types):
        out = [(in_types[0].shape, in_types[0].dtype)]
        if attrs.get("mask"):
            out.append((in_types[0].shape, "bool"))
        return out

    def _forward(self, attrs, xs, training):
        x = xs[0]
        xp = array_module(x)
        ratio = float(attrs.get("ratio", 0.5))
        if (attrs.get("training_mode") or training) and ratio > 0:
            keep = global_variables.rng.random(x.shape) >= ratio
            keep = to_device(keep, xp is not np)
            scale = x.dtype.type(1.0 / (1.0 - ratio))
            y = x * keep * scale
        else:
            keep, scale = None, None
            y = x
        if attrs.get("mask"):
            mask = keep if keep is not None else xp.ones(x.shape, dtype=bool)
            return [y, mask], (keep, scale)
        return y, (keep, scale)

    def _backward(self, attrs, saved, dy, needs):
        keep, scale = saved
        return [dy if keep is None else dy * keep * scale]


# -- resize ----------------------------------------------------------------------------------------
@register
class OnnxResize(OnnxOp):
    """attrs: shape (output), axes (per axis: None or (out, in, scale, roi start, roi end)),
    mode, coordinate_mode, nearest_mode, cubic_a, exclude_outside, antialias,
    extrapolation_value. The per-axis interpolation matrices are built once per attributes."""

    name = "OnnxResize"

    def __init__(self):
        self._cache = {}

    def _types(self, attrs, in_types):
        shape = tuple(in_types[0].shape)
        for i, spec in enumerate(attrs["axes"]):
            if spec is not None and spec[1] != shape[i]:
                raise ValueError(f"axis {i}: resize from {spec[1]}, input has {shape[i]}")
        return [(tuple(attrs["shape"]), in_types[0].dtype)]

    def _matrices(self, attrs, x):
        gpu = array_module(x) is not np
        key = (tuple(attrs["axes"]), attrs["mode"], attrs["coordinate_mode"], attrs["nearest_mode"],
               attrs["cubic_a"], attrs["exclude_outside"], attrs["antialias"], gpu)
        if key not in self._cache:
            mats, mask = [], None
            for i, spec in enumerate(attrs["axes"]):
                if spec is None:
                    mats.append(None)
                    continue
                out, size, scale, start, end = spec
                a, extrapolated = T.resize_matrix(out, size, scale, attrs["mode"], attrs["coordinate_mode"],
                                                  attrs["nearest_mode"], attrs["cubic_a"],
                                                  attrs["exclude_outside"], attrs["antialias"], (start, end))
                mats.append(to_device(a, gpu))
                if extrapolated is not None:
                    shape = [1] * len(attrs["axes"])
                    shape[i] = out
                    m = extrapolated.reshape(shape)
                    mask = m if mask is None else (mask | m)
            self._cache[key] = (mats, None if mask is None else to_device(mask, gpu))
        return self._cache[key]

    def _forward(self, attrs, xs, training):
        mats, mask = self._matrices(attrs, xs[0])
        return T.resize_forward(xs[0], mats, mask, attrs.get("extrapolation_value", 0.0)), (mats, mask)

    def _backward(self, attrs, saved, dy, needs):
        mats, mask = saved
        return [T.resize_backward(dy, mats, mask)]


# -- ONNX attributes read by both ONNX paths -------------------------------------------------------
def resolve_pads(auto_pad, in_sizes, kernel, strides, dilations, pads):
    """Explicit ONNX-ordered pads (all begins, then all ends) of a convolution or pooling from its
    `auto_pad` (SAME_*: output = ceil(in / stride)) or its `pads`; ValueError for an unknown
    auto_pad. (`n2d2.onnx_backend` and the ONNX importer.)"""
    nd = len(in_sizes)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for s, k, st, d in zip(in_sizes, kernel, strides, dilations):
            out = -(-s // st)
            total = max(0, (out - 1) * st + (k - 1) * d + 1 - s)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return tuple(begins + ends)
    if auto_pad == "VALID":
        return (0,) * (2 * nd)
    if auto_pad not in ("NOTSET", ""):
        raise ValueError(f"unknown auto_pad '{auto_pad}'")
    return tuple(int(p) for p in (pads or [0] * (2 * nd)))


def constant_value(attrs):
    """The array of an ONNX `Constant` node from its attributes (`value` already an array), or
    None for those n2d2 does not read (value_string(s), sparse_value). (`n2d2.onnx_backend` and
    the ONNX importer.)"""
    if "value" in attrs:
        return np.asarray(attrs["value"])
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dtype=dtype)
    return None


# -- one ONNX-semantics op inside the N2D2 tensor convention (generic cells) -------------------------
MAX_PARAM_SLOTS = 16
PARAM_ROLES = tuple(f"in{k}" for k in range(MAX_PARAM_SLOTS))


def carried_shape(shape):
    """The shape a tensor of ONNX `shape` (batch first) has among N2D2 cells: ranks below 4
    padded with trailing 1s ([N, F] as [N, F, 1, 1]), higher ranks as they are (same memory order)."""
    shape = tuple(int(s) for s in shape)
    return shape + (1,) * (4 - len(shape)) if len(shape) < 4 else shape


@register
class OnnxNode(OnnxOp):
    """An `Onnx*` op run on tensors held in the N2D2 convention: the op of a generic cell
    (`n2d2.cells.nn.onnx_node.OnnxNode`) that imports an ONNX node no N2D2 cell represents.

    attrs:
    - `op`, `attrs`: the inner `Onnx*` op and its resolved attributes;
    - `slots`: per inner input, `("x", k)` (the node's input k) or `("p", role, dtype)` (the
      parameter `role`, one of `PARAM_ROLES`, of that dtype);
    - `shapes`: per node input, its ONNX shape without the batch axis; each input, whatever
      the shape it is held in (same memory order), is viewed as [batch] + that shape;
    - `batch_keys`: inner attributes whose first element is the batch size (a Reshape target),
      set from the running batch.
    Output: the inner op's output 0 (which must keep the batch axis) in its carried shape."""

    name = "OnnxNode"
    min_inputs = 1
    max_inputs = None
    params = PARAM_ROLES
    trainable = PARAM_ROLES

    @staticmethod
    def _inner(attrs, batch):
        inner = dict(attrs["attrs"])
        for key in attrs.get("batch_keys", ()):
            inner[key] = (int(batch),) + tuple(inner[key])[1:]
        return inner

    def infer_types(self, attrs, in_types, param_shapes, node="?"):
        self.check_arity(node, len(in_types))
        shapes = attrs["shapes"]
        if len(in_types) != len(shapes):
            raise GraphError(f"node '{node}' (OnnxNode {attrs['op']}): {len(in_types)} inputs, expected {len(shapes)}")
        batch = int(in_types[0].shape[0])
        inner_types = []
        for k, t in enumerate(in_types):
            want = (int(t.shape[0]),) + tuple(shapes[k])
            if int(np.prod(t.shape)) != int(np.prod(want)) or int(t.shape[0]) != batch:
                raise GraphError(f"node '{node}' (OnnxNode {attrs['op']}): input {k} of shape {list(t.shape)} "
                                 f"cannot be viewed as [N] + {list(shapes[k])} (batch {batch})")
        for slot in attrs["slots"]:
            if slot[0] == "x":
                t = in_types[slot[1]]
                inner_types.append(TensorType((int(t.shape[0]),) + tuple(shapes[slot[1]]), t.dtype))
            else:
                if slot[1] not in param_shapes:
                    raise GraphError(f"node '{node}' (OnnxNode {attrs['op']}): parameter '{slot[1]}' is not bound")
                inner_types.append(TensorType(tuple(param_shapes[slot[1]]), slot[2]))
        out = op_registry.get(attrs["op"], node=node).infer_types(self._inner(attrs, batch), inner_types, {}, node)[0]
        if not out.shape or int(out.shape[0]) != batch:
            raise GraphError(f"node '{node}' (OnnxNode {attrs['op']}): its output {list(out.shape)} does not keep "
                             f"the batch axis ({batch})")
        return [TensorType(carried_shape(out.shape), out.dtype)]

    def forward(self, attrs, xs, params, training=False):
        batch = int(xs[0].shape[0])
        shapes = attrs["shapes"]
        args = [xs[s[1]].reshape((batch,) + tuple(shapes[s[1]])) if s[0] == "x" else params[s[1]]
                for s in attrs["slots"]]
        inner = self._inner(attrs, batch)
        ys, saved = op_registry.get(attrs["op"]).forward(inner, args, {}, training)
        y = ys[0]
        return [y.reshape(carried_shape(y.shape))], (saved, inner, [x.shape for x in xs], y.shape)

    def lower_c(self, graph, node, training):
        """The inner op's kernel (its `c_geometry` on the inner shapes, batch included) on the
        node's inputs and parameters viewed in their ONNX shapes (same memory order)."""
        attrs = graph.attrs(node)
        inner_op = op_registry.get(attrs["op"], node=node)
        if getattr(inner_op, "c_geometry", None) is None:
            return Unsupported(f"OnnxNode {attrs['op']}: the inner op has no C kernel")
        xslots = [slot[1] for slot in attrs["slots"] if slot[0] == "x"]
        if training and len(set(xslots)) < len(xslots):
            return Unsupported(f"OnnxNode {attrs['op']}: an input read twice (its two gradients would share a buffer)")
        in_types = graph.input_types(node)
        batch = int(in_types[0].shape[0])
        bound = graph.node(node).params
        inner_types = []
        for slot in attrs["slots"]:
            if slot[0] == "x":
                inner_types.append(TensorType((batch,) + tuple(attrs["shapes"][slot[1]]), in_types[slot[1]].dtype))
            else:
                inner_types.append(TensorType(tuple(graph.params[bound[slot[1]]].shape), slot[2]))
        inner = self._inner(attrs, batch)
        out = inner_op.infer_types(inner, inner_types, {}, node)
        if any(t.dtype != "float32" for t in inner_types + out[:1]):
            return Unsupported(f"OnnxNode {attrs['op']}: tensors are not all float32")
        g = inner_op.c_geometry(inner, [tuple(t.shape) for t in inner_types], tuple(out[0].shape))
        if isinstance(g, Unsupported):
            return Unsupported(f"OnnxNode {attrs['op']}: {g.reason}")
        return dict(g, SLOTS=[tuple(slot[:2]) for slot in attrs["slots"]])

    def lower_cuda(self, graph, node, training):
        """The inner op's CUDA kernels (cuda/onnx.cu.j2) on the geometry of `lower_c`."""
        attrs = graph.attrs(node)
        g = self.lower_c(graph, node, training)
        if isinstance(g, Unsupported):
            return g
        why = op_registry.get(attrs["op"], node=node).cuda_refusal(g, training)
        return Unsupported(f"OnnxNode {attrs['op']}: {why}") if why else dict(g, PAR=False)

    def plan_cuda_forward(self, n, g, k):
        return _cuda_forward_plan(g, k)

    def plan_cuda_backward(self, n, g, k):
        needs = [n.dx[s] is not None if kind == "x" else n.dp.get(s) is not None for kind, s in g["SLOTS"]]
        return _cuda_backward_plan(g, needs, k)

    def kernel_context(self, ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation):
        """`inner`: the pointer of each inner operand (a node input or a bound parameter)."""
        ctx["inner"] = [ctx.x[k].ptr if kind == "x" else ctx.p[k] for kind, k in g["SLOTS"]]

    def backward(self, attrs, saved, dys, needs, params):
        inner_saved, inner, x_shapes, y_shape = saved
        slots = attrs["slots"]
        inner_needs = [bool(needs[s[1]]) if s[0] == "x" else np.issubdtype(np.dtype(s[2]), np.floating)
                       for s in slots]
        dxs = [None] * len(x_shapes)
        grads = {}
        if not any(inner_needs):
            return dxs, grads
        ds, _ = op_registry.get(attrs["op"]).backward(inner, inner_saved, [dys[0].reshape(y_shape)], inner_needs, {})
        for s, d in zip(slots, ds):
            if d is None:
                continue
            if s[0] == "x":
                d = d.reshape(x_shapes[s[1]])
                dxs[s[1]] = d if dxs[s[1]] is None else dxs[s[1]] + d
            else:
                grads[s[1]] = d
        return dxs, grads
