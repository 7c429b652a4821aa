"""`RandomResizeCrop`: crop a random area and aspect ratio, resize it to a fixed size."""
import math

import numpy as np

from n2d2.configurable import Spec
from n2d2.transform._image import sample_bilinear, sample_nearest
from n2d2.transform.transformation import Transformation, check_size_argument


class RandomResizeCrop(Transformation):
    """Crop a region covering a fraction in [`scale_min`, `scale_max`] of the image's area,
    with an aspect ratio (width / height) drawn log-uniformly in [`ratio_min`, `ratio_max`]
    at a random position, and resize it (bilinear) to `width` x `height`. After 10 failed
    draws the largest centred crop of an admissible ratio is used (as torchvision does).
    Label maps get the same crop, resized by nearest neighbour."""

    _random = True
    _arguments = ("width", "height")
    _parameters = {
        "ratio_max": Spec(float, 1.0),
        "ratio_min": Spec(float, 1.0),
        "scale_max": Spec(float, 1.0),
        "scale_min": Spec(float, 1.0),
    }

    def __init__(self, width: int, height: int, **config):
        width = check_size_argument("width", width)
        height = check_size_argument("height", height)
        super().__init__({"width": width, "height": height}, **config)

    def _crop_box(self, rng, in_h, in_w):
        cfg = self._config
        area = in_h * in_w
        log_lo, log_hi = math.log(cfg["ratio_min"]), math.log(cfg["ratio_max"])
        for _ in range(10):
            target = area * rng.uniform(cfg["scale_min"], cfg["scale_max"])
            ratio = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * ratio)))
            h = int(round(math.sqrt(target / ratio)))
            if 0 < w <= in_w and 0 < h <= in_h:
                return int(rng.integers(0, in_h - h + 1)), int(rng.integers(0, in_w - w + 1)), h, w
        in_ratio = in_w / in_h
        if in_ratio < cfg["ratio_min"]:
            w, h = in_w, int(round(in_w / cfg["ratio_min"]))
        elif in_ratio > cfg["ratio_max"]:
            h, w = in_h, int(round(in_h * cfg["ratio_max"]))
        else:
            w, h = in_w, in_h
        return (in_h - h) // 2, (in_w - w) // 2, h, w

    def _forward_pair(self, x: np.ndarray, labels, rng):
        n, _, in_h, in_w = x.shape
        out_w, out_h = self._args["width"], self._args["height"]
        boxes = np.array([self._crop_box(rng, in_h, in_w) for _ in range(n)], dtype=np.float64)
        y0, x0, h, w = (boxes[:, k, None, None] for k in range(4))
        ys, xs = np.meshgrid(np.arange(out_h, dtype=np.float64), np.arange(out_w, dtype=np.float64), indexing="ij")
        # Half-pixel aligned resize of each crop, clamped inside it (OpenCV INTER_LINEAR).
        map_y = np.clip(y0 + (ys + 0.5) * h / out_h - 0.5, y0, y0 + h - 1)
        map_x = np.clip(x0 + (xs + 0.5) * w / out_w - 0.5, x0, x0 + w - 1)
        if labels is not None:  # the maps stay inside the crop: no -1 needed
            labels = sample_nearest(labels, map_y, map_x, -1)
        return sample_bilinear(x, map_y, map_x, "ReplicateBorder"), labels
