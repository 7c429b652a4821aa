"""2-D max and average pooling (N2D2 PoolCell semantics), forward and backward.

Sizes are `(kh, kw)`, `(sh, sw)`, `(ph, pw)` in numpy order (cells convert from N2D2's
`[X, Y]`). Output size per dim: `floor((in + 2*pad - pool + stride) / stride)`.

- Max: padded positions never win; the gradient goes to the first maximum of each window in
  row-major order (as N2D2 and PyTorch). A window lying entirely in the padding gives 0.
- Average: divides by the full window, padded positions counted (N2D2 calls its CPU kernel
  with count-include-padding; cuDNN `AVERAGE_COUNT_INCLUDE_PADDING`).
- Mapping (bool [C, O], rows = input channels): output o pools over the windows of every
  mapped channel together: max over all of them (first channel, then first position, wins),
  or their sum divided by (nb mapped channels * window size). No mapped channel gives 0.

Every window is visited through strided views of the (padded) input, one view per window
offset, so a pass costs `kh*kw` whole-array operations and no gather; the max backward
recomputes which offset won from the saved input and output instead of storing indices.
"""
from n2d2.backend import array_module


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
    """x with `pad` rows/cols of `fill` on each side (x itself when there is no padding)."""
    ph, pw = pad
    if ph == 0 and pw == 0:
        return x
    xp = array_module(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), fill, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def _views(a, pool, stride, out_hw):
    """(ky, kx, view) for every window offset: view[n, c, oy, ox] = a[n, c, oy*sh + ky, ox*sw + kx]."""
    kh, kw = pool
    sh, sw = stride
    oh, ow = out_hw
    for ky in range(kh):
        for kx in range(kw):
            yield a[:, :, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]


def _crop(a, pad, shape):
    ph, pw = pad
    if ph == 0 and pw == 0:
        return a
    return a[:, :, ph:ph + shape[2], pw:pw + shape[3]]


def _tiles(x, pool, stride, pad):
    """Non-overlapping windows tiling x exactly: x viewed as [N, C, OH, kh, OW, kw], else None."""
    n, c, h, w = x.shape
    kh, kw = pool
    if tuple(stride) != tuple(pool) or tuple(pad) != (0, 0) or h % kh or w % kw or not x.flags.c_contiguous:
        return None
    return x.reshape(n, c, h // kh, kh, w // kw, kw)


# -- per-channel max -------------------------------------------------------------------------
def max_pool_forward(x, pool, stride=(1, 1), pad=(0, 0)):
    """Per-channel max pooling: y[n, c, oy, ox] = max over the window of x[n, c]."""
    xp = array_module(x)
    if _is_global(x.shape, pool, stride, pad):
        n, c = x.shape[:2]
        return x.reshape(n, c, -1).max(axis=2).reshape(n, c, 1, 1)
    tiles = _tiles(x, pool, stride, pad)
    if tiles is not None:
        # Fast path (LeNet's 2x2/2): reduce the window rows, then the contiguous column pairs.
        rows = tiles[:, :, :, 0].copy()
        for ky in range(1, pool[0]):
            xp.maximum(rows, tiles[:, :, :, ky], out=rows)
        y = rows[..., 0].copy()
        for kx in range(1, pool[1]):
            xp.maximum(y, rows[..., kx], out=y)
        return y
    out_hw = _out_hw(x.shape, pool, stride, pad)
    a = _padded(x, pad, -xp.inf)
    views = _views(a, pool, stride, out_hw)
    y = next(views).copy()
    for v in views:
        xp.maximum(y, v, out=y)
    if pad != (0, 0) and (pad[0] >= pool[0] or pad[1] >= pool[1]):
        y[y == -xp.inf] = 0  # windows entirely in the padding
    return y


def max_pool_backward(dy, x, y, pool, stride=(1, 1), pad=(0, 0)):
    """Gradient of max_pool_forward: each window's dy goes to its first maximum."""
    xp = array_module(x)
    if _is_global(x.shape, pool, stride, pad):
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        idx = flat.argmax(axis=2)
        onehot = xp.arange(flat.shape[2]).reshape(1, 1, -1) == idx[:, :, None]
        return (onehot * dy.reshape(n, c, 1)).astype(dy.dtype).reshape(x.shape)
    out_hw = y.shape[2:]
    a = _padded(x, pad, -xp.inf)
    da = xp.zeros(a.shape, dtype=dy.dtype)
    free = xp.ones(y.shape, dtype=bool)
    overlapping = stride[0] < pool[0] or stride[1] < pool[1]
    for v, dv in zip(_views(a, pool, stride, out_hw), _views(da, pool, stride, out_hw)):
        won = (v == y) & free
        free &= ~won
        if overlapping:
            dv += dy * won
        else:
            xp.multiply(dy, won, out=dv)
    return _crop(da, pad, x.shape)


# -- per-channel average ---------------------------------------------------------------------
def _window_sums(x, pool, stride, pad):
    xp = array_module(x)
    if _is_global(x.shape, pool, stride, pad):
        n, c = x.shape[:2]
        return x.reshape(n, c, -1).sum(axis=2).reshape(n, c, 1, 1)
    out_hw = _out_hw(x.shape, pool, stride, pad)
    a = _padded(x, pad, 0)
    views = _views(a, pool, stride, out_hw)
    s = next(views).copy()
    for v in views:
        xp.add(s, v, out=s)
    return s


def _window_sums_backward(ds, x_shape, pool, stride, pad):
    xp = array_module(ds)
    if _is_global(x_shape, pool, stride, pad):
        return xp.broadcast_to(ds, x_shape).copy()
    n, c, h, w = x_shape
    da = xp.zeros((n, c, h + 2 * pad[0], w + 2 * pad[1]), dtype=ds.dtype)
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
    dyc = (chosen * dy[:, None]).sum(axis=2).astype(dy.dtype)
    return max_pool_backward(dyc, x, yc, pool, stride, pad)


def _average_weights(mapping, pool, dtype):
    xp = array_module(mapping)
    m = xp.asarray(mapping, dtype=dtype)
    count = m.sum(axis=0) * (pool[0] * pool[1])
    return m / xp.where(count > 0, count, 1)


def mapped_avg_pool_forward(x, mapping, pool, stride=(1, 1), pad=(0, 0)):
    """Sum over the windows of the mapped channels / (nb mapped channels * window size)."""
    xp = array_module(x)
    s = _window_sums(x, pool, stride, pad)
    wm = _average_weights(mapping, pool, x.dtype)
    return xp.einsum("nchw,co->nohw", s, wm)


def mapped_avg_pool_backward(dy, x_shape, mapping, pool, stride=(1, 1), pad=(0, 0)):
    xp = array_module(dy)
    wm = _average_weights(mapping, pool, dy.dtype)
    ds = xp.einsum("nohw,co->nchw", dy, wm)
    return _window_sums_backward(ds, x_shape, pool, stride, pad)
