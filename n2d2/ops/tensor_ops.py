"""General tensor ops with ONNX semantics (any rank, numpy broadcasting), forward and backward.

The N2D2-shaped ops of `n2d2.ops` are NCHW, symmetric-padded and per-channel; the ONNX backend
(`n2d2.onnx_backend`) needs the general forms. Each op is written against an array module
(numpy or cupy) and works in float32 and float64; forwards also accept the integer dtypes
where the op is defined on them (arithmetic, max, shape ops, pooling max). Backward functions
return standard-sign gradients d(loss)/d(input) and reduce broadcast dimensions back to each
input's shape (`unbroadcast`).

Where an `n2d2.ops` function computes exactly what is needed it is reused after a reshape or
a pre-padding: 2-D convolutions (`conv.conv2d_*`, `deconv.conv_transpose2d_*`, 1-D ones as
H = 1), 2-D undilated pooling (`pool.*`), batch normalisation (`batchnorm.*`, any rank as
N x C x L x 1) and the resizing of the last two axes (`resize.resize_*`). The other ranks go
through generic N-d window code (strided views, one pass per kernel offset).

Pads are ONNX-ordered: `[begin_0, ..., begin_{n-1}, end_0, ..., end_{n-1}]` over the spatial
axes (conv, pool) or over every axis (`pad_forward`).
"""
import itertools
import math

import numpy as np

from n2d2.backend import array_module
from n2d2.ops import batchnorm as bn_ops
from n2d2.ops import conv as conv_ops
from n2d2.ops import deconv as deconv_ops
from n2d2.ops import pool as pool_ops
from n2d2.ops import resize as resize_ops
from n2d2.ops.activation import erf as act_erf


def _is_float(dtype) -> bool:
    return np.issubdtype(np.dtype(dtype), np.floating)


def _axes(axes, ndim):
    """Normalised, sorted tuple of (possibly negative) axes."""
    return tuple(sorted(int(a) % ndim if ndim else 0 for a in axes))


# -- broadcasting ---------------------------------------------------------------------------------
def unbroadcast(g, shape):
    """Sum `g` over the dimensions numpy broadcasting added or stretched to reach its shape."""
    shape = tuple(shape)
    if tuple(g.shape) == shape:
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, s in enumerate(shape)
                                       if s == 1 and g.shape[extra + i] != 1)
    return g.sum(axis=axes).reshape(shape) if axes else g.reshape(shape)


def add_forward(a, b):
    return a + b


def add_backward(dy, a_shape, b_shape):
    return unbroadcast(dy, a_shape), unbroadcast(dy, b_shape)


def sub_forward(a, b):
    return a - b


def sub_backward(dy, a_shape, b_shape):
    return unbroadcast(dy, a_shape), unbroadcast(-dy, b_shape)


def mul_forward(a, b):
    return a * b


def mul_backward(dy, a, b):
    return unbroadcast(dy * b, a.shape), unbroadcast(dy * a, b.shape)


def div_forward(a, b):
    """a / b; integer division truncates toward zero (ONNX, C), unlike numpy's floor division."""
    xp = array_module(a, b)
    if _is_float(a.dtype):
        return a / b
    q = a // b
    if np.issubdtype(a.dtype, np.signedinteger):
        q = xp.where((q * b != a) & ((a < 0) != (b < 0)), q + 1, q).astype(q.dtype)
    return q


def div_backward(dy, a, b):
    return unbroadcast(dy / b, a.shape), unbroadcast(-dy * a / (b * b), b.shape)


def sum_forward(xs):
    """Variadic broadcasting sum (ONNX Sum)."""
    y = xs[0]
    for x in xs[1:]:
        y = y + x
    return y


def sum_backward(dy, shapes):
    return [unbroadcast(dy, s) for s in shapes]


def _variadic(xs, ufunc):
    """`ufunc` (an array-module function name) folded over the broadcasting inputs."""
    f = getattr(array_module(*xs), ufunc)
    y = xs[0]
    for x in xs[1:]:
        y = f(y, x)
    return y


def max_forward(xs):
    """Variadic broadcasting maximum (ONNX Max)."""
    return _variadic(xs, "maximum")


def min_forward(xs):
    """Variadic broadcasting minimum (ONNX Min)."""
    return _variadic(xs, "minimum")


def max_backward(dy, xs, y):
    """The gradient of each element goes to the first input holding the maximum (the minimum:
    the backward of Min too)."""
    xp = array_module(dy)
    free = xp.ones(y.shape, dtype=bool)
    out = []
    for x in xs:
        won = (x == y) & free
        free &= ~won
        out.append(unbroadcast(dy * won, x.shape))
    return out


def where_forward(cond, a, b):
    return array_module(a, b).where(cond, a, b)


def where_backward(dy, cond, a_shape, b_shape):
    xp = array_module(dy)
    zero = dy.dtype.type(0)
    return unbroadcast(xp.where(cond, dy, zero), a_shape), unbroadcast(xp.where(cond, zero, dy), b_shape)


def less_forward(a, b):
    return a < b


# -- element-wise unary --------------------------------------------------------------------------
def exp_forward(x):
    return array_module(x).exp(x)


def exp_backward(dy, y):
    return dy * y


def abs_forward(x):
    return array_module(x).abs(x)


def abs_backward(dy, x):
    """d|x|/dx = sign(x) (0 at 0; NaN where x is NaN)."""
    return dy * array_module(x).sign(x)


def prelu_forward(x, slope):
    """ONNX PRelu: x where x >= 0 (and NaN), slope * x where x < 0 (slope broadcast to x)."""
    return array_module(x).where(x < 0, x * slope, x)


def prelu_backward(dy, x, slope):
    """(dx, dslope) of `prelu_forward`; dslope summed back to the slope's shape."""
    xp = array_module(x)
    neg = x < 0
    return xp.where(neg, dy * slope, dy), unbroadcast(xp.where(neg, dy * x, 0).astype(dy.dtype), slope.shape)


def log_forward(x):
    return array_module(x).log(x)


def log_backward(dy, x):
    return dy / x


def clip_forward(x, low=None, high=None):
    """min(max(x, low), high): with low > high every value is `high` (ONNX)."""
    xp = array_module(x)
    y = x
    if low is not None:
        y = xp.maximum(y, xp.asarray(low, dtype=x.dtype))
    if high is not None:
        y = xp.minimum(y, xp.asarray(high, dtype=x.dtype))
    return y


def clip_backward(dy, x, low=None, high=None):
    """Passes where low <= x <= high (bounds included, as torch.clamp)."""
    mask = None
    if low is not None:
        mask = x >= low
    if high is not None:
        mask = (x <= high) if mask is None else mask & (x <= high)
    return dy if mask is None else dy * mask




def erf_forward(x):
    return act_erf(array_module(x), x)


def erf_backward(dy, x):
    """d erf(x) / dx = 2 / sqrt(pi) * exp(-x^2)."""
    xp = array_module(x)
    return dy * (x.dtype.type(2.0 / math.sqrt(math.pi)) * xp.exp(-x * x))


def layer_norm_forward(x, scale, bias=None, axis=-1, epsilon=1e-5):
    """ONNX LayerNormalization: normalise over the axes from `axis` on (biased variance),
    then y = x_hat * scale + bias (scale and bias broadcast on those axes). Returns
    (y, mean, inv_std_dev, x_hat), statistics keeping the reduced axes as size 1."""
    xp = array_module(x)
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    centred = x - mean
    inv_std = 1.0 / xp.sqrt((centred * centred).mean(axis=axes, keepdims=True) + x.dtype.type(epsilon))
    x_hat = centred * inv_std
    y = x_hat * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype, copy=False), mean, inv_std, x_hat


def layer_norm_backward(dy, x_hat, inv_std, scale, axis=-1, bias_shape=None):
    """(dx, dscale, dbias or None) of `layer_norm_forward` (`bias_shape` None: no bias)."""
    axes = tuple(range(axis % x_hat.ndim, x_hat.ndim))
    g = dy * scale
    dx = inv_std * (g - g.mean(axis=axes, keepdims=True) - x_hat * (g * x_hat).mean(axis=axes, keepdims=True))
    dscale = unbroadcast(dy * x_hat, scale.shape)
    dbias = unbroadcast(dy, bias_shape) if bias_shape is not None else None
    return dx.astype(dy.dtype, copy=False), dscale, dbias


def cast_forward(x, dtype):
    return x.astype(dtype)


def cast_backward(dy, x_dtype):
    return dy.astype(x_dtype)


# -- softmax and reductions ----------------------------------------------------------------------
def softmax_forward(x, axes):
    """exp(x - max) / sum(exp(x - max)) over `axes` (a tuple: opset < 13 uses every axis from
    `axis` on, opset 13 one axis)."""
    xp = array_module(x)
    e = xp.exp(x - x.max(axis=axes, keepdims=True))
    return e / e.sum(axis=axes, keepdims=True)


def softmax_backward(dy, y, axes):
    return y * (dy - (dy * y).sum(axis=axes, keepdims=True))


def log_softmax_forward(x, axes):
    xp = array_module(x)
    z = x - x.max(axis=axes, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axes, keepdims=True))


def log_softmax_backward(dy, y, axes):
    xp = array_module(dy)
    return dy - xp.exp(y) * dy.sum(axis=axes, keepdims=True)


def _keep(dy, x_shape, axes, keepdims):
    """dy with the reduced axes restored as size-1 dims."""
    if keepdims:
        return dy
    shape = [1 if i in axes else s for i, s in enumerate(x_shape)]
    return dy.reshape(shape)


def reduce_sum_forward(x, axes, keepdims=True):
    return x.sum(axis=axes, keepdims=keepdims)


def reduce_sum_backward(dy, x_shape, axes, keepdims=True):
    xp = array_module(dy)
    return xp.broadcast_to(_keep(dy, x_shape, axes, keepdims), tuple(x_shape)).copy()


def reduce_mean_forward(x, axes, keepdims=True):
    return x.mean(axis=axes, keepdims=keepdims)


def reduce_mean_backward(dy, x_shape, axes, keepdims=True):
    count = int(np.prod([x_shape[a] for a in axes])) if axes else 1
    return reduce_sum_backward(dy, x_shape, axes, keepdims) / dy.dtype.type(count)


def reduce_max_forward(x, axes, keepdims=True):
    """Max over `axes`; over an empty set it is the dtype's lowest value (-inf, False; ONNX)."""
    if x.size == 0:
        xp = array_module(x)
        shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape)) if keepdims else \
            tuple(s for i, s in enumerate(x.shape) if i not in axes)
        low = False if x.dtype == bool else _lowest(x.dtype)
        return xp.full(shape, low, dtype=x.dtype)
    return x.max(axis=axes, keepdims=keepdims)


def reduce_max_backward(dy, x, y, axes, keepdims=True):
    """Ties share the gradient equally (as torch.amax)."""
    y = _keep(y, x.shape, axes, keepdims)
    mask = (x == y).astype(dy.dtype)
    return mask * _keep(dy, x.shape, axes, keepdims) / mask.sum(axis=axes, keepdims=True)


# -- matrix products -----------------------------------------------------------------------------
def matmul_forward(a, b):
    """numpy matmul semantics (ONNX MatMul): 1-D operands promoted, batch dims broadcast."""
    return array_module(a, b).matmul(a, b)


def matmul_backward(dy, a, b):
    xp = array_module(dy)
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    dy2 = dy
    if a.ndim == 1:
        dy2 = xp.expand_dims(dy2, -2)
    if b.ndim == 1:
        dy2 = xp.expand_dims(dy2, -1)
    da = unbroadcast(xp.matmul(dy2, xp.swapaxes(b2, -1, -2)), a2.shape).reshape(a.shape)
    db = unbroadcast(xp.matmul(xp.swapaxes(a2, -1, -2), dy2), b2.shape).reshape(b.shape)
    return da, db


def gemm_forward(a, b, c=None, alpha=1.0, beta=1.0, trans_a=False, trans_b=False):
    """alpha * A' @ B' + beta * C (C broadcast to the [M, N] result)."""
    ap = a.T if trans_a else a
    bp = b.T if trans_b else b
    y = ap @ bp
    if alpha != 1.0:
        y = y * y.dtype.type(alpha)
    if c is not None:
        y = y + (c * c.dtype.type(beta) if beta != 1.0 else c)
    return y


def gemm_backward(dy, a, b, c_shape=None, alpha=1.0, beta=1.0, trans_a=False, trans_b=False):
    """(dA, dB, dC or None)."""
    ap = a.T if trans_a else a
    bp = b.T if trans_b else b
    g = dy * dy.dtype.type(alpha) if alpha != 1.0 else dy
    dap = g @ bp.T
    dbp = ap.T @ g
    dc = None
    if c_shape is not None:
        dc = unbroadcast(dy * dy.dtype.type(beta) if beta != 1.0 else dy, c_shape)
    return (dap.T if trans_a else dap), (dbp.T if trans_b else dbp), dc


# -- layout ----------------------------------------------------------------------------------------
def reshape_forward(x, shape):
    return x.reshape(tuple(shape))


def reshape_backward(dy, x_shape):
    return dy.reshape(tuple(x_shape))


def transpose_forward(x, perm):
    return array_module(x).transpose(x, tuple(perm))


def transpose_backward(dy, perm):
    return array_module(dy).transpose(dy, tuple(int(i) for i in np.argsort(perm)))


def concat_forward(xs, axis):
    return array_module(*xs).concatenate(xs, axis=axis)


def concat_backward(dy, shapes, axis):
    out, offset = [], 0
    for s in shapes:
        index = [slice(None)] * dy.ndim
        index[axis] = slice(offset, offset + s[axis])
        out.append(dy[tuple(index)])
        offset += s[axis]
    return out


def gather_forward(x, indices, axis=0):
    """x.take(indices, axis) with negative indices counted from the end (ONNX Gather)."""
    xp = array_module(x)
    n = x.shape[axis]
    indices = xp.asarray(indices)
    return xp.take(x, xp.where(indices < 0, indices + n, indices), axis=axis)


def gather_backward(dy, x_shape, indices, axis=0):
    """Scatter-add of dy into the gathered rows, as a one-hot product (no add.at)."""
    xp = array_module(dy)
    n = x_shape[axis]
    idx = xp.asarray(indices).reshape(-1)
    idx = xp.where(idx < 0, idx + n, idx)
    onehot = (idx[:, None] == xp.arange(n)[None, :]).astype(dy.dtype)   # [K, n]
    pre = int(np.prod(x_shape[:axis]))
    post = int(np.prod(x_shape[axis + 1:]))
    d3 = dy.reshape(pre, idx.shape[0], post)
    dx = xp.matmul(d3.transpose(0, 2, 1), onehot).transpose(0, 2, 1)   # [pre, n, post]
    return xp.ascontiguousarray(dx).reshape(tuple(x_shape))


# -- padding ---------------------------------------------------------------------------------------
PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_split(pads, ndim):
    pads = [int(p) for p in pads]
    return pads[:ndim], pads[ndim:]


def pad_output_shape(shape, pads):
    begins, ends = _pad_split(pads, len(shape))
    return tuple(s + b + e for s, b, e in zip(shape, begins, ends))


def _source_indices(n, before, after, mode):
    """Host index map of one padded axis: output position -> input position."""
    return np.pad(np.arange(n), (before, after), mode=mode)


def pad_forward(x, pads, mode="constant", value=0.0):
    """ONNX Pad over every axis; negative pads crop. Modes: constant, reflect (mirror without
    repeating the edge), edge (repeat the edge), wrap (periodic)."""
    xp = array_module(x)
    if mode not in PAD_MODES:
        raise ValueError(f"Pad: unknown mode '{mode}' (expected one of {', '.join(PAD_MODES)})")
    begins, ends = _pad_split(pads, x.ndim)
    crop = tuple(slice(max(-b, 0), s - max(-e, 0)) for s, b, e in zip(x.shape, begins, ends))
    xc = x[crop]
    pos = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    if mode == "constant":
        shape = tuple(s + b + e for s, (b, e) in zip(xc.shape, pos))
        y = xp.full(shape, value, dtype=x.dtype)
        y[tuple(slice(b, b + s) for s, (b, _) in zip(xc.shape, pos))] = xc
        return y
    for axis, (b, e) in enumerate(pos):
        if b or e:
            if xc.shape[axis] == 0:
                raise ValueError(f"Pad: mode '{mode}' cannot pad an empty axis {axis}")
            idx = xp.asarray(_source_indices(xc.shape[axis], b, e, mode))
            xc = xp.take(xc, idx, axis=axis)
    return xc


def pad_backward(dy, x_shape, pads, mode="constant"):
    xp = array_module(dy)
    ndim = len(x_shape)
    begins, ends = _pad_split(pads, ndim)
    pos = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    inner = tuple(s - max(-b, 0) - max(-e, 0) for s, b, e in zip(x_shape, begins, ends))
    if mode == "constant":
        g = dy[tuple(slice(b, b + s) for s, (b, _) in zip(inner, pos))]
    else:
        g = dy
        for axis in reversed(range(ndim)):
            b, e = pos[axis]
            if b or e:
                idx = _source_indices(inner[axis], b, e, mode)
                onehot = xp.asarray((idx[:, None] == np.arange(inner[axis])[None, :]).astype(dy.dtype))
                g = xp.moveaxis(xp.matmul(xp.moveaxis(g, axis, -1), onehot), -1, axis)
    if inner == tuple(x_shape):
        return g
    dx = xp.zeros(tuple(x_shape), dtype=dy.dtype)
    dx[tuple(slice(max(-b, 0), max(-b, 0) + s) for s, b in zip(inner, begins))] = g
    return dx


# -- windows (convolution and pooling, any number of spatial dims) --------------------------------
def _as_strided(xp, a, shape, strides):
    item = a.dtype.itemsize
    strides = tuple(int(s) * item for s in strides)
    return xp.lib.stride_tricks.as_strided(a, shape, strides)


def _elem_strides(a):
    return tuple(s // a.dtype.itemsize for s in a.strides)


def _windows(a, kernel, strides, dilations, out):
    """Strided view [N, C, *out, *kernel] of the contiguous array a [N, C, *S]."""
    xp = array_module(a)
    a = xp.ascontiguousarray(a)
    st = _elem_strides(a)
    sp = st[2:]
    shape = tuple(a.shape[:2]) + tuple(out) + tuple(kernel)
    strides_ = st[:2] + tuple(s * k for s, k in zip(sp, strides)) + tuple(s * d for s, d in zip(sp, dilations))
    return _as_strided(xp, a, shape, strides_)


def _offset_slices(offset, strides, dilations, out):
    """Index of the positions window offset `offset` reads, for every output position."""
    return (slice(None), slice(None)) + tuple(
        slice(k * d, k * d + s * (o - 1) + 1, s) for k, s, d, o in zip(offset, strides, dilations, out))


def _pad_spatial(x, begins, ends, fill):
    """x padded on its spatial axes with `fill` (negative pads crop)."""
    if not any(begins) and not any(ends):
        return x
    return pad_forward(x, [0, 0] + list(begins) + [0, 0] + list(ends), "constant", fill)


def _unpad_spatial(g, x_shape, begins, ends):
    """Adjoint of `_pad_spatial` (the gradient of the input from the padded one)."""
    if not any(begins) and not any(ends):
        return g
    return pad_backward(g, x_shape, [0, 0] + list(begins) + [0, 0] + list(ends), "constant")


def _letters(n, start):
    return "".join(chr(ord(start) + i) for i in range(n))


def _conv_nd(xpad, w, strides, dilations, groups):
    """Generic N-d convolution of a padded input: [N, C, *S] x [M, C/G, *K] -> [N, M, *out]."""
    xp = array_module(xpad)
    n, c = xpad.shape[:2]
    m = w.shape[0]
    kernel = w.shape[2:]
    nd = len(kernel)
    out = tuple((s - (k - 1) * d - 1) // st + 1 for s, k, d, st in zip(xpad.shape[2:], kernel, dilations, strides))
    win = _windows(xpad, kernel, strides, dilations, out).reshape((n, groups, c // groups) + out + tuple(kernel))
    wg = w.reshape((groups, m // groups, c // groups) + tuple(kernel))
    o, k = _letters(nd, "p"), _letters(nd, "i")
    y = xp.einsum(f"ngc{o}{k},gmc{k}->ngm{o}", win, wg, optimize=True)
    return y.reshape((n, m) + out)


def _conv_nd_data(dy, w, padded_shape, strides, dilations, groups):
    """Backward-data of `_conv_nd`: the gradient of the padded input (a transposed conv)."""
    xp = array_module(dy)
    n, m = dy.shape[:2]
    out = dy.shape[2:]
    c = w.shape[1] * groups
    kernel = w.shape[2:]
    nd = len(kernel)
    dyg = dy.reshape((n, groups, m // groups) + tuple(out))
    wg = w.reshape((groups, m // groups, c // groups) + tuple(kernel))
    o = _letters(nd, "p")
    dx = xp.zeros(tuple(padded_shape), dtype=np.result_type(dy.dtype, w.dtype))
    for offset in itertools.product(*(range(k) for k in kernel)):
        part = xp.einsum(f"ngm{o},gmc->ngc{o}", dyg, wg[(Ellipsis,) + offset])
        dx[_offset_slices(offset, strides, dilations, out)] += part.reshape((n, c) + tuple(out))
    return dx


def _conv_nd_weights(xpad, dy, kernel, strides, dilations, groups):
    """Backward-weights of `_conv_nd`: [M, C/G, *K]."""
    xp = array_module(dy)
    n, c = xpad.shape[:2]
    m = dy.shape[1]
    out = tuple(dy.shape[2:])
    nd = len(kernel)
    win = _windows(xpad, kernel, strides, dilations, out).reshape((n, groups, c // groups) + out + tuple(kernel))
    dyg = dy.reshape((n, groups, m // groups) + out)
    o, k = _letters(nd, "p"), _letters(nd, "i")
    dw = xp.einsum(f"ngc{o}{k},ngm{o}->gmc{k}", win, dyg, optimize=True)
    return dw.reshape((m, c // groups) + tuple(kernel))


def _spatial_args(nd, strides, pads, dilations):
    strides = tuple(int(s) for s in (strides or [1] * nd))
    dilations = tuple(int(d) for d in (dilations or [1] * nd))
    pads = [int(p) for p in (pads or [0] * (2 * nd))]
    return strides, tuple(pads[:nd]), tuple(pads[nd:]), dilations


def conv_output_shape(x_shape, w_shape, strides=None, pads=None, dilations=None):
    nd = len(x_shape) - 2
    strides, begins, ends, dilations = _spatial_args(nd, strides, pads, dilations)
    out = tuple((s + b + e - (k - 1) * d - 1) // st + 1 for s, b, e, k, d, st in
                zip(x_shape[2:], begins, ends, w_shape[2:], dilations, strides))
    return (x_shape[0], w_shape[0]) + out


class ConvContext:
    """What the backward pass of `conv_forward` needs."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def conv_forward(x, w, b=None, strides=None, pads=None, dilations=None, groups=1):
    """ONNX Conv on 1-, 2- or N-d inputs x [N, C, *S], w [M, C/groups, *K]; returns (y, ctx).

    2-D (and 1-D, as H = 1) runs `n2d2.ops.conv.conv2d_forward`, after pre-padding when the
    pads are asymmetric; other ranks use the generic window code.
    """
    nd = x.ndim - 2
    strides, begins, ends, dilations = _spatial_args(nd, strides, pads, dilations)
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise ValueError(f"Conv: input {list(x.shape)} and weights {list(w.shape)} do not match "
                         f"with groups={groups}")
    ctx = ConvContext(x_shape=x.shape, w_shape=w.shape, nd=nd, strides=strides, begins=begins, ends=ends,
                      dilations=dilations, groups=groups, has_bias=b is not None)
    if nd in (1, 2):
        x4, w4 = x, w
        st, dil, bg, en = strides, dilations, begins, ends
        if nd == 1:
            x4, w4 = x[:, :, None, :], w[:, :, None, :]
            st, dil, bg, en = (1,) + st, (1,) + dil, (0,) + bg, (0,) + en
        if bg == en:
            xin, padding = x4, bg
        else:
            xin, padding = _pad_spatial(x4, bg, en, 0), (0, 0)
        y, ctx.inner = conv_ops.conv2d_forward(xin, w4, b, st, padding, dil, 1, groups)
        ctx.pre_padded = bg != en
        ctx.x4_shape = x4.shape
        ctx.bg, ctx.en = bg, en
        return (y[:, :, 0, :] if nd == 1 else y), ctx
    xpad = _pad_spatial(x, begins, ends, 0)
    y = _conv_nd(xpad, w, strides, dilations, groups)
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nd).astype(y.dtype)
    ctx.xpad, ctx.w = xpad, w
    return y, ctx


def conv_backward(dy, ctx, need_dx=True, need_dw=True):
    """(dx or None, dw or None, db or None) of `conv_forward`."""
    nd = ctx.nd
    db = dy.sum(axis=(0,) + tuple(range(2, dy.ndim))) if ctx.has_bias else None
    if nd in (1, 2):
        dy4 = dy[:, :, None, :] if nd == 1 else dy
        dx, dw, _ = conv_ops.conv2d_backward(dy4, ctx.inner, need_dx=need_dx, need_dw=need_dw)
        if dx is not None:
            if ctx.pre_padded:
                dx = _unpad_spatial(dx, ctx.x4_shape, ctx.bg, ctx.en)
            dx = dx[:, :, 0, :] if nd == 1 else dx
        if dw is not None and nd == 1:
            dw = dw[:, :, 0, :]
        return dx, dw, db
    dx = dw = None
    if need_dx:
        dxpad = _conv_nd_data(dy, ctx.w, ctx.xpad.shape, ctx.strides, ctx.dilations, ctx.groups)
        dx = _unpad_spatial(dxpad, ctx.x_shape, ctx.begins, ctx.ends)
    if need_dw:
        dw = _conv_nd_weights(ctx.xpad, dy, ctx.w_shape[2:], ctx.strides, ctx.dilations, ctx.groups)
    return dx, dw, db


def conv_transpose_full_size(size, kernel, stride, dilation):
    """Extent of a transposed convolution before its pads are cropped."""
    return (size - 1) * stride + (kernel - 1) * dilation + 1


def conv_transpose_output_shape(x_shape, w_shape, strides=None, pads=None, dilations=None, groups=1,
                                output_padding=None):
    nd = len(x_shape) - 2
    strides, begins, ends, dilations = _spatial_args(nd, strides, pads, dilations)
    op = tuple(int(v) for v in (output_padding or [0] * nd))
    out = tuple(conv_transpose_full_size(s, k, st, d) + p - b - e for s, k, st, d, p, b, e in
                zip(x_shape[2:], w_shape[2:], strides, dilations, op, begins, ends))
    return (x_shape[0], w_shape[1] * groups) + out


def _crop_extend(full, begins, out):
    """full[..., b : b + out] per spatial axis, zeros where that runs past the end."""
    sizes = full.shape[2:]
    ends = tuple(o + b - s for o, b, s in zip(out, begins, sizes))   # > 0: zero extension
    return pad_forward(full, [0, 0] + [-b for b in begins] + [0, 0] + list(ends), "constant", 0)


def _crop_extend_backward(dy, full_shape, begins, out):
    sizes = full_shape[2:]
    ends = tuple(o + b - s for o, b, s in zip(out, begins, sizes))
    return pad_backward(dy, full_shape, [0, 0] + [-b for b in begins] + [0, 0] + list(ends), "constant")


def conv_transpose_forward(x, w, b=None, strides=None, pads=None, dilations=None, groups=1,
                           output_padding=None):
    """ONNX ConvTranspose: x [N, C_in, *S], w [C_in, C_out/groups, *K]; returns (y, ctx).

    The full transposed convolution (no padding) is cropped by the begin pads to the output size
    `full + output_padding - begin - end` (positions past the full extent are zeros), then the
    bias is added. 2-D (and 1-D) run `n2d2.ops.deconv.conv_transpose2d_forward`.
    """
    nd = x.ndim - 2
    strides, begins, ends, dilations = _spatial_args(nd, strides, pads, dilations)
    if x.shape[1] != w.shape[0] or x.shape[1] % groups:
        raise ValueError(f"ConvTranspose: input {list(x.shape)} and weights {list(w.shape)} do not match "
                         f"with groups={groups}")
    out = conv_transpose_output_shape(x.shape, w.shape, strides, list(begins) + list(ends), dilations, groups,
                                      output_padding)[2:]
    ctx = ConvContext(x_shape=x.shape, nd=nd, strides=strides, begins=begins, dilations=dilations, groups=groups,
                      out=out, has_bias=b is not None)
    if nd in (1, 2):
        x4, w4, st, dil = x, w, strides, dilations
        if nd == 1:
            x4, w4, st, dil = x[:, :, None, :], w[:, :, None, :], (1,) + st, (1,) + dil
        full, ctx.inner = deconv_ops.conv_transpose2d_forward(x4, w4, None, st, 0, dil, groups)
        if nd == 1:
            full = full[:, :, 0, :]
    else:
        full_shape = (x.shape[0], w.shape[1] * groups) + tuple(
            conv_transpose_full_size(s, k, st, d) for s, k, st, d in zip(x.shape[2:], w.shape[2:], strides, dilations))
        full = _conv_nd_data(x, w, full_shape, strides, dilations, groups)
        ctx.x, ctx.w = x, w
    ctx.full_shape = full.shape
    y = _crop_extend(full, begins, out)
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nd).astype(y.dtype)
    return y, ctx


def conv_transpose_backward(dy, ctx, need_dx=True, need_dw=True):
    """(dx or None, dw or None, db or None) of `conv_transpose_forward`."""
    db = dy.sum(axis=(0,) + tuple(range(2, dy.ndim))) if ctx.has_bias else None
    dfull = _crop_extend_backward(dy, ctx.full_shape, ctx.begins, ctx.out)
    if ctx.nd in (1, 2):
        if ctx.nd == 1:
            dfull = dfull[:, :, None, :]
        dx, dw, _ = deconv_ops.conv_transpose2d_backward(dfull, ctx.inner, need_dx=need_dx, need_dw=need_dw)
        if ctx.nd == 1:
            dx = None if dx is None else dx[:, :, 0, :]
            dw = None if dw is None else dw[:, :, 0, :]
        return dx, dw, db
    dx = _conv_nd(dfull, ctx.w, ctx.strides, ctx.dilations, ctx.groups) if need_dx else None
    dw = _conv_nd_weights(dfull, ctx.x, ctx.w.shape[2:], ctx.strides, ctx.dilations, ctx.groups) if need_dw \
        else None
    return dx, dw, db


# -- pooling ---------------------------------------------------------------------------------------
def pool_geometry(in_sizes, kernel, strides=None, pads=None, dilations=None, ceil_mode=False):
    """(output sizes, extra end padding reached by ceil-mode windows) per spatial dim.

    Ceil mode rounds the window count up but drops a last window that would start past the
    input and its begin padding (PyTorch and the ONNX reference).
    """
    nd = len(in_sizes)
    strides, begins, ends, dilations = _spatial_args(nd, strides, pads, dilations)
    out, extra = [], []
    for s, k, st, b, e, d in zip(in_sizes, kernel, strides, begins, ends, dilations):
        span = s + b + e - (k - 1) * d - 1
        if ceil_mode:
            o = -(-span // st) + 1
            if (o - 1) * st >= s + b:
                o -= 1
        else:
            o = span // st + 1
        if o < 1:
            raise ValueError(f"Pool: kernel {list(kernel)} (pads {list(pads or [])}, dilations "
                             f"{list(dilations)}) does not fit the input {list(in_sizes)}")
        out.append(o)
        extra.append(max(0, (o - 1) * st + (k - 1) * d + 1 - (s + b + e)))
    return tuple(out), tuple(extra)


def _pool_window(x, kernel, strides, pads, dilations, ceil_mode):
    """Pooling arguments of x [N, C, *S] as tuples: (kernel, strides, dilations, begin pads,
    end pads, end pads plus what ceil mode adds, output sizes)."""
    kernel = tuple(int(k) for k in kernel)
    strides, begins, ends, dilations = _spatial_args(x.ndim - 2, strides, pads, dilations)
    out, extra = pool_geometry(x.shape[2:], kernel, strides, list(begins) + list(ends), dilations, ceil_mode)
    ends_all = tuple(e + x_ for e, x_ in zip(ends, extra))
    return kernel, strides, dilations, begins, ends, ends_all, out


def _lowest(dtype):
    return -np.inf if _is_float(dtype) else np.iinfo(dtype).min


def max_pool_forward(x, kernel, strides=None, pads=None, dilations=None, ceil_mode=False,
                     return_indices=False, storage_order=0):
    """ONNX MaxPool over x [N, C, *S]; returns (y, indices or None, ctx).

    Padded positions never win. `indices` are flat indices into x (row-major, or column-major
    over the spatial dims with storage_order=1); the gradient goes to the first maximum of each
    window. 2-D undilated pooling runs `n2d2.ops.pool` on the pre-padded input.
    """
    xp = array_module(x)
    nd = x.ndim - 2
    kernel, strides, dilations, begins, _, ends_all, out = _pool_window(x, kernel, strides, pads, dilations,
                                                                         ceil_mode)
    a = _pad_spatial(x, begins, ends_all, _lowest(x.dtype))
    ctx = ConvContext(x_shape=x.shape, a=a, kernel=kernel, strides=strides, dilations=dilations, begins=begins,
                      ends=ends_all, out=out)
    if nd == 2 and dilations == (1, 1) and not return_indices and _is_float(x.dtype):
        y = pool_ops.max_pool_forward(a, kernel, strides, (0, 0))
        ctx.y = y
        return y, None, ctx
    views = (a[_offset_slices(o, strides, dilations, out)] for o in itertools.product(*(range(k) for k in kernel)))
    y = next(views).copy()
    best = xp.zeros(y.shape, dtype=np.int64) if return_indices else None
    for i, v in enumerate(views, start=1):
        if best is not None:
            better = v > y
            best[better] = i
        xp.maximum(y, v, out=y)
    ctx.y = y
    indices = None
    if return_indices:
        koff = np.array(list(itertools.product(*(range(k) for k in kernel))), dtype=np.int64)   # [K, nd]
        koff = xp.asarray(koff)
        sizes = x.shape[2:]
        flat = xp.zeros(y.shape, dtype=np.int64)
        scale = 1
        dims = range(nd) if storage_order else reversed(range(nd))
        for dim in dims:
            shape = [1] * y.ndim
            shape[2 + dim] = out[dim]
            pos = xp.arange(out[dim], dtype=np.int64).reshape(shape) * strides[dim] - begins[dim]
            coord = pos + koff[best, dim] * dilations[dim]
            flat = flat + coord * scale
            scale *= sizes[dim]
        plane = xp.arange(x.shape[0] * x.shape[1], dtype=np.int64).reshape((x.shape[0], x.shape[1]) + (1,) * nd)
        indices = flat + plane * int(np.prod(sizes))
    return y, indices, ctx


def max_pool_backward(dy, ctx):
    xp = array_module(dy)
    kernel, strides, dilations, out = ctx.kernel, ctx.strides, ctx.dilations, ctx.out
    if len(kernel) == 2 and dilations == (1, 1) and _is_float(ctx.a.dtype):
        da = pool_ops.max_pool_backward(dy, ctx.a, ctx.y, kernel, strides, (0, 0))
    else:
        da = xp.zeros(ctx.a.shape, dtype=dy.dtype)
        free = xp.ones(ctx.y.shape, dtype=bool)
        for o in itertools.product(*(range(k) for k in kernel)):
            index = _offset_slices(o, strides, dilations, out)
            won = (ctx.a[index] == ctx.y) & free
            free &= ~won
            da[index] += dy * won
    return _unpad_spatial(da, ctx.x_shape, ctx.begins, ctx.ends)


def _window_sums(a, kernel, strides, dilations, out):
    xp = array_module(a)
    if len(kernel) == 2 and tuple(dilations) == (1, 1):
        return pool_ops._window_sums(a, kernel, strides, (0, 0))
    total = None
    for o in itertools.product(*(range(k) for k in kernel)):
        v = a[_offset_slices(o, strides, dilations, out)]
        total = v.copy() if total is None else xp.add(total, v, out=total)
    return total


def _window_sums_backward(ds, a_shape, kernel, strides, dilations, out):
    xp = array_module(ds)
    if len(kernel) == 2 and tuple(dilations) == (1, 1):
        return pool_ops._window_sums_backward(ds, a_shape, kernel, strides, (0, 0))
    da = xp.zeros(a_shape, dtype=ds.dtype)
    for o in itertools.product(*(range(k) for k in kernel)):
        da[_offset_slices(o, strides, dilations, out)] += ds
    return da


def avg_pool_forward(x, kernel, strides=None, pads=None, dilations=None, ceil_mode=False, count_include_pad=False):
    """ONNX AveragePool over x [N, C, *S]; returns (y, ctx).

    Each window's sum is divided by the number of its positions inside the input
    (count_include_pad=0) or inside the input plus its explicit pads (count_include_pad=1);
    positions only ceil-mode windows reach never count.
    """
    xp = array_module(x)
    kernel, strides, dilations, begins, ends, ends_all, out = _pool_window(x, kernel, strides, pads, dilations,
                                                                           ceil_mode)
    a = _pad_spatial(x, begins, ends_all, 0)
    # the divisor: window counts of the positions that count, per output position (host)
    sizes = x.shape[2:]
    counted = np.zeros((1, 1) + tuple(s + b + e for s, b, e in zip(sizes, begins, ends_all)), dtype=np.float64)
    if count_include_pad:
        counted[(Ellipsis,) + tuple(slice(0, s + b + e) for s, b, e in zip(sizes, begins, ends))] = 1
    else:
        counted[(Ellipsis,) + tuple(slice(b, b + s) for s, b in zip(sizes, begins))] = 1
    count = _window_sums(counted, kernel, strides, dilations, out)
    inv = xp.asarray(1.0 / np.maximum(count, 1.0)).astype(x.dtype)
    y = _window_sums(a, kernel, strides, dilations, out) * inv
    return y, ConvContext(x_shape=x.shape, a_shape=a.shape, kernel=kernel, strides=strides, dilations=dilations,
                          begins=begins, ends=ends_all, out=out, inv=inv)


def avg_pool_backward(dy, ctx):
    ds = dy * ctx.inv.astype(dy.dtype)
    da = _window_sums_backward(ds, ctx.a_shape, ctx.kernel, ctx.strides, ctx.dilations, ctx.out)
    return _unpad_spatial(da, ctx.x_shape, ctx.begins, ctx.ends)


# -- batch normalisation ---------------------------------------------------------------------------
def _as_nchw(x):
    n, c = x.shape[:2]
    return x.reshape(n, c, -1, 1)


def batchnorm_forward(x, scale, bias, mean, var, epsilon=1e-5):
    """Inference batch normalisation of x [N, C, *S] with fixed statistics; returns (y, ctx)."""
    y, ctx = bn_ops.batchnorm_forward_infer(_as_nchw(x), scale, bias, mean, var, epsilon)
    return y.reshape(x.shape), ctx


def batchnorm_backward(dy, ctx, scale):
    """(dx, dscale, dbias) of `batchnorm_forward`."""
    dx, dscale, dbias = bn_ops.batchnorm_backward_infer(_as_nchw(dy), ctx, scale)
    return dx.reshape(dy.shape), dscale, dbias


def batchnorm_train_forward(x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9):
    """Training batch normalisation (batch statistics, biased variance); returns
    (y, running_mean, running_var, ctx) with running = running * momentum + batch * (1 - momentum)
    (ONNX's momentum is the weight of the old value)."""
    y, ctx, bmean, bvar = bn_ops.batchnorm_forward_train(_as_nchw(x), scale, bias, epsilon)
    m = mean.dtype.type(momentum)
    running_mean = mean * m + bmean.astype(mean.dtype) * (1 - m)
    running_var = var * m + bvar.astype(var.dtype) * (1 - m)
    return y.reshape(x.shape), running_mean, running_var, ctx


def batchnorm_train_backward(dy, ctx, scale):
    dx, dscale, dbias = bn_ops.batchnorm_backward_train(_as_nchw(dy), ctx, scale)
    return dx.reshape(dy.shape), dscale, dbias


# -- resize ----------------------------------------------------------------------------------------
RESIZE_MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _source_coordinates(mode, out_size, in_size, scale, roi):
    y = np.arange(out_size, dtype=np.float64)
    length = scale * in_size
    extrapolated = None
    if mode == "align_corners":
        x = np.zeros(out_size) if length == 1 else y * (in_size - 1) / (length - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi
        if length == 1:
            x = np.full(out_size, (end - start) * (in_size - 1) / 2)
        else:
            x = y * (end - start) * (in_size - 1) / (length - 1)
        x = x + start * (in_size - 1)
        extrapolated = (x < 0) | (x > in_size - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out_size, -0.5) if length == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / length)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"Resize: unknown coordinate_transformation_mode '{mode}' "
                         f"(expected one of {', '.join(COORDINATE_MODES)})")
    return x, extrapolated


def _cubic(t, a):
    """Keys' cubic convolution kernel at distances t (>= 0)."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1,
                    np.where(t < 2, a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a, 0.0))


def _resize_coefficients(ratio, scale, mode, nearest_mode, cubic_a, antialias):
    """[out, n] interpolation weights of the n neighbours of each output (ratio in (0, 1])."""
    r = ratio[:, None]
    if mode == "nearest":
        if nearest_mode == "round_prefer_floor":
            pick = ratio > 0.5
        elif nearest_mode == "round_prefer_ceil":
            pick = ratio >= 0.5
        elif nearest_mode == "floor":
            pick = np.zeros_like(ratio, dtype=bool)
        elif nearest_mode == "ceil":
            pick = np.ones_like(ratio, dtype=bool)
        else:
            raise ValueError(f"Resize: unknown nearest_mode '{nearest_mode}' "
                             f"(expected one of {', '.join(NEAREST_MODES)})")
        pick = np.where(ratio == 1.0, True, pick)
        return np.stack([~pick, pick], axis=1).astype(np.float64)
    if mode == "linear":
        if not antialias:
            return np.concatenate([1 - r, r], axis=1)
        s = min(scale, 1.0)
        start = int(np.floor(-1 / s) + 1)
        args = (np.arange(start, 2 - start)[None, :] - r) * s
        c = np.clip(1 - np.abs(args), 0, 1)
        return c / c.sum(axis=1, keepdims=True)
    if mode == "cubic":
        if not antialias:
            return _cubic(np.concatenate([r + 1, r, 1 - r, 2 - r], axis=1), cubic_a)
        s = min(scale, 1.0)
        start = int(np.floor(-2 / s) + 1)
        c = _cubic(s * (np.arange(start, 2 - start)[None, :] - r), cubic_a)
        return c / c.sum(axis=1, keepdims=True)
    raise ValueError(f"Resize: unknown mode '{mode}' (expected one of {', '.join(RESIZE_MODES)})")


def resize_matrix(out_size, in_size, scale, mode="nearest", coordinate_mode="half_pixel",
                  nearest_mode="round_prefer_floor", cubic_a=-0.75, exclude_outside=False, antialias=False,
                  roi=(0.0, 1.0)):
    """Host [out_size, in_size] interpolation matrix of one axis (ONNX Resize) and the boolean
    [out_size] mask of the outputs set to the extrapolation value (None when there are none).

    Neighbours are taken around the source coordinate with ties to the left and clamped to
    the input (edge padding), as the ONNX reference implementation does.
    """
    x, extrapolated = _source_coordinates(coordinate_mode, out_size, in_size, scale, roi)
    x_int = np.floor(x)
    ratio = np.where(x == x_int, 1.0, x - x_int)
    coeffs = _resize_coefficients(ratio, scale, mode, nearest_mode, cubic_a, antialias)
    n = coeffs.shape[1]
    pad = int(math.ceil(n / 2))
    xp_ = x + pad
    p = np.floor(xp_)
    frac = xp_ - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        base = -((n - 1) // 2)
        offset = np.where(frac <= 0.5, base, base + 1)
    idx = (p + offset).astype(np.int64)[:, None] + np.arange(n)[None, :] - pad
    if exclude_outside:
        coeffs = np.where((idx < 0) | (idx >= in_size), 0.0, coeffs)
        total = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    a = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.repeat(np.arange(out_size), n)
    np.add.at(a, (rows, np.clip(idx, 0, in_size - 1).reshape(-1)), coeffs.reshape(-1))  # host set-up only
    if extrapolated is not None:
        a[extrapolated] = 0.0
        if not extrapolated.any():
            extrapolated = None
    return a, extrapolated


def _apply_axis(x, a, axis):
    xp = array_module(x)
    return xp.moveaxis(xp.tensordot(a, x, axes=([1], [axis])), 0, axis)


def resize_forward(x, matrices, extrapolated=None, extrapolation_value=0.0):
    """y = x with `matrices[axis]` ([out, in], in x's array module, or None: axis unchanged)
    applied along each axis; `extrapolated` (bool, broadcastable to y) positions set to
    `extrapolation_value`. Only the last two axes resized: `n2d2.ops.resize.resize_forward`."""
    xp = array_module(x)
    active = [i for i, a in enumerate(matrices) if a is not None]
    nd = x.ndim
    if x.ndim >= 2 and active == [nd - 2, nd - 1]:
        y = resize_ops.resize_forward(x, matrices[nd - 2], matrices[nd - 1])
    else:
        y = x
        for axis in active:
            y = _apply_axis(y, matrices[axis].astype(x.dtype), axis)
    if extrapolated is not None:
        y = xp.where(extrapolated, y.dtype.type(extrapolation_value), y)
    return y


def resize_backward(dy, matrices, extrapolated=None):
    xp = array_module(dy)
    if extrapolated is not None:
        dy = xp.where(extrapolated, dy.dtype.type(0), dy)
    active = [i for i, a in enumerate(matrices) if a is not None]
    nd = dy.ndim
    if dy.ndim >= 2 and active == [nd - 2, nd - 1]:
        return resize_ops.resize_backward(dy, matrices[nd - 2], matrices[nd - 1])
    g = dy
    for axis in reversed(active):
        g = _apply_axis(g, matrices[axis].astype(dy.dtype).T, axis)
    return g


# -- slicing and broadcasting ----------------------------------------------------------------------
def slice_index(shape, starts, ends, axes=None, steps=None):
    """The tuple of python slices of ONNX Slice (starts/ends clamped as the spec says)."""
    ndim = len(shape)
    axes = list(range(len(starts))) if axes is None else [int(a) % ndim for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]
    index = [slice(None)] * ndim
    for a, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise ValueError("Slice: a step of 0")
        n = shape[a]
        start, end = int(start), int(end)
        start = start + n if start < 0 else start
        end = end + n if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), n), min(max(end, 0), n)
            index[a] = slice(start, end, step)
        else:
            start, end = min(max(start, -1), n - 1), min(max(end, -1), n - 1)
            index[a] = slice(start, end if end >= 0 else None, step) if start >= 0 else slice(0, 0, 1)
    return tuple(index)


def slice_forward(x, index):
    return x[index]


def slice_backward(dy, x_shape, index):
    dx = array_module(dy).zeros(tuple(x_shape), dtype=dy.dtype)
    dx[index] = dy
    return dx


def expand_forward(x, shape):
    """x broadcast to broadcast(x.shape, shape) (ONNX Expand), as a contiguous array."""
    xp = array_module(x)
    out = tuple(np.broadcast_shapes(tuple(x.shape), tuple(shape)))
    return xp.ascontiguousarray(xp.broadcast_to(x, out))


def expand_backward(dy, x_shape):
    return unbroadcast(dy, x_shape)


def equal_forward(a, b):
    return a == b
