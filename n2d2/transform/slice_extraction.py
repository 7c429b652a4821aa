"""`SliceExtraction`: cut a width x height slice (fixed or random offset, rotation, scaling)."""
import numpy as np

from n2d2.configurable import Spec
from n2d2.transform._image import (
    BORDER_TYPES,
    border_fill,
    border_index,
    restore_dtype,
    sample_bilinear,
    sample_nearest,
)
from n2d2.transform.transformation import Transformation, check_size_argument


class SliceExtraction(Transformation):
    """Extract a `width` x `height` slice whose top-left corner is (`offset_x`, `offset_y`).

    Parameters
    ----------
    width, height : int
        Slice size (0: the image's size).
    offset_x, offset_y : int
        Top-left corner of the slice.
    random_offset_x, random_offset_y : bool
        Draw the offset uniformly so that the slice lies in the image.
    random_rotation : bool
        Rotate the slice about its centre by an angle (degrees) drawn in `random_rotation_range`.
    random_scaling : bool
        Cut a slice `s` times larger (s drawn in `random_scaling_range`) and resize it back to
        `width` x `height`.
    allow_padding : bool
        Allow a slice that extends past the image (filled as `border_type` says); otherwise
        that is a `RuntimeError`.
    border_type, border_value :
        Filling of the outside, as for `PadCrop`.

    Label maps get the same slice (nearest neighbour when rotated or scaled), -1 outside.
    """

    _arguments = ("width", "height")
    _parameters = {
        "allow_padding": Spec(bool, False),
        "border_type": Spec(str, "MinusOneReflectBorder", choices=BORDER_TYPES),
        "border_value": Spec(list, list),
        "offset_x": Spec(int, 0),
        "offset_y": Spec(int, 0),
        "random_offset_x": Spec(bool, False),
        "random_offset_y": Spec(bool, False),
        "random_rotation": Spec(bool, False),
        "random_rotation_range": Spec(list, lambda: [0.0, 360.0]),
        "random_scaling": Spec(bool, False),
        "random_scaling_range": Spec(list, lambda: [0.8, 1.2]),
    }

    def __init__(self, width: int, height: int, **config):
        width = check_size_argument("width", width, allow_zero=True)
        height = check_size_argument("height", height, allow_zero=True)
        super().__init__({"width": width, "height": height}, **config)

    def is_random(self) -> bool:
        c = self._config
        return c["random_offset_x"] or c["random_offset_y"] or c["random_rotation"] or c["random_scaling"]

    @staticmethod
    def _range(values, name):
        if len(values) != 2:
            raise RuntimeError(f"SliceExtraction: {name} must have two values (min, max), got {values}")
        return values

    def _forward_pair(self, x: np.ndarray, labels, rng):
        cfg = self._config
        n, c, in_h, in_w = x.shape
        if cfg["random_scaling"]:
            lo, hi = self._range(cfg["random_scaling_range"], "random_scaling_range")
            scale = rng.uniform(lo, hi, n)
        else:
            scale = np.ones(n)
        out_w = self._args["width"] or in_w
        out_h = self._args["height"] or in_h
        slice_w = np.rint(out_w * scale).astype(np.int64)
        slice_h = np.rint(out_h * scale).astype(np.int64)
        ox = self._offsets(rng, cfg["random_offset_x"], cfg["offset_x"], in_w, slice_w)
        oy = self._offsets(rng, cfg["random_offset_y"], cfg["offset_y"], in_h, slice_h)
        if not cfg["allow_padding"] and (np.any(ox + slice_w > in_w) or np.any(oy + slice_h > in_h)):
            raise RuntimeError(f"SliceExtraction: cannot extract a {int(slice_w.max())}x{int(slice_h.max())} slice "
                               f"at offset ({int(ox.max())}, {int(oy.max())}) from a {in_w}x{in_h} image when "
                               f"padding is not allowed")
        if cfg["random_rotation"]:
            lo, hi = self._range(cfg["random_rotation_range"], "random_rotation_range")
            angle = np.deg2rad(rng.uniform(lo, hi, n))
        else:
            angle = np.zeros(n)
        if not cfg["random_rotation"] and not cfg["random_scaling"]:
            if labels is not None:  # label pixels outside the image are -1 (ignored)
                labels = self._cut(labels, oy, ox, out_h, out_w, "ConstantBorder", [-1])
            return self._cut(x, oy, ox, out_h, out_w, cfg["border_type"], cfg["border_value"]), labels
        # Rotated / scaled slice: sample it (output pixel -> source, about the slice centre).
        ys, xs = np.meshgrid(np.arange(out_h, dtype=np.float64), np.arange(out_w, dtype=np.float64), indexing="ij")
        u = (xs - (out_w - 1) / 2.0) * (slice_w / out_w)[:, None, None]
        v = (ys - (out_h - 1) / 2.0) * (slice_h / out_h)[:, None, None]
        cx = (ox + (slice_w - 1) / 2.0)[:, None, None]
        cy = (oy + (slice_h - 1) / 2.0)[:, None, None]
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        map_y, map_x = cy + sin * u + cos * v, cx + cos * u - sin * v
        if labels is not None:
            labels = sample_nearest(labels, map_y, map_x, -1)
        return sample_bilinear(x, map_y, map_x, cfg["border_type"], cfg["border_value"]), labels

    @staticmethod
    def _offsets(rng, random, fixed, size, slice_size):
        if not random:
            return np.full(slice_size.shape, fixed, dtype=np.int64)
        room = np.maximum(size - slice_size, 0)
        return np.floor(rng.random(slice_size.shape) * (room + 1)).astype(np.int64)

    @staticmethod
    def _cut(x, oy, ox, out_h, out_w, border_type, border_value):
        """Integer-offset slices, gathered at once; outside pixels follow the border type."""
        n, c, in_h, in_w = x.shape
        rows = oy[:, None] + np.arange(out_h)  # (N, out_h)
        cols = ox[:, None] + np.arange(out_w)
        inside = ((rows[:, :, None] >= 0) & (rows[:, :, None] < in_h)
                  & (cols[:, None, :] >= 0) & (cols[:, None, :] < in_w))
        r = border_index(rows, in_h, border_type)
        q = border_index(cols, in_w, border_type)
        out = x[np.arange(n)[:, None, None], :, r[:, :, None], q[:, None, :]]  # (N, out_h, out_w, C)
        if border_type in ("ConstantBorder", "MeanBorder") and not inside.all():
            fill = restore_dtype(border_fill(x, border_type, border_value), x.dtype)
            out = np.where(inside[..., None], out, fill[:, None, None, :])
        return np.ascontiguousarray(np.moveaxis(out, 3, 1))
