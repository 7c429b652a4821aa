"""`PadCrop`: centre pad or crop to a size."""
import numpy as np

from n2d2.configurable import Spec
from n2d2.transform._image import BORDER_TYPES, pad
from n2d2.transform.transformation import Transformation, check_size_argument


def centre_pad_amounts(in_size: int, out_size: int):
    """(before, after) amounts N2D2 uses: `before = ceil(d / 2)`, negative amounts crop."""
    d = out_size - in_size
    before = -((-d) // 2)  # ceil(d / 2) for any sign
    return before, d - before


class PadCrop(Transformation):
    """Pad or crop, centred, to `width` x `height`.

    Parameters
    ----------
    width, height : int
        Target size (added to the image's size when `additive_wh` is True).
    border_type : str
        How padding is filled: ``ConstantBorder`` (with `border_value`), ``ReplicateBorder``
        (aaa|abc|ccc), ``ReflectBorder`` (cba|abc|cba), ``WrapBorder`` (abc|abc|abc),
        ``MinusOneReflectBorder`` (cb|abc|ba), ``MeanBorder`` (the image's mean colour).
    border_value : list of float
        Per-channel value for ``ConstantBorder`` (missing channels are 0).

    Label maps are cropped alike and padded with -1 (ignored), whatever `border_type` says.
    """

    _arguments = ("width", "height")
    _parameters = {
        "additive_wh": Spec(bool, False),
        "border_type": Spec(str, "MinusOneReflectBorder", choices=BORDER_TYPES),
        "border_value": Spec(list, list),
    }

    def __init__(self, width: int, height: int, **config):
        width = check_size_argument("width", width, allow_zero=True)
        height = check_size_argument("height", height, allow_zero=True)
        super().__init__({"width": width, "height": height}, **config)

    def output_size(self, in_h: int, in_w: int):
        if self._config["additive_wh"]:
            return in_h + self._args["height"], in_w + self._args["width"]
        return self._args["height"], self._args["width"]

    def _forward_pair(self, x: np.ndarray, labels, rng):
        out_h, out_w = self.output_size(x.shape[2], x.shape[3])
        top, bottom = centre_pad_amounts(x.shape[2], out_h)
        left, right = centre_pad_amounts(x.shape[3], out_w)
        x = pad(x, top, bottom, left, right, self._config["border_type"], self._config["border_value"]).copy()
        if labels is not None:  # padded label pixels are -1 (ignored) whatever the border type
            labels = pad(labels, top, bottom, left, right, "ConstantBorder", [-1]).copy()
        return x, labels
