"""IR op definitions: for every op type, its arity, shape rule, forward and backward.

The math lives in `n2d2.ops` (the reference); an `OpDef` only marshals a node's attributes,
inputs and parameters to it. The numpy executor, autodiff and the passes read these
definitions; the code generators will pair each op with its templates.

Conventions: inputs and outputs are NCHW arrays (batch first); `attrs["activation"]`, when
present and not None, is an activation spec `(name, ((key, value), ...))` applied after the
op (a fused activation); `forward` returns `(outputs, saved)` and `backward` receives `saved`
and returns `(input gradients, {param role: gradient})`.
"""
import numpy as np

from n2d2.backend import array_module
from n2d2.ir.types import GraphError, TensorType
from n2d2.ops import activation as act_ops
from n2d2.ops import batchnorm as bn_ops
from n2d2.ops import conv as conv_ops
from n2d2.ops import deconv as deconv_ops
from n2d2.ops import dropout as dropout_ops
from n2d2.ops import elemwise as elemwise_ops
from n2d2.ops import fc as fc_ops
from n2d2.ops import normalize as normalize_ops
from n2d2.ops import padding as pad_ops
from n2d2.ops import pool as pool_ops
from n2d2.ops import quantizer as quant_ops
from n2d2.ops import resize as resize_ops
from n2d2.ops import softmax as softmax_ops
from n2d2.ops import transpose as transpose_ops


def activation_spec(activation):
    """The plain-data spec of an `n2d2.activation` object (None stays None)."""
    if activation is None:
        return None
    params = tuple((k, v) for k, v in sorted(activation._config.items()) if k != "quantizer")
    return (type(activation).__name__, params)


def activation_forward(spec, z):
    """f(z) of an activation spec (n2d2.ops.activation's table)."""
    return act_ops.forward(spec, z)


def activation_backward(spec, dy, z):
    """dL/dz from dL/dy of an activation spec, given the pre-activation z."""
    return act_ops.backward(spec, dy, z)


class OpDef:
    """Base op definition. Subclasses set `name`, arity, and implement `_infer`, `_forward`,
    `_backward`; the fused activation is handled here."""

    name = None
    min_inputs = 1
    max_inputs = 1
    elementwise = False   # output shape == input 0 shape, may run in place of input 0
    params = ()           # parameter roles the op reads
    trainable = ()        # roles that receive gradients

    def check_arity(self, node, n):
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            bound = f"{self.min_inputs}" if self.min_inputs == self.max_inputs else \
                f"{self.min_inputs}..{self.max_inputs if self.max_inputs is not None else 'n'}"
            raise GraphError(f"node '{node}' ({self.name}): {n} inputs, expected {bound}")

    def infer(self, graph, node):
        d = graph.nx.nodes[node]
        param_shapes = {r: graph.params[p].shape for r, p in d["params"].items() if p in graph.params}
        return self.infer_types(d["attrs"], graph.input_types(node), param_shapes, node)

    def infer_types(self, attrs, in_types, param_shapes, node="?"):
        self.check_arity(node, len(in_types))
        empty = [k for k, t in enumerate(in_types) if len(t.shape) and t.shape[0] == 0]
        if empty:   # the reference would fail on empty arrays and a kernel return nothing
            raise GraphError(f"node '{node}' ({self.name}): input {empty[0]} {list(in_types[empty[0]].shape)} has a "
                             "batch of 0; expected at least 1")
        try:
            shapes = self._infer(attrs, [tuple(t.shape) for t in in_types], param_shapes)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise GraphError(f"node '{node}' ({self.name}): {e}") from None
        dtype = in_types[0].dtype if in_types else attrs.get("dtype", "float32")
        return [TensorType(tuple(int(v) for v in s), dtype) for s in shapes]

    def _infer(self, attrs, in_shapes, param_shapes):
        return [in_shapes[0]]

    def forward(self, attrs, xs, params, training=False):
        wspec = attrs.get("weight_quantizer")
        if wspec is not None:   # fake-quantized weights: the op computes with them
            params, wctx = quantize_weights(self, attrs, wspec, params, training)
        z, saved = self._forward(attrs, xs, params, training)
        spec = attrs.get("activation")
        saved = (saved, None if spec is None else z)
        if wspec is not None:
            saved = _QuantizedSaved(saved, wctx, params)
        return [z if spec is None else activation_forward(spec, z)], saved

    def backward(self, attrs, saved, dys, needs, params):
        quantized = isinstance(saved, _QuantizedSaved)
        if quantized:
            params = saved.params
            saved, wctx = saved.inner, saved.wctx
        core, z = saved
        dy = dys[0]
        spec = attrs.get("activation")
        if spec is not None:
            dy = activation_backward(spec, dy, z)
        dxs, grads = self._backward(attrs, core, dy, needs, params)
        if quantized:
            grads = weight_quantizer_backward(attrs["weight_quantizer"], grads, wctx)
        return dxs, grads

    def _forward(self, attrs, xs, params, training):
        raise NotImplementedError

    def _backward(self, attrs, saved, dy, needs, params):
        raise NotImplementedError


class _QuantizedSaved:
    """Forward context of a node with fake-quantized weights (the quantized parameters kept
    for the backward, which differentiates through them)."""

    __slots__ = ("inner", "wctx", "params")

    def __init__(self, inner, wctx, params):
        self.inner, self.wctx, self.params = inner, wctx, params


def _options(spec):
    kind, opts = spec
    return kind, dict(opts)


def _sat_fan_out(op, attrs, w):
    """SAT's N_out: outputs x kernel size (Conv [O, C/g, kH, kW], Fc [O, C], Deconv [C, O/g, kH, kW])."""
    if hasattr(op, "n_out"):   # tensors registered on a quantizer (add_weights)
        return op.n_out
    if op.name == "Deconv":
        return w.size // w.shape[0] * int(attrs.get("groups", 1))
    return w.size // w.shape[1]


def _lsq_step(step, v, qp, training):
    """The step size; NaN = not initialised yet (upstream's `set_opt_init_step_size`): the first
    training forward stores 2 mean|v| / sqrt(Qp) of that tensor or batch; a forward before it
    (tracing, inference) uses that value without storing it (1.0 when v is all zeros)."""
    xp = array_module(step)
    if not bool(xp.isnan(step[0])):
        return float(step[0])
    s = quant_ops.lsq_init_step(v, qp)
    if not s > 0.0:
        return 1.0
    if training:
        step[...] = s
    return s


def quantize_weights(op, attrs, spec, params, training):
    """(params with fake-quantized weights, context of the weight quantizer's backward)."""
    kind, o = _options(spec)
    w = params["weights"]
    if kind == "SAT":
        wq, ctx = quant_ops.sat_weight_forward(w, o["range"], o["quant_mode"], o["apply_quantization"],
                                               o["apply_scaling"], _sat_fan_out(op, attrs, w))
    elif kind == "LSQ":
        qn, qp = quant_ops.lsq_bounds(o["range"], signed=True)
        wq, ctx = quant_ops.lsq_forward(w, _lsq_step(params["weight_step"], w, qp, training), qn, qp)
    else:
        raise GraphError(f"{op.name}: unknown weight quantizer '{kind}' (expected SAT or LSQ)")
    return dict(params, weights=wq), ctx


def weight_quantizer_backward(spec, grads, ctx):
    """Map dL/d(quantized weights) to dL/d(weights) (and dL/d(step) for LSQ)."""
    kind, o = _options(spec)
    grads = dict(grads)
    if kind == "SAT":
        grads["weights"] = quant_ops.sat_weight_backward(grads["weights"], ctx)
    else:
        qn, qp = quant_ops.lsq_bounds(o["range"], signed=True)
        dw, ds = quant_ops.lsq_backward(grads["weights"], ctx, qn, qp)
        grads["weights"] = dw
        grads["weight_step"] = array_module(dw).asarray([ds], dtype=np.float32)
    return grads


_REGISTRY = {}


def register(cls):
    _REGISTRY[cls.name] = cls()
    return cls


def get(name, node=None) -> OpDef:
    op = _REGISTRY.get(name)
    if op is None:
        where = f"node '{node}': " if node else ""
        raise GraphError(f"{where}unknown op '{name}' (known: {', '.join(sorted(_REGISTRY))})")
    return op


def names():
    return sorted(_REGISTRY)


def _split_channels(dx, shapes, needs):
    """Per-input slices of a gradient of channel-concatenated inputs."""
    if len(shapes) == 1:
        return [dx if needs[0] else None]
    out, offset = [], 0
    for s, need in zip(shapes, needs):
        out.append(dx[:, offset:offset + s[1]] if need else None)
        offset += s[1]
    return out


def _concat(xs):
    return xs[0] if len(xs) == 1 else array_module(*xs).concatenate(xs, axis=1)


def _mapping_like(attrs, x):
    """The connection table attr `mapping` (host array or None) on x's device."""
    mapping = attrs.get("mapping")
    if mapping is None:
        return None
    from n2d2.backend import to_device

    return to_device(mapping, array_module(x) is not np)


def _convolution_grads(dx, dw, db, shapes, needs):
    """(input gradients, parameter gradients) of a convolution of channel-concatenated inputs."""
    grads = {"weights": dw}
    if db is not None:
        grads["biases"] = db
    if dx is None:
        return [None] * len(needs), grads
    return _split_channels(dx, shapes, needs), grads


def _check_spatial(in_shapes):
    for s in in_shapes[1:]:
        if s[0] != in_shapes[0][0] or s[2:] != in_shapes[0][2:]:
            raise ValueError(f"inputs {list(in_shapes)} differ on batch or H, W")


def _concat_shape(in_shapes):
    _check_spatial(in_shapes)
    return (in_shapes[0][0], sum(s[1] for s in in_shapes)) + tuple(in_shapes[0][2:])


# -- structure ---------------------------------------------------------------------------------
@register
class Input(OpDef):
    """A graph input (its output type is given when the node is created)."""

    name = "Input"
    min_inputs = max_inputs = 0

    def infer(self, graph, node):
        return list(graph.output_types(node))


class _ConcatenatingOp(OpDef):
    """Base of ops that take several inputs concatenated along channels, shape unchanged."""

    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        return [_concat_shape(in_shapes)]


@register
class Concat(_ConcatenatingOp):
    """Channel concatenation (an Interface fed to a cell)."""

    name = "Concat"

    def _forward(self, attrs, xs, params, training):
        return _concat(xs), [x.shape for x in xs]

    def _backward(self, attrs, shapes, dy, needs, params):
        return _split_channels(dy, shapes, needs), {}


@register
class Identity(OpDef):
    name = "Identity"
    elementwise = True

    def _forward(self, attrs, xs, params, training):
        return xs[0], None

    def _backward(self, attrs, saved, dy, needs, params):
        return [dy], {}


@register
class Reshape(OpDef):
    """attrs: shape (per-sample numpy shape, batch kept)."""

    name = "Reshape"
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        in_shape = _concat_shape(in_shapes)
        shape = tuple(attrs["shape"])
        if int(np.prod(shape)) != int(np.prod(in_shape[1:])):
            raise ValueError(f"cannot reshape {list(in_shape)} to per-sample {list(shape)}")
        return [(in_shape[0],) + shape]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        return x.reshape((x.shape[0],) + tuple(attrs["shape"])), (x.shape, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        shape, shapes = saved
        return _split_channels(dy.reshape(shape), shapes, needs), {}


@register
class Transpose(OpDef):
    """attrs: perm (N2D2 axes [X, Y, Z, B])."""

    name = "Transpose"
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        axes = transpose_ops.numpy_axes(attrs["perm"])
        shape = _concat_shape(in_shapes)
        return [tuple(shape[a] for a in axes)]

    def _forward(self, attrs, xs, params, training):
        return transpose_ops.transpose_forward(_concat(xs), attrs["perm"]), [a.shape for a in xs]

    def _backward(self, attrs, shapes, dy, needs, params):
        return _split_channels(transpose_ops.transpose_backward(dy, attrs["perm"]), shapes, needs), {}


# -- element-wise ------------------------------------------------------------------------------
@register
class Activation(Concat):
    """attrs: activation (a spec; None = identity). Several inputs are concatenated first: the
    core is Concat's, the activation is applied by OpDef.forward."""

    name = "Activation"
    elementwise = True


@register
class Dropout(_ConcatenatingOp):
    """attrs: dropout (drop probability; kept values are not rescaled, as N2D2)."""

    name = "Dropout"
    elementwise = True

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        if not training:
            return x, (None, [a.shape for a in xs])
        from n2d2.backend import to_device
        from n2d2.settings import global_variables

        mask = dropout_ops.dropout_mask(global_variables.rng, x.shape, attrs["dropout"], x.dtype)
        mask = to_device(mask, array_module(x) is not np)
        return dropout_ops.dropout_forward(x, mask), (mask, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        mask, shapes = saved
        dx = dy if mask is None else dropout_ops.dropout_backward(dy, mask)
        return _split_channels(dx, shapes, needs), {}


@register
class ElemWise(OpDef):
    """attrs: operation, weights, shifts (per input: scalar or per-channel list)."""

    name = "ElemWise"
    max_inputs = None
    elementwise = True

    def _infer(self, attrs, in_shapes, param_shapes):
        for s in in_shapes[1:]:
            if s != in_shapes[0]:
                raise ValueError(f"ElemWise inputs must share one shape, got {list(in_shapes)}")
        return [in_shapes[0]]

    def _forward(self, attrs, xs, params, training):
        y, ctx = elemwise_ops.elemwise_forward(xs, attrs["operation"], attrs["weights"], attrs["shifts"])
        return y, (ctx, xs if attrs["operation"] in ("AbsSum", "EuclideanSum", "Prod", "Max") else None)

    def _backward(self, attrs, saved, dy, needs, params):
        ctx, xs = saved
        if xs is None:
            xs = [None] * len(needs)
        dxs = elemwise_ops.elemwise_backward(dy, xs, ctx, attrs["operation"], attrs["weights"], attrs["shifts"])
        return [g if n else None for g, n in zip(dxs, needs)], {}


@register
class Scaling(_ConcatenatingOp):
    """attrs: scaling (an `n2d2.scaling` object: its forward/backward per output channel)."""

    name = "Scaling"
    elementwise = True

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        return attrs["scaling"].forward(x), (x, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        x, shapes = saved
        return _split_channels(attrs["scaling"].backward(dy, x), shapes, needs), {}


@register
class Softmax(OpDef):
    """attrs: group_size, with_loss (backward passes the gradient through: fused cross-entropy)."""

    name = "Softmax"
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        shape = _concat_shape(in_shapes)
        g = attrs.get("group_size", 0)
        if shape[1] == 0:
            raise ValueError("softmax over 0 channels; expected at least 1")
        if g and shape[1] % g:
            raise ValueError(f"group_size {g} does not divide {shape[1]} channels")
        return [shape]

    def _forward(self, attrs, xs, params, training):
        y = softmax_ops.softmax_forward(_concat(xs), attrs.get("group_size", 0))
        return y, (y, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        y, shapes = saved
        if attrs.get("with_loss"):
            dx = softmax_ops.softmax_with_loss_backward(dy)
        else:
            dx = softmax_ops.softmax_backward(dy, y, attrs.get("group_size", 0))
        return _split_channels(dx, shapes, needs), {}


@register
class Normalize(OpDef):
    """L2 normalisation across channels at each pixel (N2D2's NormalizeCell); no attrs."""

    name = "Normalize"
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        return [_concat_shape(in_shapes)]

    def _forward(self, attrs, xs, params, training):
        y, r = normalize_ops.normalize_forward(_concat(xs))
        return y, (y, r, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        y, r, shapes = saved
        return _split_channels(normalize_ops.normalize_backward(dy, y, r), shapes, needs), {}


# -- spatial -----------------------------------------------------------------------------------
@register
class Padding(OpDef):
    """attrs: top, bot, left, right (negative crops)."""

    name = "Padding"
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        n, c, h, w = _concat_shape(in_shapes)
        oh, ow = pad_ops.output_hw(h, w, attrs["top"], attrs["bot"], attrs["left"], attrs["right"])
        if oh < 1 or ow < 1:
            raise ValueError(f"padding {attrs} leaves nothing of a {h}x{w} input")
        return [(n, c, oh, ow)]

    def _forward(self, attrs, xs, params, training):
        a = attrs
        return pad_ops.pad_forward(_concat(xs), a["top"], a["bot"], a["left"], a["right"]), [x.shape for x in xs]

    def _backward(self, attrs, shapes, dy, needs, params):
        a = attrs
        return _split_channels(pad_ops.pad_backward(dy, a["top"], a["bot"], a["left"], a["right"]), shapes, needs), {}


@register
class Resize(OpDef):
    """attrs: height, width, mode, align_corners."""

    name = "Resize"
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        n, c, _, _ = _concat_shape(in_shapes)
        return [(n, c, attrs["height"], attrs["width"])]

    def __init__(self):
        self._cache = {}

    def _matrices(self, attrs, x):
        """Interpolation matrices, built once per (sizes, mode, device)."""
        from n2d2.backend import to_device

        gpu = array_module(x) is not np
        _, _, h, w = x.shape
        align = attrs.get("align_corners", True)
        key = (attrs["height"], attrs["width"], h, w, attrs["mode"], align, gpu)
        if key not in self._cache:
            a_h = resize_ops.interpolation_matrix(attrs["height"], h, attrs["mode"], align)
            a_w = resize_ops.interpolation_matrix(attrs["width"], w, attrs["mode"], align)
            self._cache[key] = (to_device(a_h, gpu), to_device(a_w, gpu))
        return self._cache[key]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        a_h, a_w = self._matrices(attrs, x)
        return resize_ops.resize_forward(x, a_h, a_w), (a_h, a_w, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        a_h, a_w, shapes = saved
        return _split_channels(resize_ops.resize_backward(dy, a_h, a_w), shapes, needs), {}


@register
class Pool(OpDef):
    """attrs: pooling ("Max"/"Average"), pool, stride, padding ((h, w) pairs), mapping
    (None = per channel, else a bool [C, O] array)."""

    name = "Pool"
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        n, c, h, w = _concat_shape(in_shapes)
        (ph, pw), (sh, sw), (qh, qw) = attrs["pool"], attrs["stride"], attrs["padding"]
        oh, ow = pool_ops.output_size(h, ph, sh, qh), pool_ops.output_size(w, pw, sw, qw)
        if oh < 1 or ow < 1:
            raise ValueError(f"pool {list(attrs['pool'])} larger than the {h}x{w} input")
        mapping = attrs.get("mapping")
        if mapping is not None:
            if mapping.shape[0] != c:
                raise ValueError(f"mapping {list(mapping.shape)} does not match {c} input channels")
            c = mapping.shape[1]
        return [(n, c, oh, ow)]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        pool, stride, pad = attrs["pool"], attrs["stride"], attrs["padding"]
        mapping = _mapping_like(attrs, x)
        shapes = [a.shape for a in xs]
        if attrs["pooling"] == "Max":
            if mapping is None:
                y = pool_ops.max_pool_forward(x, pool, stride, pad)
                return y, (x, y, None, shapes)
            y, ctx = pool_ops.mapped_max_pool_forward(x, mapping, pool, stride, pad)
            return y, (x, ctx, mapping, shapes)
        if mapping is None:
            return pool_ops.avg_pool_forward(x, pool, stride, pad), (x.shape, None, None, shapes)
        return pool_ops.mapped_avg_pool_forward(x, mapping, pool, stride, pad), (x.shape, None, mapping, shapes)

    def _backward(self, attrs, saved, dy, needs, params):
        first, second, mapping, shapes = saved
        pool, stride, pad = attrs["pool"], attrs["stride"], attrs["padding"]
        if attrs["pooling"] == "Max":
            if mapping is None:
                dx = pool_ops.max_pool_backward(dy, first, second, pool, stride, pad)
            else:
                dx = pool_ops.mapped_max_pool_backward(dy, first, second, mapping, pool, stride, pad)
        elif mapping is None:
            dx = pool_ops.avg_pool_backward(dy, first, pool, stride, pad)
        else:
            dx = pool_ops.mapped_avg_pool_backward(dy, first, mapping, pool, stride, pad)
        return _split_channels(dx, shapes, needs), {}


# -- with parameters -----------------------------------------------------------------------------
@register
class Fc(OpDef):
    """Fully connected over C*H*W; params weights [O, C*H*W], biases [O] (optional)."""

    name = "Fc"
    max_inputs = None
    params = ("weights", "biases", "weight_step")
    trainable = ("weights", "biases", "weight_step")

    def _infer(self, attrs, in_shapes, param_shapes):
        n = in_shapes[0][0]
        total = sum(int(np.prod(s[1:])) for s in in_shapes)
        o, i = param_shapes["weights"]
        if total != i:
            raise ValueError(f"inputs {list(in_shapes)} have C*H*W = {total}, weights expect {i}")
        return [(n, o, 1, 1)]

    def _forward(self, attrs, xs, params, training):
        n = xs[0].shape[0]
        x2d = _concat([x.reshape(n, -1) for x in xs])
        y = fc_ops.fc_forward(x2d, params["weights"], params.get("biases"))
        return y.reshape(n, -1, 1, 1), (x2d, [x.shape for x in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        x2d, shapes = saved
        n = dy.shape[0]
        dx, dw, db = fc_ops.fc_backward(dy.reshape(n, -1), x2d, params["weights"], any(needs))
        grads = {"weights": dw}
        if params.get("biases") is not None:
            grads["biases"] = db
        if dx is None:
            return [None] * len(needs), grads
        out, offset = [], 0
        for s, need in zip(shapes, needs):
            size = int(np.prod(s[1:]))
            out.append(dx[:, offset:offset + size].reshape(s) if need else None)
            offset += size
        return out, grads


@register
class Conv(OpDef):
    """attrs: stride, padding, dilation, sub_sample ((h, w) pairs), groups, mapping (bool [C, O]
    or None); params weights [O, C/groups, kH, kW], biases [O] (optional)."""

    name = "Conv"
    max_inputs = None
    params = ("weights", "biases", "weight_step")
    trainable = ("weights", "biases", "weight_step")

    def _infer(self, attrs, in_shapes, param_shapes):
        shape = _concat_shape(in_shapes)
        o, cg, kh, kw = param_shapes["weights"]
        if cg * attrs.get("groups", 1) != shape[1]:
            raise ValueError(f"weights {list(param_shapes['weights'])} (groups {attrs.get('groups', 1)}) do not "
                             f"match {shape[1]} input channels")
        geom = conv_ops.ConvGeometry(shape, o, (kh, kw), attrs["stride"], attrs["padding"], attrs["dilation"],
                                     attrs.get("sub_sample", (1, 1)))
        return [geom.out_shape]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        y, ctx = conv_ops.conv2d_forward(x, params["weights"], params.get("biases"), attrs["stride"],
                                         attrs["padding"], attrs["dilation"], attrs.get("sub_sample", (1, 1)),
                                         attrs.get("groups", 1), _mapping_like(attrs, x))
        return y, (ctx, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        ctx, shapes = saved
        dx, dw, db = conv_ops.conv2d_backward(dy, ctx, need_dx=any(needs), need_dw=True)
        return _convolution_grads(dx, dw, db, shapes, needs)


@register
class Deconv(OpDef):
    """Transposed convolution. attrs: stride, padding, dilation ((h, w) pairs), groups, mapping
    (bool [C_in, C_out] or None); params weights [C_in, C_out/groups, kH, kW], biases [C_out]."""

    name = "Deconv"
    max_inputs = None
    params = ("weights", "biases", "weight_step")
    trainable = ("weights", "biases", "weight_step")

    def _infer(self, attrs, in_shapes, param_shapes):
        n, c_in, h, w = _concat_shape(in_shapes)
        ci, og, kh, kw = param_shapes["weights"]
        if ci != c_in:
            raise ValueError(f"weights {list(param_shapes['weights'])} do not match {c_in} input channels")
        (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
        out = (deconv_ops.deconv_output_size(h, kh, sh, ph, dh), deconv_ops.deconv_output_size(w, kw, sw, pw, dw))
        if min(out) < 1:
            raise ValueError(f"empty output {list(out)}")
        return [(n, og * attrs.get("groups", 1)) + out]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        y, ctx = deconv_ops.conv_transpose2d_forward(x, params["weights"], params.get("biases"), attrs["stride"],
                                                     attrs["padding"], attrs["dilation"], attrs.get("groups", 1),
                                                     _mapping_like(attrs, x))
        return y, (ctx, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        ctx, shapes = saved
        dx, dw, db = deconv_ops.conv_transpose2d_backward(dy, ctx, need_dx=any(needs))
        return _convolution_grads(dx, dw, db, shapes, needs)


@register
class BatchNorm(OpDef):
    """attrs: epsilon, momentum, unbiased; params scales, biases (trained), means, variances
    (moving statistics, updated in place by a training forward)."""

    name = "BatchNorm"
    max_inputs = None
    params = ("scales", "biases", "means", "variances")
    trainable = ("scales", "biases")

    def _infer(self, attrs, in_shapes, param_shapes):
        shape = _concat_shape(in_shapes)
        if param_shapes["scales"][0] != shape[1]:
            raise ValueError(f"{param_shapes['scales'][0]} scales for {shape[1]} channels")
        return [shape]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        eps = attrs["epsilon"]
        shapes = [a.shape for a in xs]
        if training and attrs["momentum"] != 0.0:
            y, ctx, mean, var = bn_ops.batchnorm_forward_train(x, params["scales"], params["biases"], eps)
            count = x.shape[0] * x.shape[2] * x.shape[3]
            bn_ops.update_moving_statistics(params["means"], params["variances"], mean, var, attrs["momentum"],
                                            count, unbiased=attrs.get("unbiased", False))
            return y, (ctx, True, shapes)
        y, ctx = bn_ops.batchnorm_forward_infer(x, params["scales"], params["biases"], params["means"],
                                                params["variances"], eps)
        return y, (ctx, False, shapes)

    def _backward(self, attrs, saved, dy, needs, params):
        ctx, train, shapes = saved
        backward = bn_ops.batchnorm_backward_train if train else bn_ops.batchnorm_backward_infer
        dx, dscale, dbias = backward(dy, ctx, params["scales"])
        grads = {"scales": dscale.astype(np.float32), "biases": dbias.astype(np.float32)}
        return _split_channels(dx, shapes, needs), grads


# -- quantization --------------------------------------------------------------------------------
@register
class FakeQuantize(OpDef):
    """Activation fake-quantizer (QAT). attrs: quantizer = ("SAT", ((range, R),)) (CG-PACT, param
    `quant_param` = [alpha]) or ("LSQ", ((range, R),)) (param = [step size], NaN until the first
    forward initialises it). Not `elementwise`: its backward reads its input, and passes must not
    move or fuse anything across it."""

    name = "FakeQuantize"
    params = ("quant_param",)
    trainable = ("quant_param",)

    def _forward(self, attrs, xs, params, training):
        kind, o = _options(attrs["quantizer"])
        x, p = xs[0], params["quant_param"]
        if kind == "SAT":
            y, ctx = quant_ops.sat_act_forward(x, float(p[0]), o["range"])
        elif kind == "LSQ":
            qn, qp = quant_ops.lsq_bounds(o["range"], signed=False)
            y, ctx = quant_ops.lsq_forward(x, _lsq_step(p, x, qp, training), qn, qp)
        else:
            raise GraphError(f"FakeQuantize: unknown activation quantizer '{kind}' (expected SAT or LSQ)")
        return y, ctx

    def _backward(self, attrs, saved, dy, needs, params):
        kind, o = _options(attrs["quantizer"])
        if kind == "SAT":
            dx, dp = quant_ops.sat_act_backward(dy, saved, o["range"])
        else:
            qn, qp = quant_ops.lsq_bounds(o["range"], signed=False)
            dx, dp = quant_ops.lsq_backward(dy, saved, qn, qp)
        return [dx if needs[0] else None], {"quant_param": array_module(dx).asarray([dp], dtype=np.float32)}
