"""`ColorSpace`: colour-space conversions (images are stored BGR, as in N2D2/OpenCV)."""
import numpy as np

from n2d2.configurable import check_choice
from n2d2.transform import _color
from n2d2.transform.transformation import Transformation

COLOR_SPACES = ("BGR", "RGB", "HSV", "HLS", "YCrCb", "CIELab", "CIELuv",
                "RGB_to_BGR", "RGB_to_HSV", "RGB_to_HLS", "RGB_to_YCrCb", "RGB_to_CIELab", "RGB_to_CIELuv",
                "HSV_to_BGR", "HSV_to_RGB", "HLS_to_BGR", "HLS_to_RGB", "YCrCb_to_BGR", "YCrCb_to_RGB",
                "CIELab_to_BGR", "CIELab_to_RGB", "CIELuv_to_BGR", "CIELuv_to_RGB")


def _to_three_channels(x: np.ndarray) -> np.ndarray:
    if x.shape[1] == 3:
        return x
    if x.shape[1] == 1:
        return np.repeat(x, 3, axis=1)
    if x.shape[1] == 4:  # drop alpha
        return x[:, :3]
    raise RuntimeError(f"ColorSpace: cannot convert an image with {x.shape[1]} channels")


def convert(x: np.ndarray, color_space: str) -> np.ndarray:
    """Convert a (N, C, H, W) batch. Plain names convert from BGR (gray input is expanded)."""
    if "_to_" in color_space:
        src, dst = color_space.split("_to_")
    else:
        src, dst = "BGR", color_space
    x = _to_three_channels(x)
    # Bring the input to BGR.
    if src == "RGB":
        bgr = _color.swap_rb(x)
    elif src == "BGR":
        bgr = x
    else:
        bgr = _color.TO_BGR[src](x)
    if dst == "BGR":
        return np.array(bgr)
    if dst == "RGB":
        return _color.swap_rb(bgr)
    return _color.FROM_BGR[dst](bgr)


class ColorSpace(Transformation):
    """Convert between colour spaces.

    `color_space` is a target (``BGR``, ``RGB``, ``HSV``, ``HLS``, ``YCrCb``, ``CIELab``,
    ``CIELuv``: converted from the stored BGR; 1-channel images are expanded first) or an
    explicit ``<source>_to_<target>`` conversion such as ``RGB_to_HSV`` or ``HSV_to_BGR``.
    """

    _arguments = ("color_space",)

    def __init__(self, color_space: str, **config):
        check_choice("color_space", color_space, COLOR_SPACES)
        super().__init__({"color_space": color_space}, **config)

    def _forward(self, x: np.ndarray, rng) -> np.ndarray:
        return convert(x, self._args["color_space"])
