"""Element-wise combination of K same-shape inputs (N2D2 ElemWiseCell).

`weights[k]` and `shifts[k]` are, per input k, a scalar or a per-channel vector (already
resolved from the PerLayer / PerInput / PerChannel coefficient mode by the cell):

- Sum:          y = sum_k (w_k * x_k + s_k)
- AbsSum:       y = sum_k w_k * |x_k|                 (d|x|/dx = +1 at 0, as N2D2)
- EuclideanSum: y = sqrt(sum_k (w_k^2 * x_k^2 + s_k^2))  (gradient 0 where y == 0)
- Prod:         y = prod_k x_k
- Max:          y = max_k x_k (NaN if any is); the gradient goes to the first input holding the
                max (the first NaN), the others get 0.
"""
from n2d2.backend import array_module
from n2d2.ir import lowering as low
from n2d2.ir.ops import OpDef, _all_equal, register
from n2d2.ir.ops import _coef as _plain_coef
from n2d2.quantization.integer import (
    QuantizationError,
    output_signedness,
    round_away,
    saturate,
    signed_max,
    unsigned_max,
)

OPERATIONS = ("Sum", "AbsSum", "EuclideanSum", "Prod", "Max")


def _coef(c, like):
    """A scalar or per-channel coefficient, broadcastable over NCHW in the dtype of `like`."""
    xp = array_module(like)
    c = xp.asarray(c, dtype=like.dtype)
    return c.reshape(1, -1, 1, 1) if c.ndim == 1 else c


def elemwise_forward(xs, operation: str, weights, shifts):
    """Returns (y, ctx for elemwise_backward)."""
    xp = array_module(*xs)
    if operation == "Sum":
        y = xs[0] * _coef(weights[0], xs[0]) + _coef(shifts[0], xs[0])
        for x, w, s in zip(xs[1:], weights[1:], shifts[1:]):
            y = y + (x * _coef(w, x) + _coef(s, x))
        return y, None
    if operation == "AbsSum":
        y = xp.abs(xs[0]) * _coef(weights[0], xs[0])
        for x, w in zip(xs[1:], weights[1:]):
            y = y + xp.abs(x) * _coef(w, x)
        return y, None
    if operation == "EuclideanSum":
        acc = None
        for x, w, s in zip(xs, weights, shifts):
            w, s = _coef(w, x), _coef(s, x)
            term = (w * w) * (x * x) + s * s
            acc = term if acc is None else acc + term
        y = xp.sqrt(acc)
        return y, y
    if operation == "Prod":
        y = xs[0].copy()
        for x in xs[1:]:
            y = y * x
        return y, None
    if operation == "Max":
        y = xs[0].copy()
        arg = xp.zeros(y.shape, dtype=xp.int32)
        for k, x in enumerate(xs[1:], start=1):
            upd = (x > y) | (xp.isnan(x) & ~xp.isnan(y))  # the first NaN wins, as np.maximum
            y = xp.where(upd, x, y)
            arg = xp.where(upd, k, arg)
        return y, arg
    raise ValueError(f"Unknown ElemWise operation '{operation}' (expected one of {', '.join(OPERATIONS)})")


def elemwise_backward(dy, xs, ctx, operation: str, weights, shifts):
    """One gradient per input."""
    xp = array_module(dy)
    if operation == "Sum":
        return [dy * _coef(w, dy) for w in weights[:len(xs)]]
    if operation == "AbsSum":
        return [dy * _coef(w, dy) * xp.where(x >= 0, 1, -1).astype(dy.dtype) for x, w in zip(xs, weights)]
    if operation == "EuclideanSum":
        y = ctx
        nonzero = y != 0
        safe = xp.where(nonzero, y, 1)
        out = []
        for x, w in zip(xs, weights):
            w = _coef(w, dy)
            out.append(xp.where(nonzero, (w * w) * x / safe * dy, 0).astype(dy.dtype))
        return out
    if operation == "Prod":
        out = []
        for k in range(len(xs)):
            p = dy
            for i, x in enumerate(xs):
                if i != k:
                    p = p * x
            out.append(p)
        return out
    if operation == "Max":
        arg = ctx
        return [xp.where(arg == k, dy, dy.dtype.type(0)) for k in range(len(xs))]
    raise ValueError(f"Unknown ElemWise operation '{operation}' (expected one of {', '.join(OPERATIONS)})")


# -- the IR op ------------------------------------------------------------
@register
class ElemWise(low.SameShapeLowering, OpDef):
    """attrs: operation, weights, shifts (per input: scalar or per-channel list)."""

    name = "ElemWise"
    per_sample = True
    onnx_names = ("Add", "Sub", "Mul", "Sum", "Max")
    ini_names = ("ElemWise",)
    max_inputs = None
    elementwise = True
    carries_activation = True
    epilogue_member = True

    def chain_steps(self, attrs, nb_inputs, slot, first_input):
        """A "Sum": the chain's own weight and shift become scale / bias steps, the other inputs
        residual `add` steps with their weights and shifts."""
        weights, shifts = attrs.get("weights"), attrs.get("shifts")
        if attrs.get("operation") != "Sum" or weights is None or shifts is None \
                or len(weights) < nb_inputs or len(shifts) < nb_inputs:
            return None
        steps = []
        if not _all_equal(weights[slot], 1.0):
            steps.append(("scale", _plain_coef(weights[slot])))
        if not _all_equal(shifts[slot], 0.0):
            steps.append(("bias", _plain_coef(shifts[slot])))
        residuals = []
        for i in range(nb_inputs):
            if i != slot:
                steps.append(("add", first_input + len(residuals), _plain_coef(weights[i]), _plain_coef(shifts[i])))
                residuals.append(i)
        return steps, residuals

    def _infer(self, attrs, in_shapes, param_shapes):
        for s in in_shapes[1:]:
            if s != in_shapes[0]:
                raise ValueError(f"ElemWise inputs must share one shape, got {list(in_shapes)}")
        return [in_shapes[0]]

    def _forward(self, attrs, xs, params, training):
        y, ctx = elemwise_forward(xs, attrs["operation"], attrs["weights"], attrs["shifts"])
        return y, (ctx, xs if attrs["operation"] in ("AbsSum", "EuclideanSum", "Prod", "Max") else None)

    def _backward(self, attrs, saved, dy, needs, params):
        ctx, xs = saved
        if xs is None:
            xs = [None] * len(needs)
        dxs = elemwise_backward(dy, xs, ctx, attrs["operation"], attrs["weights"], attrs["shifts"])
        return [g if n else None for g, n in zip(dxs, needs)], {}



# -- integer form (post-training quantization, n2d2.quantization) --------------------------------------
class _ElemWiseInteger:
    """Integer Sum: y = sum_k w_k x_k + s_k with every input on its own grid; each input gets a
    per-channel factor M_k = w_k (T_k / Q_k) (Q_out / T_out). FLOAT_MULT: round(bias + sum_k
    x_k M_k) in float64 (that order); integer modes: fixed point with one shift p for all inputs,
    (sum_k x_k m_k + b + 2^(p-1)) >> p in int64 (N2D2 rescales branches to a common scaling
    instead; the result is the same integer sum up to rounding). Then ReLU, saturation."""

    kernel = "ElemWise"

    def quantize(self, q, node):
        import numpy as np


        attrs = q.graph.attrs(node)
        if attrs.get("operation") != "Sum":
            raise QuantizationError(f"node '{node}' (ElemWise): operation {attrs.get('operation')} has no integer "
                                    "form (only Sum)")
        nb = len(q.graph.inputs_of(node))
        ins = [q.input_q(node, k) for k in range(nb)]
        channels = max(t.T.size for t in ins)
        signed, relu, clip = output_signedness(q, node, attrs.get("activation"))
        t_out = q.threshold(node)
        if relu and clip > 0:
            t_out = min(t_out, clip)
        qmax = signed_max(q.nb_bits) if signed else unsigned_max(q.nb_bits)
        factors, bias = [], np.zeros(channels)
        for k, t in enumerate(ins):
            w = np.broadcast_to(np.asarray(attrs["weights"][k], dtype=np.float64).reshape(-1), (channels,))
            s = np.broadcast_to(np.asarray(attrs["shifts"][k], dtype=np.float64).reshape(-1), (channels,))
            factors.append(w * np.broadcast_to(t.T, (channels,)) / t.Q * qmax / t_out)
            bias = bias + s * qmax / t_out
        M = np.stack(factors)
        out = {"signed": signed, "relu": relu, "Q": qmax, "T": np.full(channels, t_out), "inputs": nb}
        if q.mode == "FLOAT_MULT":
            out.update(scaling={"mode": "FLOAT_MULT", "M": M, "bias": bias})
            return out
        top = float(np.abs(np.concatenate([M.reshape(-1), bias])).max()) or 1.0
        p = min(50, int(np.floor(np.log2((2 ** 31 - 1) / top))))
        if p < 0:
            raise QuantizationError(f"node '{node}' (ElemWise): scaling {top:g} does not fit FIXED_MULT32")
        out.update(scaling={"mode": "FIXED", "p": p, "m": round_away(M * 2.0 ** p),
                            "bias": round_away(bias * 2.0 ** p)})
        return out

    def forward(self, qnode, xs, nb_bits):
        import numpy as np


        sc = qnode["scaling"]
        if sc["mode"] == "FLOAT_MULT":
            acc = np.broadcast_to(sc["bias"].reshape(1, -1, 1, 1), xs[0].shape).astype(np.float64)
            for x, m in zip(xs, sc["M"]):
                acc = acc + np.asarray(x, dtype=np.int64).astype(np.float64) * m.reshape(1, -1, 1, 1)
            y = round_away(acc)
        else:
            p = np.int64(sc["p"])
            acc = np.broadcast_to(sc["bias"].reshape(1, -1, 1, 1), xs[0].shape).astype(np.int64)
            for x, m in zip(xs, sc["m"]):
                acc = acc + np.asarray(x, dtype=np.int64) * m.reshape(1, -1, 1, 1)
            y = (acc + (np.int64(1) << (p - 1) if p > 0 else np.int64(0))) >> p
        if qnode["relu"]:
            y = np.maximum(y, 0)
        return saturate(y, nb_bits, qnode["signed"])


ElemWise.integer = _ElemWiseInteger()
ElemWise.quantized = ElemWise.integer.kernel
