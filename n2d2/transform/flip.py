"""`Flip`: horizontal / vertical flips, fixed or random (one draw per image, shared by its label map)."""
import numpy as np

from n2d2.configurable import Spec
from n2d2.transform.transformation import Transformation


class Flip(Transformation):
    """Mirror images.

    Parameters
    ----------
    horizontal_flip, vertical_flip : bool
        Always flip left-right / top-bottom.
    random_horizontal_flip, random_vertical_flip : bool
        Flip each image with probability 1/2 (after the fixed flips).
    """

    _parameters = {
        "horizontal_flip": Spec(bool, False),
        "random_horizontal_flip": Spec(bool, False),
        "random_vertical_flip": Spec(bool, False),
        "vertical_flip": Spec(bool, False),
    }

    def __init__(self, **config):
        super().__init__(None, **config)

    def is_random(self) -> bool:
        return self._config["random_horizontal_flip"] or self._config["random_vertical_flip"]

    def _forward_pair(self, x: np.ndarray, labels, rng):
        cfg = self._config
        if cfg["horizontal_flip"]:
            x = x[:, :, :, ::-1]
            labels = None if labels is None else labels[:, :, :, ::-1]
        if cfg["vertical_flip"]:
            x = x[:, :, ::-1, :]
            labels = None if labels is None else labels[:, :, ::-1, :]
        x = np.array(x)  # a fresh contiguous array
        labels = None if labels is None else np.array(labels)
        n = x.shape[0]
        if cfg["random_horizontal_flip"]:
            mask = rng.random(n) < 0.5
            x[mask] = x[mask][:, :, :, ::-1]
            if labels is not None:
                labels[mask] = labels[mask][:, :, :, ::-1]
        if cfg["random_vertical_flip"]:
            mask = rng.random(n) < 0.5
            x[mask] = x[mask][:, :, ::-1, :]
            if labels is not None:
                labels[mask] = labels[mask][:, :, ::-1, :]
        return x, labels
