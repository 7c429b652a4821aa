"""Structural IR ops: graph inputs, channel concatenation, identity, reshape."""
import numpy as np

from n2d2.ir.lowering import CopyLowering
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _ConcatenatingOp, _split_channels, register


@register
class Input(OpDef):
    """A graph input (its output type is given when the node is created)."""

    name = "Input"
    min_inputs = max_inputs = 0

    def infer(self, graph, node):
        return list(graph.output_types(node))


@register
class Concat(CopyLowering, _ConcatenatingOp):
    """Channel concatenation (an Interface fed to a cell)."""

    name = "Concat"
    onnx_names = ("Concat",)
    keeps_sign = True
    aliases_inputs = True

    def kernel_context(self, ctx, graph, node, g, training, plan, aux_slot, stats_kind, activation):
        ctx["aliased"] = list(plan.concat_aliased.get(node, [False] * len(ctx.x)))

    def _forward(self, attrs, xs, params, training):
        return _concat(xs), [x.shape for x in xs]

    def _backward(self, attrs, shapes, dy, needs, params):
        return _split_channels(dy, shapes, needs), {}


@register
class Identity(OpDef):
    """y = x (removed by remove_identities; a fused activation makes it an Activation)."""

    name = "Identity"
    onnx_names = ("Identity",)
    elementwise = True
    keeps_sign = True
    passthrough = "always"

    def _forward(self, attrs, xs, params, training):
        return xs[0], None

    def _backward(self, attrs, saved, dy, needs, params):
        return [dy], {}


@register
class Reshape(CopyLowering, OpDef):
    """attrs: shape (per-sample numpy shape, batch kept)."""

    name = "Reshape"
    onnx_names = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
    ini_names = ("Reshape",)
    max_inputs = None
    keeps_sign = True

    def _infer(self, attrs, in_shapes, param_shapes):
        in_shape = _concat_shape(in_shapes)
        shape = tuple(attrs["shape"])
        if int(np.prod(shape)) != int(np.prod(in_shape[1:])):
            raise ValueError(f"cannot reshape {list(in_shape)} to per-sample {list(shape)}")
        return [(in_shape[0],) + shape]

    def _forward(self, attrs, xs, params, training):
        x = _concat(xs)
        return x.reshape((x.shape[0],) + tuple(attrs["shape"])), (x.shape, [a.shape for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        shape, shapes = saved
        return _split_channels(dy.reshape(shape), shapes, needs), {}
