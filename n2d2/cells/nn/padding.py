"""`Padding`: zero-pads (or, with negative values, crops) the spatial borders."""
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.error_handler import WrongInputType
from n2d2.ir.ops import activation_spec
from n2d2.ops import padding as ops


class Padding(LazyCell):
    """Adds `top_pad` rows above, `bot_pad` below, `left_pad` columns left, `right_pad` right."""

    _templated = False
    _arguments = ("top_pad", "bot_pad", "left_pad", "right_pad")
    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, top_pad, bot_pad, left_pad, right_pad, **config):
        pads = {"top_pad": top_pad, "bot_pad": bot_pad, "left_pad": left_pad, "right_pad": right_pad}
        for key, value in pads.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise WrongInputType(key, type(value), ["int"])
        super().__init__(pads, **config)

    def _pads(self):
        a = self._args
        return a["top_pad"], a["bot_pad"], a["left_pad"], a["right_pad"]

    def _build(self, tensors, channels):
        h, w = tensors[0].dimY(), tensors[0].dimX()
        oh, ow = ops.output_hw(h, w, *self._pads())
        if oh < 1 or ow < 1:
            raise ValueError(f"Cell '{self._name}' (Padding): pads {list(self._pads())} leave nothing of the "
                             f"input shape {tensors[0].shape()}")

    def _ir_node(self):
        top, bot, left, right = self._pads()
        return "Padding", {"top": top, "bot": bot, "left": left, "right": right,
                           "activation": activation_spec(self._config["activation"])}, {}
