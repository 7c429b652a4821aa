"""Per-output-channel rescaling (N2D2 Scaling objects applied by a ScalingCell).

`c` below is the output channel; integer modes work on round(x) (half away from zero, like
C++ std::round) and shift right with floor (arithmetic shift). Outputs stay float: the
saturation to a quantized bit-width that N2D2 applies in quantized networks is not done here.

- floating point: y = s[c] * x'                  x' = clamp(x, 0, clip[c]) if clipped
- fixed point:    y = (round(x') * s[c] + 2^(f-1)) >> f        (f fractional bits)
- single shift:   y = (round(x'') + 2^(s[c]-1)) >> s[c]         x'' = min(x, clip[c]) if clipped
- double shift:   y = (v + (v << a[c]) + 2^(b[c]-1)) >> b[c]    v = round(x); no clipping
  (2^(k-1) is 0 when k is 0.) The clipping rules are those of N2D2's CUDA kernels.

Backward: exact for floating point; the integer modes use the straight-through estimate of
their real factor (s / 2^f, 1 / 2^s, (1 + 2^a) / 2^b), zeroed where the input was clipped.
"""
from n2d2.backend import array_module
from n2d2.ir import lowering as low
from n2d2.ir.lowering import Unsupported
from n2d2.ir.ops import _coef, _concat, _ConcatenatingOp, _split_channels, register


def _c(v, like):
    xp = array_module(like)
    return xp.asarray(v, dtype=like.dtype).reshape(1, -1, 1, 1)


def round_half_away(x):
    xp = array_module(x)
    return xp.sign(x) * xp.floor(xp.abs(x) + 0.5)


def _clamp_mask(x, low, high):
    """(clamped x, 1 where the input passed through)."""
    xp = array_module(x)
    y = x if high is None else xp.minimum(x, high)
    if low is not None:
        y = xp.maximum(y, low)
    keep = xp.ones(x.shape, dtype=bool)
    if high is not None:
        keep &= x < high
    if low is not None:
        keep &= x > low
    return y, keep


def _shift_right(v, shift):
    """floor((v + 2^(shift-1)) / 2^shift), with 2^(shift-1) = 0 for shift 0 (float64 math)."""
    xp = array_module(v)
    half = xp.where(shift > 0, 2.0 ** (shift - 1), 0.0)
    return xp.floor((v + half) / 2.0 ** shift)


def floating_point_forward(x, scales, clipping=None):
    low, high = (None, None) if clipping is None else (x.dtype.type(0), _c(clipping, x))
    xc, _ = _clamp_mask(x, low, high)
    return xc * _c(scales, x)


def floating_point_backward(dy, x, scales, clipping=None):
    g = dy * _c(scales, dy)
    if clipping is None:
        return g
    _, keep = _clamp_mask(x, x.dtype.type(0), _c(clipping, x))
    return g * keep


def fixed_point_forward(x, scales, nb_fractional_bits: int, clipping=None):
    low, high = (None, None) if clipping is None else (x.dtype.type(0), _c(clipping, x))
    xc, _ = _clamp_mask(x, low, high)
    v = round_half_away(xc.astype("float64"))
    y = _shift_right(v * _c(scales, v), _c([nb_fractional_bits], v))
    return y.astype(x.dtype)


def fixed_point_backward(dy, x, scales, nb_fractional_bits: int, clipping=None):
    g = dy * (_c(scales, dy) / dy.dtype.type(2.0 ** nb_fractional_bits))
    if clipping is None:
        return g
    _, keep = _clamp_mask(x, x.dtype.type(0), _c(clipping, x))
    return g * keep


def single_shift_forward(x, shifts, clipping=None):
    high = None if clipping is None else _c(clipping, x)
    xc, _ = _clamp_mask(x, None, high)
    v = round_half_away(xc.astype("float64"))
    return _shift_right(v, _c(shifts, v)).astype(x.dtype)


def single_shift_backward(dy, x, shifts, clipping=None):
    g = dy / _c([2.0 ** int(s) for s in shifts], dy)
    if clipping is None:
        return g
    _, keep = _clamp_mask(x, None, _c(clipping, x))
    return g * keep


def double_shift_forward(x, shift_pairs):
    v = round_half_away(x.astype("float64"))
    a = _c([p[0] for p in shift_pairs], v)
    b = _c([p[1] for p in shift_pairs], v)
    return _shift_right(v + v * 2.0 ** a, b).astype(x.dtype)


def double_shift_backward(dy, x, shift_pairs):
    factor = [(1.0 + 2.0 ** int(a)) / 2.0 ** int(b) for a, b in shift_pairs]
    return dy * _c(factor, dy)


def scaling_forward(spec, x):
    """Apply a plain-data scaling spec (see `Scaling`) to x."""
    kind, values = spec[0], spec[1]
    if kind == "FloatingPoint":
        return floating_point_forward(x, values, spec[2])
    if kind == "FixedPoint":
        return fixed_point_forward(x, values, spec[3], spec[2])
    if kind == "SingleShift":
        return single_shift_forward(x, values, spec[2])
    if kind == "DoubleShift":
        return double_shift_forward(x, values)
    raise ValueError(f"unknown scaling kind {kind!r} (expected FloatingPoint, FixedPoint, SingleShift, DoubleShift)")


def scaling_backward(spec, dy, x):
    kind, values = spec[0], spec[1]
    if kind == "FloatingPoint":
        return floating_point_backward(dy, x, values, spec[2])
    if kind == "FixedPoint":
        return fixed_point_backward(dy, x, values, spec[3], spec[2])
    if kind == "SingleShift":
        return single_shift_backward(dy, x, values, spec[2])
    if kind == "DoubleShift":
        return double_shift_backward(dy, x, values)
    raise ValueError(f"unknown scaling kind {kind!r} (expected FloatingPoint, FixedPoint, SingleShift, DoubleShift)")


# -- the IR op ------------------------------------------------------------
@register
class Scaling(_ConcatenatingOp):
    """attrs: scaling, plain data (built by `n2d2.scaling` objects' `ir_spec()`), per output channel:
    ("FloatingPoint", scales, clipping), ("FixedPoint", scales, clipping, nb_fractional_bits),
    ("SingleShift", shifts, clipping) or ("DoubleShift", shift_pairs); value lists are tuples,
    clipping is None when the scaling is not clipped."""

    name = "Scaling"
    per_sample = True
    ini_names = ("Scaling",)
    elementwise = True
    epilogue_member = True

    def plain_attrs(self, attrs):
        scaling = attrs.get("scaling")
        if hasattr(scaling, "ir_spec"):   # an n2d2.scaling object
            attrs = dict(attrs, scaling=scaling.ir_spec())
        return attrs

    def chain_steps(self, attrs, nb_inputs, slot, first_input):
        """An unclipped floating-point scaling: one per-channel `scale` step."""
        spec = attrs["scaling"]
        if nb_inputs != 1 or spec[0] != "FloatingPoint" or spec[2] is not None:
            return None
        return [("scale", _coef(spec[1]))], []

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        return scaling_forward(attrs["scaling"], x), (x, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        x, shapes = saved
        return _split_channels(scaling_backward(attrs["scaling"], dy, x), shapes, needs), {}

    # -- lowering --------------------------------------------------------------------------------
    def lower_c(self, graph, node, training):
        """Floating-point scaling only (the integer modes have no kernel)."""
        spec = graph.attrs(node)["scaling"]
        ins, _ = low.shapes(graph, node)
        if spec[0] != "FloatingPoint":
            return Unsupported(f"{spec[0]}Scaling (integer arithmetic) has no C kernel")
        n, c, h, w = low.nchw(ins[0])
        return low.one_input(ins, self.name) or \
            dict(N=n, C=c, HW=h * w, S=[float(v) for v in spec[1]],
                 CLIP=None if spec[2] is None else [float(v) for v in spec[2]])
