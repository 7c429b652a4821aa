"""What the kernel templates of every compiled backend (C, CUDA) receive.

A template gets, per node, a `Context`: its input / output buffers (`Buf`), parameter pointer
expressions, attributes, fused activation, geometry and auxiliary buffers (`forward_context`).
Where a node has no kernel, both backends run it on the interpreter over the same arena views
(`n2d2.codegen.interpreter`).
"""
import numpy as np

from n2d2.ir import ops as op_registry
from n2d2.ir.lowering import Context, concat_channels, nchw  # noqa: F401  (the backends import them from here)
from n2d2.ops import activation as act_table
from n2d2.ops.fake_quantize import weight_quantizer_context

# Activations the C and CUDA templates implement: every entry of the table (c/activation.c.j2
# renders its C expressions).
SUPPORTED_ACTIVATIONS = tuple(act_table.ACTIVATIONS)


class Buf:
    """A tensor of the arena as the templates see it: a pointer expression, shape, size."""

    def __init__(self, offset, shape, ptr=None):
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape)) if self.shape else 1
        self.ptr = ptr or f"((float *)(arena + {self.offset}))"


def activation(spec):
    """An IR activation spec (name, params) as template data ({"name", params...}), or None."""
    if spec is None:
        return None
    name, params = spec
    return {"name": name, **dict(params)}


def fused_activation(spec):
    """A node's fused activation as template data, or None when it is the identity (an unclipped
    Linear): the kernels then skip it, in particular the backward's pass multiplying the
    incoming gradient by a derivative of 1."""
    p = activation(spec)
    if p is not None and act_table.c_forward(p, "v", str) in ("v", "(v)") \
            and act_table.c_derivative(p, "y", None, str) == "1.0f":
        return None
    return p


def activation_ok(spec, op=None, training=False):
    """True when the kernels of `op` can run activation `spec` (forward, and in training the
    backward: a derivative that needs the input only where the kernel has it)."""
    if spec is None:
        return True
    if spec[0] not in SUPPORTED_ACTIVATIONS:
        return False
    return not (training and act_table.needs_input(spec)
                and not (op is not None and op_registry.get(op).backward_sees_input))


def forward_context(graph, node, g, training, plan, buf, param, aux_slot, stats_kind):
    """The template data of forward node `node` with geometry `g`. `buf(tensor)`, `param(name)`
    and `aux_slot(key, shape, kind)` give the backend's pointer expressions; `stats_kind` is the
    aux kind of BatchNorm's saved batch statistics."""
    d = graph.node(node)
    ctx = Context(
        x=[buf(t) for t in graph.inputs_of(node)],
        y=buf((node, 0)),
        p=Context({r: param(p) for r, p in d.params.items()}),
        a=Context(d.attrs), act=fused_activation(d.attrs.get("activation")), g=Context(g),
        training=training, aux=Context())
    wq = weight_quantizer_context(graph, node, training, param, aux_slot, stats_kind)
    if wq is not None:   # fake-quantized weights: the op's kernels read the quantized copy
        ctx["wq"] = wq
        ctx.p["weights"] = wq.wq
    opdef = op_registry.get(d.op, node=node)
    if getattr(opdef, "kernel_writes_all_outputs", False):   # e.g. LayerNormalization's Mean and InvStdDev
        ctx["ys"] = [buf((node, k)) for k in range(len(d.outputs))]
    opdef.kernel_context(ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation)
    return ctx

