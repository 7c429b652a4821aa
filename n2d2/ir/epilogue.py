"""The Epilogue op: a fused chain of elementwise steps on its input 0.

`fuse_elementwise_chains` builds it from the ElemWise / Scaling / Activation nodes that follow
a Conv or Fc, so that a code generator can apply it to the accumulator before the store.
`attrs["steps"]` is a tuple of plain-data steps applied in order to z = input 0:

- `("scale", c)`          z = z * c
- `("bias", c)`           z = z + c
- `("add", k, w, s)`      z = z + (input_k * w + s)   (a residual; k >= 1)
- `("activation", spec)`  z = f(z), `spec` as `attrs["activation"]` elsewhere

Every coefficient is a float or a tuple of floats, one per channel; all are constants (they
come from folded Scaling / ElemWise coefficients, they are not trained). The arithmetic is that
of the ops it replaces (coefficients cast to the input dtype, same order of operations), so a
chain of two-input sums gives identical results. Backward gives the gradient of every data
input. All inputs share input 0's shape.
"""
from n2d2.backend import array_module
from n2d2.ir import lowering as low
from n2d2.ir.lowering import Context
from n2d2.ir.ops import OpDef, activation_backward, activation_forward, register

STEP_KINDS = ("scale", "bias", "add", "activation")


def _coef(c, like):
    """A float or per-channel tuple as an array broadcastable over NCHW, in `like`'s dtype."""
    xp = array_module(like)
    c = xp.asarray(c, dtype=like.dtype)
    return c.reshape(1, -1, 1, 1) if c.ndim == 1 else c


def _is_unit(c, value) -> bool:
    return all(float(v) == value for v in (c if isinstance(c, (list, tuple)) else (c,)))


@register
class Epilogue(low.SameShapeLowering, OpDef):
    """attrs: steps (see the module docstring). Inputs: the value, then the residuals."""

    name = "Epilogue"
    per_sample = True
    backward_sees_input = True
    max_inputs = None
    elementwise = True
    holds_chain = True

    def _infer(self, attrs, in_shapes, param_shapes):
        shape = in_shapes[0]
        for s in in_shapes[1:]:
            if s != shape:
                raise ValueError(f"Epilogue inputs must share one shape, got {list(in_shapes)}")
        channels = shape[1] if len(shape) > 1 else 1
        for step in attrs["steps"]:
            kind = step[0]
            if kind not in STEP_KINDS:
                raise ValueError(f"unknown Epilogue step '{kind}' (expected one of {', '.join(STEP_KINDS)})")
            if kind == "activation" and step[1] is None:
                raise ValueError("an Epilogue activation step needs a spec (None is not one)")
            if kind == "add" and not 1 <= step[1] < len(in_shapes):
                raise ValueError(f"step {step[:2]} reads input {step[1]} of {len(in_shapes)}")
            coefs = {"scale": step[1:], "bias": step[1:], "add": step[2:]}.get(kind, ())
            for c in coefs:
                if isinstance(c, (list, tuple)) and len(c) not in (1, channels):
                    raise ValueError(f"step '{kind}' has {len(c)} coefficients for {channels} channels")
        return [shape]

    def _forward(self, attrs, xs, params, training):
        z = xs[0]
        pre_activations = []
        for step in attrs["steps"]:
            kind = step[0]
            if kind == "scale":
                z = z * _coef(step[1], z)
            elif kind == "bias":
                z = z + _coef(step[1], z)
            elif kind == "add":
                _, k, w, s = step
                x = xs[k]
                z = z + (x * _coef(w, x) + _coef(s, x))
            else:
                pre_activations.append(z)
                z = activation_forward(step[1], z)
        return z, (pre_activations, len(xs))

    def _backward(self, attrs, saved, dy, needs, params):
        pre_activations, nb_inputs = saved
        pre_activations = list(pre_activations)
        dxs = [None] * nb_inputs
        dz = dy
        for step in reversed(attrs["steps"]):
            kind = step[0]
            if kind == "scale":
                dz = dz * _coef(step[1], dz)
            elif kind == "add":
                _, k, w, _ = step
                g = dz * _coef(w, dz)
                dxs[k] = g if dxs[k] is None else dxs[k] + g
            elif kind == "activation":
                dz = activation_backward(step[1], dz, pre_activations.pop())
        dxs[0] = dz
        return [d if need else None for d, need in zip(dxs, needs)], {}

    def activations(self, attrs):
        return [step[1] for step in attrs["steps"] if step[0] == "activation"] + super().activations(attrs)

    def kernel_context(self, ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation):
        ctx["steps"] = template_steps(graph.attrs(node)["steps"], activation)



def describe(steps) -> str:
    """A short text of a step list, for dumps and logs."""
    parts = []
    for step in steps:
        if step[0] == "add":
            w = "" if _is_unit(step[2], 1.0) else f"{step[2]}*"
            parts.append(f"+{w}in{step[1]}" + ("" if _is_unit(step[3], 0.0) else f"+{step[3]}"))
        elif step[0] == "activation":
            parts.append(step[1][0] if step[1] is not None else "id")
        else:
            parts.append(f"{step[0]}{step[1]}")
    return " -> ".join(parts)


def _template_coef(c):
    """A float, or a list of floats (per channel; a 1-element list is a scalar)."""
    if isinstance(c, (list, tuple)):
        return float(c[0]) if len(c) == 1 else [float(v) for v in c]
    return float(c)


def template_steps(steps, activation):
    """Epilogue steps as template data (per-channel coefficients become tables); `activation`
    turns a spec into its template data (n2d2.codegen.kernel_data.activation)."""
    out = []
    for i, step in enumerate(steps):
        kind = step[0]
        if kind == "activation":
            out.append(Context(kind=kind, act=activation(step[1]), id=i))
        elif kind == "add":
            out.append(Context(kind=kind, k=int(step[1]), w=_template_coef(step[2]), s=_template_coef(step[3]), id=i))
        else:
            out.append(Context(kind=kind, c=_template_coef(step[1]), id=i))
    return out
