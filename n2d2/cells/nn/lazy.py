"""`LazyCell`: base of the parameter-free cells, built at their first call.

As upstream, such a cell learns its channel count from its first input and freezes the
input geometry then: later calls must keep X, Y and the total number of channels (the batch
may change). Several inputs (an Interface) are concatenated along channels, as N2D2 does for
every cell but ElemWise. Subclasses describe their op with `_ir_node()`; the op definition
(`n2d2.ir.ops`) concatenates the inputs and applies the cell's activation.
"""
from n2d2.cells.nn.base import NeuralNetworkCell


class LazyCell(NeuralNetworkCell):
    """A cell whose geometry is fixed by its first call."""

    _keep_xy = True  # later calls must keep the input X and Y

    def __init__(self, arguments=None, **config):
        self._input_geometry = None  # (total channels, Y, X) of the first call
        super().__init__(arguments, **config)

    # -- geometry -------------------------------------------------------------------------------
    def _check_input(self, tensors):
        for t in tensors:
            if t.nb_dims() != 4:
                raise ValueError(f"Cell '{self._name}' ({self.get_type()}): input tensors must have 4 dims "
                                 f"(N, C, H, W), got shape {t.shape()}")
        channels = sum(t.dimZ() for t in tensors)
        geometry = (channels, tensors[0].dimY(), tensors[0].dimX())
        if self._input_geometry is None:
            self._build(tensors, channels)
            self._input_geometry = geometry
            return
        expected = self._input_geometry
        if channels != expected[0]:
            raise RuntimeError(f"Cell '{self._name}' ({self.get_type()}): Total number of input dimZ = {channels} "
                               f"(input shapes {[t.shape() for t in tensors]}) differs from the first call's "
                               f"{expected[0]}")
        if self._keep_xy and geometry[1:] != expected[1:]:
            raise RuntimeError(f"Cell '{self._name}' ({self.get_type()}): Unmatching dims: input H, W = "
                               f"{list(geometry[1:])} (shapes {[t.shape() for t in tensors]}), the first call "
                               f"had {list(expected[1:])}")

    def _build(self, tensors, channels):
        """First call: validate the arguments against the input, complete what depends on it."""

    def is_built(self) -> bool:
        return self._input_geometry is not None
