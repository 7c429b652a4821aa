"""Spatial resizing (N2D2 ResizeCell) as two small interpolation matrices.

Every mode is separable: y = A_h @ x @ A_w^T per (n, c) plane, with A_h [out_h, in_h] and
A_w [out_w, in_w] holding the interpolation weights of each output row/column, so the
backward is exactly the adjoint dx = A_h^T @ dy @ A_w.

Source coordinate of output index i, scale = in / out:
- Bilinear (OpenCV INTER_LINEAR, PyTorch align_corners=False): src = (i + 0.5) * scale - 0.5,
  clamped at 0; neighbours floor(src) and min(floor(src) + 1, in - 1).
- BilinearTF (TensorFlow resize_bilinear, as N2D2's ResizeCell_Frame): src = i * scale, with
  scale = (in - 1) / (out - 1) when align_corners and out > 1 (= PyTorch align_corners=True).
- NearestNeighbor: src = floor(i * scale) (= PyTorch mode='nearest').
"""
import numpy as np

from n2d2.backend import array_module, to_device
from n2d2.ir import lowering as low
from n2d2.ir.lowering import Unsupported
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _split_channels, register

MODES = ("Bilinear", "BilinearTF", "NearestNeighbor")


def interpolation_matrix(out_size: int, in_size: int, mode: str, align_corners: bool = True, dtype=np.float64):
    """Host matrix [out_size, in_size] of the weights of each output index."""
    a = np.zeros((out_size, in_size), dtype=np.float64)
    i = np.arange(out_size, dtype=np.float64)
    if mode == "NearestNeighbor":
        src = np.minimum(np.floor(i * (in_size / out_size)).astype(np.int64), in_size - 1)
        a[np.arange(out_size), src] = 1.0
        return a.astype(dtype)
    if mode == "Bilinear":
        src = np.maximum((i + 0.5) * (in_size / out_size) - 0.5, 0.0)
    elif mode == "BilinearTF":
        if align_corners and out_size > 1:
            scale = (in_size - 1) / (out_size - 1)
        else:
            scale = in_size / out_size
        src = i * scale
    else:
        raise ValueError(f"Unknown resize mode '{mode}' (expected one of {', '.join(MODES)})")
    low = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    rows = np.arange(out_size)
    np.add.at(a, (rows, low), 1.0 - frac)  # setup only (host), not a hot path
    np.add.at(a, (rows, high), frac)
    return a.astype(dtype)


def resize_forward(x, a_h, a_w):
    """y[n, c] = a_h @ x[n, c] @ a_w^T (a_h, a_w in the array module of x)."""
    if not _finite(x):
        return _taps(a_h, _taps(a_w, x).swapaxes(-1, -2)).swapaxes(-1, -2)
    return a_h.astype(x.dtype) @ (x @ a_w.astype(x.dtype).T)


def resize_backward(dy, a_h, a_w):
    if not _finite(dy):
        return _taps(a_h.T, _taps(a_w.T, dy).swapaxes(-1, -2)).swapaxes(-1, -2)
    return a_h.astype(dy.dtype).T @ (dy @ a_w.astype(dy.dtype))


def _finite(x):
    return bool(array_module(x).isfinite(x).all())


def _taps(a, x):
    """x @ a.T reading only the non-zero taps of each row of a: a NaN or Inf reaches the outputs
    that interpolate from it and no other (the matrix product gives 0 * Inf = NaN everywhere).
    The kernels read the same taps."""
    xp = array_module(x)
    a = np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)
    nz = a != 0
    k = max(1, int(nz.sum(axis=1).max()))
    idx = np.zeros((a.shape[0], k), dtype=np.int64)
    valid = np.zeros((a.shape[0], k), dtype=bool)
    for r in range(a.shape[0]):
        cols = np.nonzero(nz[r])[0]
        idx[r, :cols.size], valid[r, :cols.size] = cols, True
    w = xp.asarray(np.where(valid, a[np.arange(a.shape[0])[:, None], idx], 0.0), dtype=x.dtype)
    taken = x[..., xp.asarray(idx)] * w  # [..., R, k]
    return xp.where(xp.asarray(valid), taken, x.dtype.type(0)).sum(axis=-1)


# -- the IR op ------------------------------------------------------------
@register
class Resize(OpDef):
    """attrs: height, width, mode, align_corners."""

    name = "Resize"
    per_sample = True
    onnx_names = ("Resize", "Upsample")
    ini_names = ("Resize",)
    max_inputs = None

    def _infer(self, attrs, in_shapes, param_shapes):
        n, c, _, _ = _concat_shape(in_shapes)
        return [(n, c, attrs["height"], attrs["width"])]

    def __init__(self):
        self._cache = {}

    def _matrices(self, attrs, x):
        """Interpolation matrices, built once per (sizes, mode, device)."""
        gpu = array_module(x) is not np
        _, _, h, w = x.shape
        align = attrs.get("align_corners", True)
        key = (attrs["height"], attrs["width"], h, w, attrs["mode"], align, gpu)
        if key not in self._cache:
            a_h = interpolation_matrix(attrs["height"], h, attrs["mode"], align)
            a_w = interpolation_matrix(attrs["width"], w, attrs["mode"], align)
            self._cache[key] = (to_device(a_h, gpu), to_device(a_w, gpu))
        return self._cache[key]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        a_h, a_w = self._matrices(attrs, x)
        return resize_forward(x, a_h, a_w), (a_h, a_w, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        a_h, a_w, shapes = saved
        return _split_channels(resize_backward(dy, a_h, a_w), shapes, needs), {}

    # -- lowering --------------------------------------------------------------------------------
    def lower_c(self, graph, node, training):
        """Separable interpolation with at most two taps per output row and column."""
        attrs = graph.attrs(node)
        ins, _ = low.shapes(graph, node)
        if len(ins) != 1 or len(ins[0]) != 4:
            return Unsupported(f"the Resize kernel takes one NCHW input, got {[list(s) for s in ins]}")
        n, c, h, w = ins[0]
        ho, wo = attrs["height"], attrs["width"]
        align = attrs.get("align_corners", True)
        taps = []
        for size_out, size_in in ((ho, h), (wo, w)):
            a = interpolation_matrix(size_out, size_in, attrs["mode"], align)
            rows = []
            for r in range(size_out):
                nz = np.nonzero(a[r])[0].tolist()
                if len(nz) > 2:
                    return Unsupported(f"mode {attrs['mode']} reads {len(nz)} input pixels per output (kernel: 2)")
                nz = (nz + [nz[-1] if nz else 0])[:2] if nz else [0, 0]
                wts = [float(a[r, nz[0]]), float(a[r, nz[1]])]
                if nz[1] == nz[0]:   # one tap: two halves (exact), not w * x + 0 * x (Inf * 0 is NaN)
                    wts = [wts[0] / 2, wts[0] / 2]
                rows.append((nz[0], nz[1], wts[0], wts[1]))
            taps.append(rows)
        return dict(N=n, C=c, H=h, W=w, HO=ho, WO=wo, TH=taps[0], TW=taps[1])
