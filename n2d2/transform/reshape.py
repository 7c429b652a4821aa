"""`Reshape`: reinterpret an image's values as another rows x cols x channels matrix."""
import numpy as np

from n2d2.transform.transformation import Transformation, check_size_argument


class Reshape(Transformation):
    """Reshape like OpenCV's `Mat::reshape(nb_channels, nb_rows)` (values in row-major,
    channel-interleaved order); `nb_cols` and `nb_channels` of 0 mean "whatever fits" and
    "keep the channel count". `nb_cols`, when given, is checked."""

    _arguments = ("nb_rows", "nb_cols", "nb_channels")

    def __init__(self, nb_rows: int, nb_cols: int = 0, nb_channels: int = 0, **config):
        nb_rows = check_size_argument("nb_rows", nb_rows)
        nb_cols = check_size_argument("nb_cols", nb_cols, allow_zero=True)
        nb_channels = check_size_argument("nb_channels", nb_channels, allow_zero=True)
        super().__init__({"nb_rows": nb_rows, "nb_cols": nb_cols, "nb_channels": nb_channels}, **config)

    def _forward_pair(self, x: np.ndarray, labels, rng):
        if labels is not None:
            raise RuntimeError("Reshape: cannot be applied to a stimulus with a pixel-wise label map "
                               "(its pixels would not stay pixels); use it without composite stimuli")
        return self._forward(x, rng), None

    def _forward(self, x: np.ndarray, rng) -> np.ndarray:
        n, c, h, w = x.shape
        rows, cols, channels = self._args["nb_rows"], self._args["nb_cols"], self._args["nb_channels"] or c
        total = c * h * w
        if total % (rows * channels):
            raise RuntimeError(f"Reshape: {h}x{w}x{c} values cannot be reshaped to {rows} rows of "
                               f"{channels} channel(s)")
        new_cols = total // (rows * channels)
        if cols and cols != new_cols:
            raise RuntimeError(f"Reshape: the result has {new_cols} columns, {cols} were expected")
        hwc = np.transpose(x, (0, 2, 3, 1)).reshape(n, rows, new_cols, channels)
        return np.ascontiguousarray(np.transpose(hwc, (0, 3, 1, 2)))
