"""Reference fake-quantizers (QAT): SAT weights (DoReFa), SAT activations (CG-PACT), LSQ.

Formulas of N2D2's QAT kernels (reference section 3.1-3.3); array-module generic (numpy or
cupy). Rounding is `rint` (half to even) everywhere, weights and activations: one rule for
every backend (upstream's CUDA kernels; its CPU activation kernels round half away from zero).
Backward passes are straight-through on the rounding; SAT treats `max|tanh w|` and the
variance scale as constants, as upstream does.
"""
import math

from n2d2.backend import array_module

SAT_MODES = ("Default", "Symmetric", "Asymmetric", "FullRange")


def sat_weight_forward(w, nb_range, mode="Default", apply_quantization=True, apply_scaling=False, n_out=1):
    """SAT weight quantization of one tensor; returns (w_hat, ctx for the backward)."""
    xp = array_module(w)
    w64 = w.astype(xp.float64)
    t = xp.tanh(w64)
    m = float(xp.max(xp.abs(t))) if t.size else 1.0
    m = m if m > 0.0 else 1.0
    u = t / m
    h = nb_range // 2
    if mode == "Asymmetric":
        a = (1.0 + 1.0 / (2 * h)) * u - 1.0 / (2 * h)
        q = xp.rint(h * a) / h if apply_quantization else a
    elif not apply_quantization:
        q = u
    elif mode == "Default":
        q = 2.0 * xp.rint(nb_range * (u + 1.0) / 2.0) / nb_range - 1.0
    elif mode == "FullRange":
        v = (1.0 + 0.9998 / nb_range) * (u + 1.0) / 2.0 - 0.4999 / nb_range
        q = 2.0 * xp.rint(nb_range * v) / nb_range - 1.0
    elif mode == "Symmetric":
        q = xp.rint(h * u) / h
    else:
        raise ValueError(f"SAT quant_mode '{mode}': expected one of {', '.join(SAT_MODES)}")
    s = 1.0
    if apply_scaling:
        var = float(xp.var(q, ddof=1)) if q.size > 1 else 0.0
        s = math.sqrt(n_out * var) if var > 0.0 else 1.0
        q = q / s
    return q.astype(w.dtype), (w, m, s, sat_weight_gradient_factor(mode, nb_range, apply_quantization))


def sat_weight_gradient_factor(mode, nb_range, apply_quantization=True):
    """The constant `c` of the SAT weight backward (1 for Default, Symmetric and clamp mode)."""
    if mode == "FullRange" and apply_quantization:
        return 1.0 + 0.9998 / nb_range
    if mode == "Asymmetric":
        return 1.0 + 1.0 / (2 * (nb_range // 2))
    return 1.0


def sat_weight_backward(dw_hat, ctx):
    """dL/dw = dL/dw_hat * sech^2(w) / (m * s) * c (straight through the rounding)."""
    w, m, s, c = ctx
    xp = array_module(w)
    t = xp.tanh(w.astype(xp.float64))
    return (dw_hat * ((1.0 - t * t) * (c / (m * s)))).astype(dw_hat.dtype)


def sat_act_forward(x, alpha, nb_range):
    """CG-PACT: y = a * rint(R * clamp(x, 0, a) / a) / R with a = |alpha|; returns (y, ctx)."""
    xp = array_module(x)
    a = abs(float(alpha))
    xc = xp.clip(x, 0.0, a)
    y = (a * xp.rint(nb_range * xc / a) / nb_range).astype(x.dtype)
    return y, (x, a)


def sat_act_backward(dy, ctx, nb_range):
    """(dL/dx, dL/dalpha): x passes where 0 < x <= a; dy/da = 1 above a, the rounding residual inside."""
    x, a = ctx
    xp = array_module(x)
    inside = (x > 0.0) & (x <= a)
    dx = xp.where(inside, dy, 0.0).astype(dy.dtype)
    xc = xp.clip(x.astype(xp.float64), 0.0, a)
    residual = xp.rint(nb_range * xc / a) / nb_range - xc / a
    dya = xp.where(x >= a, 1.0, xp.where(x > 0.0, residual, 0.0))
    dalpha = float(xp.sum(dy.astype(xp.float64) * dya))
    return dx, dalpha


def lsq_bounds(nb_range, signed):
    """(Qn, Qp): signed [-floor((R+1)/2), floor((R-1)/2)] for weights, [0, R] for activations."""
    if signed:
        return -((nb_range + 1) // 2), (nb_range - 1) // 2
    return 0, nb_range


def lsq_init_step(v, qp):
    """Upstream's automatic initial step: 2 * mean(|v|) / sqrt(Qp)."""
    xp = array_module(v)
    return 2.0 * float(xp.mean(xp.abs(v.astype(xp.float64)))) / math.sqrt(qp)


def lsq_forward(v, step, qn, qp):
    """v_hat = s * rint(clamp(v / s, Qn, Qp)); returns (v_hat, ctx)."""
    xp = array_module(v)
    s = float(step)
    vbar = v.astype(xp.float64) / s
    return (s * xp.rint(xp.clip(vbar, qn, qp))).astype(v.dtype), (vbar, s)


def lsq_backward(dy, ctx, qn, qp):
    """(dL/dv, dL/ds): v passes strictly inside (Qn, Qp); ds scaled by G = 1 / sqrt(N * Qp)."""
    vbar, s = ctx
    xp = array_module(vbar)
    inside = (vbar > qn) & (vbar < qp)
    dv = xp.where(inside, dy, 0.0).astype(dy.dtype)
    dvds = xp.where(vbar <= qn, float(qn), xp.where(vbar >= qp, float(qp), xp.rint(vbar) - vbar))
    scale = 1.0 / math.sqrt(vbar.size * qp)
    ds = scale * float(xp.sum(dy.astype(xp.float64) * dvds))
    return dv, ds
