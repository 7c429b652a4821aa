"""2-D max and average pooling (N2D2 PoolCell semantics), forward and backward.

Sizes are `(kh, kw)`, `(sh, sw)`, `(ph, pw)` in numpy order (cells convert from N2D2's
`[X, Y]`). Output size per dim: `floor((in + 2*pad - pool + stride) / stride)`.

- Max: padded positions never win; the gradient goes to the first maximum of each window in
  row-major order (as N2D2 and PyTorch). A window lying entirely in the padding gives 0.
  NaN propagates: a window holding a NaN gives NaN and its gradient goes to its first NaN
  (as np.argmax and PyTorch); -inf inputs stay -inf.
- Average: divides by the full window, padded positions counted (N2D2 calls its CPU kernel
  with count-include-padding; cuDNN `AVERAGE_COUNT_INCLUDE_PADDING`).
- Mapping (bool [C, O], rows = input channels): output o pools over the windows of every
  mapped channel together: max over all of them (first channel, then first position, wins),
  or their sum divided by (nb mapped channels * window size). No mapped channel gives 0.

Every window is visited through strided views of the (padded) input, one view per window
offset, so a pass costs `kh*kw` whole-array operations and no gather; the max backward
recomputes which offset won from the saved input and output instead of storing indices
(the op's context is (x, y), fixed by `n2d2.ir.ops.Pool`).

Memory layout: outputs and gradients are allocated in the layout of the array they come
from (`*_like`, order K), not forced to NCHW (global pooling aside). Convolution outputs
are NCHW views of [C, H, W, N] buffers: C-ordered pooling results made the pooling passes,
the ReLU backward that meets their gradient and the next convolution's input copy all mix
two layouts, i.e. strided gathers. Measured on LeNet b128 (first pool, 128x6x28x28, alone):
max-pool backward 2.3 -> 0.75 ms, forward 0.83 -> 0.20 ms, the ReLU backward after it
1.7 -> 0.4 ms. With rows contiguous (NCHW input), the non-overlapping forward reduces
whole rows first (`_tiles`), which reads memory in order.
"""
import numpy as np

from n2d2.backend import array_module, to_host
from n2d2.ir import lowering as low
from n2d2.ir.lowering import Unsupported
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _mapping_like, _split_channels, register
from n2d2.quantization.integer import QuantizationError


def output_size(in_size: int, pool: int, stride: int, pad: int) -> int:
    return (in_size + 2 * pad - pool + stride) // stride


def _out_hw(x_shape, pool, stride, pad):
    oh = output_size(x_shape[2], pool[0], stride[0], pad[0])
    ow = output_size(x_shape[3], pool[1], stride[1], pad[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"Pooling window {list(pool)} (padding {list(pad)}) does not fit the input "
                         f"{list(x_shape[2:])} (H, W)")
    return oh, ow


def _is_global(x_shape, pool, stride, pad):
    return tuple(pool) == tuple(x_shape[2:]) and tuple(pad) == (0, 0)


def _padded(x, pad, fill):
    """x with `pad` rows/cols of `fill` on each side, laid out as x (x itself without padding)."""
    ph, pw = pad
    if ph == 0 and pw == 0:
        return x
    xp = array_module(x)
    n, c, h, w = x.shape
    out = xp.full_like(x, fill, shape=(n, c, h + 2 * ph, w + 2 * pw))
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _views(a, pool, stride, out_hw):
    """view[n, c, oy, ox] = a[n, c, oy*sh + ky, ox*sw + kx] for every window offset (ky, kx), row-major."""
    kh, kw = pool
    sh, sw = stride
    oh, ow = out_hw
    for ky in range(kh):
        for kx in range(kw):
            yield a[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]


def _reduce(op, views):
    """op(...op(op(v0, v1), v2)..., vk) of a sequence of views, into one new array laid out as v0."""
    xp = array_module(views[0])
    out = xp.empty_like(views[0])
    if len(views) == 1:
        xp.copyto(out, views[0])
        return out
    op(views[0], views[1], out=out)
    for v in views[2:]:
        op(out, v, out=out)
    return out


def _crop(a, pad, shape):
    ph, pw = pad
    if ph == 0 and pw == 0:
        return a
    return a[:, :, ph:ph + shape[2], pw:pw + shape[3]]


def _covers_once(padded_hw, pool, stride, out_hw):
    """True when the windows tile the (padded) input exactly: every element in one window."""
    return tuple(stride) == tuple(pool) and tuple(padded_hw) == (out_hw[0] * pool[0], out_hw[1] * pool[1])


def _tiles(x, pool, stride, pad):
    """x viewed as [N, C, OH, kh, OW, kw] (non-overlapping windows, the remainder dropped) when
    its rows are contiguous in memory, else None."""
    n, c, h, w = x.shape
    kh, kw = pool
    if tuple(stride) != tuple(pool) or tuple(pad) != (0, 0) or x.strides[3] != x.itemsize:
        return None
    oh, ow = h // kh, w // kw
    return x[:, :, :oh * kh, :ow * kw].reshape(n, c, oh, kh, ow, kw)


# -- per-channel max -------------------------------------------------------------------------
def max_pool_forward(x, pool, stride=(1, 1), pad=(0, 0)):
    """Per-channel max pooling: y[n, c, oy, ox] = max over the window of x[n, c]."""
    xp = array_module(x)
    if _is_global(x.shape, pool, stride, pad):
        n, c = x.shape[:2]
        return x.reshape(n, c, -1).max(axis=2).reshape(n, c, 1, 1)
    out_hw = _out_hw(x.shape, pool, stride, pad)
    tiles = _tiles(x, pool, stride, pad)
    if tiles is not None:
        # Rows contiguous (NCHW): reduce the window rows over whole contiguous rows, then the
        # column pairs, rather than kh*kw views that each read every kw-th value.
        rows = _reduce(xp.maximum, [tiles[:, :, :, ky] for ky in range(pool[0])])
        return _reduce(xp.maximum, [rows[..., kx] for kx in range(pool[1])])
    a = _padded(x, pad, -xp.inf)
    y = _reduce(xp.maximum, list(_views(a, pool, stride, out_hw)))
    if pad[0] >= pool[0] or pad[1] >= pool[1]:
        y[:, :, xp.asarray(_all_padding(x.shape, pool, stride, pad, out_hw))] = 0
    return y


def _all_padding(x_shape, pool, stride, pad, out_hw):
    """[OH, OW] bool: the windows lying entirely in the padding (by position, not by value)."""
    def empty(size, k, s, p, o):
        start = np.arange(o) * s - p
        return (start + k <= 0) | (start >= size)

    rows = empty(x_shape[2], pool[0], stride[0], pad[0], out_hw[0])
    cols = empty(x_shape[3], pool[1], stride[1], pad[1], out_hw[1])
    return rows[:, None] | cols[None, :]


def max_pool_backward(dy, x, y, pool, stride=(1, 1), pad=(0, 0)):
    """Gradient of max_pool_forward: each window's dy goes to its first maximum (row-major),
    laid out as x."""
    xp = array_module(x)
    if _is_global(x.shape, pool, stride, pad):
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        idx = flat.argmax(axis=2)
        onehot = xp.arange(flat.shape[2]).reshape(1, 1, -1) == idx[:, :, None]
        return xp.where(onehot, dy.reshape(n, c, 1), dy.dtype.type(0)).astype(dy.dtype).reshape(x.shape)
    out_hw = y.shape[2:]
    a = _padded(x, pad, -xp.inf)
    overlapping = stride[0] < pool[0] or stride[1] < pool[1]
    if _covers_once(a.shape[2:], pool, stride, out_hw):
        da = xp.empty_like(a, dtype=dy.dtype)  # every element is written once below
    else:
        da = xp.zeros_like(a, dtype=dy.dtype)
    share = xp.empty_like(dy) if overlapping else None  # one window offset's part of dy
    last = pool[0] * pool[1] - 1
    free = None  # windows whose first maximum is still to be found
    has_nan = bool(xp.isnan(y).any())  # then a NaN window's gradient goes to its first NaN
    # dy * won routes dy to the winner; a non-finite dy must not leak to the others (inf * 0)
    route = xp.multiply if bool(xp.isfinite(dy).all()) else (lambda d, w, out: xp.copyto(out, xp.where(w, d, 0)))
    for k, (v, dv) in enumerate(zip(_views(a, pool, stride, out_hw), _views(da, pool, stride, out_hw))):
        won = v == y
        if has_nan:
            won |= xp.isnan(v)
        if free is None:
            if k < last:
                free = ~won
        else:
            won &= free
            if k < last:
                free ^= won  # won is a subset of free: free &= ~won
        if overlapping:
            route(dy, won, out=share)
            dv += share
        else:
            route(dy, won, out=dv)
    return _crop(da, pad, x.shape)


# -- per-channel average ---------------------------------------------------------------------
def _window_sums(x, pool, stride, pad):
    xp = array_module(x)
    if _is_global(x.shape, pool, stride, pad):
        n, c = x.shape[:2]
        return x.reshape(n, c, -1).sum(axis=2).reshape(n, c, 1, 1)
    out_hw = _out_hw(x.shape, pool, stride, pad)
    a = _padded(x, pad, 0)
    return _reduce(xp.add, list(_views(a, pool, stride, out_hw)))


def _window_sums_backward(ds, x_shape, pool, stride, pad):
    """Input gradient of `_window_sums`, laid out as ds."""
    xp = array_module(ds)
    if _is_global(x_shape, pool, stride, pad):
        return xp.broadcast_to(ds, x_shape).copy()
    n, c, h, w = x_shape
    padded = (n, c, h + 2 * pad[0], w + 2 * pad[1])
    if _covers_once(padded[2:], pool, stride, ds.shape[2:]):
        da = xp.empty_like(ds, shape=padded)  # every element is written once below
    else:
        da = xp.zeros_like(ds, shape=padded)
    overlapping = stride[0] < pool[0] or stride[1] < pool[1]
    for dv in _views(da, pool, stride, ds.shape[2:]):
        if overlapping:
            dv += ds
        else:
            dv[...] = ds
    return _crop(da, pad, x_shape)


def avg_pool_forward(x, pool, stride=(1, 1), pad=(0, 0)):
    """Per-channel average pooling over the full window (padded positions counted)."""
    s = _window_sums(x, pool, stride, pad)
    return s * s.dtype.type(1.0 / (pool[0] * pool[1]))


def avg_pool_backward(dy, x_shape, pool, stride=(1, 1), pad=(0, 0)):
    ds = dy * dy.dtype.type(1.0 / (pool[0] * pool[1]))
    return _window_sums_backward(ds, x_shape, pool, stride, pad)


# -- cross-channel pooling through a mapping ---------------------------------------------------
def is_identity_mapping(mapping) -> bool:
    xp = array_module(mapping)
    return mapping.shape[0] == mapping.shape[1] and bool((mapping == xp.eye(mapping.shape[0], dtype=bool)).all())


def mapped_max_pool_forward(x, mapping, pool, stride=(1, 1), pad=(0, 0)):
    """Max over the windows of every channel c with mapping[c, o]; returns (y, ctx for backward)."""
    xp = array_module(x)
    yc = max_pool_forward(x, pool, stride, pad)
    m = xp.asarray(mapping, dtype=bool)
    masked = xp.where(m[None, :, :, None, None], yc[:, :, None], -xp.inf)  # [N, C, O, OH, OW]
    winner = masked.argmax(axis=1)  # first channel holding the max
    y = masked.max(axis=1)
    connected = m.any(axis=0)
    y = xp.where(connected[None, :, None, None], y, 0).astype(x.dtype)
    return y, (yc, winner, connected)


def mapped_max_pool_backward(dy, x, ctx, mapping, pool, stride=(1, 1), pad=(0, 0)):
    xp = array_module(x)
    yc, winner, connected = ctx
    c = x.shape[1]
    dy = dy * connected[None, :, None, None]
    chosen = winner[:, None] == xp.arange(c).reshape(1, c, 1, 1, 1)  # [N, C, O, OH, OW]
    dyc = xp.where(chosen, dy[:, None], dy.dtype.type(0)).sum(axis=2).astype(dy.dtype)  # routed, not * 0
    return max_pool_backward(dyc, x, yc, pool, stride, pad)


def _average_weights(mapping, pool, dtype):
    xp = array_module(mapping)
    m = xp.asarray(mapping, dtype=dtype)
    count = m.sum(axis=0) * (pool[0] * pool[1])
    return m / xp.where(count > 0, count, 1)


def _mix_channels(a, wm, mapping, transpose=False):
    """out[n, o] = sum of a[n, c] * wm[c, o] over the channels c mapped to o (or the adjoint):
    an einsum, unless a holds NaN / Inf: then the unmapped pairs are left out, not multiplied
    by 0 (which would spread the NaN to every output)."""
    xp = array_module(a)
    if transpose:
        wm, mapping = wm.T, xp.asarray(mapping).T
    if bool(xp.isfinite(a).all()):
        return xp.einsum("nchw,co->nohw", a, wm)
    m = xp.asarray(mapping, dtype=bool)[None, :, :, None, None]
    return xp.where(m, a[:, :, None] * wm[None, :, :, None, None], a.dtype.type(0)).sum(axis=1)


def mapped_avg_pool_forward(x, mapping, pool, stride=(1, 1), pad=(0, 0)):
    """Sum over the windows of the mapped channels / (nb mapped channels * window size)."""
    s = _window_sums(x, pool, stride, pad)
    return _mix_channels(s, _average_weights(mapping, pool, x.dtype), mapping)


def mapped_avg_pool_backward(dy, x_shape, mapping, pool, stride=(1, 1), pad=(0, 0)):
    wm = _average_weights(mapping, pool, dy.dtype)
    ds = _mix_channels(dy, wm, mapping, transpose=True)
    return _window_sums_backward(ds, x_shape, pool, stride, pad)


# Inference on fewer images than this (batch-1 latency) pools 2x2 tiles by vectors (VEC2 in lower_c).
VEC2_MAX_IMAGES = 4


# -- the IR op ------------------------------------------------------------
@register
class Pool(OpDef):
    """attrs: pooling ("Max"/"Average"), pool, stride, padding ((h, w) pairs), mapping
    (None = per channel, else a bool [C, O] array)."""

    name = "Pool"
    per_sample = True
    onnx_names = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool")
    ini_names = ("Pool",)
    max_inputs = None
    carries_activation = True

    def preserves_sign(self, attrs) -> bool:
        return attrs.get("mapping") is None

    def absorbs_padding(self, attrs):
        # Average counts padded positions as zeros; Max pads with -inf (equal when input >= 0)
        return "exact" if attrs["pooling"] == "Average" else "non_negative"

    def _infer(self, attrs, in_shapes, param_shapes):
        n, c, h, w = _concat_shape(in_shapes)
        (ph, pw), (sh, sw), (qh, qw) = attrs["pool"], attrs["stride"], attrs["padding"]
        oh, ow = output_size(h, ph, sh, qh), output_size(w, pw, sw, qw)
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
                y = max_pool_forward(x, pool, stride, pad)
                return y, (x, y, None, shapes)
            y, ctx = mapped_max_pool_forward(x, mapping, pool, stride, pad)
            return y, (x, ctx, mapping, shapes)
        if mapping is None:
            return avg_pool_forward(x, pool, stride, pad), (x.shape, None, None, shapes)
        return mapped_avg_pool_forward(x, mapping, pool, stride, pad), (x.shape, None, mapping, shapes)

    def _backward(self, attrs, saved, dy, needs, params):
        first, second, mapping, shapes = saved
        pool, stride, pad = attrs["pool"], attrs["stride"], attrs["padding"]
        if attrs["pooling"] == "Max":
            if mapping is None:
                dx = max_pool_backward(dy, first, second, pool, stride, pad)
            else:
                dx = mapped_max_pool_backward(dy, first, second, mapping, pool, stride, pad)
        elif mapping is None:
            dx = avg_pool_backward(dy, first, pool, stride, pad)
        else:
            dx = mapped_avg_pool_backward(dy, first, mapping, pool, stride, pad)
        return _split_channels(dx, shapes, needs), {}

    # -- lowering --------------------------------------------------------------------------------
    def lower_c(self, graph, node, training):
        attrs = graph.attrs(node)
        ins, outs = low.shapes(graph, node)
        if len(ins) != 1 or len(ins[0]) != 4:
            return Unsupported(f"Pool kernels take one NCHW input, got {[list(s) for s in ins]}")
        n, c, h, w = ins[0]
        (kh, kw), (sy, sx), (py, px) = attrs["pool"], attrs["stride"], attrs["padding"]
        ho, wo = outs[0][2], outs[0][3]
        mapping = attrs.get("mapping")
        conn = None if mapping is None else np.asarray(mapping, dtype=bool)
        fits = py == 0 and px == 0 and (ho - 1) * sy + kh <= h and (wo - 1) * sx + kw <= w
        # TILED: the windows tile the input exactly (each input pixel in exactly one window)
        tiled = fits and (sy, sx) == (kh, kw) and ho * kh == h and wo * kw == w
        g = dict(N=n, C=c, O=outs[0][1], H=h, W=w, HO=ho, WO=wo, KH=kh, KW=kw, SY=sy, SX=sx, PY=py, PX=px,
                 MAX=attrs["pooling"] == "Max", FITS=fits, TILED=tiled,
                 PAR=n * c * h * w >= low.PARALLEL_MIN_ELEMENTS, RW=(wo - 1) * sx + kw)
        # PADROW: max pooling with padding where every window holds an image pixel (separable
        # over padded rows); JE = the end of the image columns in such a row
        g.update(PADROW=not fits and g["MAX"] and conn is None and 0 <= py < kh and 0 <= px < kw
                 and (ho - 1) * sy - py < h and (wo - 1) * sx - px < w,
                 JE=min(g["RW"], px + w))
        # DIRECT2: 2x2 max windows tiling a plane at most 16 wide, pooled straight from the row pairs
        g["DIRECT2"] = g["MAX"] and conn is None and tiled and (kh, kw) == (2, 2) and w <= 16
        # VEC2: the same on few images in inference, at any width, by vectors along the output rows
        # (LeNet's pools at batch 1, one thread, Zen 4: pool1 0.60 -> 0.28 us, pool2 0.60 -> 0.10-0.23 us;
        # AVX2 build: pool1 0.5 -> 0.44 us, pool2 0.65 -> 0.50 us)
        g["VEC2"] = g["MAX"] and conn is None and tiled and (kh, kw) == (2, 2) and not training \
            and n < VEC2_MAX_IMAGES
        # GLOBAL: a max window over the whole plane, reduced flat
        g["GLOBAL"] = g["MAX"] and conn is None and fits and (kh, kw) == (h, w)
        if conn is not None:
            g["links"] = [[c_ for c_ in range(c) if conn[c_, o]] for o in range(conn.shape[1])]
            g["conn"] = conn.astype(int).tolist()
        else:
            g["links"] = None
        return g

    def lower_cuda(self, graph, node, training):
        attrs = graph.attrs(node)
        ins, outs = low.shapes(graph, node)
        if len(ins) != 1 or len(ins[0]) != 4:
            return Unsupported(f"Pool kernels take one NCHW input, got {[list(s) for s in ins]}")
        n, c, h, w = ins[0]
        (kh, kw), (sy, sx), (py, px) = attrs["pool"], attrs["stride"], attrs["padding"]
        if py < 0 or px < 0:
            return Unsupported(f"negative padding {[py, px]}")
        ho, wo = outs[0][2], outs[0][3]
        mapping = attrs.get("mapping")
        links = rlinks = None
        if mapping is not None:
            conn = np.asarray(to_host(mapping), dtype=bool)
            links = [[c_ for c_ in range(c) if conn[c_, o]] for o in range(conn.shape[1])]
            rlinks = [[o for o in range(conn.shape[1]) if conn[c_, o]] for c_ in range(c)]
        tiled = py == 0 and px == 0 and (sy, sx) == (kh, kw) and ho * kh == h and wo * kw == w
        return dict(N=n, C=c, O=outs[0][1], H=h, W=w, HO=ho, WO=wo, KH=kh, KW=kw, SY=sy, SX=sx, PY=py, PX=px,
                    MAX=attrs["pooling"] == "Max", links=links, rlinks=rlinks, TILED=tiled,
                    NONOVER=links is None and sy >= kh and sx >= kw)

    def plan_cuda_forward(self, n, g, k):
        return [k.elementwise("fwd", g["N"] * g["O"] * g["HO"] * g["WO"])]

    def plan_cuda_backward(self, n, g, k):
        if n.dx[0] is None:
            return []
        if g["NONOVER"]:
            specs = [] if g["TILED"] else [k.elementwise("bwd_zero", g["N"] * g["C"] * g["H"] * g["W"])]
            return specs + [k.elementwise("bwd_windows", g["N"] * g["C"] * g["HO"] * g["WO"])]
        return [k.elementwise("bwd_gather", g["N"] * g["C"] * g["H"] * g["W"])]


# -- integer form (post-training quantization, n2d2.quantization) --------------------------------------
class _PoolInteger:
    """Integer pooling on its input's grid (Q, per-channel T kept). Max: the max of the integers.
    Average: the window sum (padded positions count as zeros, as the float op) divided by the
    window size, rounded half away from zero, in integers."""

    kernel = "Pool"

    def quantize(self, q, node):

        attrs = q.graph.attrs(node)
        if attrs["pooling"] not in ("Max", "Average") or attrs.get("mapping") is not None \
                or attrs.get("activation") is not None or len(q.graph.inputs_of(node)) != 1:
            raise QuantizationError(f"node '{node}' (Pool): only a single-input Max or Average pool without "
                                    f"mapping or fused activation has an integer form (pooling={attrs['pooling']})")
        tin = q.input_q(node, 0)
        return {"signed": tin.signed, "Q": tin.Q, "T": tin.T, "attrs": dict(attrs)}

    def forward(self, qnode, xs, nb_bits):
        a = qnode["attrs"]
        x = np.asarray(xs[0], dtype=np.int64)
        if a["pooling"] == "Max":
            y, _ = Pool()._forward(a, [x.astype(np.float64)], {}, False)
            return np.asarray(y).astype(np.int64)
        (kh, kw), (sh, sw), (ph, pw) = a["pool"], a["stride"], a["padding"]
        oh, ow = _out_hw(x.shape, (kh, kw), (sh, sw), (ph, pw))
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
        total = np.zeros(x.shape[:2] + (oh, ow), dtype=np.int64)
        for i in range(kh):
            for j in range(kw):
                total += xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
        count = kh * kw
        return np.sign(total) * ((2 * np.abs(total) + count) // (2 * count))


Pool.integer = _PoolInteger()
Pool.quantized = Pool.integer.kernel
