"""`Rescale`: resize images (bilinear), optionally keeping the aspect ratio."""
import numpy as np

from n2d2.configurable import Spec
from n2d2.transform._image import resize_bilinear, resize_nearest
from n2d2.transform.transformation import Transformation, check_size_argument


class Rescale(Transformation):
    """Resize to `width` x `height` with bilinear interpolation (OpenCV `INTER_LINEAR`).

    Parameters
    ----------
    width, height : int
        Target size.
    keep_aspect_ratio : bool
        Keep the image's aspect ratio: the result is no larger than the target
        (`resize_to_fit=True`) or covers it (`resize_to_fit=False`); follow with a `PadCrop`
        to get exactly `width` x `height`.
    resize_to_fit : bool
        See `keep_aspect_ratio`.

    Label maps are resized by nearest neighbour (OpenCV `INTER_NEAREST`).
    """

    _arguments = ("width", "height")
    _parameters = {
        "keep_aspect_ratio": Spec(bool, False),
        "resize_to_fit": Spec(bool, True),
    }

    def __init__(self, width: int, height: int, **config):
        width = check_size_argument("width", width)
        height = check_size_argument("height", height)
        super().__init__({"width": width, "height": height}, **config)

    def output_size(self, in_h: int, in_w: int):
        """(height, width) of the result for an input of (in_h, in_w)."""
        width, height = self._args["width"], self._args["height"]
        if not self._config["keep_aspect_ratio"]:
            return height, width
        ratio_x, ratio_y = width / in_w, height / in_h
        ratio = min(ratio_x, ratio_y) if self._config["resize_to_fit"] else max(ratio_x, ratio_y)
        return max(1, int(round(in_h * ratio))), max(1, int(round(in_w * ratio)))

    def _forward_pair(self, x: np.ndarray, labels, rng):
        out_h, out_w = self.output_size(x.shape[2], x.shape[3])
        labels = None if labels is None else resize_nearest(labels, out_h, out_w)
        return resize_bilinear(x, out_h, out_w), labels
