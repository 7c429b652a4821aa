"""`Transformation` (cell): applies an `n2d2.transform` transformation inside a network.

Upstream's cell takes a `perm` list and never stores the transformation (a [quirk] that makes it
unusable); this is the documented intent, `Transformation(transformation)`. As N2D2's cell, each
sample is transformed on every call (whatever the mode and the transformation's `apply_to`) and
nothing is back-propagated to the input. The IR node stores the transformation as plain data
(`ir_spec()`): what runs is a transformation rebuilt from it (`n2d2.transform.from_ir_spec`), so
state a transformation keeps in other attributes is not seen.
"""
import numpy as np

from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongInputType
from n2d2.ir import transformation_op  # noqa: F401 (registers the Transformation op)
from n2d2.ops import transformation as ops
from n2d2.transform.transformation import Transformation as DataTransformation
from n2d2.transform.transformation import from_ir_spec


class Transformation(LazyCell):
    """Parameters
    ----------
    transformation : n2d2.transform.Transformation
        Applied to each sample of the input batch (one input only).
    """

    _templated = False
    _arguments = ("transformation",)
    _parameters = {}

    def __init__(self, transformation, **config):
        if not isinstance(transformation, DataTransformation):
            raise WrongInputType("transformation", type(transformation), ["n2d2.transform.Transformation"])
        super().__init__({"transformation": transformation}, **config)

    def _build(self, tensors, channels):
        if len(tensors) != 1:
            raise ValueError(f"Cell '{self._name}' (Transformation): one input tensor expected, got {len(tensors)} "
                             "(N2D2's TransformationCell has one input)")
        # a transformation that cannot be rebuilt from its plain form, or cannot take this input, fails
        # here, with the cell's name
        transformation = self._args["transformation"]
        try:
            rebuilt = from_ir_spec(transformation.ir_spec())
        except (TypeError, ValueError) as e:
            raise ValueError(f"Cell '{self._name}' (Transformation): {transformation.get_type()} has no plain-data "
                             f"form for the graph: {e}") from None
        probe = np.zeros([1] + tensors[0].shape()[1:], dtype=np.float32)
        try:
            ops.transformation_forward(probe, rebuilt, np.random.default_rng(0))
        except Exception as e:
            raise ValueError(f"Cell '{self._name}' (Transformation): {transformation.get_type()} cannot transform an "
                             f"input of shape {tensors[0].shape()}: {e}") from None

    def _ir_node(self):
        return "Transformation", {"transformation": self._args["transformation"].ir_spec()}, {}
