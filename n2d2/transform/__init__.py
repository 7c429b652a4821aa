"""Data transformations (`n2d2.transform`): what a `DataProvider` applies to stimuli.

Images are numpy arrays, channels first ((C, H, W), or (N, C, H, W) batches), colour
channels in BGR order as N2D2 stores them. `provider.add_transformation(t)` applies `t` once
per stimulus (cached); `provider.add_on_the_fly_transformation(t)` at every read. Each
transformation can also be used alone: `t.apply(image)` or `t.apply_batch(batch)`.
`t.ir_spec()` is its plain-data form (what a graph stores), `from_ir_spec(spec)` builds it back.
"""
from n2d2.transform.channel_extraction import ChannelExtraction
from n2d2.transform.color_space import ColorSpace
from n2d2.transform.distortion import Distortion
from n2d2.transform.flip import Flip
from n2d2.transform.padcrop import PadCrop
from n2d2.transform.random_resize_crop import RandomResizeCrop
from n2d2.transform.range_affine import RangeAffine
from n2d2.transform.rescale import Rescale
from n2d2.transform.reshape import Reshape
from n2d2.transform.slice_extraction import SliceExtraction
from n2d2.transform.transformation import APPLY_TO, Composite, Transformation, from_ir_spec

__all__ = ["Transformation", "Composite", "Rescale", "PadCrop", "Flip", "Distortion", "ColorSpace",
           "RangeAffine", "ChannelExtraction", "Reshape", "SliceExtraction", "RandomResizeCrop", "APPLY_TO",
           "from_ir_spec"]
