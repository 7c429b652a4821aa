"""`Distortion`: random elastic distortion, scaling and rotation (data augmentation)."""
import numpy as np

from n2d2.configurable import Spec
from n2d2.transform._image import gaussian_blur, sample_bilinear, sample_nearest
from n2d2.transform.transformation import Transformation


class Distortion(Transformation):
    """Random elastic distortion (Simard et al. 2003), scaling and rotation, per image.

    Parameters
    ----------
    elastic_gaussian_size : int
        Size of the Gaussian kernel that smooths the random displacement field.
    elastic_sigma : float
        Its standard deviation.
    elastic_scaling : float
        Amplitude of the displacement in pixels (0 disables the elastic distortion).
    scaling : float
        Maximum scaling, in percent (a factor in [1 - s/100, 1 + s/100] drawn per axis).
    rotation : float
        Maximum rotation, in degrees (an angle in [-r, r]).
    ignore_missing_data : bool
        Kept for N2D2 compatibility: image pixels sampled from outside the image are 0 and
        their labels (label maps move by nearest neighbour) -1, ignored, either way.
    """

    _random = True
    _parameters = {
        "elastic_gaussian_size": Spec(int, 15),
        "elastic_scaling": Spec(float, 0.0),
        "elastic_sigma": Spec(float, 6.0),
        "ignore_missing_data": Spec(bool, True),
        "rotation": Spec(float, 0.0),
        "scaling": Spec(float, 0.0),
    }

    def __init__(self, **config):
        super().__init__(None, **config)

    def is_random(self) -> bool:
        cfg = self._config
        return cfg["elastic_scaling"] != 0.0 or cfg["scaling"] != 0.0 or cfg["rotation"] != 0.0

    def _forward_pair(self, x: np.ndarray, labels, rng):
        if not self.is_random():
            return x.copy(), None if labels is None else labels.copy()
        cfg = self._config
        n, _, h, w = x.shape
        ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        # Rotation and scaling about the image centre (output -> source coordinates).
        angle = np.deg2rad(rng.uniform(-cfg["rotation"], cfg["rotation"], n)) if cfg["rotation"] else np.zeros(n)
        s = cfg["scaling"] / 100.0
        sx = 1.0 + (rng.uniform(-s, s, n) if s else np.zeros(n))
        sy = 1.0 + (rng.uniform(-s, s, n) if s else np.zeros(n))
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        dx, dy = xs - cx, ys - cy
        map_x = cx + (cos * dx - sin * dy) / sx[:, None, None]
        map_y = cy + (sin * dx + cos * dy) / sy[:, None, None]
        if cfg["elastic_scaling"]:
            size = cfg["elastic_gaussian_size"] | 1  # odd kernel
            fields = rng.uniform(-1.0, 1.0, (2, n, h, w))
            map_x = map_x + cfg["elastic_scaling"] * gaussian_blur(fields[0], size, cfg["elastic_sigma"])
            map_y = map_y + cfg["elastic_scaling"] * gaussian_blur(fields[1], size, cfg["elastic_sigma"])
        if labels is not None:
            labels = sample_nearest(labels, map_y, map_x, -1)
        return sample_bilinear(x, map_y, map_x, "ConstantBorder", [0.0]), labels
