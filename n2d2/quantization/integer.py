"""Integer arithmetic of post-training quantization: rounding, the requantization of an
accumulator by each of N2D2's `act_scaling_mode`s, and the integer form of the ops (the
`quantized` facet of `n2d2.ir.ops.OpDef`; each op module fills its own with the helpers here).

Representation (see docs/compatibility.md, "Post-training quantization"): a tensor is held as
integers `q` of a symmetric grid, real value `x = q * T[c] / Q`, where `Q` is the integer max
(`Su = 2^n - 1` unsigned, `Sw = 2^(n-1) - 1` signed) and `T[c]` the real threshold of channel
`c` (one value per channel: approximating a scale by a shift or a fixed-point multiplier moves
each channel's threshold by the exact residual, instead of folding that residual into the
weights). Integer zero is real zero (no zero point).

Every function here is exact integer arithmetic on int64 arrays, except FLOAT_MULT (one
float64 multiply, then round half away from zero, as C's `round`). The exported C program
(n2d2.quantization.export) performs the same operations in the same order: its outputs equal
these bit for bit.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

SCALING_MODES = ("FLOAT_MULT", "FIXED_MULT16", "FIXED_MULT32", "SINGLE_SHIFT", "DOUBLE_SHIFT")
_FIXED_LIMIT = {"FIXED_MULT16": 32767, "FIXED_MULT32": 2 ** 31 - 1}


class QuantizationError(RuntimeError):
    """A network (node, op, attribute) the integer path does not support; the message names it."""


# -- rounding -----------------------------------------------------------------------------------
def round_away(v):
    """Round half away from zero, exactly (C's `round`), on a float64 array; int64 result.
    (floor(v + 0.5) is not exact: 0.49999999999999994 + 0.5 rounds to 1.0.)"""
    v = np.asarray(v, dtype=np.float64)
    t = np.trunc(v)
    f = v - t                                       # exact for |v| < 2^52
    return (t + np.sign(v) * (np.abs(f) >= 0.5)).astype(np.int64)


def signed_max(nb_bits: int) -> int:
    return 2 ** (nb_bits - 1) - 1


def unsigned_max(nb_bits: int) -> int:
    return 2 ** nb_bits - 1


def saturation(nb_bits: int, signed: bool):
    """(low, high) of an n-bit tensor: [-2^(n-1), 2^(n-1)-1] signed, [0, 2^n-1] unsigned."""
    return (-(2 ** (nb_bits - 1)), 2 ** (nb_bits - 1) - 1) if signed else (0, 2 ** nb_bits - 1)


def _half(shift):
    """2^(shift-1) where shift > 0, else 0 (the rounding term of a right shift)."""
    shift = np.asarray(shift, dtype=np.int64)
    return np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0).astype(np.int64)


# -- approximating a scale -------------------------------------------------------------------------
def _ceil_log2_inv(m: float) -> int:
    """ceil(log2(1/m)) for m > 0, exact at powers of two."""
    e = math.ceil(-math.log2(m))
    while 2.0 ** -e > m:       # float log2 may be off by one at the boundary
        e += 1
    while e > 0 and 2.0 ** -(e - 1) <= m:
        e -= 1
    return e


def approximate(M, mode: str, where: str = "?") -> dict:
    """The integer form of the per-channel scale factors `M` (> 0) in `mode`:
    {"mode", params..., "effective": the factor the integer op really applies, per channel}.

    FLOAT_MULT keeps M (float64). FIXED_MULT16/32: m = round(M 2^p), p = min(50,
    floor(log2(L / max M))), L = 32767 / 2^31-1 (16 falls back to 32 when max M >= 32767).
    SINGLE_SHIFT: e = ceil(log2(1/M)) per channel, decremented when 2^-e / M < 0.98 (N2D2's
    power-of-two search). DOUBLE_SHIFT: M ~ 2^-a + 2^-b by the same greedy search. A shift mode
    with some M > 1 falls back to FIXED_MULT16 for the layer (warning, as N2D2)."""
    M = np.asarray(M, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(M)) or np.any(M <= 0):
        raise QuantizationError(f"node '{where}': scale factors must be finite and > 0, got {M.tolist()[:8]}")
    if mode == "FLOAT_MULT":
        return {"mode": mode, "M": M, "effective": M.copy()}
    if mode in ("SINGLE_SHIFT", "DOUBLE_SHIFT") and np.any(M > 1.0):
        warnings.warn(f"node '{where}': scaling ({float(M.max()):g}) > 1 cannot be a shift; falling back to "
                      "fixed-point scaling (FIXED_MULT16) for this layer", stacklevel=3)
        mode = "FIXED_MULT16"
    if mode in _FIXED_LIMIT:
        if mode == "FIXED_MULT16" and M.max() >= _FIXED_LIMIT["FIXED_MULT16"]:
            mode = "FIXED_MULT32"
        limit = _FIXED_LIMIT[mode]
        if M.max() >= limit:
            raise QuantizationError(f"node '{where}': scaling {float(M.max()):g} does not fit {mode}")
        p = min(50, int(math.floor(math.log2(limit / M.max()))))
        while p > 0 and round_away(M.max() * 2.0 ** p) > limit:
            p -= 1
        m = round_away(M * 2.0 ** p)
        m = np.maximum(m, 1)
        return {"mode": mode, "p": int(p), "m": m, "effective": m / 2.0 ** p}
    if mode == "SINGLE_SHIFT":
        e = np.array([_search_shifts(v, 1)[0] for v in M], dtype=np.int64)
        return {"mode": mode, "shift": e, "effective": 2.0 ** -e.astype(np.float64)}
    if mode == "DOUBLE_SHIFT":
        ab = np.array([_search_shifts(v, 2) for v in M], dtype=np.int64)
        a, b = ab[:, 0], ab[:, 1]
        return {"mode": mode, "shift1": b - a, "shift2": b,
                "effective": 2.0 ** -a.astype(np.float64) + 2.0 ** -b.astype(np.float64)}
    raise QuantizationError(f"node '{where}': unknown act_scaling_mode '{mode}' (expected one of "
                            f"{', '.join(SCALING_MODES)})")


def _search_shifts(m: float, terms: int) -> list:
    """N2D2's greedy power-of-two search: exponents e_i with sum 2^-e_i ~ m (the last one
    decremented when the sum covers less than 98 % of m)."""
    e = _ceil_log2_inv(m)
    p = 1.0 / (m * 2.0 ** e)
    if terms == 1:
        return [e - 1 if p < 0.98 else e]
    rest = m * (1.0 - p)
    if p >= 1.0 or rest <= 0.0 or _ceil_log2_inv(rest) > e + 24:
        return [e + 1, e + 1]            # m is (close to) 2^-e: two equal halves
    e2 = _ceil_log2_inv(rest)
    p += 1.0 / (m * 2.0 ** e2)
    if p < 0.98:
        e2 -= 1
    return [e, max(e2, e)]


def requantize(acc, scaling: dict, channel_axis: int = 1):
    """The integer op of `scaling` applied to int64 accumulators `acc` (per channel on
    `channel_axis`), before saturation. Exact; the C kernels compute the same."""
    acc = np.asarray(acc, dtype=np.int64)
    shape = [1] * acc.ndim
    shape[channel_axis] = -1

    def per_channel(v, dtype=np.int64):
        v = np.asarray(v, dtype=dtype)
        return v.reshape(shape) if v.size > 1 else v.reshape(())

    mode = scaling["mode"]
    if mode == "FLOAT_MULT":
        return round_away(acc.astype(np.float64) * per_channel(scaling["M"], np.float64))
    if mode in _FIXED_LIMIT:
        p = np.int64(scaling["p"])
        return (acc * per_channel(scaling["m"]) + _half(p)) >> p
    if mode == "SINGLE_SHIFT":
        e = per_channel(scaling["shift"])
        return (acc + _half(e)) >> e
    if mode == "DOUBLE_SHIFT":
        s1, s2 = per_channel(scaling["shift1"]), per_channel(scaling["shift2"])
        return (acc + acc * (np.int64(1) << s1) + _half(s2)) >> s2
    raise QuantizationError(f"unknown scaling mode '{mode}'")


def saturate(v, nb_bits: int, signed: bool):
    lo, hi = saturation(nb_bits, signed)
    return np.clip(v, lo, hi).astype(np.int64)


# -- the facet base --------------------------------------------------------------------------------
class IntegerForm:
    """The integer form of an op (`OpDef.integer`; `OpDef.quantized` is its `kernel`): `quantize`
    turns a float inference node into a plain-data integer node given its inputs' `TensorQ`s,
    `forward` runs that node on int64 arrays, `kernel` names its C template
    (`templates/export/int/<kernel>.c.j2`). The op modules define theirs next to the op."""

    kernel = None

    def quantize(self, q, node) -> dict:
        raise NotImplementedError

    def forward(self, qnode: dict, xs: list):
        raise NotImplementedError


def exact_float(values, where: str):
    """int64 -> float64 for a BLAS product: refused where a sum could exceed 2^53."""
    if values.size and np.abs(values).max() >= 2 ** 52:
        raise QuantizationError(f"node '{where}': integer values too large for an exact float64 product")
    return values.astype(np.float64)


# -- shared by the op modules ------------------------------------------------------------------------
def output_signedness(q, node, spec):
    """(signed, relu, clip) of a node's output from its fused activation spec."""
    if spec is None or spec[0] == "Linear":
        clip = dict(spec[1]).get("clipping", 0.0) if spec else 0.0
        return True, False, float(clip or 0.0)
    if spec[0] == "Rectifier":
        params = dict(spec[1])
        if float(params.get("leak_slope", 0.0) or 0.0) != 0.0:
            raise QuantizationError(f"node '{node}': a leaky Rectifier (leak_slope={params['leak_slope']}) has no "
                                    "integer form")
        return not q.unsigned_ok, True, float(params.get("clipping", 0.0) or 0.0)
    raise QuantizationError(f"node '{node}' ({q.graph.op(node)}): activation {spec[0]} has no integer form "
                            "(supported: Rectifier, Linear)")


def quantize_weighted(q, node, opdef, channel_scale) -> dict:
    """Conv / Fc: integer weights, int32 biases, per-output requantization.

    `channel_scale(steps, in_shapes, weights, attrs)` broadcasts the inputs' per-channel steps
    T[c]/Q (one array per input; several inputs are concatenated along channels, each keeping
    its own grid and signedness) onto the weight layout. W_eff = W * step; w[o] = max|W_eff|
    of the layer (or of output o with act_rescale_per_output); Wq = round(W_eff Sw / w),
    Bq = round(B Sw / w) (accumulator scale); M[o] = w[o] Q_out / (Sw T_out), approximated in
    the scaling mode; the residual r = M / M_effective is folded into the weights and bias of
    output o where r < 1, into its output threshold (T_out r) where r > 1."""
    attrs = q.graph.attrs(node)
    if attrs.get("weight_quantizer") is not None:
        raise QuantizationError(f"node '{node}' ({opdef.name}): fake-quantized weights (a QAT quantizer): "
                                "post-training quantization takes a float network; a QAT-trained one is quantized "
                                "from its learned ranges by n2d2.quantizer.fuse_qat (export: qat_sat=True)")
    nb_in = len(q.graph.inputs_of(node))
    tins = [q.input_q(node, k) for k in range(nb_in)]
    in_shapes = [tuple(int(v) for v in t.shape[1:]) for t in q.graph.input_types(node)]
    steps = [np.broadcast_to(t.T / t.Q, (s[0],)) for t, s in zip(tins, in_shapes)]
    weights = q.param(node, "weights")
    biases = q.param(node, "biases")
    w_eff = weights * channel_scale(steps, in_shapes, weights, attrs)
    sw = signed_max(q.nb_bits)
    nb_out = weights.shape[0]
    per_o = np.abs(w_eff.reshape(nb_out, -1)).max(axis=1)
    layer = float(per_o.max()) if per_o.size else 0.0
    layer = layer if layer > 0 else 1.0
    w = np.where(per_o > 0, per_o, layer) if q.per_output else np.full(nb_out, layer)
    signed, relu, clip = output_signedness(q, node, attrs.get("activation"))
    t_out = q.threshold(node)
    if relu and clip > 0:
        t_out = min(t_out, clip)
    qmax = signed_max(q.nb_bits) if signed else unsigned_max(q.nb_bits)
    M = w * qmax / (sw * t_out)
    scaling = approximate(M, q.mode, node)
    # residual r = M / M_effective: r < 1 shrinks the weights and bias of that output (N2D2 folds it
    # there too), r > 1 widens the output threshold; neither saturates more than the float scale
    r = M / scaling["effective"]
    fold = np.minimum(r, 1.0)
    wq = np.clip(round_away(w_eff * (sw * fold / w).reshape((-1,) + (1,) * (weights.ndim - 1))), -sw, sw)
    bq = round_away(biases * sw * fold / w) if biases is not None else np.zeros(nb_out, np.int64)
    bias_bits = 32 if q.nb_bits <= 8 else 64     # N2D2's BDATA_T: int32 up to 8 bits, int64 above
    if bq.size and np.abs(bq).max() >= 2 ** (bias_bits - 1):
        raise QuantizationError(f"node '{node}': a quantized bias does not fit int{bias_bits} "
                                f"({int(np.abs(bq).max())})")
    t_eff = t_out * np.maximum(r, 1.0)
    # the C kernels accumulate in int32 when no sum can overflow it (always for LeNet-sized 8-bit layers)
    in_max = max(2 ** (q.nb_bits - 1) if t.signed else 2 ** q.nb_bits - 1 for t in tins)
    bound = int((np.abs(wq).reshape(nb_out, -1).sum(axis=1) * in_max + np.abs(bq)).max()) if nb_out else 0
    return {"weights": wq.astype(np.int64), "biases": bq.astype(np.int64), "scaling": scaling, "relu": relu,
            "signed": signed, "Q": qmax, "T": t_eff, "acc_bits": 32 if bound < 2 ** 31 else 64,
            "attrs": {k: v for k, v in attrs.items() if k != "activation"}}


def weighted_forward(opdef, qnode, xs, nb_bits):
    """Accumulate in int64 (float64 BLAS on integers, exact below 2^53), ReLU before rescale
    (the export's order), requantize, saturate."""
    x = [exact_float(np.asarray(v, dtype=np.int64), qnode["name"]) for v in xs]
    params = {"weights": qnode["weights"].astype(np.float64), "biases": qnode["biases"].astype(np.float64)}
    z, _ = opdef._forward(qnode["attrs"], x, params, False)
    acc = np.rint(np.asarray(z)).astype(np.int64)
    if qnode["relu"]:
        acc = np.maximum(acc, 0)
    return saturate(requantize(acc, qnode["scaling"]), nb_bits, qnode["signed"])
