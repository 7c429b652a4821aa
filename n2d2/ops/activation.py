"""Activation functions: the one table (`ACTIVATIONS`) every other place derives from.

Each `ActivationDef` declares an activation once: its parameters (with defaults, in the
printed order of `n2d2.activation`), the numpy/cupy reference forward `f(z, **p)` and backward
`dz(dy, z, **p)`, the C expressions of the forward and of the derivative (one C dialect for the
C and CUDA kernels; the derivative is written from the activated output y, or from the
pre-activation input z when `derivative_needs_input`), the properties the passes ask about,
its ONNX import op types and export form, and its N2D2 INI name and keys.

Who reads the table: `n2d2.activation` (the user classes), `n2d2.ir.ops`
(activation_forward/backward), the kernel templates through `c_forward` / `c_derivative`
(the `act` / `dact` macros of `c/activation.c.j2`), the kernel support checks
(`n2d2.codegen.kernel_data`), the pass predicates (`n2d2.ir.passes._common`), the INI builder,
the ONNX importer and exporter. Adding an activation is one entry here (plus its tests).

C expressions keep NaN propagation exactly as the reference: `v < 0 ? 0 : v` (a NaN takes the
`v` branch), `n2d2_fmax` / `n2d2_fmin` (NaN in the first argument comes out).
"""
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from n2d2.backend import array_module


# -- reference math (numpy or cupy: the array module comes from the input) ---------------------
def linear_forward(z, clipping=0.0):
    if clipping > 0:
        xp = array_module(z)
        return xp.clip(z, -clipping, clipping)
    return z


def linear_backward(dy, z, clipping=0.0):
    if clipping > 0:
        return dy * ((z > -clipping) & (z < clipping))
    return dy


def rectifier_forward(z, leak_slope=0.0, clipping=0.0):
    xp = array_module(z)
    if leak_slope == 0.0:
        y = xp.maximum(z, 0)
    else:
        y = xp.where(z > 0, z, z * z.dtype.type(leak_slope))
    if clipping > 0:
        y = xp.minimum(y, z.dtype.type(clipping))
    return y


def rectifier_backward(dy, z, leak_slope=0.0, clipping=0.0):
    xp = array_module(z)
    positive = z > 0
    if clipping > 0:
        positive &= z < clipping
    if leak_slope == 0.0:
        return dy * positive
    if clipping <= 0:   # a NaN z takes the leak, as the kernels' `y > 0 ? 1 : leak`
        return xp.where(positive, dy, dy * dy.dtype.type(leak_slope))
    return xp.where(positive, dy, dy * dy.dtype.type(leak_slope) * (z <= 0))


def tanh_forward(z, alpha=1.0):
    xp = array_module(z)
    return xp.tanh(z * z.dtype.type(alpha)) if alpha != 1.0 else xp.tanh(z)


def tanh_backward(dy, z, alpha=1.0):
    y = tanh_forward(z, alpha)
    return dy * (1 - y * y) * dy.dtype.type(alpha)


def logistic_forward(z):
    xp = array_module(z)
    # Split by sign to avoid overflow in exp.
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e))


def logistic_backward(dy, z):
    y = logistic_forward(z)
    return dy * y * (1 - y)


def logistic_with_loss_backward(dy, z):
    """Fused logistic + cross-entropy: the target's gradient passes through unchanged."""
    return dy


def saturation_forward(z, threshold=1.0):
    xp = array_module(z)
    return xp.clip(z, -threshold, threshold)


def saturation_backward(dy, z, threshold=1.0):
    return dy * ((z > -threshold) & (z < threshold))


def softplus_forward(z):
    xp = array_module(z)
    return xp.logaddexp(z, 0)


def softplus_backward(dy, z):
    return dy * logistic_forward(z)


def swish_forward(z):
    return z * logistic_forward(z)


def swish_backward(dy, z):
    s = logistic_forward(z)
    return dy * (s * (1 + z * (1 - s)))


LECUN_A, LECUN_B = 1.7159, 2.0 / 3.0


def tanh_lecun_forward(z):
    xp = array_module(z)
    t = z.dtype.type
    return t(LECUN_A) * xp.tanh(t(LECUN_B) * z)


def tanh_lecun_backward(dy, z):
    xp = array_module(z)
    t = z.dtype.type
    th = xp.tanh(t(LECUN_B) * z)
    return dy * (t(LECUN_A * LECUN_B) * (1 - th * th))


_GELU_K = math.sqrt(2.0 / math.pi)   # tanh approximation: 0.5 z (1 + tanh(k (z + c z^3)))
_GELU_C = 0.044715


def erf(xp, x):
    """erf elementwise (scipy / cupyx when importable, else math.erf per element)."""
    if xp is not np:
        from cupyx.scipy.special import erf  # noqa: PLC0415 (optional dependency)
        return erf(x)
    try:
        from scipy.special import erf  # noqa: PLC0415 (optional dependency)
    except ImportError:
        return np.vectorize(math.erf, otypes=[x.dtype])(x) if x.size else x.copy()
    return erf(x).astype(x.dtype, copy=False)


def gelu_forward(z, approximate="none"):
    xp = array_module(z)
    t = z.dtype.type
    if approximate == "tanh":
        return t(0.5) * z * (1 + xp.tanh(t(_GELU_K) * (z + t(_GELU_C) * z * z * z)))
    return t(0.5) * z * (1 + erf(xp, z * t(1 / math.sqrt(2.0))))


def gelu_backward(dy, z, approximate="none"):
    xp = array_module(z)
    t = z.dtype.type
    if approximate == "tanh":
        th = xp.tanh(t(_GELU_K) * (z + t(_GELU_C) * z * z * z))
        return dy * (t(0.5) * (1 + th) + t(0.5) * z * (1 - th * th) * t(_GELU_K) * (1 + t(3 * _GELU_C) * z * z))
    cdf = t(0.5) * (1 + erf(xp, z * t(1 / math.sqrt(2.0))))
    return dy * (cdf + z * t(1 / math.sqrt(2 * math.pi)) * xp.exp(t(-0.5) * z * z))


def mish_forward(z):
    xp = array_module(z)
    return z * xp.tanh(softplus_forward(z))


def mish_backward(dy, z):
    xp = array_module(z)
    th = xp.tanh(softplus_forward(z))
    return dy * (th + z * (1 - th * th) * logistic_forward(z))


def hard_sigmoid_forward(z, alpha=0.2, beta=0.5):
    xp = array_module(z)
    t = z.dtype.type
    u = t(alpha) * z + t(beta)
    return xp.minimum(xp.maximum(u, t(0)), t(1))   # minimum / maximum propagate NaN


def hard_sigmoid_backward(dy, z, alpha=0.2, beta=0.5):
    t = z.dtype.type
    u = t(alpha) * z + t(beta)
    return dy * (t(alpha) * ((u > 0) & (u < 1)))


def hard_swish_forward(z):
    xp = array_module(z)
    t = z.dtype.type
    return z * xp.minimum(xp.maximum(z + t(3), t(0)), t(6)) / t(6)


def hard_swish_backward(dy, z):
    """PyTorch's convention at the kinks: 0 up to -3, z/3 + 1/2 on (-3, 3), 1 from 3 (NaN: 1)."""
    xp = array_module(z)
    t = z.dtype.type
    return dy * xp.where(z <= -3, t(0), xp.where(z < 3, z / t(3) + t(0.5), t(1)))


# -- the table ---------------------------------------------------------------------------------
def _yes(p):
    return True


def _no(p):
    return False


@dataclass(frozen=True)
class ActivationDef:
    """One activation. C callables get (operand expression, parameters, float-literal formatter)."""

    name: str
    doc: str
    forward: Callable
    backward: Callable
    c_forward: Callable
    c_derivative: Callable
    params: tuple = ()                      # ((python name, default, choices or None), ...) in print order
    derivative_needs_input: bool = False    # c_derivative reads z (the pre-activation) instead of y
    idempotent: Callable = _no              # f(f(z)) == f(z) with the same backward mask
    non_negative: Callable = _no            # output >= 0 whatever the input
    keeps_sign: Callable = _no              # a non-negative input gives a non-negative output
    identity: Callable = _no                # f(z) == z
    onnx_import: dict = field(default_factory=dict)   # {ONNX op type: attrs -> params dict}
    onnx_export: Optional[Callable] = None  # (exporter, x, params, first) -> (x, first)
    ini_name: Optional[str] = None
    ini_params: dict = field(default_factory=dict)     # {INI key after `ActivationFunction.`: python name}

    def defaults(self):
        return {k: d for k, d, _ in self.params}

    def resolve(self, params):
        """`params` (mapping or (key, value) pairs) completed with the defaults."""
        given = dict(params)
        unknown = sorted(set(given) - {k for k, _, _ in self.params})
        if unknown:
            raise ValueError(f"activation '{self.name}': unknown parameter(s) {unknown} (known: "
                             f"{[k for k, _, _ in self.params]})")
        return {**self.defaults(), **given}


ACTIVATIONS = {}


def register(d: ActivationDef) -> ActivationDef:
    if d.name in ACTIVATIONS:
        raise ValueError(f"activation '{d.name}' is declared twice")
    ACTIVATIONS[d.name] = d
    return d


def get(name) -> ActivationDef:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation '{name}' (known: {', '.join(ACTIVATIONS)})") from None


# C pieces shared by several entries.
def _c_sigmoid(v):
    return f"(1.0f / (1.0f + expf(-({v}))))"


def _c_softplus(v):
    return f"(n2d2_fmax(({v}), 0.0f) + log1pf(expf(-fabsf({v}))))"


def _c_clamp(v, lo, hi):
    return f"n2d2_fmin(n2d2_fmax(({v}), {lo}), {hi})"


def _c_rectifier(v, p, f):
    leak = f"{f(p['leak_slope'])} * ({v})" if p["leak_slope"] else "0.0f"
    core = f"(({v}) < 0.0f ? {leak} : ({v}))"
    return f"n2d2_fmin({core}, {f(p['clipping'])})" if p["clipping"] > 0 else core


def _c_keep(cond, value):
    """`cond ? value : 0.0f` as a bit mask (n2d2_keep): a derivative written as a select,
    multiplied into a gradient, is rewritten by gcc into a branch on the data (`dz *= c ? 1 : 0`
    becomes `if (!c) dz *= 0`), which stops vectorisation; AVX-512's masked stores hid it, AVX2
    ran LeNet's ReLU backward scalar with a mispredicted branch per element. Conditions use `&`,
    not `&&`, for the same reason."""
    return f"n2d2_keep({cond}, {value})"


def _c_drectifier(y, p, f):
    pos = f"(({y}) > 0.0f)" + (f" & (({y}) < {f(p['clipping'])})" if p["clipping"] > 0 else "")
    if not p["leak_slope"]:
        return _c_keep(pos, "1.0f")
    neg = f"(({y}) <= 0.0f)" if p["clipping"] > 0 else f"!({pos})"
    return f"({_c_keep(pos, '1.0f')} + {_c_keep(neg, f(p['leak_slope']))})"


def _export_rectifier(e, x, p, first):
    leak, c = p["leak_slope"], p["clipping"]
    if leak == 0.0:
        if c > 0:
            return e.clip(x, 0.0, c, first), False
        return e.step("Relu", [x], "relu", first), False
    y = e.step("LeakyRelu", [x], "leakyrelu", first, alpha=float(leak))
    return (e.clip(y, None, c, False) if c > 0 else y), False


def _export_tanh(e, x, p, first):
    if p["alpha"] != 1.0:
        x = e.step("Mul", [x, e.const(f"{e.current}/alpha", np.float32(p["alpha"]))], "alpha", first)
        first = False
    return e.step("Tanh", [x], "tanh", first), False


def _export_unary(op, suffix):
    def export(e, x, p, first):
        return e.step(op, [x], suffix, first), False
    return export


def _export_swish(e, x, p, first):
    s = e.step("Sigmoid", [x], "sigmoid", first)
    return e.step("Mul", [x, s], "swish", False), False


def _export_tanh_lecun(e, x, p, first):
    x2 = e.step("Mul", [x, e.const(f"{e.current}/lecun_b", np.float32(LECUN_B))], "lecun_b", first)
    t = e.step("Tanh", [x2], "tanh", False)
    return e.step("Mul", [t, e.const(f"{e.current}/lecun_a", np.float32(LECUN_A))], "lecun_a", False), False


def _export_gelu(e, x, p, first):
    if e.opset >= 20:
        return e.step("Gelu", [x], "gelu", first, approximate=p["approximate"]), False
    if p["approximate"] == "tanh":   # 0.5 x (1 + tanh(k (x + c x^3)))
        x3 = e.step("Mul", [x, e.step("Mul", [x, x], "gelu_x2", first)], "gelu_x3", False)
        inner = e.step("Add", [x, e.step("Mul", [x3, e.const(f"{e.current}/gelu_c", np.float32(_GELU_C))],
                                         "gelu_cx3", False)], "gelu_inner", False)
        arg = e.step("Mul", [inner, e.const(f"{e.current}/gelu_k", np.float32(_GELU_K))], "gelu_arg", False)
        g = e.step("Tanh", [arg], "gelu_tanh", False)
    else:   # 0.5 x (1 + erf(x / sqrt 2))
        arg = e.step("Mul", [x, e.const(f"{e.current}/gelu_r", np.float32(1 / math.sqrt(2.0)))], "gelu_arg", first)
        g = e.step("Erf", [arg], "gelu_erf", False)
    one = e.step("Add", [g, e.const(f"{e.current}/gelu_one", np.float32(1.0))], "gelu_1p", False)
    half = e.step("Mul", [x, e.const(f"{e.current}/gelu_half", np.float32(0.5))], "gelu_half", False)
    return e.step("Mul", [half, one], "gelu", False), False


def _export_mish(e, x, p, first):
    if e.opset >= 18:
        return e.step("Mish", [x], "mish", first), False
    sp = e.step("Softplus", [x], "softplus", first)
    return e.step("Mul", [x, e.step("Tanh", [sp], "tanh", False)], "mish", False), False


def _export_hard_swish(e, x, p, first):
    if e.opset >= 14:
        return e.step("HardSwish", [x], "hardswish", first), False
    s = e.step("HardSigmoid", [x], "hardsigmoid", first, alpha=1 / 6, beta=0.5)
    return e.step("Mul", [x, s], "hardswish", False), False


def _f32(value):
    """An ONNX float attribute as the float it stands for (1/6 stored as float32 reads 1/6)."""
    return float(str(np.float32(value)))


register(ActivationDef(
    "Linear", "Identity, optionally clipped to [-clipping, clipping] (0 = no clipping).",
    linear_forward, linear_backward,
    c_forward=lambda v, p, f: _c_clamp(v, f"-{f(p['clipping'])}", f(p["clipping"])) if p["clipping"] > 0 else f"({v})",
    c_derivative=lambda y, p, f: _c_keep(f"fabsf({y}) < {f(p['clipping'])}", "1.0f") if p["clipping"] > 0 else "1.0f",
    params=(("clipping", 0.0, None),),
    idempotent=_yes, keeps_sign=_yes, identity=lambda p: p["clipping"] <= 0,
    onnx_export=lambda e, x, p, first: (e.clip(x, -p["clipping"], p["clipping"], first), False)
    if p["clipping"] > 0 else (x, first),
    ini_name="Linear", ini_params={"Clipping": "clipping"}))

register(ActivationDef(
    "Rectifier", "ReLU with optional leak slope and upper clipping.",
    rectifier_forward, rectifier_backward, _c_rectifier, _c_drectifier,
    params=(("clipping", 0.0, None), ("leak_slope", 0.0, None)),
    idempotent=lambda p: p["leak_slope"] == 0.0, non_negative=lambda p: p["leak_slope"] == 0.0, keeps_sign=_yes,
    onnx_import={"Relu": lambda a: {}, "LeakyRelu": lambda a: {"leak_slope": _f32(a.get("alpha", 0.01))}},
    onnx_export=_export_rectifier,
    ini_name="Rectifier", ini_params={"LeakSlope": "leak_slope", "Clipping": "clipping"}))

register(ActivationDef(
    "Tanh", "tanh(alpha * x).",
    tanh_forward, tanh_backward,
    c_forward=lambda v, p, f: f"tanhf({f(p['alpha'])} * ({v}))",
    c_derivative=lambda y, p, f: f"({f(p['alpha'])} * (1.0f - ({y}) * ({y})))",
    params=(("alpha", 1.0, None),),
    keeps_sign=lambda p: p["alpha"] > 0,
    onnx_import={"Tanh": lambda a: {}}, onnx_export=_export_tanh,
    ini_name="Tanh", ini_params={"Alpha": "alpha"}))

register(ActivationDef(
    "Logistic", "Sigmoid 1 / (1 + exp(-x)) (N2D2 INI type Logistic).",
    logistic_forward, logistic_backward,
    c_forward=lambda v, p, f: _c_sigmoid(v),
    c_derivative=lambda y, p, f: f"(({y}) * (1.0f - ({y})))",
    non_negative=_yes, keeps_sign=_yes,
    onnx_import={"Sigmoid": lambda a: {}}, onnx_export=_export_unary("Sigmoid", "sigmoid"),
    ini_name="Logistic"))

register(ActivationDef(
    "LogisticWithLoss", "Sigmoid whose backward passes the target's gradient through (fused sigmoid + "
    "cross-entropy, as Softmax(with_loss=True); N2D2 INI type LogisticWithLoss).",
    logistic_forward, logistic_with_loss_backward,
    c_forward=lambda v, p, f: _c_sigmoid(v),
    c_derivative=lambda y, p, f: "1.0f",
    non_negative=_yes, keeps_sign=_yes,
    onnx_export=_export_unary("Sigmoid", "sigmoid"),
    ini_name="LogisticWithLoss"))

register(ActivationDef(
    "Saturation", "Clamp to [-threshold, threshold] (N2D2 INI type Saturation, Threshold=1.0).",
    saturation_forward, saturation_backward,
    c_forward=lambda v, p, f: _c_clamp(v, f"-{f(p['threshold'])}", f(p["threshold"])),
    c_derivative=lambda y, p, f: _c_keep(f"fabsf({y}) < {f(p['threshold'])}", "1.0f"),
    params=(("threshold", 1.0, None),),
    idempotent=_yes, keeps_sign=_yes,
    onnx_export=lambda e, x, p, first: (e.clip(x, -p["threshold"], p["threshold"], first), False),
    ini_name="Saturation", ini_params={"Threshold": "threshold"}))

register(ActivationDef(
    "Softplus", "log(1 + exp(x)).",
    softplus_forward, softplus_backward,
    c_forward=lambda v, p, f: _c_softplus(v),
    c_derivative=lambda y, p, f: f"(-expm1f(-({y})))",
    non_negative=_yes, keeps_sign=_yes,
    onnx_import={"Softplus": lambda a: {}}, onnx_export=_export_unary("Softplus", "softplus"),
    ini_name="Softplus"))

register(ActivationDef(
    "Swish", "x * sigmoid(x) (SiLU; N2D2 INI type Swish).",
    swish_forward, swish_backward,
    c_forward=lambda v, p, f: f"(({v}) / (1.0f + expf(-({v}))))",
    c_derivative=lambda z, p, f: f"({_c_sigmoid(z)} * (1.0f + ({z}) * (1.0f - {_c_sigmoid(z)})))",
    derivative_needs_input=True, keeps_sign=_yes,
    onnx_export=_export_swish,
    ini_name="Swish"))

register(ActivationDef(
    "TanhLeCun", "1.7159 * tanh(2/3 x) (LeCun's scaled tanh; N2D2 INI type TanhLeCun).",
    tanh_lecun_forward, tanh_lecun_backward,
    c_forward=lambda v, p, f: f"({f(LECUN_A)} * tanhf({f(LECUN_B)} * ({v})))",
    c_derivative=lambda y, p, f: f"({f(LECUN_B)} * ({f(LECUN_A)} - ({y}) * ({y}) * {f(1 / LECUN_A)}))",
    keeps_sign=_yes,
    onnx_export=_export_tanh_lecun,
    ini_name="TanhLeCun"))


def _c_gelu(v, p, f):
    if p["approximate"] == "tanh":
        return (f"(0.5f * ({v}) * (1.0f + tanhf({f(_GELU_K)} * (({v}) + {f(_GELU_C)} * ({v}) * ({v}) * ({v})))))")
    return f"(0.5f * ({v}) * (1.0f + erff(({v}) * {f(1 / math.sqrt(2.0))})))"


def _c_dgelu(z, p, f):
    if p["approximate"] == "tanh":
        th = f"tanhf({f(_GELU_K)} * (({z}) + {f(_GELU_C)} * ({z}) * ({z}) * ({z})))"
        return (f"(0.5f * (1.0f + {th}) + 0.5f * ({z}) * (1.0f - {th} * {th}) * {f(_GELU_K)} * "
                f"(1.0f + {f(3 * _GELU_C)} * ({z}) * ({z})))")
    return (f"(0.5f * (1.0f + erff(({z}) * {f(1 / math.sqrt(2.0))})) + "
            f"({z}) * {f(1 / math.sqrt(2 * math.pi))} * expf(-0.5f * ({z}) * ({z})))")


register(ActivationDef(
    "Gelu", "x * Phi(x) (approximate='none', with erf) or its tanh approximation (approximate='tanh').",
    gelu_forward, gelu_backward, _c_gelu, _c_dgelu,
    params=(("approximate", "none", ("none", "tanh")),),
    derivative_needs_input=True, keeps_sign=_yes,
    onnx_import={"Gelu": lambda a: {"approximate": a.get("approximate", "none")}},
    onnx_export=_export_gelu))

register(ActivationDef(
    "Mish", "x * tanh(softplus(x)).",
    mish_forward, mish_backward,
    c_forward=lambda v, p, f: f"(({v}) * tanhf({_c_softplus(v)}))",
    c_derivative=lambda z, p, f: (f"(tanhf({_c_softplus(z)}) + ({z}) * (1.0f - tanhf({_c_softplus(z)}) * "
                                  f"tanhf({_c_softplus(z)})) * {_c_sigmoid(z)})"),
    derivative_needs_input=True, keeps_sign=_yes,
    onnx_import={"Mish": lambda a: {}}, onnx_export=_export_mish))

register(ActivationDef(
    "HardSigmoid", "max(0, min(1, alpha x + beta)) (ONNX defaults alpha=0.2, beta=0.5; PyTorch's is alpha=1/6).",
    hard_sigmoid_forward, hard_sigmoid_backward,
    c_forward=lambda v, p, f: f"n2d2_fmax(n2d2_fmin({f(p['alpha'])} * ({v}) + {f(p['beta'])}, 1.0f), 0.0f)",
    c_derivative=lambda y, p, f: _c_keep(f"(({y}) > 0.0f) & (({y}) < 1.0f)", f(p["alpha"])),
    params=(("alpha", 0.2, None), ("beta", 0.5, None)),
    non_negative=_yes, keeps_sign=_yes,
    onnx_import={"HardSigmoid": lambda a: {"alpha": _f32(a.get("alpha", 0.2)), "beta": _f32(a.get("beta", 0.5))}},
    onnx_export=lambda e, x, p, first: (e.step("HardSigmoid", [x], "hardsigmoid", first, alpha=float(p["alpha"]),
                                               beta=float(p["beta"])), False)))

register(ActivationDef(
    "HardSwish", "x * relu6(x + 3) / 6.",
    hard_swish_forward, hard_swish_backward,
    c_forward=lambda v, p, f: f"(({v}) * n2d2_fmin(n2d2_fmax(({v}) + 3.0f, 0.0f), 6.0f) / 6.0f)",
    c_derivative=lambda z, p, f: f"(({z}) <= -3.0f ? 0.0f : (({z}) < 3.0f ? ({z}) / 3.0f + 0.5f : 1.0f))",
    derivative_needs_input=True, keeps_sign=_yes,
    onnx_import={"HardSwish": lambda a: {}}, onnx_export=_export_hard_swish))


# -- what the IR, the passes and the templates call -------------------------------------------
def spec_def(spec):
    """(ActivationDef, parameters with defaults) of an IR spec (name, ((key, value), ...))."""
    name, params = spec
    d = get(name)
    return d, d.resolve(params)


def forward(spec, z):
    d, p = spec_def(spec)
    return d.forward(z, **p)


def backward(spec, dy, z):
    d, p = spec_def(spec)
    return d.backward(dy, z, **p)


def needs_input(spec) -> bool:
    """True when the derivative of `spec` is written from the pre-activation input."""
    return spec is not None and spec_def(spec)[0].derivative_needs_input


def prop(spec, what: str, none) -> bool:
    """A property (`idempotent`, `non_negative`, `keeps_sign`, `identity`) of spec; `none` for None."""
    if spec is None:
        return none
    d, p = spec_def(spec)
    return bool(getattr(d, what)(p))


def _template_params(p):
    """(ActivationDef, params) of a template's activation data ({"name": ..., params...})."""
    d = get(p["name"])
    return d, d.resolve({k: v for k, v in p.items() if k != "name"})


def onnx_import_ops():
    """The ONNX op types the table imports, in table order."""
    return tuple(op for d in ACTIVATIONS.values() for op in d.onnx_import)


def onnx_import_params(op_type, attrs):
    """(ActivationDef, constructor parameters) of an ONNX node of type `op_type` with `attrs`."""
    for d in ACTIVATIONS.values():
        if op_type in d.onnx_import:
            return d, d.onnx_import[op_type](attrs)
    raise ValueError(f"ONNX op type '{op_type}' is no activation of the table")


def clip_activation(low, high):
    """(name, parameters) of the activation that computes Clip(low, high) exactly, else None:
    min 0 is a ReLU clipped at `high` (not clipped when `high` is inf), finite symmetric bounds a
    Saturation. (The legalize pass and the ONNX importer.)"""
    if low == 0.0 and high > 0.0:
        return "Rectifier", {"clipping": 0.0 if high == math.inf else float(high)}
    if -low == high < math.inf and high > 0.0:
        return "Saturation", {"threshold": float(high)}
    return None


def clamp_bounds(spec):
    """(low, high) when the activation of IR spec `spec` is Clip(low, high) of its input (a ReLU,
    clipped or not, a Saturation: the inverse of `clip_activation`), else None. (The legalize
    pass merges a Clip into such an activation.)"""
    if spec is None:
        return None
    d, params = spec_def(spec)
    if d.name == "Rectifier" and not params["leak_slope"]:
        return 0.0, float(params["clipping"]) if params["clipping"] > 0 else math.inf
    if d.name == "Saturation":
        return -float(params["threshold"]), float(params["threshold"])
    return None


def onnx_export(exporter, x, spec, first):
    """Apply activation `spec` to ONNX value `x` through `exporter` (step, clip, const, error,
    opset, current): (output value, first) as `onnx_export` of each entry."""
    d, p = spec_def(spec)
    if d.onnx_export is None:
        raise exporter.error(f"activation {d.name} has no ONNX equivalent here")
    return d.onnx_export(exporter, x, p, first)


def needs_input_data(p) -> bool:
    """`needs_input` for a template's activation data (None: False)."""
    return p is not None and get(p["name"]).derivative_needs_input


def c_forward(p, v, lit):
    """The C expression of activation `p` (template data or None) applied to expression v."""
    if p is None:
        return f"({v})"
    d, params = _template_params(p)
    return d.c_forward(v, params, lit)


def c_clamp(p, lit):
    """(lo, hi) C literals when activation `p` (template data or None) is a clamp of its input,
    `v < lo ? lo : v` then `v > hi ? hi : v` (none, ReLU, clipped ReLU: kernels may fuse it into
    their stores), else None."""
    if p is None:
        return "-INFINITY", "INFINITY"
    d, params = _template_params(p)
    if d.name != "Rectifier" or params["leak_slope"]:
        return None
    return lit(0.0), lit(params["clipping"]) if params["clipping"] > 0 else "INFINITY"


def c_derivative(p, y, z, lit):
    """The C expression of f' from the output expression y (or the input expression z when the
    derivative needs it; a kernel that has no z for such an activation is an error)."""
    if p is None:
        return "1.0f"
    d, params = _template_params(p)
    if d.derivative_needs_input:
        if z is None:
            raise ValueError(f"activation '{d.name}': its derivative needs the pre-activation input, which this "
                             "kernel does not keep (such an activation must stay a standalone Activation node in "
                             "training)")
        return d.c_derivative(z, params, lit)
    return d.c_derivative(y, params, lit)
