"""Image operations shared by the transformations, on numpy batches of shape (N, C, H, W).

OpenCV does this work in N2D2; here it is plain numpy, vectorised over the batch. Geometry
follows OpenCV: pixel centres at integer coordinates, bilinear sampling with half-pixel
alignment for resizing (`INTER_LINEAR`), and OpenCV's border modes.
"""
import numpy as np

from n2d2.error_handler import WrongValue

BORDER_TYPES = ("ConstantBorder", "ReplicateBorder", "ReflectBorder", "WrapBorder",
                "MinusOneReflectBorder", "MeanBorder")


def check_border_type(border_type: str):
    if border_type not in BORDER_TYPES:
        raise WrongValue("border_type", border_type, BORDER_TYPES)


def work_dtype(dtype) -> np.dtype:
    """The float type computations run in: float64 for float64 input, float32 otherwise."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def restore_dtype(y: np.ndarray, dtype) -> np.ndarray:
    """Back to the input's dtype; integer images are rounded and saturated as OpenCV does."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        y = np.rint(y)
        np.minimum(y, info.max, out=y)
        np.maximum(y, info.min, out=y)
        return y.astype(dtype)
    if dtype == np.bool_:
        return y > 0.5
    return y.astype(dtype, copy=False)


# -- border handling --------------------------------------------------------------------------
def border_index(i: np.ndarray, n: int, border_type: str) -> np.ndarray:
    """Map integer coordinates (any range) into [0, n) for a non-constant border mode."""
    if border_type in ("ReplicateBorder", "ConstantBorder", "MeanBorder"):
        return np.clip(i, 0, n - 1)
    if border_type == "WrapBorder":
        return np.mod(i, n)
    if border_type == "ReflectBorder":  # fedcba|abcdefgh|hgfedcb
        m = np.mod(i, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m)
    if border_type == "MinusOneReflectBorder":  # gfedcb|abcdefgh|gfedcba
        if n == 1:
            return np.zeros_like(i)
        m = np.mod(i, 2 * n - 2)
        return np.where(m < n, m, 2 * n - 2 - m)
    raise WrongValue("border_type", border_type, BORDER_TYPES)


def border_fill(x: np.ndarray, border_type: str, border_value) -> np.ndarray:
    """Per-image, per-channel fill value of shape (N, C) for the constant-like borders."""
    n, c = x.shape[:2]
    if border_type == "MeanBorder":
        return x.reshape(n, c, -1).mean(axis=2, dtype=np.float64).astype(work_dtype(x.dtype))
    values = [float(v) for v in (border_value or [])]
    values = (values + [0.0] * c)[:c] if len(values) != 1 else values * c
    return np.broadcast_to(np.asarray(values, dtype=work_dtype(x.dtype)), (n, c))


def pad(x: np.ndarray, top: int, bottom: int, left: int, right: int, border_type: str,
        border_value=()) -> np.ndarray:
    """Pad the last two axes of a (N, C, H, W) batch (negative amounts crop)."""
    check_border_type(border_type)
    h, w = x.shape[2], x.shape[3]
    # Crop first where an amount is negative.
    y0, y1 = max(0, -top), h - max(0, -bottom)
    x0, x1 = max(0, -left), w - max(0, -right)
    x = x[:, :, y0:y1, x0:x1]
    top, bottom, left, right = max(0, top), max(0, bottom), max(0, left), max(0, right)
    if top == bottom == left == right == 0:
        return x
    h, w = x.shape[2], x.shape[3]
    if border_type in ("ConstantBorder", "MeanBorder"):
        fill = border_fill(x, border_type, border_value)
        out = np.empty(x.shape[:2] + (h + top + bottom, w + left + right), dtype=x.dtype)
        out[...] = restore_dtype(fill, x.dtype)[:, :, None, None]
        out[:, :, top:top + h, left:left + w] = x
        return out
    rows = border_index(np.arange(-top, h + bottom), h, border_type)
    cols = border_index(np.arange(-left, w + right), w, border_type)
    return x[:, :, rows[:, None], cols[None, :]]


# -- resizing and sampling ----------------------------------------------------------------------
def _linear_taps(out_size: int, in_size: int, dtype):
    """Source indices and weights of OpenCV's INTER_LINEAR along one axis (half-pixel centres)."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, in_size - 1)
    frac = src - i0
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, frac.astype(dtype)


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of a (N, C, H, W) batch to (N, C, out_h, out_w), in the input's dtype.

    Same sampling as OpenCV `INTER_LINEAR` and PyTorch `interpolate(mode="bilinear",
    align_corners=False)` (no antialiasing when shrinking).
    """
    n, c, h, w = x.shape
    if (h, w) == (out_h, out_w):
        return x.copy()
    ft = work_dtype(x.dtype)
    # Interpolation along each axis is a small (out, in) matrix with two taps per row: two
    # batched matrix products are several times faster than gathering pixels.
    ry = _interpolation_matrix(out_h, h, ft)
    rx = _interpolation_matrix(out_w, w, ft)
    xf = x.astype(ft, copy=False).reshape(n * c, h, w)
    out = np.matmul(np.matmul(ry, xf), rx.T).reshape(n, c, out_h, out_w)
    return restore_dtype(out, x.dtype)


def resize_nearest(labels: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Nearest-neighbour resize of a (N, C, H, W) batch (label maps), as OpenCV `INTER_NEAREST`:
    output pixel i takes source pixel floor(i * in / out) (exact integer arithmetic)."""
    h, w = labels.shape[2], labels.shape[3]
    rows = np.minimum(np.arange(out_h) * h // out_h, h - 1)
    cols = np.minimum(np.arange(out_w) * w // out_w, w - 1)
    return np.ascontiguousarray(labels[:, :, rows[:, None], cols[None, :]])


def sample_nearest(labels: np.ndarray, map_y: np.ndarray, map_x: np.ndarray, fill: int = -1) -> np.ndarray:
    """`out[n, c, i, j] = labels[n, c]` at the nearest pixel of (map_y[n, i, j], map_x[n, i, j])
    (OpenCV `remap` with `INTER_NEAREST`); `fill` where that pixel is outside the image."""
    n, c, h, w = labels.shape
    yi = np.rint(np.asarray(map_y, dtype=np.float64)).astype(np.int64)
    xi = np.rint(np.asarray(map_x, dtype=np.float64)).astype(np.int64)
    inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
    vals = labels[np.arange(n).reshape(n, 1, 1), :, np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]  # (N, Ho, Wo, C)
    vals = np.where(inside[..., None], vals, np.asarray(fill, dtype=labels.dtype))
    return np.ascontiguousarray(np.moveaxis(vals, 3, 1))


def _interpolation_matrix(out_size: int, in_size: int, dtype) -> np.ndarray:
    i0, i1, frac = _linear_taps(out_size, in_size, dtype)
    m = np.zeros((out_size, in_size), dtype=dtype)
    rows = np.arange(out_size)
    m[rows, i0] += 1 - frac
    m[rows, i1] += frac  # i1 == i0 at the last pixel: the weights still sum to 1
    return m


def sample_bilinear(x: np.ndarray, map_y: np.ndarray, map_x: np.ndarray, border_type: str = "ConstantBorder",
                    border_value=()) -> np.ndarray:
    """`out[n, c, i, j] = x[n, c]` sampled bilinearly at (map_y[n, i, j], map_x[n, i, j]).

    Like OpenCV `remap` with `INTER_LINEAR`: a neighbour outside the image takes the border
    value (constant modes) or the border-mapped pixel. Returns the input's dtype.
    """
    check_border_type(border_type)
    n, c, h, w = x.shape
    ft = work_dtype(x.dtype)
    xf = x.astype(ft, copy=False)
    map_y = np.asarray(map_y, dtype=np.float64)
    map_x = np.asarray(map_x, dtype=np.float64)
    y0 = np.floor(map_y).astype(np.int64)
    x0 = np.floor(map_x).astype(np.int64)
    wy = (map_y - y0).astype(ft)
    wx = (map_x - x0).astype(ft)
    constant = border_type in ("ConstantBorder", "MeanBorder")
    fill = border_fill(x, border_type, border_value) if constant else None  # (N, C)
    nidx = np.arange(n).reshape(n, 1, 1)
    out = np.zeros((n, map_y.shape[1], map_y.shape[2], c), dtype=ft)
    for dy, dx, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx),
                           (1, 0, wy * (1 - wx)), (1, 1, wy * wx)):
        yi, xi = y0 + dy, x0 + dx
        yc, xc = border_index(yi, h, border_type), border_index(xi, w, border_type)
        vals = xf[nidx, :, yc, xc]  # (N, Ho, Wo, C): advanced indices first
        if constant:
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            vals = np.where(inside[..., None], vals, fill[:, None, None, :])
        out += vals * weight[..., None]
    return restore_dtype(np.moveaxis(out, 3, 1), x.dtype)


# -- filtering ------------------------------------------------------------------------------------
def gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV's getGaussianKernel (sigma <= 0 derives it from the size)."""
    if sigma <= 0:
        sigma = 0.3 * ((ksize - 1) * 0.5 - 1) + 0.8
    t = np.arange(ksize, dtype=np.float64) - (ksize - 1) / 2.0
    k = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return k / k.sum()


def gaussian_blur(f: np.ndarray, ksize: int, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes with OpenCV's default border (reflect 101)."""
    k = gaussian_kernel(ksize, sigma)
    r = ksize // 2
    for axis in (-2, -1):
        size = f.shape[axis]
        idx = border_index(np.arange(-r, size + r), size, "MinusOneReflectBorder")
        padded = np.take(f, idx, axis=axis)
        acc = np.zeros_like(f)
        for t in range(ksize):
            sl = [slice(None)] * f.ndim
            sl[axis] = slice(t, t + size)
            acc += k[t] * padded[tuple(sl)]
        f = acc
    return f
