"""Permutation of N2D2 axes [X, Y, Z, B] applied to NCHW arrays.

N2D2 defines out.dims()[i] = in.dims()[perm[i]] in its [X, Y, Z, B] order; numpy axis j is
N2D2 axis 3 - j, so the numpy permutation is p[j] = 3 - perm[3 - j]
(perm [1, 0, 2, 3] -> numpy (0, 1, 3, 2)). N2D2 does not permute the batch: perm[3] == 3.
"""
import numpy as np

from n2d2.backend import array_module
from n2d2.ir import lowering as low
from n2d2.ir.lowering import Unsupported
from n2d2.ir.ops import OpDef, _concat, _concat_shape, _split_channels, register


def numpy_axes(perm):
    """The numpy transpose axes equivalent to N2D2 `perm`."""
    return tuple(3 - perm[3 - j] for j in range(4))


def inverse_axes(axes):
    inv = [0] * len(axes)
    for j, a in enumerate(axes):
        inv[a] = j
    return tuple(inv)


def transpose_forward(x, perm):
    xp = array_module(x)
    return xp.ascontiguousarray(x.transpose(numpy_axes(perm)))


def transpose_backward(dy, perm):
    xp = array_module(dy)
    return xp.ascontiguousarray(dy.transpose(inverse_axes(numpy_axes(perm))))


# -- the IR op ------------------------------------------------------------
@register
class Transpose(OpDef):
    """attrs: perm (N2D2 axes [X, Y, Z, B])."""

    name = "Transpose"
    onnx_names = ("Transpose",)
    ini_names = ("Transpose",)
    max_inputs = None
    keeps_sign = True

    def _infer(self, attrs, in_shapes, param_shapes):
        axes = numpy_axes(attrs["perm"])
        shape = _concat_shape(in_shapes)
        return [tuple(shape[a] for a in axes)]

    def _forward(self, attrs, xs, params, training):
        return transpose_forward(_concat(xs), attrs["perm"]), [a.shape for a in xs]

    def _backward(self, attrs, shapes, dy, needs, params):
        return _split_channels(transpose_backward(dy, attrs["perm"]), shapes, needs), {}

    # -- lowering --------------------------------------------------------------------------------
    def lower_c(self, graph, node, training):
        ins, outs = low.shapes(graph, node)
        if len(ins) != 1 or len(ins[0]) != 4:
            return Unsupported(f"the Transpose kernel takes one 4-d input, got {[list(s) for s in ins]}")
        axes = numpy_axes(graph.attrs(node)["perm"])
        shape = tuple(ins[0])
        strides = [int(np.prod(shape[a + 1:])) for a in range(4)]
        return dict(IN=shape, OUT=tuple(outs[0]), ISTR=[strides[a] for a in axes], SIZE=int(np.prod(shape)))
