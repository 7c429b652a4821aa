"""The Transformation op: an `n2d2.transform` transformation as a graph node (`n2d2.cells.Transformation`).

attrs: `transformation` (the object; its parameters decide the output shape). No C or CUDA
kernel: the backends run the reference (`n2d2.ops.transformation`) on the arena's views.
"""
import numpy as np

from n2d2.ir.ops import OpDef, register
from n2d2.ops import transformation as ops
from n2d2.settings import global_variables


@register
class Transformation(OpDef):
    """attrs: transformation (an n2d2.transform object); no gradient to parameters."""

    name = "Transformation"

    def _infer(self, attrs, in_shapes, param_shapes):
        # the output shape is what the transformation makes of one zero sample (fixed rng)
        probe = np.zeros((1,) + tuple(in_shapes[0][1:]), dtype=np.float32)
        sample = ops.transformation_forward(probe, attrs["transformation"], np.random.default_rng(0))
        return [(in_shapes[0][0],) + tuple(sample.shape[1:])]

    def _forward(self, attrs, xs, params, training):
        return ops.transformation_forward(xs[0], attrs["transformation"], global_variables.rng), xs[0].shape

    def _backward(self, attrs, x_shape, dy, needs, params):
        return [ops.transformation_backward(x_shape, dy) if needs[0] else None], {}
