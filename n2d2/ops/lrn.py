"""LRN: local response normalization across channels (N2D2's LRNCell, ONNX `LRN`).

    y[c] = x[c] / s[c] ** beta,   s[c] = bias + alpha / size * sum_{j in W(c)} x[j] ** 2

with the window W(c) = [c - floor((size - 1) / 2), c + ceil((size - 1) / 2)] cut to the
channels that exist (ONNX's definition; N2D2's `N`, `Alpha`, `Beta`, `K` are size, alpha,
beta, bias). PyTorch's `local_response_norm` uses the same formula; its window agrees for odd
sizes only (for an even size it reaches one channel further down than up).

This module is the whole op: the reference (any array module, any float dtype) and its IR
definition (`n2d2.ir.ops` registry: shape rule, forward, backward, the C kernel's geometry, the
ONNX export). The user cell is `n2d2.cells.LRN` (INI `Type=LRN`), the C kernel
`templates/c/ops/LRN.c.j2`, the CUDA kernels `templates/cuda/ops/LRN.cu.j2`.
"""
from n2d2.backend import array_module
from n2d2.ir import lowering as low
from n2d2.ir.lowering import Unsupported
from n2d2.ir.ops import OpDef, register

# The C kernel keeps one pixel's channels on the stack in its backward: more channels run on the reference.
C_MAX_CHANNELS = 8192
# Elements from which the C kernel splits the pixels over threads.
C_PARALLEL_MIN_ELEMENTS = 1 << 16

DEFAULTS = {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 2.0}   # N2D2's LRNCell defaults (N, Alpha, Beta, K)


def window(size: int):
    """(below, above): channels the window reaches below and above its centre."""
    return (size - 1) // 2, size // 2


def check(size, alpha, beta, bias):
    """ValueError naming the bad attribute (the IR shape rule and the cell both call it)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"LRN size must be an int >= 1, got {size!r}")
    for key, v in (("alpha", alpha), ("beta", beta), ("bias", bias)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"LRN {key} must be a finite number, got {v!r}")


def _window_sum(q, size):
    """sum over each channel's window of q (N, C, ...) along axis 1; zeros outside the channels.
    A loop over the window offsets (not a cumulative sum), so that a NaN stays in the windows
    that hold it."""
    below, above = window(size)
    out = q.copy()
    c = q.shape[1]
    for d in range(1, below + 1):          # channel c - d reaches c
        if d < c:
            out[:, d:] += q[:, :c - d]
    for d in range(1, above + 1):          # channel c + d reaches c
        if d < c:
            out[:, :c - d] += q[:, d:]
    return out


def lrn_forward(x, size=5, alpha=1e-4, beta=0.75, bias=2.0):
    """(y, s): y = x * s ** -beta with s = bias + alpha / size * (window sum of x ** 2)."""
    s = bias + (alpha / size) * _window_sum(x * x, size)
    return x * s ** (-beta), s


def lrn_backward(dy, x, s, size=5, alpha=1e-4, beta=0.75, bias=2.0):
    """dx[j] = dy[j] * s[j] ** -beta - 2 alpha beta / size * x[j] * sum_{c: j in W(c)} dy[c] x[c] s[c] ** (-beta-1).

    The channels c whose window holds j are the transposed window of j (below and above swap)."""
    t = dy * x * s ** (-beta - 1)
    below, above = window(size)
    acc = t.copy()
    c = t.shape[1]
    for d in range(1, above + 1):          # c = j - d holds j when d <= above
        if d < c:
            acc[:, d:] += t[:, :c - d]
    for d in range(1, below + 1):          # c = j + d holds j when d <= below
        if d < c:
            acc[:, :c - d] += t[:, d:]
    return dy * s ** (-beta) - (2.0 * alpha * beta / size) * x * acc


@register
class LRN(OpDef):
    """attrs: size, alpha, beta, bias (the ONNX names); several inputs are concatenated."""

    name = "LRN"
    per_sample = True
    max_inputs = None
    onnx_names = ("LRN",)
    ini_names = ("LRN",)

    @staticmethod
    def _attrs(attrs):
        return {k: attrs.get(k, v) for k, v in DEFAULTS.items()}

    def _infer(self, attrs, in_shapes, param_shapes):
        check(**self._attrs(attrs))
        first = in_shapes[0]
        if len(first) < 2:
            raise ValueError(f"LRN normalizes across channels: the input needs at least 2 dims, got {list(first)}")
        for s in in_shapes[1:]:
            if len(s) != len(first) or s[0] != first[0] or s[2:] != first[2:]:
                raise ValueError(f"inputs {[list(s) for s in in_shapes]} differ on batch or spatial dims")
        return [(first[0], sum(s[1] for s in in_shapes)) + tuple(first[2:])]

    def _forward(self, attrs, xs, params, training):
        x = xs[0] if len(xs) == 1 else array_module(*xs).concatenate(xs, axis=1)
        y, s = lrn_forward(x, **self._attrs(attrs))
        return y, (x, s, [a.shape[1] for a in xs])

    def _geometry(self, graph, node):
        """The constants both kernels bake in (one input of rank >= 2), or an Unsupported."""
        in_shapes, _ = low.shapes(graph, node)
        if len(in_shapes) != 1 or len(in_shapes[0]) < 2:
            return Unsupported("LRN's kernels take one input of rank >= 2 (several inputs: a concatenation)")
        a = self._attrs(graph.attrs(node))
        size, alpha, beta = a["size"], float(a["alpha"]), float(a["beta"])
        n, c = in_shapes[0][0], in_shapes[0][1]
        hw = 1
        for d in in_shapes[0][2:]:
            hw *= d
        below, above = window(size)
        return dict(N=n, C=c, HW=hw, SIZE=n * c * hw, LO=below, HI=above, BIAS=float(a["bias"]), AN=alpha / size,
                    NB=-beta, NB1=-beta - 1.0, D=2.0 * alpha * beta / size)

    def lower_c(self, graph, node, training):
        """The geometry of templates/c/ops/LRN.c.j2 (one input), or why the C kernel does not apply
        (several inputs, more than C_MAX_CHANNELS channels): the reference runs the node then."""
        g = self._geometry(graph, node)
        if isinstance(g, Unsupported):
            return g
        if g["C"] > C_MAX_CHANNELS:
            return Unsupported(f"LRN's C kernel takes at most {C_MAX_CHANNELS} channels")
        return dict(g, PAR=g["SIZE"] >= C_PARALLEL_MIN_ELEMENTS)

    def lower_cuda(self, graph, node, training):
        """The geometry of templates/cuda/ops/LRN.cu.j2 (one thread per element, any number of
        channels), or why not (several inputs)."""
        return self._geometry(graph, node)

    def plan_cuda_forward(self, n, g, k):
        return [k.elementwise("fwd", g["SIZE"])]

    def plan_cuda_backward(self, n, g, k):
        """t = dz x s^(-beta-1) into the scratch, then dx from the transposed windows of t."""
        if n.dx[0] is None:
            return []
        part = "((float *)(arena + N2D2_SCRATCH_OFF))"
        return [k.elementwise(macro, g["SIZE"], part=part, scratch=4 * g["SIZE"]) for macro in ("bwd_t", "bwd_dx")]

    def onnx_export(self, exporter, attrs, ins):
        """ONNX `LRN` (opset 1 on): (output name, rank, whether the node is still to be named)."""
        x, first = exporter.joined(ins, True) if len(ins) > 1 else (ins[0][0], True)
        a = self._attrs(attrs)
        y = exporter.step("LRN", [x], "lrn", first, size=int(a["size"]), alpha=float(a["alpha"]),
                          beta=float(a["beta"]), bias=float(a["bias"]))
        return y, 4 if len(ins) > 1 else ins[0][1], False

    def _backward(self, attrs, saved, dy, needs, params):
        x, s, channels = saved
        dx = lrn_backward(dy, x, s, **self._attrs(attrs))
        bounds = [sum(channels[:k]) for k in range(len(channels) + 1)]
        return [dx[:, bounds[k]:bounds[k + 1]] if need else None for k, need in enumerate(needs)], {}
