"""2-D convolution as N2D2's ConvCell computes it: forward, backward-data, backward-weights, bias.

Arrays are NCHW (numpy order); weights are [O, C/groups, kH, kW] (PyTorch's layout); every
size argument is a (height, width) pair. Beyond PyTorch's conv2d the op has:

- negative padding (a crop of the input);
- N2D2 sub-sampling: the stride-s convolution output is summed over s x s blocks
  (`outputs(ox / subSample) += ...` in N2D2's CPU kernel), so that the output size is
  `ceil(floor((in + 2*pad - ((k-1)*dil+1) + stride) / stride) / sub_sample)`;
- a connection table `mapping` [C, O] (element [c][o] true: output o reads channel c). A
  table made of equal diagonal blocks is a grouped convolution (`mapping_groups`); any other
  table is applied by zeroing the weights of unconnected pairs (and their gradients).

How it is computed (speed matters: eager training runs on it). Internally activations are
"batch-innermost" (C, H, W, N in memory). One im2col copy builds the columns matrix `cols`
[C*kH*kW, Ho*Wo*N] (row (c, i, j), column (ho, wo, n)); one GEMM per convolution (a batched
GEMM over groups for grouped ones); backward-data is the transposed GEMM then a col2im of
kH*kW slice-adds. Depthwise layers (one channel per group) skip the dense GEMM and the full
im2col: see `_depthwise_forward`. With N innermost, the im2col copy and the col2im adds move runs
of Wo*N contiguous values (N for strides > 1) instead of rows of Wo values, and no output
position is wasted. Outputs and input gradients are NCHW *views* of [C, H, W, N] buffers:
elementwise numpy ops keep that layout, the next convolution reads it without a copy, and
`ascontiguousarray` gives a plain NCHW array where one is needed.
"""
from dataclasses import dataclass

import numpy as np

from n2d2.backend import array_module, to_host
from n2d2.ir import lowering as low
from n2d2.ir.lowering import Unsupported
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _convolution_grads, _mapping_like, register
from n2d2.quantization.integer import QuantizationError, quantize_weighted, weighted_forward


def _pair(value, name):
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"conv2d: '{name}' must be an int or a (height, width) pair, got {value}")
    return value


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                     sub_sample: int = 1) -> int:
    """Output extent of one spatial dimension, N2D2's formula (0 or less: the input is too small)."""
    extent = (kernel - 1) * dilation + 1
    full = (size + 2 * padding - extent + stride) // stride
    return -(-full // sub_sample) if full > 0 else full


def mapping_groups(mapping) -> int:
    """Number of groups G when `mapping` [C, O] is G equal consecutive diagonal blocks, else 0.

    1 means fully connected (no mapping needed); depthwise is G = C.
    """
    m = np.asarray(_host(mapping), dtype=bool)
    nb_channels, nb_outputs = m.shape
    if m.all():
        return 1
    per_group = int(np.argmin(m[:, 0])) if not m[:, 0].all() else nb_channels
    if per_group == 0 or nb_channels % per_group:
        return 0
    groups = nb_channels // per_group
    if nb_outputs % groups:
        return 0
    expected = np.kron(np.eye(groups, dtype=bool), np.ones((per_group, nb_outputs // groups), dtype=bool))
    return groups if np.array_equal(m, expected) else 0


def _host(a):
    return a if isinstance(a, np.ndarray) else (a.get() if hasattr(a, "get") else np.asarray(a))


def _as_strided(xp, a, shape, strides):
    """A strided view of `a` (strides in elements), numpy or cupy."""
    itemsize = a.dtype.itemsize
    strides = tuple(int(s) * itemsize for s in strides)
    if xp is np:
        return np.lib.stride_tricks.as_strided(a, shape, strides)
    return xp.lib.stride_tricks.as_strided(a, shape, strides)


class ConvGeometry:
    """Sizes of one convolution (numpy order, (height, width) pairs).

    `padded` is the input extent after padding (or cropping), `conv` the stride-s output
    before sub-sampling, `out` the final output.
    """

    def __init__(self, in_shape, nb_outputs, kernel, stride=1, padding=0, dilation=1, sub_sample=1):
        self.in_shape = tuple(int(d) for d in in_shape)
        if len(self.in_shape) != 4:
            raise ValueError(f"conv2d: the input must be 4-D NCHW, got shape {list(self.in_shape)}")
        self.nb_outputs = int(nb_outputs)
        self.kernel = _pair(kernel, "kernel")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.sub_sample = _pair(sub_sample, "sub_sample")
        for name in ("kernel", "stride", "dilation", "sub_sample"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"conv2d: '{name}' must be positive, got {list(getattr(self, name))}")
        _, _, height, width = self.in_shape
        self.padded = (height + 2 * self.padding[0], width + 2 * self.padding[1])
        conv = tuple(conv_output_size(s, k, st, p, d) for s, k, st, p, d in
                     zip((height, width), self.kernel, self.stride, self.padding, self.dilation))
        if min(conv) < 1:
            raise ValueError(f"conv2d: input {height}x{width} is too small for kernel {list(self.kernel)} "
                             f"(padding {list(self.padding)}, dilation {list(self.dilation)})")
        self.conv = conv
        self.out = tuple(-(-c // s) for c, s in zip(conv, self.sub_sample))

    @property
    def out_shape(self):
        return (self.in_shape[0], self.nb_outputs) + self.out

    def __repr__(self):
        return (f"ConvGeometry(in={list(self.in_shape)}, out={list(self.out_shape)}, kernel={list(self.kernel)}, "
                f"stride={list(self.stride)}, padding={list(self.padding)}, dilation={list(self.dilation)}, "
                f"sub_sample={list(self.sub_sample)})")


# -- data movement -------------------------------------------------------------------------------
def to_batch_innermost(x):
    """[C, H, W, N] contiguous copy of an NCHW array (no copy when it already is laid out so)."""
    xp = array_module(x)
    return xp.ascontiguousarray(x.transpose(1, 2, 3, 0))


def _interior(extent, pad):
    """Slice of the padded extent holding the input (pad >= 0), or of the input kept (pad < 0)."""
    return slice(max(pad, 0), extent - max(pad, 0))


def _padded_input(x, geom, private=False):
    """The input with the padding applied (zeros) or cropped, as a [C, Hp, Wp, N] array.

    `private`: never the input's own memory (a backward context keeps it, and the caller may
    reuse the input buffer before the backward pass).
    """
    xp = array_module(x)
    ph, pw = geom.padding
    n, c, h, w = x.shape
    src = x[:, :, _interior(h, -ph), _interior(w, -pw)] if ph < 0 or pw < 0 else x
    if ph <= 0 and pw <= 0:
        out = to_batch_innermost(src)
        return out.copy() if private and (out.base is not None or out is src) else out
    hp, wp = geom.padded
    out = xp.zeros((c, hp, wp, n), dtype=x.dtype)
    out[:, _interior(hp, ph), _interior(wp, pw), :] = src.transpose(1, 2, 3, 0)
    return out


def _windows(xc, geom):
    """Strided view [C, kH, kW, Ho, Wo, N] of the padded input [C, Hp, Wp, N]: im2col, uncopied."""
    xp = array_module(xc)
    c, hp, wp, n = xc.shape
    (kh, kw), (dh, dw), (sh, sw) = geom.kernel, geom.dilation, geom.stride
    return _as_strided(xp, xc, (c, kh, kw) + geom.conv + (n,),
                       (hp * wp * n, dh * wp * n, dw * n, sh * wp * n, sw * n, 1))


def im2col(x, geom: ConvGeometry):
    """Columns matrix [C*kH*kW, Ho*Wo*N] of the NCHW input `x` (one copy of a strided view)."""
    xp = array_module(x)
    view = _windows(_padded_input(x, geom), geom)
    return xp.ascontiguousarray(view).reshape(-1, geom.conv[0] * geom.conv[1] * geom.in_shape[0])


def _col2im_add(dx, dcols, geom, rows):
    """Add the window gradients `dcols` of output rows `rows` into the padded buffer dx [C, Hp, Wp, N]."""
    c, hp, wp, n = dx.shape
    (kh, kw), (dh, dw), (sh, sw) = geom.kernel, geom.dilation, geom.stride
    wo = geom.conv[1]
    nb_rows = rows.stop - rows.start
    if sw == 1:
        # a window row is one contiguous run of wo*n values
        d5 = dcols.reshape(c, kh, kw, nb_rows, wo * n)
        flat = dx.reshape(c, hp, wp * n)
        for i in range(kh):
            r = i * dh + sh * rows.start
            for j in range(kw):
                s = j * dw * n
                flat[:, r:r + sh * (nb_rows - 1) + 1:sh, s:s + wo * n] += d5[:, i, j]
    else:
        d6 = dcols.reshape(c, kh, kw, nb_rows, wo, n)
        for i in range(kh):
            r = i * dh + sh * rows.start
            for j in range(kw):
                s = j * dw
                dx[:, r:r + sh * (nb_rows - 1) + 1:sh, s:s + sw * (wo - 1) + 1:sw, :] += d6[:, i, j]


def _unpad_gradient(dx, geom):
    """NCHW input gradient from the padded [C, Hp, Wp, N] buffer (cropped border: zeros)."""
    xp = array_module(dx)
    n, c, h, w = geom.in_shape
    hp, wp = geom.padded
    ph, pw = geom.padding
    dx = dx.transpose(3, 0, 1, 2)
    if ph >= 0 and pw >= 0:
        return dx[:, :, ph:ph + h, pw:pw + w]
    out = xp.zeros((c, h, w, n), dtype=dx.dtype).transpose(3, 0, 1, 2)
    out[:, :, _interior(h, -ph), _interior(w, -pw)] = dx[:, :, _interior(hp, ph), _interior(wp, pw)]
    return out


def col2im(dcols, geom: ConvGeometry):
    """Inverse data movement of `im2col` (overlapping windows summed): the NCHW input gradient."""
    xp = array_module(dcols)
    n, c = geom.in_shape[:2]
    dx = xp.zeros((c,) + geom.padded + (n,), dtype=dcols.dtype)
    _col2im_add(dx, dcols, geom, slice(0, geom.conv[0]))
    return _unpad_gradient(dx, geom)


def _output_view(yq, geom: ConvGeometry):
    """NCHW view [N, O, Hc, Wc] of the GEMM result [O, Hc*Wc*N]."""
    return yq.reshape((geom.nb_outputs,) + geom.conv + (geom.in_shape[0],)).transpose(3, 0, 1, 2)


def _to_positions(dy, geom: ConvGeometry):
    """Output gradient [N, O, Ho, Wo] as the GEMM operand [O, Hc*Wc*N]."""
    if geom.sub_sample != (1, 1):
        dy = _expand_sub_sample(dy, geom)
    return to_batch_innermost(dy).reshape(dy.shape[1], -1)


def _sub_sample(y, geom: ConvGeometry):
    """N2D2 sub-sampling: sum of the convolution output over sy x sx blocks (last ones partial)."""
    xp = array_module(y)
    (sy, sx), (hc, wc), (ho, wo) = geom.sub_sample, geom.conv, geom.out
    n, o = y.shape[:2]
    if (ho * sy, wo * sx) != (hc, wc):
        padded = xp.zeros((o, ho * sy, wo * sx, n), dtype=y.dtype).transpose(3, 0, 1, 2)
        padded[:, :, :hc, :wc] = y
        y = padded
    return y.reshape(n, o, ho, sy, wo, sx).sum(axis=(3, 5))


def _expand_sub_sample(dy, geom: ConvGeometry):
    """Backward of `_sub_sample`: every position of a block receives the block's gradient."""
    xp = array_module(dy)
    (sy, sx), (hc, wc) = geom.sub_sample, geom.conv
    return xp.repeat(xp.repeat(dy, sy, axis=2), sx, axis=3)[:, :, :hc, :wc]


# -- GEMMs ---------------------------------------------------------------------------------------
# Two things make numpy's GEMMs slow on convolution shapes; both are worked around on numpy
# only (CuPy does not need it):
# - a tiny [M, N] result over a very long inner dimension K (weight gradients of early layers):
#   OpenBLAS runs it at a fraction of its speed; summing a batched GEMM over K chunks is
#   several times faster (and avoids a threading pathology);
# - an im2col matrix much larger than the caches, with few rows (C*kH*kW <= 512): writing it,
#   reading it back for the forward GEMM and again for the weight gradient is memory-bound.
#   Such convolutions run over bands of output rows: each band's columns are built in a
#   cache-sized buffer and used at once, and rebuilt for the weight gradient (a copy from the
#   small input costs less than re-reading stored columns from memory). Measured on LeNet
#   b128: the whole training step ~20% faster, and no columns are kept between the passes.
_SPLIT_MIN_INNER = 32768
_SPLIT_MAX_OUTER = 4096
_SPLIT_CHUNK = 8192
_BAND_ELEMENTS = 131072     # target size of a band's columns (elements)
_BAND_MIN_POSITIONS = 256   # a band narrower than this would starve the GEMM


def _matmul_nt(a, b):
    """a @ b.T for a [M, K], b [N, K] (K contiguous in both)."""
    xp = array_module(a)
    m, k = a.shape
    n = b.shape[0]
    if xp is not np or k < _SPLIT_MIN_INNER or m * n > _SPLIT_MAX_OUTER:
        return a @ b.T
    chunks = k // _SPLIT_CHUNK
    main = chunks * _SPLIT_CHUNK
    a3 = a[:, :main].reshape(m, chunks, _SPLIT_CHUNK).transpose(1, 0, 2)
    b3 = b[:, :main].reshape(n, chunks, _SPLIT_CHUNK).transpose(1, 2, 0)
    out = np.matmul(a3, b3).sum(axis=0)
    if main < k:
        out += a[:, main:] @ b[:, main:].T
    return out


def _bands(xp, geom, col_rows):
    """Output-row ranges to run a convolution's GEMMs over, or None to run them whole.

    `col_rows` is the number of rows of the im2col matrix (C/groups * kH * kW).
    """
    ho = geom.conv[0]
    row = col_rows * geom.conv[1] * geom.in_shape[0]
    if xp is not np or col_rows * _BAND_MIN_POSITIONS > _BAND_ELEMENTS or row * ho <= 2 * _BAND_ELEMENTS:
        return None
    step = max(1, _BAND_ELEMENTS // row)
    return [slice(r, min(r + step, ho)) for r in range(0, ho, step)]


def _band_columns(view, rows, buf):
    """Copy the windows of output rows `rows` into the band buffer; its [C*kH*kW, rows*Wo*N] view."""
    c, kh, kw, _, wo, n = view.shape
    cols = buf[:, :(rows.stop - rows.start) * wo * n]
    cols.reshape((c, kh, kw, rows.stop - rows.start, wo, n))[...] = view[:, :, :, rows]
    return cols


def _banded_forward(xc, w2d, geom, bands):
    """Forward GEMM band by band: each band's columns are multiplied while they are cached."""
    xp = array_module(xc)
    view = _windows(xc, geom)
    row = geom.conv[1] * geom.in_shape[0]
    step = bands[0].stop - bands[0].start
    buf = xp.empty((w2d.shape[1], step * row), dtype=xc.dtype)
    yq = xp.empty((w2d.shape[0], geom.conv[0] * row), dtype=np.result_type(xc.dtype, w2d.dtype))
    for rows in bands:
        band = slice(rows.start * row, rows.stop * row)
        xp.matmul(w2d, _band_columns(view, rows, buf), out=yq[:, band])
    return yq


def _banded_weights_grad(dyq, xc, geom, bands):
    """Weight gradient from columns rebuilt band by band (cheaper than re-reading stored ones)."""
    xp = array_module(dyq)
    view = _windows(xc, geom)
    row = geom.conv[1] * geom.in_shape[0]
    ckk = view.shape[0] * view.shape[1] * view.shape[2]
    step = bands[0].stop - bands[0].start
    buf = xp.empty((ckk, step * row), dtype=xc.dtype)
    dw_t = xp.zeros((ckk, dyq.shape[0]), dtype=np.result_type(dyq.dtype, xc.dtype))
    for rows in bands:
        dw_t += _band_columns(view, rows, buf) @ dyq[:, rows.start * row:rows.stop * row].T
    return dw_t.T


# -- weights and connections ---------------------------------------------------------------------
def _effective_weights(weights, groups, mapping):
    """Weights as the GEMM uses them: [G, O/G, C/G*kH*kW], unconnected pairs zeroed."""
    o = weights.shape[0]
    if mapping is not None:
        if groups != 1:
            raise ValueError("conv2d: a mapping table is only supported with groups=1 (dense weights)")
        xp = array_module(weights)
        mask = xp.asarray(mapping).T.astype(bool)
        weights = xp.where(mask[:, :, None, None], weights, weights.dtype.type(0))  # a NaN weight * 0 is NaN
    return weights.reshape(groups, o // groups, -1)


def _check(x, weights, groups, mapping):
    if x.ndim != 4:
        raise ValueError(f"conv2d: the input must be 4-D NCHW, got shape {list(x.shape)}")
    if weights.ndim != 4:
        raise ValueError(f"conv2d: weights must be [O, C/groups, kH, kW], got shape {list(weights.shape)}")
    o, cg = weights.shape[:2]
    c = x.shape[1]
    if groups < 1 or c % groups or o % groups or cg * groups != c:
        raise ValueError(f"conv2d: input has {c} channels, weights {list(weights.shape)} with groups={groups}")
    if mapping is not None and tuple(mapping.shape) != (c, o):
        raise ValueError(f"conv2d: mapping must be [C, O] = [{c}, {o}], got {list(mapping.shape)}")


@dataclass(slots=True, eq=False)
class ConvContext:
    """What the backward pass needs from a forward call.

    Dense and grouped convolutions keep the im2col matrix `cols`; the few-output-channel
    (`bands`) and depthwise paths keep the padded batch-innermost input `padded` instead and
    rebuild columns in cache-sized pieces.
    """

    geom: object
    cols: object
    padded: object
    bands: object
    weights: object
    groups: int
    mapping: object
    has_bias: bool

    @property
    def depthwise(self) -> bool:
        return _is_depthwise(self.geom, self.groups, self.mapping)


def _is_depthwise(geom, groups, mapping):
    """One channel per group and one output per channel (MobileNet's depthwise layers)."""
    return mapping is None and groups > 1 and groups == geom.in_shape[1] == geom.nb_outputs


# -- depthwise: no dense GEMM, no full im2col ----------------------------------------------------
# A depthwise layer's GEMM is a [1, kH*kW] x [kH*kW, P] product per channel: memory-bound on a
# columns matrix kH*kW times the input. Columns are built for a few channels at a time (a
# block that stays in cache) and multiplied at once; the backward pass rebuilds them instead
# of keeping them, and the input gradient is itself a depthwise convolution (stride 1) of the
# zero-upsampled output gradient with the kernels rotated by 180 degrees.
_DEPTHWISE_BLOCK = 131072   # elements of the per-block columns buffer (numpy)


def _depthwise_blocks(xp, geom, nb_channels):
    kh, kw = geom.kernel
    per_channel = kh * kw * geom.conv[0] * geom.conv[1] * geom.in_shape[0]
    step = nb_channels if xp is not np else max(1, min(nb_channels, _DEPTHWISE_BLOCK // per_channel))
    return step, [slice(c, min(c + step, nb_channels)) for c in range(0, nb_channels, step)]


def _depthwise_columns(xc, geom, channels, out):
    """Columns [channels, kH*kW, Ho*Wo*N] of some channels of the padded [C, Hp, Wp, N] input."""
    xp = array_module(xc)
    _, hp, wp, n = xc.shape
    (kh, kw), (dh, dw), (sh, sw) = geom.kernel, geom.dilation, geom.stride
    nb = channels.stop - channels.start
    view = _as_strided(xp, xc[channels], (nb, kh, kw) + geom.conv + (n,),
                       (hp * wp * n, dh * wp * n, dw * n, sh * wp * n, sw * n, 1))
    out.reshape(view.shape)[...] = view


def _depthwise_forward(xc, weights, geom):
    """[C, Ho*Wo*N] output of a depthwise convolution of the padded input [C, Hp, Wp, N]."""
    xp = array_module(xc)
    c = xc.shape[0]
    kk = geom.kernel[0] * geom.kernel[1]
    positions = geom.conv[0] * geom.conv[1] * geom.in_shape[0]
    w3 = xp.ascontiguousarray(weights.reshape(c, 1, kk))   # BLAS needs unit strides
    yq = xp.empty((c, 1, positions), dtype=np.result_type(xc.dtype, weights.dtype))
    step, blocks = _depthwise_blocks(xp, geom, c)
    buf = xp.empty((step, kk, positions), dtype=xc.dtype)
    for channels in blocks:
        b = buf[:channels.stop - channels.start]
        _depthwise_columns(xc, geom, channels, b)
        xp.matmul(w3[channels], b, out=yq[channels])
    return yq.reshape(c, positions)


def _depthwise_weights_grad(dyq, xc, geom):
    xp = array_module(dyq)
    c = xc.shape[0]
    kh, kw = geom.kernel
    positions = dyq.shape[1]
    d3 = dyq.reshape(c, positions, 1)
    dw = xp.empty((c, kh * kw, 1), dtype=dyq.dtype)
    step, blocks = _depthwise_blocks(xp, geom, c)
    buf = xp.empty((step, kh * kw, positions), dtype=xc.dtype)
    for channels in blocks:
        b = buf[:channels.stop - channels.start]
        _depthwise_columns(xc, geom, channels, b)
        xp.matmul(b, d3[channels], out=dw[channels])
    return dw.reshape(c, 1, kh, kw)


def _depthwise_data_grad(dyq, weights, geom):
    xp = array_module(dyq)
    n, c, h, w = geom.in_shape
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = geom.kernel, geom.stride, geom.dilation, geom.padding
    ho, wo = geom.conv
    eh, ew = (kh - 1) * dh, (kw - 1) * dw
    # dx[r] = sum_i dy_up[r + ph - i*dh] * w[i]: a correlation with the rotated kernel of the
    # output gradient upsampled by the stride and shifted by (e - p) in a buffer sized so
    # that the correlation yields exactly H x W
    buf = xp.zeros((c, h + eh, w + ew, n), dtype=dyq.dtype)
    d4 = dyq.reshape(c, ho, wo, n)

    def placement(shift, stride, count, extent):
        first = max(0, -(-(-shift) // stride))             # first output index landing at >= 0
        last = min(count, (extent - 1 - shift) // stride + 1)  # one past the last landing inside
        return slice(first, max(first, last)), shift + stride * first

    rows, r0 = placement(eh - ph, sh, ho, h + eh)
    cols, c0 = placement(ew - pw, sw, wo, w + ew)
    nr, nc = rows.stop - rows.start, cols.stop - cols.start
    if nr and nc:
        buf[:, r0:r0 + sh * (nr - 1) + 1:sh, c0:c0 + sw * (nc - 1) + 1:sw, :] = d4[:, rows, cols, :]
    back = ConvGeometry((n, c, h + eh, w + ew), c, (kh, kw), 1, 0, (dh, dw))
    dxq = _depthwise_forward(buf, weights[:, :, ::-1, ::-1], back)
    return dxq.reshape(c, h, w, n).transpose(3, 0, 1, 2)


# -- the op --------------------------------------------------------------------------------------
def conv2d_prepare(x, weights, stride=1, padding=0, dilation=1, sub_sample=1, groups=1, mapping=None,
                   biases=None):
    """Geometry and data movement of a convolution without its GEMM: the context that
    `conv2d_backward` needs (used where only gradients are wanted, e.g. by the transposed
    convolution)."""
    _check(x, weights, groups, mapping)
    o, _, kh, kw = weights.shape
    geom = ConvGeometry(x.shape, o, (kh, kw), stride, padding, dilation, sub_sample)
    has_bias = biases is not None
    if _is_depthwise(geom, groups, mapping):
        return ConvContext(geom, None, _padded_input(x, geom, True), None, weights, groups, mapping, has_bias)
    bands = _bands(array_module(x), geom, weights.shape[1] * kh * kw) if groups == 1 else None
    if bands is not None:
        return ConvContext(geom, None, _padded_input(x, geom, True), bands, weights, groups, mapping, has_bias)
    return ConvContext(geom, im2col(x, geom), None, None, weights, groups, mapping, has_bias)


def conv2d_forward(x, weights, biases=None, stride=1, padding=0, dilation=1, sub_sample=1, groups=1,
                   mapping=None):
    """y = conv(x, weights) + biases; returns (y [N, O, Ho, Wo], ctx for the backward pass).

    `weights` [O, C/groups, kH, kW]; `mapping` [C, O] zeroes unconnected pairs (groups=1 only).
    The output is an NCHW view of an [O, Ho, Wo, N] buffer.
    """
    xp = array_module(x)
    _check(x, weights, groups, mapping)
    o, _, kh, kw = weights.shape
    geom = ConvGeometry(x.shape, o, (kh, kw), stride, padding, dilation, sub_sample)
    padded = bands = None
    if _is_depthwise(geom, groups, mapping):
        padded = _padded_input(x, geom, private=True)
        yq = _depthwise_forward(padded, weights, geom)
        cols = None
    else:
        w = _effective_weights(weights, groups, mapping)
        bands = _bands(xp, geom, w.shape[2]) if groups == 1 else None
        if bands is None:
            cols = im2col(x, geom)
            if groups == 1:
                yq = w[0] @ cols
            else:
                yq = xp.matmul(w, cols.reshape(groups, -1, cols.shape[1])).reshape(o, -1)
        else:
            # large columns matrix: built and used band by band in cache, rebuilt for the
            # weight gradient
            padded = _padded_input(x, geom, private=True)
            yq = _banded_forward(padded, w[0], geom, bands)
            cols = None
    y = _output_view(yq, geom)
    if geom.sub_sample != (1, 1):
        y = _sub_sample(y, geom)
        if biases is not None:   # N2D2 adds the bias to the sub-sampled output
            y += biases.reshape(1, -1, 1, 1).astype(y.dtype, copy=False)
    elif biases is not None:
        yq += biases.reshape(-1, 1).astype(yq.dtype, copy=False)
    return y, ConvContext(geom, cols, padded, bands, weights, groups, mapping, biases is not None)


def conv2d_backward_data(dy, weights, geom: ConvGeometry, groups=1, mapping=None):
    """d(loss)/d(x) [N, C, H, W] from d(loss)/d(y) (also the forward of a transposed convolution)."""
    return _backward_data(_to_positions(dy, geom), weights, geom, groups, mapping)


def conv2d_backward_bias(dy):
    """d(loss)/d(biases) [O]: the output gradient summed over batch and positions."""
    return dy.sum(axis=(0, 2, 3))


def conv2d_backward(dy, ctx: ConvContext, need_dx=True, need_dw=True):
    """(dx or None, dweights or None, dbiases or None) from d(loss)/d(y)."""
    g = ctx.geom
    dyq = _to_positions(dy, g) if (need_dx or need_dw) else None
    dx = dw = None
    if ctx.depthwise:
        if need_dx:
            dx = _depthwise_data_grad(dyq, ctx.weights, g)
        if need_dw:
            dw = _depthwise_weights_grad(dyq, ctx.padded, g)
    else:
        if need_dx:
            dx = _backward_data(dyq, ctx.weights, g, ctx.groups, ctx.mapping)
        if need_dw and ctx.cols is None:
            dw = _banded_weights_grad(dyq, ctx.padded, g, ctx.bands)
            dw = _finish_weights_grad(dw, g, ctx.mapping)
        elif need_dw:
            dw = _backward_weights(dyq, ctx.cols, g, ctx.groups, ctx.mapping)
    db = conv2d_backward_bias(dy) if ctx.has_bias else None
    return dx, dw, db


def _backward_data(dyq, weights, geom, groups, mapping):
    xp = array_module(dyq)
    if _is_depthwise(geom, groups, mapping):
        return _depthwise_data_grad(dyq, weights, geom)
    w = _effective_weights(weights, groups, mapping)
    n, c = geom.in_shape[:2]
    row = geom.conv[1] * n
    bands = _bands(xp, geom, w.shape[2]) if groups == 1 else None
    if bands is None:
        if groups == 1:
            dcols = w[0].T @ dyq
        else:
            dcols = xp.matmul(w.transpose(0, 2, 1), dyq.reshape(groups, -1, dyq.shape[1]))
            dcols = dcols.reshape(-1, dyq.shape[1])
        return col2im(dcols, geom)
    # large columns matrix: scatter each band of window gradients while it is cached
    dx = xp.zeros((c,) + geom.padded + (n,), dtype=np.result_type(dyq.dtype, weights.dtype))
    wt = w[0].T
    for rows in bands:
        _col2im_add(dx, wt @ dyq[:, rows.start * row:rows.stop * row], geom, rows)
    return _unpad_gradient(dx, geom)


def _backward_weights(dyq, cols, geom, groups, mapping):
    xp = array_module(dyq)
    o = geom.nb_outputs
    kh, kw = geom.kernel
    if groups == 1:
        dw = _matmul_nt(cols, dyq).T   # cols @ dy.T runs faster than dy @ cols.T in OpenBLAS
    else:
        dw = xp.matmul(dyq.reshape(groups, o // groups, -1),
                       cols.reshape(groups, cols.shape[0] // groups, -1).transpose(0, 2, 1))
    return _finish_weights_grad(dw, geom, mapping)


def _finish_weights_grad(dw, geom, mapping):
    """[O, C/groups, kH, kW] weight gradient, zero for unconnected pairs."""
    xp = array_module(dw)
    dw = xp.ascontiguousarray(dw).reshape((geom.nb_outputs, -1) + geom.kernel)
    if mapping is not None:
        dw = xp.where(xp.asarray(mapping).T.astype(bool)[:, :, None, None], dw, dw.dtype.type(0))  # not NaN * 0
    return dw


# Rows of the C tiles that skip a connection table's unconnected blocks (N2D2_CR, runtime.c.j2).
CONN_TILE_ROWS = 4


def _conn_layout(conn, kk):
    """How image-mode C kernels skip a connection table's unconnected (c, o) blocks, or None
    when every pair is connected.

    FM[t][c]: bit i set when output CONN_TILE_ROWS t + i reads channel c (forward tiles);
    OUTS / OFF: the outputs each channel feeds, flattened, channel c's at OFF[c] .. OFF[c + 1]
    (data and weight gradients run per channel on those, compacted: pair OFF[c] + j of the
    KK-long blocks); J[c][o]: o's index j in channel c's list, -1 when unconnected; MI: the
    tile height of the weight and data gradients (6, 5 or 4 rows of the KK: a divisor when one exists)."""
    c, o = len(conn), len(conn[0])
    if all(all(row) for row in conn):
        return None
    r = CONN_TILE_ROWS
    fm = [[sum(1 << i for i in range(r) if t * r + i < o and conn[ch][t * r + i]) for ch in range(c)]
          for t in range(-(-o // r))]
    outs = [[oo for oo in range(o) if conn[ch][oo]] for ch in range(c)]
    off = [0]
    for lst in outs:
        off.append(off[-1] + len(lst))
    j = [[lst.index(oo) if oo in lst else -1 for oo in range(o)] for lst in outs]
    mi = next((m for m in (6, 5, 4) if kk % m == 0), 4)
    return dict(FM=fm, OUTS=[oo for lst in outs for oo in lst], OFF=off, J=j, PAIRS=off[-1], MI=mi,
                MAXO=max(1, max(len(lst) for lst in outs)))


# Below this many images a C convolution shares each image between the threads of the team
# (batch-1 inference) instead of giving them whole images.
SPLIT_MAX_IMAGES = 4
SPLIT_MAX_GROUPS = 4        # (and groups: a barrier per group costs more than it gives)
IM2COL_KC = 256             # the GEMM depth of one pass over a blocked im2col matrix (image mode)
WIDE_NOPACK_MAX_OUTPUTS = 16  # wide forward: at most this many outputs per group read the windows in place
SPLIT_COL_BYTES = 1 << 20   # the shared im2col block of such a convolution (image mode)
# in inference, the block's matrix stays in a Zen 3 L2 (512 KiB): the GEMM reads it back from
# there, not from L3 (1 thread, batch 1: MobileNet V2's stem 692 -> 592 us, ResNet-18's 3.92 -> 3.71 ms)
INFERENCE_COL_BYTES = 1 << 18
# few images in inference, stride 1, groups 1, work for one thread (under PARALLEL_MIN_MACS):
# "plane" mode while the input's KW shifted copies (4 C KW Hp WO bytes) stay under this. Kernel
# time, 1 thread, AMD EPYC Zen 4, plane / the mode it replaces (bench/bench_conv_modes.py):
# LeNet's conv1 0.64-0.65, conv2 (table) 0.44-0.52, 3x3 16 -> 16 at 16x16 0.76-0.82, 32 -> 32 at
# 8x8 0.84-0.85, 5x5 3 -> 5 at 7x7 0.16-0.33 (image mode before); AVX2 build 0.47-0.88; with the
# MAC limit lifted, 0.62-0.82 up to 200 KB of planes (one thread against wide's team there: not taken)
PLANE_BYTES = 128 * 1024
# wide 1x1 forward in inference, maps of at least WIDE_PANEL_MIN_PIXELS: panels of about
# WIDE_PANEL_BYTES of packed input (kept in L1 while every tile row sweeps it). MobileNet V2 b1, in
# sequence, 1 thread, AMD EPYC Zen 4: 16 -> 96 at 112x112 610 -> 469 us, 32 -> 16 294 -> 190 us
# (AVX2 build 502 -> 461, 190 -> 182); its 56x56 layers did not move (so not taken: 112x112 only)
WIDE_PANEL_MIN_PIXELS = 100 * 100
WIDE_PANEL_BYTES = 32 * 1024
DW_CHUNK_PIXELS = 2048      # output pixels per dynamically scheduled chunk of depthwise planes
DW_SLACK = 64               # floats after a depthwise plane: one vector (VL <= 16) of reads past it, rounded up
# image mode: a block of unpadded stride-1 planes up to this many floats (one input) is copied into
# its im2col matrix row by row of the matrix, across the block's images (ROWCOL, Conv.c.j2
# im2col_block_rows): the stores run along each row instead of touching KG rows per image
ROWCOL_MAX_FLOATS = 16384


# -- the IR op ------------------------------------------------------------
@register
class Conv(OpDef):
    """attrs: stride, padding, dilation, sub_sample ((h, w) pairs), groups, mapping (bool [C, O]
    or None); params weights [O, C/groups, kH, kW], biases [O] (optional)."""

    name = "Conv"
    per_sample = True
    onnx_names = ("Conv",)
    ini_names = ("Conv",)
    max_inputs = None
    carries_activation = True
    epilogue_anchor = True
    folds_batchnorm = True
    params = ("weights", "biases", "weight_step")
    trainable = ("weights", "biases", "weight_step")

    def absorbs_padding(self, attrs):
        return "exact"

    def macs_per_output(self, graph, node) -> float:
        w = graph.params[graph.node(node).params["weights"]].array   # [O, ...]: one row per output
        return w.size / w.shape[0]

    def batchnorm_fold_ok(self, attrs) -> bool:
        # the bias is added before sub-sampling sums blocks: a shift would be scaled
        return _pair(attrs.get("sub_sample", (1, 1)), "sub_sample") == (1, 1)

    def _infer(self, attrs, in_shapes, param_shapes):
        shape = _concat_shape(in_shapes)
        o, cg, kh, kw = param_shapes["weights"]
        if cg * attrs.get("groups", 1) != shape[1]:
            raise ValueError(f"weights {list(param_shapes['weights'])} (groups {attrs.get('groups', 1)}) do not "
                             f"match {shape[1]} input channels")
        geom = ConvGeometry(shape, o, (kh, kw), attrs["stride"], attrs["padding"], attrs["dilation"],
                            attrs.get("sub_sample", (1, 1)))
        return [geom.out_shape]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        y, ctx = conv2d_forward(x, params["weights"], params.get("biases"), attrs["stride"],
                                attrs["padding"], attrs["dilation"], attrs.get("sub_sample", (1, 1)),
                                attrs.get("groups", 1), _mapping_like(attrs, x))
        return y, (ctx, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        ctx, shapes = saved
        dx, dw, db = conv2d_backward(dy, ctx, need_dx=any(needs), need_dw=True)
        return _convolution_grads(dx, dw, db, shapes, needs)

    # -- lowering --------------------------------------------------------------------------------
    def lower_c(self, graph, node, training):
        """One GEMM over the batch ("fc": the kernel covers the input), im2col blocks of images
        ("image"), in-place windows for stride 1 ("wide"), or direct loops (depthwise, "direct")."""
        attrs = graph.attrs(node)
        ins, outs = low.shapes(graph, node)
        if tuple(attrs.get("sub_sample", (1, 1))) != (1, 1):
            return Unsupported(f"sub-sampling {list(attrs['sub_sample'])}")
        chans = low.concat_channels(ins)
        if chans is None:
            return Unsupported(f"inputs {[list(s) for s in ins]} differ on batch or H, W")
        n, _, h, w = ins[0]
        c = sum(ch["C"] for ch in chans)
        _, o, ho, wo = outs[0]
        window = low.kernel_window(graph, node, attrs)
        if isinstance(window, Unsupported):
            return window
        kh, kw, (sy, sx), (py, px), (dy, dx), groups, mapping = window
        conn = None if mapping is None else np.asarray(mapping, dtype=bool).astype(int).tolist()
        p = ho * wo
        if p == 1 and h == kh and w == kw and py == 0 and px == 0 and groups == 1:
            inputs = [{"K": ch["C"] * h * w, "off": ch["off"] * h * w} for ch in chans]
            g = low.dense_geometry(n, c * kh * kw, o, inputs, conn, kh * kw)
            g.update(MODE="fc")
            return g
        cg, og = c // groups, o // groups
        kg = cg * kh * kw
        macs = n * o * p * kg
        nb = low.images_per_block(n, p, kg)
        nblk = -(-n // nb)
        g = dict(N=n, C=c, H=h, W=w, O=o, HO=ho, WO=wo, KH=kh, KW=kw, SY=sy, SX=sx, PY=py, PX=px, DY=dy, DX=dx,
                 G=groups, CG=cg, OG=og, P=p, KG=kg, NB=nb, NBLK=nblk, CLD=low.round16(nb * p), conn=conn, inputs=chans,
                 VALID=(py == 0 and px == 0), PAR=nblk >= 2 and macs >= low.PARALLEL_MIN_MACS,
                 PARB=nblk >= 2 and 2 * macs >= low.PARALLEL_MIN_MACS)
        sf, sb = low.Scratch(), low.Scratch()
        hp, wp = h + 2 * py, w + 2 * px
        # the input gradient of a wide convolution is the wide convolution of dz, padded by the
        # dilated kernel extent minus the padding, with the flipped kernel (needs that padding >= 0)
        pqy, pqx = (kh - 1) * dy - py, (kw - 1) * dx - px
        # few images in inference (batch-1 latency): the image mode's per-pixel gathers cost more
        # than computing up to twice the output grid (WIDE_MIN_EFFICIENCY_FEW)
        few = not training and n < SPLIT_MAX_IMAGES and groups < SPLIT_MAX_GROUPS
        wide_pays = few or (1 - wo / wp) * og <= low.WIDE_MAX_WASTED_ROWS or 4 * kg * p > low.WIDE_IM2COL_BYTES
        min_efficiency = low.WIDE_MIN_EFFICIENCY_FEW if few else low.WIDE_MIN_EFFICIENCY
        # column stride 2 (or a row stride) in inference: the wide forward with its panels gathered
        # (GATHER, every other column: n2d2_evens) instead of an im2col of the image (there is no
        # strided wide backward). ResNet-18 b1, 1 thread: its 3x3 s2 layers 1.42-1.60 -> 1.20-1.46 ms,
        # its stem 2.95 -> 2.66 ms; not 1x1 kernels (its s2 downsamples went 193-213 -> 204-240 us)
        strided = not training and (sy, sx) != (1, 1) and sx <= 2 and og > WIDE_NOPACK_MAX_OUTPUTS \
            and kh * kw > 1
        if few and groups == 1 and (sy, sx) == (1, 1) and kh * kw > 1 and 4 * c * kw * hp * wo <= PLANE_BYTES \
                and macs < low.PARALLEL_MIN_MACS:
            # plane mode: KW shifted copies of the input, WO wide, then one GEMM reading its rows
            # in place (Conv.c.j2 plane_forward): no junk columns, no packed panels (1x1: the
            # input planes are the GEMM's rows already, read in place by the wide mode)
            g.update(MODE="plane", Hp=hp, Wp=wp, PAR=False, SPLIT=False,
                     CONN=None if conn is None else _conn_layout(conn, kh * kw))
            if conn is not None:
                sf.add_shared("WM", o * kg)
            # + NR floats: the last strip's tiles read up to one strip past the planes
            sf.add_private("XS", c * kw * hp * wo + 32)
        elif nb == 1 and not (groups > 1 and groups == c == o) and pqy >= 0 and pqx >= 0 \
                and (strided or ((sy, sx) == (1, 1) and wo / wp >= min_efficiency and wide_pays)):
            # implicit im2col: the GEMM reads shifted windows of the (padded) input planes in place
            lw = ho * wp
            hq, wq = h + (kh - 1) * dy, w + (kw - 1) * dx
            g.update(MODE="wide", Hp=hp, Wp=wp, PS=hp * wp, LW=lw, LWD=-(-lw // 32) * 32, LWK=low.round16(lw),
                     PADDED=py > 0 or px > 0, READ_PAST=(kw - 1) * dx + 64 * sx,
                     Hq=hq, Wq=wq, PSQ=hq * wq, PQY=pqy, PQX=pqx, LWX=h * wq, LWXD=-(-(h * wq) // 32) * 32)
            plane_floats = cg * hp * wp + 2 * wp + 64 * sx
            # few images: the team shares each one (tiles split between the threads)
            # (many groups: the threads take (image, group) pairs instead, without a barrier per group)
            # SMALL: a grid of at most 64 pixels is packed whole, then one tiled GEMM (K in passes of KC);
            # few images in inference: also larger grids whose panels (and grid buffer) stay under
            # WIDE_SMALL_BYTES
            # CWB: a SMALL grid with junk columns (small maps, e.g. RegNet's 7x7 groups, LeNet at
            # batch 1) goes through a grid buffer and a fixed-bounds copy, not tile by tile
            # GATHER: junk columns and more outputs than WIDE_NOPACK_MAX_OUTPUTS (the strips are packed
            # anyway): the panels hold output pixels only, gathered from the grid's rows, so the junk
            # columns are not computed and the tiles store into y (ResNet-18's 3x3 layers compute
            # 3.5 % (56x56) to 29 % (7x7) more pixels than they keep otherwise)
            gather = strided or (wp != wo and og > WIDE_NOPACK_MAX_OUTPUTS)
            npix = p if gather else lw   # the pixels of the panels
            npd = -(-npix // 32) * 32
            small = npix <= 64 or (few and 4 * kg * npd <= low.WIDE_SMALL_BYTES
                                   and (wp == wo or gather or 4 * og * npd <= low.WIDE_SMALL_BYTES))
            g.update(SPLIT=n < SPLIT_MAX_IMAGES and groups < SPLIT_MAX_GROUPS, CWB=wp != wo and small and not gather,
                     SMALL=small, KC=IM2COL_KC if kg > 2 * IM2COL_KC else None, GATHER=gather)
            # NOPACK: few output channels (at most WIDE_NOPACK_MAX_OUTPUTS: each strip feeds 2-3 tiles)
            # and junk columns (the tiles go through a buffer anyway): the tiles read the windows in
            # place, as the input gradient does, rather than from a packed strip (ResNet-20's
            # 16-channel 32x32 layers, b128, one thread: 8.2 -> 6.9 ms)
            g["NOPACK"] = not g["SMALL"] and not g["SPLIT"] and wp != wo and og <= WIDE_NOPACK_MAX_OUTPUTS
            # DWB: the weight gradient as broadcasts of the windows times rows of dz^T, when OG fills
            # whole vectors (n2d2_gemm_arows; else dot products along the pixels, n2d2_gemm_nt_rows)
            g["DWB"] = og % 16 == 0
            # PANEL: 1x1 layers on large maps in inference (MobileNet's 112x112 expand and project
            # layers) take WIDE_PANEL_BYTES of packed input per panel of pixels, not a strip
            # of 32: longer runs per input plane and output row (Conv.c.j2 wide_panel_loop)
            g["PANEL"] = 0
            if not training and kh * kw == 1 and (sy, sx) == (1, 1) and wp == wo and not small and not gather \
                    and p >= WIDE_PANEL_MIN_PIXELS:
                g["PANEL"] = min(-(-p // 32) * 32, max(32, WIDE_PANEL_BYTES // (4 * kg) // 32 * 32))
            # PREFETCH_W: the SMALL forward's GEMM (tile rows outer) prefetches the next tile row's
            # weights while the current one runs: in a network's sequence they come from L3 or memory.
            # MobileNet V2 b1, 1 thread, Zen 4: its 7x7 160 -> 960 layers 214-231 -> 177-183 us, 14x14
            # 96 -> 576 247-248 -> 228-230 us, 64 -> 384 114-120 -> 104 us (all nodes 7.85 -> 7.55 ms)
            g["PREFETCH_W"] = not training and kh * kw == 1
            g["PAR"] = (n * groups >= 2 or g["SPLIT"]) and macs >= low.PARALLEL_MIN_MACS
            if g["SMALL"]:   # the whole implicit im2col in [KG][NR] panels, NR <= 32
                (sf.add_shared if g["SPLIT"] else sf.add_private)("PNLS", kg * npd)
            else:            # one strip of it (PANEL: one panel)
                sf.add_private("PNL", kg * max(32, g["PANEL"]))
            if g["CWB"]:
                (sf.add_shared if g["SPLIT"] else sf.add_private)("CW", og * g["LWD"])
            if conn is not None:
                sf.add_shared("WM", o * kg)
                sb.add_shared("WM", o * kg)
            if g["PADDED"]:
                if g["SPLIT"]:
                    sf.add_shared("XPS", plane_floats)
                else:
                    sf.add_private("XP", plane_floats)
                sb.add_private("XP", plane_floats)
            sb.add_shared("WF", o * kg)
            sb.add_private("DZW", o * g["LWD"])
            sb.add_private("DZQ", og * hq * wq + 2 * wq + 64)
            sb.add_private("CWX", cg * g["LWXD"])
            sb.add_private("DWP", 16 * o * kg)
            sb.add_private("DBP", o)
            sb.add_private("DUMMY", h * w)
        elif groups > 1 and groups == c == o:
            # forward: one (image, channel) plane at a time into a zero-padded private copy (stride 2:
            # its even and odd columns apart, WE + WOD = Wp), so one image still feeds the team
            g.update(MODE="direct", Hp=hp, Wp=wp, WE=(wp + 1) // 2, WOD=wp // 2,
                     PAR=n * o >= 2 and 4 * macs >= low.PARALLEL_MIN_MACS,   # a MAC per load: cheap
                     PARB=n >= 2 and macs >= low.PARALLEL_MIN_MACS,
                     # planes handed out per dynamic-schedule call: ~DW_CHUNK_PIXELS outputs (small
                     # maps: a call per 4 planes of 7x7 cost as much as the planes), 16 chunks at least
                     CHUNK=max(4, min(DW_CHUNK_PIXELS // p, n * o // 16)))
            # + DW_SLACK: a row's ragged last vector of taps reads up to one vector past the plane
            sf.add_private("XP", hp * wp + DW_SLACK)
            sb.add_private("DUMMY", h * w)
        else:
            # padded convolutions copy their inputs into zero-padded planes first (when every
            # window stays inside them), so that im2col / col2im run without bounds checks
            planes = (py > 0 or px > 0) and (ho - 1) * sy + (kh - 1) * dy < hp and (wo - 1) * sx + (kw - 1) * dx < wp
            # DWNT: the weight gradient as dot products along the block's pixels, dz[OG, CLD]
            # col[KG, CLD]^T (n2d2_gemm_nt, wide partial sums), when OG would fill less than one
            # 32-wide strip of the transposed product col dz^T (whose tiles then run half empty)
            dwnt = og <= low.DWNT_MAX_OUTPUTS
            g.update(MODE="image", PLANES=planes, Hp=hp, Wp=wp, PS=hp * wp, DWNT=dwnt, C2I=None, CONN=None)
            g["ROWCOL"] = (g["VALID"] and sx == 1 and len(chans) == 1 and not groups > 1
                           and nb * cg * h * w <= ROWCOL_MAX_FLOATS)
            if (planes or g["VALID"]) and wp <= 16 and wo <= 16:
                # col2im in vector registers (Conv.c.j2, col2im_regs): lane j of the padded input
                # row takes output column ox = (j - kx*DX) / SX of kernel column kx (16: a zero)
                g["C2I"] = [[(j - kx * dx) // sx if j >= kx * dx and (j - kx * dx) % sx == 0
                             and (j - kx * dx) // sx < wo else 16 for j in range(16)] for kx in range(kw)]
            # few images: the team shares each one, im2col by blocks of PB pixels (a cache-sized
            # shared matrix) then the GEMM tiles; needs windows without bounds (padded planes or
            # no padding)
            # (BLOCKED: more images, each one's im2col matrix larger than cache: the same by blocks,
            # on private buffers, the threads taking whole images)
            blockwise = nb == 1 and (planes or g["VALID"])
            g["SPLIT"] = blockwise and n < SPLIT_MAX_IMAGES and groups < SPLIT_MAX_GROUPS
            g["BLOCKED"] = blockwise and not g["SPLIT"] and 4 * kg * g["CLD"] > SPLIT_COL_BYTES
            if g["SPLIT"] or g["BLOCKED"]:
                col_bytes = SPLIT_COL_BYTES if training else INFERENCE_COL_BYTES
                pb = min(p, max(32, (col_bytes // (4 * kg)) // 32 * 32))
                # the block's matrix in [KG][NR] panels (PBL: a whole number of them, NR <= 32), K
                # in chunks of KC when one panel would not stay in L1
                g.update(PB=pb, PBL=-(-pb // 32) * 32, ROWS_OUTER=og > pb, KC=IM2COL_KC if kg > 2 * IM2COL_KC else None)
                add = sf.add_shared if g["SPLIT"] else sf.add_private
                add("COLS", kg * g["PBL"])
                if planes:
                    add("XPS", cg * hp * wp)
                if g["SPLIT"]:
                    g["PAR"] = macs >= low.PARALLEL_MIN_MACS
            if conn is not None:
                sf.add_shared("WM", o * kg)
                sb.add_shared("WM", o * kg)
                g["CONN"] = _conn_layout(conn, kh * kw)
                if g["CONN"] is not None:
                    sb.add_shared("WC", g["CONN"]["PAIRS"] * kh * kw)
            if not (g["SPLIT"] or g["BLOCKED"]):
                sf.add_private("COL", kg * g["CLD"])
            if nb > 1:
                sf.add_private("YB", og * g["CLD"])
            sb.add_private("COL", kg * g["CLD"])
            sb.add_private("DZB", o * g["CLD"])
            if dwnt:
                sb.add_private("DWP", 16 * o * kg)
            else:
                sb.add_private("DZT", nb * p * o)
                sb.add_private("DWT", o * kg)
            sb.add_private("DBP", o)
            sb.add_private("DUMMY", h * w)
            if planes:
                if not (g["SPLIT"] or g["BLOCKED"]):
                    sf.add_private("XP", cg * nb * hp * wp)
                sb.add_private("XP", cg * nb * hp * wp)
                sb.add_private("DXP", cg * nb * hp * wp)
        g["sf"], g["sb"] = sf.layout(), sb.layout()
        return g

    def lower_cuda(self, graph, node, training):
        """Implicit GEMM ("gemm") or direct loops for depthwise ("direct")."""
        attrs = graph.attrs(node)
        ins, outs = low.shapes(graph, node)
        if tuple(attrs.get("sub_sample", (1, 1))) != (1, 1):
            return Unsupported(f"sub-sampling {list(attrs['sub_sample'])}")
        chans = low.concat_channels(ins)
        if chans is None or len(ins[0]) != 4:
            return Unsupported(f"inputs {[list(s) for s in ins]} are not NCHW sharing batch, H, W")
        n, _, h, w = ins[0]
        c = sum(ch["C"] for ch in chans)
        _, o, ho, wo = outs[0]
        wshape = graph.params[graph.node(node).params["weights"]].shape
        groups = attrs.get("groups", 1)
        mapping = attrs.get("mapping")
        if mapping is not None and groups != 1:
            return Unsupported(f"a connection table with {groups} groups")
        (sy, sx), (py, px), (dy, dx) = attrs["stride"], attrs["padding"], attrs["dilation"]
        kh, kw = int(wshape[2]), int(wshape[3])
        conn = None
        if mapping is not None:
            conn = np.asarray(to_host(mapping), dtype=bool).astype(int).tolist()
        cg, og = c // groups, o // groups
        g = dict(N=n, C=c, H=h, W=w, O=o, HO=ho, WO=wo, KH=kh, KW=kw, SY=sy, SX=sx, PY=py, PX=px, DY=dy, DX=dx,
                 G=groups, CG=cg, OG=og, P=ho * wo, KHW=kh * kw, KG=cg * kh * kw, inputs=chans, conn=conn)
        g["MODE"] = "direct" if (groups > 1 and groups == c == o and conn is None) else "gemm"
        return g

    def plan_cuda_forward(self, n, g, k):
        if g["MODE"] == "direct":
            return [k.elementwise("fwd_direct", g["N"] * g["O"] * g["P"])]
        return k.gemm("fwd_gemm", g["OG"], g["N"] * g["P"], g["KG"], g["G"], a_kfast=True, b_kfast=False)

    def plan_cuda_backward(self, n, g, k):
        specs = []
        if n.fwd.act is not None:
            specs.append(k.elementwise("bwd_act", n.dy.size))
        if "biases" in n.dp:
            specs.append(k.kernel("bwd_bias", (g["O"], 1, 1), barrier=True, N=g["N"], C=g["O"], P=g["P"]))
        direct = g["MODE"] == "direct"
        if "weights" in n.dp:
            if direct:
                specs.append(k.kernel("bwd_weights_direct", (g["O"] * g["KHW"], 1, 1), barrier=True))
            else:
                specs += k.gemm("bwd_weights_gemm", g["OG"], g["KG"], g["N"] * g["P"], g["G"], split=True,
                                a_kfast=True, b_kfast=True)
        if n.need_dx:
            if direct:
                specs.append(k.elementwise("bwd_data_direct", g["N"] * g["C"] * g["H"] * g["W"]))
            else:
                specs += k.gemm("bwd_data_gemm", g["CG"], g["N"] * g["H"] * g["W"], g["OG"] * g["KHW"], g["G"],
                                a_kfast=True, b_kfast=False)
        return specs


# -- integer form (post-training quantization, n2d2.quantization) --------------------------------------
class _ConvInteger:
    """Integer Conv: int8 weights x int8/uint8 inputs -> int32 accumulator (+ int32 bias),
    requantized per output channel (n2d2.quantization.integer.quantize_weighted)."""

    kernel = "Conv"

    @staticmethod
    def _channel_scale(steps, in_shapes, weights, attrs):
        step = np.concatenate(steps)       # the inputs concatenated along channels
        o, cg = weights.shape[:2]
        groups = int(attrs.get("groups", 1) or 1)
        if attrs.get("mapping") is not None:
            raise ValueError("a Conv with a connection table reaches the integer path unbaked")
        og = o // groups
        index = (np.arange(o)[:, None] // og) * cg + np.arange(cg)[None, :]
        return step[index][:, :, None, None]

    def quantize(self, q, node):

        if _pair(q.graph.attrs(node).get("sub_sample", (1, 1)), "sub_sample") != (1, 1):

            raise QuantizationError(f"node '{node}' (Conv): sub_sample has no integer form")
        return quantize_weighted(q, node, Conv(), self._channel_scale)

    def forward(self, qnode, xs, nb_bits):

        return weighted_forward(Conv(), qnode, xs, nb_bits)


Conv.integer = _ConvInteger()
Conv.quantized = Conv.integer.kernel
