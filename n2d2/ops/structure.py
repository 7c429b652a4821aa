"""Structural IR ops: graph inputs, channel concatenation, identity, reshape."""
import numpy as np

from n2d2.ir.lowering import CopyLowering
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _ConcatenatingOp, _split_channels, register
from n2d2.quantization.integer import QuantizationError


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
    per_sample = True
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
    per_sample = True
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
    per_sample = True
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


# -- integer forms (post-training quantization, n2d2.quantization) -------------------------------------
class _ConcatInteger:
    """Integer channel concatenation: every input keeps its own per-channel grid (T), so the
    output's thresholds are the inputs' concatenated; the inputs must share signedness (N2D2
    refuses mixed signed / unsigned inputs too)."""

    kernel = "Concat"

    def quantize(self, q, node):

        if q.graph.attrs(node).get("activation") is not None:
            raise QuantizationError(f"node '{node}' (Concat): a fused activation has no integer form here")
        nb = len(q.graph.inputs_of(node))
        ins = [q.input_q(node, k) for k in range(nb)]
        if len({t.signed for t in ins}) > 1:
            raise QuantizationError(f"node '{node}' (Concat): mixes signed and unsigned inputs (as N2D2, "
                                    "quantize with no_unsigned=True)")
        shapes = [t.shape[1] for t in q.graph.input_types(node)]
        T = np.concatenate([np.broadcast_to(t.T, (c,)) for t, c in zip(ins, shapes)])
        return {"signed": ins[0].signed, "Q": ins[0].Q, "T": T}

    def forward(self, qnode, xs, nb_bits):
        return np.concatenate([np.asarray(x, dtype=np.int64) for x in xs], axis=1)


class _ReshapeInteger:
    """Integer reshape (a copy): a flatten of (C, H, W) to C*H*W channels repeats each channel's
    threshold H*W times; any other reshape needs one threshold for the whole tensor."""

    kernel = "Reshape"

    def quantize(self, q, node):

        if len(q.graph.inputs_of(node)) != 1 or q.graph.attrs(node).get("activation") is not None:
            raise QuantizationError(f"node '{node}' (Reshape): only a single-input reshape without activation has "
                                    "an integer form")
        tin = q.input_q(node, 0)
        in_shape = tuple(int(v) for v in q.graph.input_types(node)[0].shape[1:])
        out_shape = tuple(int(v) for v in q.graph.output_types(node)[0].shape[1:])
        out_c = out_shape[0] if out_shape else 1
        T = np.broadcast_to(tin.T, (in_shape[0],))
        if np.all(T == T[0]):
            T = np.full(out_c, T[0])
        elif out_c == int(np.prod(in_shape)) and int(np.prod(out_shape)) == out_c:
            T = np.repeat(T, int(np.prod(in_shape[1:])))
        else:
            raise QuantizationError(f"node '{node}' (Reshape): {list(in_shape)} -> {list(out_shape)} mixes channels "
                                    "with different thresholds (only a flatten can)")
        return {"signed": tin.signed, "Q": tin.Q, "T": T, "attrs": {"shape": tuple(q.graph.attrs(node)["shape"])}}

    def forward(self, qnode, xs, nb_bits):
        x = np.asarray(xs[0], dtype=np.int64)
        return x.reshape((x.shape[0],) + tuple(qnode["attrs"]["shape"])).copy()


Concat.integer = _ConcatInteger()
Concat.quantized = Concat.integer.kernel
Reshape.integer = _ReshapeInteger()
Reshape.quantized = Reshape.integer.kernel
