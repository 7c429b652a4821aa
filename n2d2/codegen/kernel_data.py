"""What the kernel templates of every compiled backend (C, CUDA) receive, and the reference
fallback they share.

A template gets, per node, a `Context`: its input / output buffers (`Buf`), parameter pointer
expressions, attributes, fused activation, geometry and auxiliary buffers (`forward_context`).
Where a node has no kernel, both backends run its numpy reference over the same arena views
(`run_reference`).
"""
import numpy as np

from n2d2.ir.types import GraphError
from n2d2.ops import activation as act_table

# Activations the C and CUDA templates implement: every entry of the table (c/activation.c.j2
# renders its C expressions).
SUPPORTED_ACTIVATIONS = tuple(act_table.ACTIVATIONS)

# Ops whose backward kernels see the pre-activation value (the Activation node reads its
# forward input, the Epilogue recomputes its chain): the only ones that may carry, in
# training, an activation whose derivative needs its input.
PRE_ACTIVATION_KERNELS = ("Activation", "Epilogue")


class Buf:
    """A tensor of the arena as the templates see it: a pointer expression, shape, size."""

    def __init__(self, offset, shape, ptr=None):
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape)) if self.shape else 1
        self.ptr = ptr or f"((float *)(arena + {self.offset}))"


class Context(dict):
    """Attribute-style dict for templates (a missing key is undefined, so `is defined` works)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def activation(spec):
    """An IR activation spec (name, params) as template data ({"name", params...}), or None."""
    if spec is None:
        return None
    name, params = spec
    return {"name": name, **dict(params)}


def activation_ok(spec, op=None, training=False):
    """True when the kernels of `op` can run activation `spec` (forward, and in training the
    backward: a derivative that needs the input only where the kernel has it)."""
    if spec is None:
        return True
    if spec[0] not in SUPPORTED_ACTIVATIONS:
        return False
    return not (training and op not in PRE_ACTIVATION_KERNELS and act_table.needs_input(spec))


def nchw(shape):
    """A shape padded / cut to 4 dimensions (N, C, H, W)."""
    s = tuple(shape) + (1,) * (4 - len(shape))
    return s[:4]


def concat_channels(ins):
    """[{C, off}] of inputs concatenated along channels (None if batch / H / W differ)."""
    first = nchw(ins[0])
    out, off = [], 0
    for s in ins:
        s4 = nchw(s)
        if s4[0] != first[0] or s4[2:] != first[2:]:
            return None
        out.append({"C": s4[1], "off": off})
        off += s4[1]
    return out


def coef(c):
    """A float, or a list of floats (per channel; a 1-element list is a scalar)."""
    if isinstance(c, (list, tuple)):
        return float(c[0]) if len(c) == 1 else [float(v) for v in c]
    return float(c)


def epilogue_steps(steps):
    """Epilogue steps as template data: per-channel coefficients become tables."""
    out = []
    for i, step in enumerate(steps):
        kind = step[0]
        if kind == "activation":
            out.append(Context(kind=kind, act=activation(step[1]), id=i))
        elif kind == "add":
            out.append(Context(kind=kind, k=int(step[1]), w=coef(step[2]), s=coef(step[3]), id=i))
        else:
            out.append(Context(kind=kind, c=coef(step[1]), id=i))
    return out


def forward_context(graph, node, g, training, plan, buf, param, aux_slot, stats_kind):
    """The template data of forward node `node` with geometry `g`. `buf(tensor)`, `param(name)`
    and `aux_slot(key, shape, kind)` give the backend's pointer expressions; `stats_kind` is the
    aux kind of BatchNorm's saved batch statistics."""
    d = graph.node(node)
    ctx = Context(
        x=[buf(t) for t in graph.inputs_of(node)],
        y=buf((node, 0)),
        p=Context({r: param(p) for r, p in d.params.items()}),
        a=Context(d.attrs), act=activation(d.attrs.get("activation")), g=Context(g),
        training=training, aux=Context())
    if d.op == "Dropout" and training:
        ctx.aux["mask"] = aux_slot(f"{node}.mask", graph.output_types(node)[0].shape, "dropout")
    if d.op == "BatchNorm" and g.get("TRAIN"):
        ctx.aux["stats"] = aux_slot(f"{node}.stats", (2 * g["C"],), stats_kind)
    if d.op == "Concat":
        ctx["aliased"] = list(plan.concat_aliased.get(node, [False] * len(ctx.x)))
    if d.op == "Epilogue":
        ctx["steps"] = epilogue_steps(d.attrs["steps"])
    return ctx


def run_reference(graph, node, opdef, xs, views, saved, training):
    """Run a forward or Grad node (not an Update) on its numpy reference: `xs` are its input
    views, its outputs are written into `views[(node, k)]`; a forward node's context goes into
    `saved` for its Grad."""
    d = graph.node(node)
    if getattr(opdef, "needs_forward_context", False):
        fwd = d.attrs["of"]
        if fwd not in saved:
            raise GraphError(f"node '{node}': the forward node '{fwd}' has not run in this program")
        outs = opdef.run(graph, node, xs, saved[fwd])
    else:
        params = {r: graph.params[p].array for r, p in d.params.items()}
        outs, saved[node] = opdef.forward(d.attrs, xs, params, training)
    for k, value in enumerate(outs):
        view = views[(node, k)]
        if value is not view:
            view[...] = value
