"""Colour conversions of OpenCV (`cv::cvtColor`) in numpy, on (N, 3, H, W) batches.

Images are stored in BGR channel order, as N2D2 (OpenCV) stores them. 8-bit images use
OpenCV's 8-bit encodings (H in [0, 180), S, V, L in [0, 255], Cr/Cb offset by 128, Lab/Luv
rescaled); float images use [0, 1] for B, G, R and OpenCV's float ranges for the others
(H in degrees, L in [0, 100]).
"""
import numpy as np

from n2d2.transform._image import restore_dtype, work_dtype

_GRAY = (0.114, 0.587, 0.299)  # weights of B, G, R
_WHITE_D65 = (0.950456, 1.0, 1.088754)
_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_UN, _VN = 0.19793943, 0.46831096


def _is_8bit(dtype) -> bool:
    return np.dtype(dtype) == np.uint8


def to_unit(x: np.ndarray) -> np.ndarray:
    """B, G, R values on a [0, 1] scale in the working float type."""
    ft = work_dtype(x.dtype)
    y = x.astype(ft, copy=False)
    return y / ft.type(255.0) if _is_8bit(x.dtype) else y


def from_unit(y: np.ndarray, dtype) -> np.ndarray:
    return restore_dtype(y * 255.0 if _is_8bit(dtype) else y, dtype)


def gray(x: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) luminance of a BGR batch, in the input's dtype."""
    ft = work_dtype(x.dtype)
    y = x.astype(ft, copy=False)
    g = _GRAY[0] * y[:, 0] + _GRAY[1] * y[:, 1] + _GRAY[2] * y[:, 2]
    return restore_dtype(g[:, None], x.dtype)


# -- HSV / HLS ----------------------------------------------------------------------------------
def _hue(b, g, r, vmax, delta):
    safe = np.where(delta > 0, delta, 1)
    h = np.where(vmax == r, 60.0 * (g - b) / safe,
                 np.where(vmax == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe))
    h = np.where(delta > 0, h, 0.0)
    return np.where(h < 0, h + 360.0, h)


def _encode_hue(h, dtype):
    return h / 2.0 if _is_8bit(dtype) else h


def _decode_hue(h, dtype):
    return h.astype(np.float64) * 2.0 if _is_8bit(dtype) else h.astype(np.float64)


def _unit_scale(dtype) -> float:
    """What 1.0 on the [0, 1] scale is in `dtype` (S, V, L of HSV/HLS)."""
    return 255.0 if _is_8bit(dtype) else 1.0


def _hue_max_min(x):
    """Hue (degrees) and the per-pixel max and min of the [0, 1] B, G, R of x (float64)."""
    b, g, r = np.moveaxis(to_unit(x).astype(np.float64), 1, 0)
    vmax = np.maximum(np.maximum(b, g), r)
    vmin = np.minimum(np.minimum(b, g), r)
    return _hue(b, g, r, vmax, vmax - vmin), vmax, vmin


def _pack_hue(h, first, second, dtype):
    """(N, 3, H, W) in `dtype` from the hue (degrees) and two [0, 1] channels."""
    scale = _unit_scale(dtype)
    return restore_dtype(np.stack([_encode_hue(h, dtype), first * scale, second * scale], axis=1), dtype)


def _unpack_hue(x):
    """The hue (degrees) and the two [0, 1] channels of an HSV/HLS batch (float64)."""
    scale = _unit_scale(x.dtype)
    return _decode_hue(x[:, 0], x.dtype), x[:, 1].astype(np.float64) / scale, x[:, 2].astype(np.float64) / scale


def bgr_to_hsv(x):
    h, vmax, vmin = _hue_max_min(x)
    delta = vmax - vmin
    s = np.where(vmax > 0, delta / np.where(vmax > 0, vmax, 1), 0.0)
    return _pack_hue(h, s, vmax, x.dtype)


def hsv_to_bgr(x):
    h, s, v = _unpack_hue(x)
    h = np.mod(h / 60.0, 6.0)
    i = np.floor(h)
    f = h - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int64)
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return from_unit(np.stack([b, g, r], axis=1), x.dtype)


def bgr_to_hls(x):
    h, vmax, vmin = _hue_max_min(x)
    delta = vmax - vmin
    light = (vmax + vmin) / 2.0
    denom = np.where(light < 0.5, vmax + vmin, 2.0 - vmax - vmin)
    s = np.where(delta > 0, delta / np.where(denom > 0, denom, 1), 0.0)
    return _pack_hue(h, light, s, x.dtype)


def hls_to_bgr(x):
    h, light, s = _unpack_hue(x)
    h = np.mod(h, 360.0) / 360.0
    m2 = np.where(light <= 0.5, light * (1 + s), light + s - light * s)
    m1 = 2 * light - m2

    def channel(hue):
        hue = np.mod(hue, 1.0)
        return np.where(hue < 1 / 6, m1 + (m2 - m1) * hue * 6,
                        np.where(hue < 0.5, m2, np.where(hue < 2 / 3, m1 + (m2 - m1) * (2 / 3 - hue) * 6, m1)))

    r, g, b = channel(h + 1 / 3), channel(h), channel(h - 1 / 3)
    gray_mask = s == 0
    r, g, b = (np.where(gray_mask, light, c) for c in (r, g, b))
    return from_unit(np.stack([b, g, r], axis=1), x.dtype)


# -- YCrCb ----------------------------------------------------------------------------------------
def bgr_to_ycrcb(x):
    ft = np.float64
    y = x.astype(ft)
    b, g, r = y[:, 0], y[:, 1], y[:, 2]
    delta = 128.0 if _is_8bit(x.dtype) else 0.5
    lum = _GRAY[0] * b + _GRAY[1] * g + _GRAY[2] * r
    cr = (r - lum) * 0.713 + delta
    cb = (b - lum) * 0.564 + delta
    return restore_dtype(np.stack([lum, cr, cb], axis=1), x.dtype)


def ycrcb_to_bgr(x):
    y = x.astype(np.float64)
    delta = 128.0 if _is_8bit(x.dtype) else 0.5
    lum, cr, cb = y[:, 0], y[:, 1] - delta, y[:, 2] - delta
    r = lum + 1.403 * cr
    g = lum - 0.714 * cr - 0.344 * cb
    b = lum + 1.773 * cb
    return restore_dtype(np.stack([b, g, r], axis=1), x.dtype)


# -- CIE Lab / Luv (sRGB gamma, D65 white, as OpenCV) ------------------------------------------------
def _srgb_to_linear(c):
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(c):
    c = np.clip(c, 0.0, None)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def _bgr_to_xyz(x):
    bgr = to_unit(x).astype(np.float64)
    rgb = _srgb_to_linear(bgr[:, ::-1])
    return np.einsum("ij,njhw->nihw", _RGB_TO_XYZ, rgb)


def _xyz_to_bgr(xyz, dtype):
    rgb = np.einsum("ij,njhw->nihw", _XYZ_TO_RGB, xyz)
    return from_unit(np.clip(_linear_to_srgb(rgb), 0.0, 1.0)[:, ::-1], dtype)


def _lightness(y):
    return np.where(y > 0.008856, 116.0 * np.cbrt(y) - 16.0, 903.3 * y)


def _lightness_inverse(light):
    return np.where(light > 7.9996, ((light + 16.0) / 116.0) ** 3, light / 903.3)


def bgr_to_lab(x):
    xyz = _bgr_to_xyz(x)
    f = [None] * 3
    for k in range(3):
        t = xyz[:, k] / _WHITE_D65[k]
        f[k] = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0)
    light = _lightness(xyz[:, 1])
    a = 500.0 * (f[0] - f[1])
    b = 200.0 * (f[1] - f[2])
    if _is_8bit(x.dtype):
        light, a, b = light * 255.0 / 100.0, a + 128.0, b + 128.0
    return restore_dtype(np.stack([light, a, b], axis=1), x.dtype)


def lab_to_bgr(x):
    v = x.astype(np.float64)
    light, a, b = v[:, 0], v[:, 1], v[:, 2]
    if _is_8bit(x.dtype):
        light, a, b = light * 100.0 / 255.0, a - 128.0, b - 128.0
    fy = (light + 16.0) / 116.0
    fx, fz = fy + a / 500.0, fy - b / 200.0

    def inv(f):
        return np.where(f > 0.206893, f ** 3, (f - 16.0 / 116.0) / 7.787)

    xyz = np.stack([inv(fx) * _WHITE_D65[0], _lightness_inverse(light), inv(fz) * _WHITE_D65[2]], axis=1)
    return _xyz_to_bgr(xyz, x.dtype)


def bgr_to_luv(x):
    xyz = _bgr_to_xyz(x)
    X, Y, Z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    light = _lightness(Y)
    d = X + 15.0 * Y + 3.0 * Z
    safe = np.where(d > 0, d, 1.0)
    up = np.where(d > 0, 4.0 * X / safe, _UN)
    vp = np.where(d > 0, 9.0 * Y / safe, _VN)
    u = 13.0 * light * (up - _UN)
    v = 13.0 * light * (vp - _VN)
    if _is_8bit(x.dtype):
        light, u, v = light * 255.0 / 100.0, (u + 134.0) * 255.0 / 354.0, (v + 140.0) * 255.0 / 262.0
    return restore_dtype(np.stack([light, u, v], axis=1), x.dtype)


def luv_to_bgr(x):
    w = x.astype(np.float64)
    light, u, v = w[:, 0], w[:, 1], w[:, 2]
    if _is_8bit(x.dtype):
        light, u, v = light * 100.0 / 255.0, u * 354.0 / 255.0 - 134.0, v * 262.0 / 255.0 - 140.0
    Y = _lightness_inverse(light)
    safe_l = np.where(light > 0, light, 1.0)
    up = np.where(light > 0, u / (13.0 * safe_l) + _UN, _UN)
    vp = np.where(light > 0, v / (13.0 * safe_l) + _VN, _VN)
    safe_vp = np.where(vp != 0, vp, 1.0)
    X = np.where(vp != 0, Y * 9.0 * up / (4.0 * safe_vp), 0.0)
    Z = np.where(vp != 0, Y * (12.0 - 3.0 * up - 20.0 * vp) / (4.0 * safe_vp), 0.0)
    return _xyz_to_bgr(np.stack([X, Y, Z], axis=1), x.dtype)


FROM_BGR = {"HSV": bgr_to_hsv, "HLS": bgr_to_hls, "YCrCb": bgr_to_ycrcb, "CIELab": bgr_to_lab, "CIELuv": bgr_to_luv}
TO_BGR = {"HSV": hsv_to_bgr, "HLS": hls_to_bgr, "YCrCb": ycrcb_to_bgr, "CIELab": lab_to_bgr, "CIELuv": luv_to_bgr}


def swap_rb(x):
    return x[:, ::-1].copy()
