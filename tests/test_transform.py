"""Transformations (`n2d2.transform`): parameters, printing, apply_to, and numerics on small arrays."""
import colorsys

import numpy as np
import pytest
import torch
from PIL import Image

import n2d2
from n2d2.error_handler import IsEmptyError, WrongInputType, WrongValue
from n2d2.transform import (
    APPLY_TO,
    ChannelExtraction,
    ColorSpace,
    Composite,
    Distortion,
    Flip,
    PadCrop,
    RandomResizeCrop,
    RangeAffine,
    Rescale,
    Reshape,
    SliceExtraction,
    Transformation,
)
from tests.conftest import rel_err


def _images(shape, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape).astype(np.uint8)
    return rng.random(shape).astype(dtype)


class _FixedRng:
    """Stands in for a Generator: `uniform` always returns the top of the range."""

    def uniform(self, lo, hi, size=None):
        return np.full(size, hi, dtype=np.float64) if size is not None else hi

    def random(self, size=None):
        return np.zeros(size)


# -- base class, apply_to, printing ---------------------------------------------------------------
def test_transformation_is_abstract():
    with pytest.raises(TypeError):
        Transformation()


@pytest.mark.parametrize("mask", list(APPLY_TO))
def test_apply_to_values_and_printing(mask):
    t = Rescale(4, 4, apply_to=mask)
    assert t.get_apply_set() == mask
    text = str(t)
    if mask == "All":
        assert "apply_to" not in text
    else:
        assert text.endswith(f"[apply_to=StimuliSetMask.{mask}]")
    assert t.applies_to("Learn") == (mask in ("LearnOnly", "NoValidation", "NoTest", "All"))
    assert t.applies_to("Test") == (mask in ("TestOnly", "NoLearn", "NoValidation", "All"))


def test_apply_to_errors():
    with pytest.raises(WrongInputType):
        Flip(apply_to=1)
    with pytest.raises(WrongValue):
        Flip(apply_to="Learn")


def test_printing():
    assert str(Rescale(32, 32)) == "Rescale(width=32, height=32 | keep_aspect_ratio=False, resize_to_fit=True)"
    assert str(PadCrop(10, 12, border_type="ConstantBorder", border_value=[1.0])) == (
        "PadCrop(width=10, height=12 | additive_wh=False, border_type=ConstantBorder, border_value=[1.0])")
    assert str(Flip(horizontal_flip=True, apply_to="LearnOnly")) == (
        "Flip(horizontal_flip=True, random_horizontal_flip=False, random_vertical_flip=False, "
        "vertical_flip=False)[apply_to=StimuliSetMask.LearnOnly]")
    assert str(ColorSpace("RGB")) == "ColorSpace(color_space=RGB)"
    assert str(ChannelExtraction("Gray")) == "ChannelExtraction(channel=Gray)"
    assert str(RangeAffine("Minus", [0.5], "Divides", [0.25])) == (
        "RangeAffine(first_operator=Minus, first_value=[0.5], second_operator=Divides, second_value=[0.25]"
        " | truncate=False)")
    c = Composite([Rescale(2, 2), Flip()])
    assert str(c) == "Composite(\n\t" + str(Rescale(2, 2)) + "\n\t" + str(Flip()) + "\n)"
    n2d2.global_variables.verbosity = n2d2.global_variables.Verbosity.short
    assert str(Rescale(3, 4)) == "Rescale(width=3, height=4)"
    n2d2.global_variables.verbosity = n2d2.global_variables.Verbosity.graph_only
    assert str(Rescale(3, 4, apply_to="TestOnly")) == "Rescale[apply_to=StimuliSetMask.TestOnly]"


def test_parameters_round_trip():
    t = PadCrop(10, 12, additive_wh=True, border_type="WrapBorder", border_value=[1, 2])
    assert (t.get_parameter("width"), t.height, t.additive_wh, t.border_type) == (10, 12, True, "WrapBorder")
    assert t.border_value == [1.0, 2.0]
    d = Distortion(elastic_gaussian_size=21, elastic_sigma=6.0, elastic_scaling=36.0, scaling=10, rotation=10.0)
    assert (d.elastic_gaussian_size, d.elastic_sigma, d.elastic_scaling, d.scaling, d.rotation) == (21, 6.0, 36.0,
                                                                                                    10.0, 10.0)
    assert Rescale(5, 6, keep_aspect_ratio=True).keep_aspect_ratio is True
    s = SliceExtraction(4, 5, offset_x=1, random_rotation=True, random_rotation_range=[-10, 10])
    assert (s.width, s.height, s.offset_x, s.random_rotation, s.random_rotation_range) == (4, 5, 1, True,
                                                                                          [-10.0, 10.0])
    r = RandomResizeCrop(8, 9, scale_min=0.5, ratio_max=2.0)
    assert (r.width, r.height, r.scale_min, r.scale_max, r.ratio_max) == (8, 9, 0.5, 1.0, 2.0)
    assert Flip(random_vertical_flip=True).random_vertical_flip is True
    assert ColorSpace("HSV").get_parameter("color_space") == "HSV"
    assert ChannelExtraction("Red").channel == "Red"
    a = RangeAffine("Plus", 2.0, truncate=True)
    assert (a.first_operator, a.first_value, a.second_operator, a.second_value, a.truncate) == (
        "Plus", 2.0, "Plus", [0.0], True)
    with pytest.raises(RuntimeError):
        t.width = 3  # constructor arguments are read-only
    t.border_type = "ReplicateBorder"
    assert t.border_type == "ReplicateBorder"


def test_argument_errors():
    with pytest.raises(WrongInputType):
        Rescale(3.0, 4)
    with pytest.raises(WrongInputType):
        PadCrop(3, 4, additive_wh=1)
    with pytest.raises(WrongValue):
        PadCrop(3, 4, border_type="Nope")
    with pytest.raises(WrongValue):
        ColorSpace("XYZ")
    with pytest.raises(WrongValue):  # enum-like: a non-string is a wrong value, as upstream
        ColorSpace(3)
    with pytest.raises(WrongValue):
        ChannelExtraction(1)
    with pytest.raises(WrongValue):
        RangeAffine(1, 2.0)
    with pytest.raises(WrongValue):
        PadCrop(3, 4, border_type=1)
    with pytest.raises(WrongValue):
        ChannelExtraction("Alpha")
    with pytest.raises(WrongValue):
        RangeAffine("Power", 2.0)
    with pytest.raises(WrongInputType):
        RangeAffine("Plus", "2")
    with pytest.raises(WrongInputType):
        Composite(Rescale(2, 2))
    with pytest.raises(IsEmptyError):
        Composite([])
    with pytest.raises(WrongInputType):
        Composite([Rescale(2, 2), "Flip"])


# -- Rescale ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_hw,out_hw", [((7, 9), (11, 13)), ((28, 28), (32, 32)), ((16, 20), (5, 7)),
                                          ((9, 9), (9, 4)), ((1, 5), (3, 10))])
def test_rescale_matches_torch_bilinear(in_hw, out_hw):
    x = _images((3, 2) + in_hw, np.float32)
    y = Rescale(out_hw[1], out_hw[0]).apply_batch(x)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x), size=out_hw, mode="bilinear",
                                          align_corners=False).numpy()
    assert y.shape == ref.shape and y.dtype == np.float32
    assert rel_err(y, ref) < 1e-5


def test_rescale_matches_pillow_when_enlarging():
    a = _images((7, 9), np.float32)
    ours = Rescale(20, 15).apply(a)
    pil = np.asarray(Image.fromarray(a, mode="F").resize((20, 15), Image.BILINEAR))
    assert ours.shape == (15, 20)
    assert np.abs(ours - pil).max() < 1e-5


def test_rescale_uint8_rounds_and_float64_kept():
    x = _images((4, 1, 28, 28), np.uint8)
    y = Rescale(32, 32).apply_batch(x)
    ref = torch.nn.functional.interpolate(torch.from_numpy(x.astype(np.float64)), size=(32, 32),
                                          mode="bilinear", align_corners=False).numpy()
    assert y.dtype == np.uint8
    assert np.abs(y.astype(np.float64) - ref).max() <= 0.5 + 1e-6
    assert Rescale(3, 3).apply_batch(x.astype(np.float64)).dtype == np.float64


def test_rescale_keep_aspect_ratio():
    x = np.zeros((1, 1, 20, 40), np.float32)
    assert Rescale(30, 30, keep_aspect_ratio=True).apply_batch(x).shape == (1, 1, 15, 30)
    assert Rescale(30, 30, keep_aspect_ratio=True, resize_to_fit=False).apply_batch(x).shape == (1, 1, 30, 60)
    assert Rescale(30, 30).apply_batch(x).shape == (1, 1, 30, 30)


# -- PadCrop ------------------------------------------------------------------------------------------
_NP_MODES = {"ReplicateBorder": "edge", "ReflectBorder": "symmetric", "WrapBorder": "wrap",
             "MinusOneReflectBorder": "reflect"}


@pytest.mark.parametrize("border", list(_NP_MODES))
def test_padcrop_pad_exact(border):
    x = _images((2, 3, 5, 6), np.uint8)
    y = PadCrop(9, 8, border_type=border).apply_batch(x)
    # N2D2 puts ceil(d/2) before: 2 above, 1 below; 2 left, 1 right.
    ref = np.pad(x, ((0, 0), (0, 0), (2, 1), (2, 1)), mode=_NP_MODES[border])
    assert y.dtype == np.uint8
    np.testing.assert_array_equal(y, ref)


def test_padcrop_constant_mean_crop_additive():
    x = _images((1, 2, 4, 4), np.float32)
    y = PadCrop(6, 5, border_type="ConstantBorder", border_value=[7.0, 9.0]).apply_batch(x)
    assert y.shape == (1, 2, 5, 6)
    np.testing.assert_array_equal(y[0, 0, 1:5, 1:5], x[0, 0])
    assert (y[0, 0, 0] == 7.0).all() and (y[0, 1, :, 5] == 9.0).all()
    m = PadCrop(6, 4, border_type="MeanBorder").apply_batch(x)
    np.testing.assert_allclose(m[0, :, 0, 0], x[0].mean(axis=(1, 2)), rtol=1e-6)
    x = _images((1, 1, 7, 8), np.float32)
    np.testing.assert_array_equal(PadCrop(5, 4).apply_batch(x), x[:, :, 1:5, 1:6])  # crop drops 1 before
    np.testing.assert_array_equal(PadCrop(0, 0, additive_wh=True).apply_batch(x), x)
    assert PadCrop(2, 4, additive_wh=True).apply_batch(x).shape == (1, 1, 11, 10)
    mixed = PadCrop(10, 5, border_type="ReplicateBorder").apply_batch(x)
    np.testing.assert_array_equal(mixed, np.pad(x[:, :, 1:6], ((0, 0), (0, 0), (0, 0), (1, 1)), mode="edge"))


# -- Flip ----------------------------------------------------------------------------------------------
def test_flip_fixed_exact():
    x = _images((3, 2, 4, 5), np.uint8)
    np.testing.assert_array_equal(Flip(horizontal_flip=True).apply_batch(x), x[:, :, :, ::-1])
    np.testing.assert_array_equal(Flip(vertical_flip=True).apply_batch(x), x[:, :, ::-1])
    np.testing.assert_array_equal(Flip(horizontal_flip=True, vertical_flip=True).apply_batch(x), x[:, :, ::-1, ::-1])
    np.testing.assert_array_equal(Flip().apply_batch(x), x)
    assert not Flip(horizontal_flip=True).is_random()


def test_flip_random_per_image_and_reproducible():
    x = _images((64, 1, 3, 4), np.float32)
    t = Flip(random_horizontal_flip=True)
    assert t.is_random()
    y = t.apply_batch(x, np.random.default_rng(5))
    flipped = np.array([np.array_equal(y[i], x[i, :, :, ::-1]) for i in range(64)])
    kept = np.array([np.array_equal(y[i], x[i]) for i in range(64)])
    assert (flipped | kept).all() and 10 < flipped.sum() < 54
    np.testing.assert_array_equal(y, t.apply_batch(x, np.random.default_rng(5)))
    assert not np.array_equal(y, t.apply_batch(x, np.random.default_rng(6)))


# -- Distortion ----------------------------------------------------------------------------------------
def test_distortion_identity_and_rotation():
    x = _images((2, 1, 7, 7), np.float32)
    np.testing.assert_array_equal(Distortion().apply_batch(x), x)
    # A 90 degree rotation of a square image about its centre is an exact pixel permutation.
    y = Distortion(rotation=90.0).apply_batch(x, _FixedRng())
    np.testing.assert_allclose(y[:, 0], np.rot90(x[:, 0], 1, axes=(1, 2)), atol=1e-6)


def test_distortion_random_elastic():
    x = _images((4, 1, 16, 16), np.uint8)
    t = Distortion(elastic_gaussian_size=5, elastic_sigma=2.0, elastic_scaling=2.0, scaling=5.0, rotation=5.0)
    y = t.apply_batch(x, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == np.uint8
    np.testing.assert_array_equal(y, t.apply_batch(x, np.random.default_rng(1)))
    assert not np.array_equal(y, t.apply_batch(x, np.random.default_rng(2)))
    assert not np.array_equal(y, x)
    # A constant image stays constant inside (only border pixels can see the zero outside).
    c = np.full((1, 1, 16, 16), 200, np.uint8)
    small = Distortion(elastic_gaussian_size=5, elastic_sigma=2.0, elastic_scaling=0.5).apply_batch(
        c, np.random.default_rng(3))
    assert (small[0, 0, 3:-3, 3:-3] == 200).all()


def test_gaussian_kernel_matches_opencv_formula():
    from n2d2.transform._image import gaussian_blur, gaussian_kernel

    k = gaussian_kernel(5, 1.5)
    t = np.arange(5) - 2.0
    ref = np.exp(-t * t / (2 * 1.5 ** 2))
    np.testing.assert_allclose(k, ref / ref.sum())
    f = _images((1, 9, 9), np.float64)
    blurred = gaussian_blur(f, 5, 1.5)
    padded = np.pad(f[0], 2, mode="reflect")  # OpenCV's default border = numpy 'reflect'
    ref2 = np.array([[np.sum(np.outer(k, k) * padded[i:i + 5, j:j + 5]) for j in range(9)] for i in range(9)])
    np.testing.assert_allclose(blurred[0], ref2, rtol=1e-12)


# -- ColorSpace / ChannelExtraction ----------------------------------------------------------------------
def test_colorspace_hsv_hls_match_colorsys():
    bgr = _images((1, 3, 4, 5), np.float64)
    hsv = ColorSpace("HSV").apply_batch(bgr)
    hls = ColorSpace("HLS").apply_batch(bgr)
    for i in range(4):
        for j in range(5):
            b, g, r = bgr[0, :, i, j]
            h, s, v = colorsys.rgb_to_hsv(r, g, b)
            np.testing.assert_allclose(hsv[0, :, i, j], [h * 360, s, v], atol=1e-9)
            h, lum, s = colorsys.rgb_to_hls(r, g, b)
            np.testing.assert_allclose(hls[0, :, i, j], [h * 360, lum, s], atol=1e-9)


@pytest.mark.parametrize("space", ["HSV", "HLS", "YCrCb", "CIELab", "CIELuv"])
def test_colorspace_round_trips(space):
    bgr = _images((2, 3, 4, 4), np.float32)
    tol = 5e-4 if space == "YCrCb" else 2e-5  # OpenCV's YCrCb coefficients are rounded to 3 digits
    back = ColorSpace(f"{space}_to_BGR").apply_batch(ColorSpace(space).apply_batch(bgr))
    np.testing.assert_allclose(back, bgr, atol=tol)
    rgb = ColorSpace(f"{space}_to_RGB").apply_batch(ColorSpace(space).apply_batch(bgr))
    np.testing.assert_allclose(rgb, bgr[:, ::-1], atol=tol)
    b8 = (_images((2, 3, 4, 4), np.uint8) // 2 + 100).astype(np.uint8)  # dark colours lose precision in 8 bits
    conv = ColorSpace(space).apply_batch(b8)
    assert conv.dtype == np.uint8
    back8 = ColorSpace(f"{space}_to_BGR").apply_batch(conv)
    assert np.abs(back8.astype(int) - b8).max() <= 6  # 8-bit quantisation of the intermediate space


def test_colorspace_known_values():
    red = np.zeros((1, 3, 1, 1), np.float32)
    red[0, 2] = 1.0  # BGR
    lab = ColorSpace("CIELab").apply_batch(red)[:, :, 0, 0]
    np.testing.assert_allclose(lab[0], [53.24, 80.09, 67.20], atol=0.05)
    luv = ColorSpace("CIELuv").apply_batch(red)[:, :, 0, 0]
    np.testing.assert_allclose(luv[0], [53.24, 175.01, 37.76], atol=0.1)
    red8 = (red * 255).astype(np.uint8)
    np.testing.assert_array_equal(ColorSpace("HSV").apply_batch(red8)[0, :, 0, 0], [0, 255, 255])
    blue8 = np.zeros((1, 3, 1, 1), np.uint8)
    blue8[0, 0] = 255
    np.testing.assert_array_equal(ColorSpace("HSV").apply_batch(blue8)[0, :, 0, 0], [120, 255, 255])  # 240 / 2
    ycc = ColorSpace("YCrCb").apply_batch(red8)[0, :, 0, 0]
    np.testing.assert_array_equal(ycc, [76, 255, 85])  # Y = 0.299 * 255; Cr, Cb saturate/offset 128
    x = _images((2, 3, 3, 3), np.uint8)
    np.testing.assert_array_equal(ColorSpace("RGB").apply_batch(x), x[:, ::-1])
    np.testing.assert_array_equal(ColorSpace("RGB_to_BGR").apply_batch(x), x[:, ::-1])
    np.testing.assert_array_equal(ColorSpace("BGR").apply_batch(x), x)
    g = _images((1, 1, 3, 3), np.uint8)
    np.testing.assert_array_equal(ColorSpace("BGR").apply_batch(g), np.repeat(g, 3, axis=1))


def test_channel_extraction():
    x = _images((2, 3, 4, 4), np.uint8)
    np.testing.assert_array_equal(ChannelExtraction("Blue").apply_batch(x), x[:, 0:1])
    np.testing.assert_array_equal(ChannelExtraction("Red").apply_batch(x), x[:, 2:3])
    gray = 0.114 * x[:, 0].astype(float) + 0.587 * x[:, 1] + 0.299 * x[:, 2]
    np.testing.assert_array_equal(ChannelExtraction("Gray").apply_batch(x)[:, 0], np.rint(gray).astype(np.uint8))
    np.testing.assert_array_equal(ChannelExtraction("Hue").apply_batch(x), ColorSpace("HSV").apply_batch(x)[:, 0:1])
    np.testing.assert_array_equal(ChannelExtraction("Cb").apply_batch(x), ColorSpace("YCrCb").apply_batch(x)[:, 2:3])
    one = x[:, :1]
    np.testing.assert_array_equal(ChannelExtraction("Gray").apply_batch(one), one)
    assert ChannelExtraction("Value").apply(x[0]).shape == (1, 4, 4)


# -- RangeAffine, Reshape ------------------------------------------------------------------------------
def test_range_affine():
    x = _images((2, 3, 2, 2), np.uint8)
    y = RangeAffine("Minus", [1.0, 2.0, 3.0], "Divides", [2.0]).apply_batch(x)
    assert y.dtype == np.float32
    ref = (x.astype(np.float32) - np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1)) / 2
    np.testing.assert_allclose(y, ref)
    np.testing.assert_allclose(RangeAffine("Multiplies", 2.0).apply_batch(x), x * 2.0)
    t = RangeAffine("Plus", 100.0, truncate=True).apply_batch(x)
    assert t.dtype == np.uint8 and t.max() == min(255, int(x.max()) + 100)
    with pytest.raises(RuntimeError):
        RangeAffine("Plus", [1.0, 2.0]).apply_batch(x)
    f = _images((1, 1, 2, 2), np.float64)
    assert RangeAffine("Plus", 1.0).apply_batch(f).dtype == np.float64


def test_reshape():
    x = np.arange(2 * 3 * 4 * 2).reshape(2, 3, 4, 2).astype(np.float32)  # (N, C, H, W)
    y = Reshape(2).apply_batch(x)
    assert y.shape == (2, 3, 2, 4)
    hwc = np.transpose(x, (0, 2, 3, 1)).reshape(2, 2, 4, 3)
    np.testing.assert_array_equal(y, np.transpose(hwc, (0, 3, 1, 2)))
    z = Reshape(8, nb_cols=3, nb_channels=1).apply_batch(x)
    np.testing.assert_array_equal(z[:, 0], np.transpose(x, (0, 2, 3, 1)).reshape(2, 8, 3))
    with pytest.raises(RuntimeError):
        Reshape(5).apply_batch(x)
    with pytest.raises(RuntimeError):
        Reshape(2, nb_cols=3).apply_batch(x)


# -- SliceExtraction, RandomResizeCrop, Composite ----------------------------------------------------------
def test_slice_extraction_fixed_and_padding():
    x = _images((2, 1, 6, 8), np.uint8)
    y = SliceExtraction(3, 2, offset_x=4, offset_y=1).apply_batch(x)
    np.testing.assert_array_equal(y, x[:, :, 1:3, 4:7])
    with pytest.raises(RuntimeError):
        SliceExtraction(5, 2, offset_x=4).apply_batch(x)
    p = SliceExtraction(5, 2, offset_x=4, allow_padding=True, border_type="ConstantBorder",
                        border_value=[9.0]).apply_batch(x)
    np.testing.assert_array_equal(p[:, :, :, :4], x[:, :, 0:2, 4:8])
    assert (p[:, :, :, 4] == 9).all()
    # A zero rotation range and unit scaling reproduce the plain slice through the sampling path.
    same = SliceExtraction(3, 2, offset_x=4, offset_y=1, random_rotation=True, random_rotation_range=[0.0, 0.0],
                           random_scaling=True, random_scaling_range=[1.0, 1.0]).apply_batch(x)
    np.testing.assert_array_equal(same, y)


def test_slice_extraction_random_offsets():
    x = np.broadcast_to(np.arange(10, dtype=np.float32), (50, 1, 10, 10)).copy()
    t = SliceExtraction(4, 4, random_offset_x=True)
    y = t.apply_batch(x, np.random.default_rng(0))
    starts = y[:, 0, 0, 0].astype(int)
    assert starts.min() >= 0 and starts.max() <= 6 and len(set(starts)) > 3
    np.testing.assert_array_equal(y[:, 0, 0], starts[:, None] + np.arange(4))
    np.testing.assert_array_equal(y, t.apply_batch(x, np.random.default_rng(0)))


def test_random_resize_crop():
    x = _images((3, 2, 8, 8), np.float32)
    np.testing.assert_array_equal(RandomResizeCrop(8, 8).apply_batch(x), x)
    np.testing.assert_allclose(RandomResizeCrop(5, 6).apply_batch(x), Rescale(5, 6).apply_batch(x), atol=1e-6)
    c = np.full((4, 1, 20, 30), 0.25, np.float32)
    y = RandomResizeCrop(7, 5, scale_min=0.2, scale_max=0.6, ratio_min=0.5, ratio_max=2.0).apply_batch(
        c, np.random.default_rng(0))
    assert y.shape == (4, 1, 5, 7)
    np.testing.assert_allclose(y, 0.25, rtol=1e-6)  # a constant image stays constant: the crop is inside


def test_composite_applies_in_order_and_apply_keeps_layout():
    x = _images((1, 4, 6), np.uint8)
    c = Composite([PadCrop(8, 8, border_type="ConstantBorder"), Flip(horizontal_flip=True)])
    c.append(Rescale(4, 4))
    assert len(c.get_transformations()) == 3
    ref = Rescale(4, 4).apply(Flip(horizontal_flip=True).apply(PadCrop(8, 8, border_type="ConstantBorder").apply(x)))
    np.testing.assert_array_equal(c.apply(x), ref)
    assert Rescale(4, 4).apply(x[0]).shape == (4, 4)  # 2-D in, 2-D out
    with pytest.raises(ValueError):
        Rescale(2, 2).apply(np.zeros(5))


# -- plain-data form (the IR Transformation node's attribute) ---------------------------------------------
def _zoo():
    """One of every transformation, with non-default arguments and configuration."""
    return [Rescale(10, 7, keep_aspect_ratio=True, resize_to_fit=False), PadCrop(9, 11, border_type="ConstantBorder",
            border_value=[0.5, 0.25, 1.0]), Flip(horizontal_flip=True, random_vertical_flip=True),
            Distortion(elastic_gaussian_size=5, elastic_sigma=2.0, elastic_scaling=3, rotation=10.0),
            ColorSpace("HSV"), RangeAffine("Minus", [0.1, 0.2, 0.3], "Divides", [2.0], truncate=False),
            ChannelExtraction("Blue"), Reshape(4, 3 * 8 * 8 // 4 // 3, 3, apply_to="LearnOnly"),
            SliceExtraction(5, 4, random_offset_x=True, offset_y=1, random_rotation_range=[0.0, 90.0]),
            RandomResizeCrop(6, 6, scale_min=0.5, ratio_max=1.5),
            Composite([Flip(vertical_flip=True), Rescale(6, 5)], apply_to="NoTest")]


@pytest.mark.parametrize("t", _zoo(), ids=lambda t: t.get_type())
def test_ir_spec_is_json_and_rebuilds_the_same_transformation(t):
    import json

    from n2d2.transform import from_ir_spec

    spec = t.ir_spec()
    assert json.loads(json.dumps(spec)) == list(spec) and spec[0] == t.get_type()
    back = from_ir_spec(json.loads(json.dumps(spec)))
    assert type(back) is type(t) and str(back) == str(t) and back.ir_spec() == spec
    assert back.get_apply_set() == t.get_apply_set()
    x = _images((2, 3, 8, 8), seed=4)
    np.testing.assert_array_equal(back.apply_batch(x, np.random.default_rng(3)),
                                  t.apply_batch(x, np.random.default_rng(3)))


def test_from_ir_spec_errors_name_the_type_and_the_parameter():
    from n2d2.transform import from_ir_spec

    with pytest.raises(ValueError, match="unknown transformation type 'Nope'"):
        from_ir_spec(("Nope", {}))
    with pytest.raises(ValueError, match=r"\(type name, \{parameter: value\}\)"):
        from_ir_spec(Flip())
    with pytest.raises(ValueError, match="Rescale: unknown parameter 'depth'"):
        from_ir_spec(("Rescale", {"width": 3, "height": 4, "depth": 2}))
    with pytest.raises(WrongValue):
        from_ir_spec(("Rescale", {"width": -3, "height": 4}))      # the constructor's own checks
    spec = RangeAffine("Minus", (0.5, np.float32(0.25)), "Plus", (np.int64(1),)).ir_spec()
    assert spec[1]["first_value"] == [0.5, 0.25] and spec[1]["second_value"] == [1]   # tuples, numpy scalars
    assert type(spec[1]["second_value"][0]) is int

    class Opaque(Transformation):
        def __init__(self, thing):
            super().__init__({"thing": thing})

        def _forward(self, x, rng):
            return x

    with pytest.raises(TypeError, match=r"Opaque parameter 'thing': object .* is not plain data"):
        Opaque(object()).ir_spec()
    spec = Opaque([1, 2]).ir_spec()
    assert spec == (f"{__name__}.test_from_ir_spec_errors_name_the_type_and_the_parameter.<locals>.Opaque",
                    {"thing": [1, 2], "apply_to": "All"})
    with pytest.raises(TypeError, match="overrides from_ir_params"):
        from_ir_spec(spec)                                          # its constructor takes no apply_to
    x = n2d2.Tensor.from_numpy(_images((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"Cell 'op' \(Transformation\): Opaque has no plain-data form"):
        n2d2.cells.Transformation(Opaque(1), name="op")(x)


@pytest.mark.parametrize("t", [Composite([Flip(random_horizontal_flip=True, random_vertical_flip=True),
                                          SliceExtraction(6, 5, random_offset_x=True, random_offset_y=True)]),
                               Rescale(5, 9), RangeAffine("Multiplies", [2.0, -1.0, 0.5])],
                         ids=["random", "rescale", "range_affine"])
def test_transformation_node_attrs_are_plain_and_its_output_unchanged(t):
    """The traced graph's Transformation node holds the spec (JSON round trip), and the cell, the numpy
    executor on that graph and the transformation itself give the same output (same random draws)."""
    import json

    from n2d2.codegen import numpy_exec
    from n2d2.ir.trace import trace

    x = _images((3, 3, 8, 8), seed=6)
    n2d2.global_variables.seed = 21
    expected = np.concatenate([t.apply_batch(x[i:i + 1], n2d2.global_variables.rng) for i in range(3)])
    cell = n2d2.cells.Transformation(t, name="tr")
    n2d2.global_variables.seed = 21
    y = cell(n2d2.Tensor.from_numpy(x))
    np.testing.assert_array_equal(y.to_numpy(), expected)
    graph = trace(y.get_deepnet(), name="g", input_names=["x"]).graph
    (node,) = [n for n in graph.nodes() if graph.op(n) == "Transformation"]
    attrs = graph.attrs(node)
    assert json.loads(json.dumps(attrs)) == json.loads(json.dumps({"transformation": t.ir_spec()}))
    assert isinstance(attrs["transformation"], tuple) and not any(
        isinstance(v, Transformation) for v in attrs.values())
    n2d2.global_variables.seed = 21
    (out,) = numpy_exec.run(graph, {"x": x})
    np.testing.assert_array_equal(out, expected)
    g2 = n2d2.ir.graph.Graph("live")                               # a live object given to the graph: converted
    g2.add_input("x", x.shape)
    g2.add_op("t", "Transformation", [("x", 0)], {"transformation": t})
    assert g2.attrs("t")["transformation"] == t.ir_spec()
    assert g2.output_types("t")[0].shape == expected.shape
