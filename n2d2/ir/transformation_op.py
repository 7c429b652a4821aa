"""The Transformation op: an `n2d2.transform` transformation as a graph node (`n2d2.cells.Transformation`).

attrs: `transformation`, plain data: the transformation's `ir_spec()`, (type name, {parameter:
value}), JSON-serialisable; `n2d2.transform.from_ir_spec` builds the transformation back where the
node runs (its parameters decide the output shape). A live transformation object given at node
creation is converted (`plain_attrs`). No C or CUDA kernel: the backends run the reference
(`n2d2.ops.transformation`) on the arena's views.
"""
import numpy as np

from n2d2.ir.ops import OpDef, register
from n2d2.ops import transformation as ops
from n2d2.settings import global_variables
from n2d2.transform.transformation import Transformation as DataTransformation
from n2d2.transform.transformation import from_ir_spec


@register
class Transformation(OpDef):
    """attrs: transformation (an n2d2.transform transformation's `ir_spec()`); no gradient to parameters."""

    name = "Transformation"

    def plain_attrs(self, attrs):
        t = attrs.get("transformation")
        if isinstance(t, DataTransformation):
            attrs = dict(attrs, transformation=t.ir_spec())
        return attrs

    def _infer(self, attrs, in_shapes, param_shapes):
        # the output shape is what the transformation makes of one zero sample (fixed rng)
        probe = np.zeros((1,) + tuple(in_shapes[0][1:]), dtype=np.float32)
        sample = ops.transformation_forward(probe, from_ir_spec(attrs["transformation"]), np.random.default_rng(0))
        return [(in_shapes[0][0],) + tuple(sample.shape[1:])]

    def _forward(self, attrs, xs, params, training):
        t = from_ir_spec(attrs["transformation"])
        return ops.transformation_forward(xs[0], t, global_variables.rng), xs[0].shape

    def _backward(self, attrs, x_shape, dy, needs, params):
        return [ops.transformation_backward(x_shape, dy) if needs[0] else None], {}
