"""`ChannelExtraction`: keep one colour channel (BGR, HSV, YCrCb component or gray)."""
import numpy as np

from n2d2.configurable import check_choice
from n2d2.transform import _color
from n2d2.transform.color_space import _to_three_channels
from n2d2.transform.transformation import Transformation

CHANNELS = ("Blue", "Green", "Red", "Hue", "Saturation", "Value", "Gray", "Y", "Cb", "Cr")
_SOURCE = {"Blue": (None, 0), "Green": (None, 1), "Red": (None, 2),
           "Hue": (_color.bgr_to_hsv, 0), "Saturation": (_color.bgr_to_hsv, 1), "Value": (_color.bgr_to_hsv, 2),
           "Y": (_color.bgr_to_ycrcb, 0), "Cr": (_color.bgr_to_ycrcb, 1), "Cb": (_color.bgr_to_ycrcb, 2)}


class ChannelExtraction(Transformation):
    """Replace the image by one of its channels (the result has one channel).

    ``Blue``, ``Green``, ``Red`` read the stored BGR channels; ``Hue``, ``Saturation``,
    ``Value`` the HSV conversion; ``Y``, ``Cb``, ``Cr`` the YCrCb one; ``Gray`` the luminance
    0.299 R + 0.587 G + 0.114 B. A 1-channel image is treated as gray.
    """

    _arguments = ("channel",)

    def __init__(self, channel: str, **config):
        check_choice("channel", channel, CHANNELS)
        super().__init__({"channel": channel}, **config)

    def _forward(self, x: np.ndarray, rng) -> np.ndarray:
        channel = self._args["channel"]
        if channel == "Gray":
            return x.copy() if x.shape[1] == 1 else _color.gray(_to_three_channels(x))
        x = _to_three_channels(x)
        convert, index = _SOURCE[channel]
        y = convert(x) if convert is not None else x
        return np.array(y[:, index:index + 1])
