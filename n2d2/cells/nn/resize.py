"""`Resize`: spatial resizing to outputs_width x outputs_height (bilinear or nearest)."""
from n2d2.cells.nn.base import ACTIVATION_SPEC
from n2d2.cells.nn.lazy import LazyCell
from n2d2.configurable import check_choice
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ir.ops import activation_spec
from n2d2.ops import resize as ops


class Resize(LazyCell):
    """Resizes every channel to [outputs_width, outputs_height].

    Parameters
    ----------
    resize_mode : str
        "Bilinear" (OpenCV / PyTorch align_corners=False), "BilinearTF" (TensorFlow; with
        align_corners, PyTorch align_corners=True) or "NearestNeighbor" (PyTorch 'nearest').
    align_corners : bool
        Only used by BilinearTF.
    """

    _templated = False
    _arguments = ("outputs_width", "outputs_height", "resize_mode", "align_corners")
    _parameters = {"activation": ACTIVATION_SPEC}

    def __init__(self, outputs_width, outputs_height, resize_mode, align_corners=True, **config):
        for key, value in (("outputs_width", outputs_width), ("outputs_height", outputs_height)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise WrongInputType(key, type(value), ["int"])
            if value < 1:
                raise WrongValue(key, value, ["a positive int"])
        check_choice("resize_mode", resize_mode, ops.MODES)
        if not isinstance(align_corners, bool):
            raise WrongInputType("align_corners", type(align_corners), ["bool"])
        super().__init__({"outputs_width": outputs_width, "outputs_height": outputs_height,
                          "resize_mode": resize_mode, "align_corners": align_corners}, **config)

    def _ir_node(self):
        a = self._args
        return "Resize", {"height": a["outputs_height"], "width": a["outputs_width"], "mode": a["resize_mode"],
                          "align_corners": a["align_corners"],
                          "activation": activation_spec(self._config["activation"])}, {}
