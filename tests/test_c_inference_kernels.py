"""C inference kernels of the bigger networks (issue 15) against the numpy reference.

Depthwise convolutions (direct mode: a padded private plane per (image, channel), stride 2 on
even / odd half planes), convolutions of a single image split across the thread team (wide
and image modes), large im2col matrices by pixel blocks: odd sizes, strides 1, 2 and 3,
dilation, 5x5 kernels, the ReLU6 epilogue, batch 1 (the team shares one image) and more;
element by element on fresh random
inputs, in an inference program and in a training program (same forward kernels, gradients
too), and NaN / Inf where the reference puts them. BatchNorm of several inputs concatenated
along channels (DenseNet), forward and backward; padded max pooling (ResNet's stem).
"""
import platform
import re
import subprocess

import numpy as np
import pytest

from n2d2.codegen import compiler, numpy_exec
from n2d2.codegen.render import cfloat, render
from n2d2.ops.activation import c_clamp
from tests.test_c_backend import (
    ACTIVATIONS,
    Net,
    Suite,
    c_backend,
    check_batchnorm_training,
)
from tests.test_nan_propagation import _pool, assert_same_pattern, poison

pytestmark = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")

RELU6 = ("Rectifier", (("clipping", 6.0), ("leak_slope", 0.0)))

DEPTHWISE = {
    # name: (input shape, kwargs)
    "s1_pad1_relu6_b1": ((1, 8, 13, 11), dict(k=(3, 3), padding=(1, 1), activation=RELU6)),
    "s2_pad1_relu6_b1_odd": ((1, 8, 13, 11), dict(k=(3, 3), stride=(2, 2), padding=(1, 1), activation=RELU6)),
    "s2_pad1_even": ((2, 6, 14, 12), dict(k=(3, 3), stride=(2, 2), padding=(1, 1))),
    "s2_valid": ((2, 6, 12, 9), dict(k=(3, 3), stride=(2, 2), activation=ACTIVATIONS["tanh"])),
    "5x5_s2_pad2": ((1, 5, 15, 14), dict(k=(5, 5), stride=(2, 2), padding=(2, 2), activation=ACTIVATIONS["relu"])),
    "5x5_s1_pad2_nobias": ((1, 3, 9, 10), dict(k=(5, 5), padding=(2, 2), bias=False)),
    "s3_pad1": ((1, 4, 11, 10), dict(k=(3, 3), stride=(3, 3), padding=(1, 1))),
    "s2x1_pad_1x2": ((3, 5, 9, 7), dict(k=(3, 3), stride=(2, 1), padding=(1, 2))),
    "s1x2_pad_2x1": ((1, 5, 9, 8), dict(k=(3, 3), stride=(1, 2), padding=(2, 1))),
    "dilation2_s1": ((1, 4, 12, 12), dict(k=(3, 3), dilation=(2, 2), padding=(2, 2), activation=RELU6)),
    "dilation2_s2": ((1, 4, 13, 12), dict(k=(3, 3), dilation=(2, 2), stride=(2, 2), padding=(1, 1))),
    # rows on explicit vectors (VL 16 / 8 / 4): whole vectors plus a ragged end, none, or only one
    "s1_rows_37_ragged_b2": ((2, 5, 6, 37), dict(k=(3, 3), padding=(1, 1), activation=RELU6)),
    "s1_rows_32_exact_tanh": ((1, 3, 5, 32), dict(k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["tanh"])),
    "s2_rows_35_ragged_b3": ((3, 4, 9, 35), dict(k=(3, 3), stride=(2, 2), padding=(1, 1), activation=RELU6)),
    "s2_rows_64_valid_nobias": ((1, 3, 7, 64), dict(k=(3, 3), stride=(2, 2), bias=False)),
    "s1_7x7_many_channels_b2": ((2, 40, 7, 7), dict(k=(3, 3), padding=(1, 1), activation=RELU6)),
    # past the parallel threshold with one image: the team shares its channels
    "large_b1_parallel": ((1, 64, 47, 45), dict(k=(3, 3), padding=(1, 1), activation=RELU6)),
    "large_s2_b1_parallel": ((1, 96, 57, 55), dict(k=(3, 3), stride=(2, 2), padding=(1, 1), activation=RELU6)),
}


SPLIT = {
    # name: (input shape, outputs, kwargs, mode): fewer images than SPLIT_MAX_IMAGES
    "wide_3x3_b1_ragged": ((1, 5, 23, 21), 6, dict(k=(3, 3), padding=(1, 1), activation=RELU6), "wide"),
    "wide_dilation_b2": ((2, 3, 20, 18), 4, dict(k=(3, 3), dilation=(2, 1), padding=(2, 1), bias=False), "wide"),
    "wide_groups_b3": ((3, 4, 17, 16), 6, dict(k=(3, 3), groups=2, padding=(1, 1),
                                               activation=ACTIVATIONS["tanh"]), "wide"),
    "wide_1x1_b1_parallel": ((1, 24, 34, 33), 40, dict(k=(1, 1), activation=RELU6), "wide"),
    # more output channels than grid pixels: one strip's panel read by many tiles
    "wide_1x1_many_outputs": ((1, 32, 4, 4), 64, dict(k=(1, 1)), "wide"),
    # a 7x7 map: two strips of the 9-wide grid, through the grid buffer (CWB)
    "wide_small_map_groups": ((1, 16, 7, 7), 16, dict(k=(3, 3), groups=2, padding=(1, 1), activation=RELU6), "wide"),
    # a grid too large to pack whole (WIDE_SMALL_BYTES): strip by strip, the team sharing them
    "wide_3x3_b1_strips": ((1, 32, 30, 29), 24, dict(k=(3, 3), padding=(1, 1), activation=RELU6), "wide"),
    "image_stem_7x7_s2": ((1, 3, 45, 43), 16, dict(k=(7, 7), stride=(2, 2), padding=(3, 3),
                                                  activation=ACTIVATIONS["relu"]), "image"),
    "image_1x1_s2_valid": ((1, 16, 13, 15), 24, dict(k=(1, 1), stride=(2, 2)), "image"),
    "image_5x5_valid_b1": ((1, 3, 12, 12), 4, dict(k=(5, 5), bias=False), "image"),
    # under half the 7-wide grid kept (3 of 7 columns): image mode in inference too
    "image_5x5_valid_b1_narrow": ((1, 3, 7, 7), 5, dict(k=(5, 5), activation=RELU6), "image"),
    # LeNet's conv2: a 6 x 16 connection table, 10 of the 14-wide grid kept (image in training)
    "lenet_conv2_mapping_b1": ((1, 6, 14, 14), 16, dict(k=(5, 5), bias=False, activation=ACTIVATIONS["relu"],
                                                        mapping=np.random.default_rng(3).random((6, 16)) < 0.6),
                               "image"),
    # stride 1, under half the grid kept: image mode, strips of one output row copied by vectors
    "image_3x23_valid_b1_rows": ((1, 2, 40, 40), 5, dict(k=(3, 23), activation=RELU6), "image"),
    "image_groups_s2_b1": ((1, 6, 15, 13), 9, dict(k=(3, 3), groups=3, stride=(2, 2), padding=(1, 1)), "image"),
    # K = 2304: blocks of 96 pixels in training, 32 in inference (the last ragged), the weights larger than a
    # block (tiles rows first)
    "image_blocks_rows_outer": ((1, 256, 29, 29), 112, dict(k=(3, 3), stride=(2, 2), padding=(1, 1),
                                                           activation=RELU6), "image"),
}
# in inference, few images go wide from half the grid kept (WIDE_MIN_EFFICIENCY_FEW; training: 0.75),
# or take the plane mode when the work is small (PLANE_BYTES, one thread: not split), and a strided 3x3
# with more than WIDE_NOPACK_MAX_OUTPUTS outputs goes wide with gathered panels (GATHER)
SPLIT_INFERENCE_MODE = {"image_5x5_valid_b1": "plane", "lenet_conv2_mapping_b1": "plane",
                        "image_5x5_valid_b1_narrow": "plane", "wide_3x3_b1_ragged": "plane",
                        "wide_dilation_b2": "plane",
                        "image_blocks_rows_outer": "wide"}

PLANE = {
    # name: (input shapes, outputs, kwargs): few images in inference, stride 1, groups 1, small maps
    # (n2d2/ops/conv.py PLANE_BYTES); output planes of 784 = 24 strips + one vector (VL 16), 100 and 117
    # pixels (a ragged strip under / over one vector), 16 (one strip, partial)
    "lenet_conv1": ([(1, 1, 32, 32)], 6, dict(k=(5, 5), bias=False, activation=ACTIVATIONS["relu"])),
    "table_b2_tanh": ([(2, 6, 14, 14)], 16, dict(k=(5, 5), activation=ACTIVATIONS["tanh"],
                                                 mapping=np.random.default_rng(4).random((6, 16)) < 0.6)),
    "table_7_outputs_pad_1x2": ([(1, 5, 9, 11)], 7, dict(k=(3, 3), padding=(1, 2), activation=RELU6,
                                                         mapping=np.random.default_rng(5).random((5, 7)) < 0.5)),
    "pad_2x1_dilation_1x2_b3": ([(3, 3, 10, 13)], 5, dict(k=(3, 3), padding=(2, 1), dilation=(1, 2), bias=False)),
    "3x5_pad_0x2_relu6": ([(1, 4, 7, 19)], 9, dict(k=(3, 5), padding=(0, 2), activation=RELU6)),
    "17_outputs_4x4": ([(1, 2, 6, 6)], 17, dict(k=(3, 3))),
    "two_inputs_pad1": ([(1, 3, 8, 8), (1, 2, 8, 8)], 6, dict(k=(3, 3), padding=(1, 1), activation=RELU6)),
}


def _split(net, shape, o, kw, mode):
    return [net.conv(net.source(shape), o, **kw)]


def _depthwise(net, shape, kw):
    return [net.conv(net.source(shape), shape[1], groups=shape[1], **kw)]


def assert_close(out, ref, what, tol=2e-5):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    scale = max(1.0, float(np.abs(ref).max()))
    err = np.abs(out - ref)
    assert err.max() <= tol * scale, f"{what}: max error {err.max():.2e} at {np.unravel_index(err.argmax(), err.shape)}"


@pytest.fixture(scope="module")
def depthwise_training():
    suite = Suite(seed=50)
    for case, (shape, kw) in DEPTHWISE.items():
        suite.add(case, lambda net, shape=shape, kw=kw: _depthwise(net, shape, kw))
    return suite.run()


@pytest.mark.parametrize("case", sorted(DEPTHWISE))
def test_depthwise_training(depthwise_training, case):
    p, (y,) = depthwise_training.check(case)
    assert p.geometry[y]["MODE"] == "direct"


def _inference(cases, build, seed):
    """One inference graph of every case: the C program and the numpy reference."""
    net = Net(seed=seed)
    ys = {case: build(net, *args)[0] for case, args in cases.items()}
    net.output(*ys.values())
    ys = {case: net.g.outputs[i] for i, case in enumerate(ys)}
    ref = dict(zip(net.g.outputs, numpy_exec.run(net.g, net.feeds)))
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    return net, ys, ref, p


@pytest.fixture(scope="module")
def depthwise_inference():
    return _inference(DEPTHWISE, _depthwise, seed=51)


@pytest.mark.parametrize("case", sorted(DEPTHWISE))
def test_depthwise_inference(depthwise_inference, case):
    net, ys, ref, p = depthwise_inference
    y = ys[case]
    assert p.where[y[0]] == "c" and p.geometry[y[0]]["MODE"] == "direct"
    assert_close(p.view(y), ref[y], case)
    if case.startswith("large"):
        assert p.geometry[y[0]]["PAR"]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 flags")
def test_depthwise_inference_avx2_build(monkeypatch):
    """Built for AVX2 (N2D2_VL 8), the depthwise planes take the padded-copy path with its vector
    rows (an AVX-512 host otherwise runs only the masked-load path for strides 1 and 2)."""
    monkeypatch.setenv("N2D2_CFLAGS", "-march=x86-64-v3")
    net, ys, ref, p = _inference(DEPTHWISE, _depthwise, seed=54)
    for case, y in ys.items():
        assert p.geometry[y[0]]["MODE"] == "direct"
        assert_close(p.view(y), ref[y], case)


def test_depthwise_nan_inf_as_the_reference():
    """A NaN / Inf input stays where the reference puts it; a NaN weight poisons its channel,
    padding included (the reference multiplies the padding zeros)."""
    rng = np.random.default_rng(52)
    net = Net(seed=52)
    x = net.input((1, 6, 11, 9))
    y1 = net.conv(x, 6, groups=6, stride=(2, 2), padding=(1, 1), activation=RELU6)
    y2 = net.conv(x, 6, groups=6, padding=(1, 1))
    net.output(y1, y2)
    y2 = net.g.outputs[1]
    net.feeds[x] = poison(rng, net.feeds[x], count=2)
    w = net.g.params[f"{y2[0]}.weights"].array
    w[3, 0, 0, 0] = np.nan
    ref = dict(zip(net.g.outputs, numpy_exec.run(net.g, net.feeds)))
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    out = {t: p.view(t).copy() for t in net.g.outputs}
    assert np.isnan(ref[y2][0, 3]).all()
    assert_same_pattern(ref, out, "C depthwise")


@pytest.fixture(scope="module")
def split_training():
    suite = Suite(seed=53)
    for case, args in SPLIT.items():
        suite.add(case, lambda net, args=args: _split(net, *args))
    return suite.run()


@pytest.fixture(scope="module")
def split_inference():
    return _inference(SPLIT, _split, seed=54)


@pytest.mark.parametrize("case", sorted(SPLIT))
def test_split_training(split_training, case):
    p, (y,) = split_training.check(case)
    g = p.geometry[y]
    assert g["MODE"] == SPLIT[case][3] and g["SPLIT"]
    if case == "image_blocks_rows_outer":
        assert g["PB"] < g["P"] and g["P"] % g["PB"] and g["ROWS_OUTER"] and g["PAR"]


@pytest.mark.parametrize("case", sorted(SPLIT))
def test_split_inference(split_inference, case):
    net, ys, ref, p = split_inference
    y = ys[case]
    g = p.geometry[y[0]]
    assert p.where[y[0]] == "c" and g["MODE"] == SPLIT_INFERENCE_MODE.get(case, SPLIT[case][3])
    assert g["SPLIT"] or g["MODE"] == "plane"   # (plane: one thread)
    assert_close(p.view(y), ref[y], case)
    if case == "image_blocks_rows_outer":
        assert g["GATHER"] and g["PAR"]
    if case == "wide_1x1_many_outputs":
        assert g["OG"] > g["LW"]
    if case == "wide_1x1_b1_parallel":
        assert g["PAR"]
    # inference packs whole grids up to WIDE_SMALL_BYTES (training: 64 pixels), junk columns
    # through the grid buffer
    assert g["MODE"] != "wide" or g["CWB"] == (g["SMALL"] and g["Wp"] != g["WO"])
    assert g["MODE"] != "wide" or g["SMALL"] == (case not in ("wide_3x3_b1_strips", "image_blocks_rows_outer"))
    if case == "wide_small_map_groups":
        assert g["CWB"]
    if case == "wide_3x3_b1_strips":
        assert g["PAR"] and g["Wp"] != g["WO"]


def _plane(net, shapes, o, kw):
    xs = [net.source(shape, name=f"input{i}") for i, shape in enumerate(shapes)]
    return [net.conv(xs if len(xs) > 1 else xs[0], o, **kw)]


@pytest.fixture(scope="module")
def plane_inference():
    return _inference(PLANE, _plane, seed=55)


@pytest.mark.parametrize("case", sorted(PLANE))
def test_plane_inference(plane_inference, case):
    net, ys, ref, p = plane_inference
    y = ys[case]
    g = p.geometry[y[0]]
    assert p.where[y[0]] == "c" and g["MODE"] == "plane" and not g["PAR"]
    assert (g["CONN"] is not None) == ("table" in case)
    assert_close(p.view(y), ref[y], case)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 flags")
def test_plane_inference_avx2_build(monkeypatch):
    """Built for AVX2 (N2D2_VL 8, NR 16): other strip widths, other ragged ends."""
    monkeypatch.setenv("N2D2_CFLAGS", "-march=x86-64-v3")
    net, ys, ref, p = _inference(PLANE, _plane, seed=57)
    for case, y in ys.items():
        assert p.geometry[y[0]]["MODE"] == "plane"
        assert_close(p.view(y), ref[y], case)


def test_plane_training_keeps_its_modes():
    """Plane mode is inference only: the same convolution in a training program is wide or image."""
    suite = Suite(seed=58)
    suite.add("lenet_conv1", lambda net: _plane(net, *PLANE["lenet_conv1"]))
    p, (y,) = suite.run().check("lenet_conv1")
    assert p.geometry[y]["MODE"] in ("wide", "image")


@pytest.mark.parametrize("finite_input", [True, False])
def test_plane_nan_inf_as_the_reference(finite_input):
    """A connection table's unconnected blocks are skipped only while the image is finite (the
    reference multiplies the zeroed weights: 0 * Inf is NaN); a NaN weight of an unconnected pair
    is zeroed by the table, one of a connected pair poisons its output channel."""
    rng = np.random.default_rng(56)
    net = Net(seed=56)
    x = net.input((1, 6, 14, 14))
    table = rng.random((6, 16)) < 0.5
    y1 = net.conv(x, 16, k=(5, 5), mapping=table, activation=ACTIVATIONS["relu"])
    y2 = net.conv(x, 8, k=(3, 3), padding=(1, 1), bias=False)
    net.output(y1, y2)
    y1 = net.g.outputs[0]
    if not finite_input:
        net.feeds[x] = poison(rng, net.feeds[x], count=1)
    w = net.g.params[f"{y1[0]}.weights"].array
    c_off, o_off = np.argwhere(~table)[0]
    c_on, o_on = np.argwhere(table)[-1]
    w[o_off, c_off, 1, 2] = np.nan
    w[o_on, c_on, 2, 1] = np.inf
    ref = dict(zip(net.g.outputs, numpy_exec.run(net.g, net.feeds)))
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    assert all(p.geometry[t[0]]["MODE"] == "plane" for t in net.g.outputs)
    p.feed(net.feeds)
    p.run_phase(0)
    out = {t: p.view(t).copy() for t in net.g.outputs}
    assert_same_pattern(ref, out, "C plane mode")
    if finite_input:   # the skipping path: the unconnected NaN weight is never read
        assert o_off == o_on or np.isfinite(out[y1][0, o_off]).all()
        assert not np.isfinite(out[y1][0, o_on]).all()
        for t in net.g.outputs:
            keep = np.isfinite(ref[t])
            assert_close(np.where(keep, out[t], 0), np.where(keep, ref[t], 0), t)
GATHER = {
    # name: (input shape, outputs, kwargs): wide convolutions with junk columns and more than
    # WIDE_NOPACK_MAX_OUTPUTS outputs, whose panels gather the output pixels (GATHER)
    # a 7x7 map packed whole (SMALL): a 32-pixel strip spans 5-6 output rows (64 channels: over
    # PARALLEL_MIN_MACS, so not the plane mode)
    "gather_7x7_small_b1": ((1, 64, 7, 7), 40, dict(k=(3, 3), padding=(1, 1), activation=RELU6)),
    # too large to pack whole in inference: strip by strip, a strip over 2-3 rows, a last strip of
    # 4 pixels (196 = 6 * 32 + 4: n2d2_tile_ragged, one ymm with AVX-512, one vector otherwise)
    "gather_14x14_strips_b1": ((1, 20, 14, 14), 36, dict(k=(3, 3), padding=(1, 1),
                                                         activation=ACTIVATIONS["relu"])),
    # dilation, no bias, two images (the team shares each)
    "gather_dilation_b2": ((2, 17, 20, 19), 33, dict(k=(3, 3), dilation=(2, 1), padding=(2, 1), bias=False,
                                                     activation=ACTIVATIONS["tanh"])),
    # four images (one per thread), 20 outputs (a ragged tile row), an im2col over WIDE_IM2COL_BYTES:
    # wide in training too
    "gather_b4_training": ((4, 32, 30, 31), 20, dict(k=(3, 3), padding=(1, 1))),
    # 6-pixel rows: a strip over 6-7 output rows (72 channels: not the plane mode)
    "gather_narrow_rows": ((1, 72, 12, 6), 24, dict(k=(3, 3), padding=(1, 1), activation=RELU6)),
    # strided (inference only; training: image mode): every other column by n2d2_evens
    "gather_s2_small_b1": ((1, 20, 15, 13), 24, dict(k=(3, 3), stride=(2, 2), padding=(1, 1), activation=RELU6)),
    "gather_s2_stem_7x7_strips_b1": ((1, 3, 45, 43), 32, dict(k=(7, 7), stride=(2, 2), padding=(3, 3),
                                                              activation=ACTIVATIONS["relu"])),
    "gather_s2x1_b2": ((2, 18, 24, 23), 20, dict(k=(3, 3), stride=(2, 1), padding=(1, 1))),
    # no padding: the windows of the input itself, read past its end (READ_PAST)
    "gather_s2_valid_b1": ((1, 17, 14, 16), 33, dict(k=(3, 3), stride=(2, 2), activation=ACTIVATIONS["tanh"])),
    "gather_s2_dilation_b1": ((1, 18, 17, 16), 40, dict(k=(3, 3), stride=(2, 2), dilation=(2, 2), padding=(2, 2),
                                                        bias=False)),
}


@pytest.fixture(scope="module")
def gather_training():
    suite = Suite(seed=56)
    for case, args in GATHER.items():
        suite.add(case, lambda net, args=args: _split(net, *args, "wide"))
    return suite.run()


@pytest.mark.parametrize("case", sorted(GATHER))
def test_wide_gather_training(gather_training, case):
    p, (y,) = gather_training.check(case)
    g = p.geometry[y]
    # training goes wide on large grids only (WIDE_MAX_WASTED_ROWS, WIDE_IM2COL_BYTES)
    assert (g["MODE"] == "wide" and g["GATHER"] and not g["CWB"]) == (case == "gather_b4_training")


@pytest.mark.parametrize("case", sorted(GATHER))
def test_wide_gather_inference(case):
    net, ys, ref, p = _inference({case: GATHER[case] + ("wide",)}, _split, seed=57)
    y = ys[case]
    g = p.geometry[y[0]]
    assert g["MODE"] == "wide" and g["GATHER"] and not g["CWB"]
    if case in ("gather_7x7_small_b1", "gather_14x14_strips_b1"):
        assert g["SMALL"] == (case == "gather_7x7_small_b1")
    assert_close(p.view(y), ref[y], case)


def test_wide_gather_nan_inf_as_the_reference():
    """NaN / Inf inputs and a NaN weight land where the reference puts them when the panels are
    gathered from the grid (the blends copy bits), strip by strip and packed whole, stride 1 and 2."""
    rng = np.random.default_rng(58)
    net = Net(seed=58)
    x1, x2 = net.input((1, 40, 9, 9), "a"), net.input((1, 20, 14, 14), "b")
    y1 = net.conv(x1, 64, padding=(1, 1), activation=ACTIVATIONS["relu"])   # over PARALLEL_MIN_MACS: not plane
    y2 = net.conv(x2, 36, padding=(1, 1), activation=RELU6)
    y3 = net.conv(x2, 40, stride=(2, 2), padding=(1, 1))
    y4 = net.conv(x1, 20, stride=(2, 2), activation=RELU6)
    net.output(y1, y2, y3, y4)
    y1, y2, y3, y4 = net.g.outputs
    net.feeds[x1] = poison(rng, net.feeds[x1], count=3)
    net.feeds[x2] = poison(rng, net.feeds[x2], count=3)
    net.g.params[f"{y2[0]}.weights"].array[5, 3, 1, 2] = np.nan
    ref = dict(zip(net.g.outputs, numpy_exec.run(net.g, net.feeds)))
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    assert all(p.geometry[y[0]]["GATHER"] for y in (y1, y2, y3, y4))
    assert np.isnan(ref[y2][0, 5]).all()
    assert_same_pattern(ref, {t: p.view(t).copy() for t in net.g.outputs}, "C wide gather")


# name: (input shape, outputs, kwargs, ragged columns of the last strip, SMALL): batch-1 wide
# convolutions whose last 32-pixel strip holds 1 to 25 pixels, on either side of a vector (AVX-512:
# 8 and 24 lanes in a ymm / zmm + ymm, n2d2_tile_ragged); 40 outputs: full 8-row tiles
RAGGED = {
    "ragged_1": ((1, 96, 15, 15), 40, dict(k=(3, 3), padding=(1, 1)), 1, False),
    "ragged_4_relu": ((1, 96, 10, 10), 40, dict(k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"]), 4, False),
    "ragged_8_small": ((1, 96, 5, 8), 40, dict(k=(3, 3), padding=(1, 1), activation=RELU6), 8, True),
    "ragged_9": ((1, 96, 13, 13), 40, dict(k=(3, 3), padding=(1, 1), bias=False), 9, False),
    "ragged_16": ((1, 96, 12, 12), 40, dict(k=(3, 3), padding=(1, 1)), 16, False),
    "ragged_17_small": ((1, 96, 7, 7), 40, dict(k=(3, 3), padding=(1, 1), activation=ACTIVATIONS["relu"]), 17, True),
    "ragged_17_s2": ((1, 96, 18, 18), 40, dict(k=(3, 3), stride=(2, 2), padding=(1, 1)), 17, False),
    "ragged_24_small": ((1, 96, 7, 8), 40, dict(k=(3, 3), padding=(1, 1)), 24, True),
    "ragged_25": ((1, 96, 11, 11), 40, dict(k=(3, 3), padding=(1, 1), activation=RELU6), 25, False),
}


@pytest.fixture(scope="module")
def ragged_inference():
    return _inference({case: args[:3] + ("wide",) for case, args in RAGGED.items()}, _split, seed=59)


@pytest.mark.parametrize("case", sorted(RAGGED))
def test_wide_ragged_last_strip(ragged_inference, case):
    net, ys, ref, p = ragged_inference
    y = ys[case]
    g = p.geometry[y[0]]
    assert g["MODE"] == "wide" and g["GATHER"] and g["SMALL"] == RAGGED[case][4]
    assert g["P"] % 32 == RAGGED[case][3] and g["SPLIT"] and g["PAR"]
    assert_close(p.view(y), ref[y], case)


def test_wide_ragged_last_strip_nan_inf_as_the_reference():
    """The ymm tiles of a ragged last strip keep NaN / Inf where the reference puts them."""
    rng = np.random.default_rng(60)
    net = Net(seed=60)
    x1, x2 = net.input((1, 96, 10, 10), "a"), net.input((1, 96, 7, 8), "b")
    y1 = net.conv(x1, 40, padding=(1, 1), activation=ACTIVATIONS["relu"])   # 100 = 3 * 32 + 4
    y2 = net.conv(x2, 40, padding=(1, 1))                                    # 56 = 32 + 24, SMALL
    net.output(y1, y2)
    y1, y2 = net.g.outputs
    net.feeds[x1] = poison(rng, net.feeds[x1], count=3)
    net.feeds[x2] = poison(rng, net.feeds[x2], count=3)
    net.g.params[f"{y2[0]}.weights"].array[9, 3, 1, 2] = np.nan
    ref = dict(zip(net.g.outputs, numpy_exec.run(net.g, net.feeds)))
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    assert all(p.geometry[y[0]]["GATHER"] for y in (y1, y2))
    assert np.isnan(ref[y2][0, 9]).all()
    assert_same_pattern(ref, {t: p.view(t).copy() for t in net.g.outputs}, "C ragged strips")


PANEL = {
    # name: (input shape, outputs, kwargs): 1x1 convolutions on large maps (over WIDE_SMALL_BYTES of
    # input) in inference, packed by
    # panels of PANEL pixels (n2d2/ops/conv.py WIDE_PANEL_*, lowered below so that small maps take
    # several panels): a ragged last panel and a ragged last strip (1517 = 5 x 256 + 237, 237 =
    # 7 x 32 + 13), whole strips only, one and two images (the team shares each), five (one per
    # thread), no bias, an activation that is not a clamp (the strip loop instead), two groups
    "expand_relu6_ragged_b1": ((1, 24, 37, 41), 40, dict(k=(1, 1), activation=RELU6)),
    "project_linear_b2": ((2, 32, 32, 40), 16, dict(k=(1, 1))),
    "project_nobias_relu_b5": ((5, 24, 23, 45), 20, dict(k=(1, 1), bias=False, activation=ACTIVATIONS["relu"])),
    "expand_tanh_b1": ((1, 32, 33, 35), 24, dict(k=(1, 1), activation=ACTIVATIONS["tanh"])),
    "groups_relu6_b1": ((1, 48, 37, 41), 32, dict(k=(1, 1), groups=2, activation=RELU6)),
}


@pytest.fixture
def small_panels(monkeypatch):
    import n2d2.ops.conv as conv

    monkeypatch.setattr(conv, "WIDE_PANEL_MIN_PIXELS", 1000)
    monkeypatch.setattr(conv, "WIDE_PANEL_BYTES", 24 * 1024)   # 256 pixels of 24 channels


def _check_panels(seed):
    net, ys, ref, p = _inference(PANEL, lambda net, shape, o, kw: _split(net, shape, o, kw, "wide"), seed=seed)
    for case, y in ys.items():
        g = p.geometry[y[0]]
        assert g["MODE"] == "wide" and g["PANEL"] and g["P"] > g["PANEL"] and not g["SMALL"], case
        assert_close(p.view(y), ref[y], case)
    return p, ys


def test_wide_panel_inference(small_panels):
    p, ys = _check_panels(seed=59)
    g = p.geometry[ys["expand_relu6_ragged_b1"][0]]
    assert g["PANEL"] == 256 and g["P"] % 32 and g["SPLIT"] and g["PAR"]
    assert not p.geometry[ys["project_nobias_relu_b5"][0]]["SPLIT"]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 flags")
def test_wide_panel_inference_avx2_build(small_panels, monkeypatch):
    """Built for AVX2 (NR 16: 16 strips to a panel of 256, a ragged strip of 13 of 16)."""
    monkeypatch.setenv("N2D2_CFLAGS", "-march=x86-64-v3")
    _check_panels(seed=60)


def test_wide_panel_mobilenet_112x112():
    """MobileNet V2's 32 -> 16 projection at 112x112 with the default constants: panels of 256."""
    net, ys, ref, p = _inference({"project": ((1, 32, 112, 112), 16, dict(k=(1, 1)))},
                                 lambda net, shape, o, kw: _split(net, shape, o, kw, "wide"), seed=61)
    y = ys["project"]
    assert p.geometry[y[0]]["PANEL"] == 256
    assert_close(p.view(y), ref[y], "project")


def test_wide_panel_training_keeps_its_strips(small_panels):
    suite = Suite(seed=62)
    suite.add("expand", lambda net: _split(net, *PANEL["expand_relu6_ragged_b1"], "wide"))
    p, (y,) = suite.run().check("expand")
    assert p.geometry[y]["MODE"] != "wide" or not p.geometry[y]["PANEL"]


def test_wide_panel_nan_inf_as_the_reference(small_panels):
    """NaN / Inf inputs (in the last, ragged panel too) and a NaN weight where the reference puts
    them: the panels are bit copies, the clamp keeps NaN."""
    rng = np.random.default_rng(63)
    net = Net(seed=63)
    x = net.input((1, 24, 37, 41))
    y1 = net.conv(x, 40, k=(1, 1), activation=RELU6)
    y2 = net.conv(x, 16, k=(1, 1))
    net.output(y1, y2)
    y1, y2 = net.g.outputs
    net.feeds[x] = poison(rng, net.feeds[x], count=3)
    net.feeds[x][0, 2, 36, 40] = np.nan   # the ragged last strip's last pixel
    net.g.params[f"{y1[0]}.weights"].array[7, 5, 0, 0] = np.nan
    ref = dict(zip(net.g.outputs, numpy_exec.run(net.g, net.feeds)))
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    assert all(p.geometry[y[0]]["PANEL"] for y in (y1, y2))
    assert np.isnan(ref[y1][0, 7]).all()
    assert_same_pattern(ref, {t: p.view(t).copy() for t in net.g.outputs}, "C wide panels")


DOT_TAIL = {
    # name: (input shape, outputs, kwargs): 1x1 convolutions on small maps (SMALL wide grids), their
    # ragged strip's last columns by dot products (n2d2_dot_cols, gemm's dot_tail): 49 = 32 + 16 + 1
    # pixels (AVX2: 3 x 16 + 1), 50 = 32 + 16 + 2 (AVX2: a tile); K with a tail past whole vectors
    # (36, and 600 in passes of 256: 88 in the last), a ragged tile row (70 outputs), an activation
    # that is not a clamp (few images: more go image mode on such maps); in inference the next tile
    # row's weights prefetched (PREFETCH_W), in K passes too
    "7x7_expand_relu6_b1": ((1, 36, 7, 7), 70, dict(k=(1, 1), activation=RELU6)),
    "7x7_project_k_passes_b1": ((1, 600, 7, 7), 20, dict(k=(1, 1))),
    "5x10_nobias_relu_b1": ((1, 48, 5, 10), 36, dict(k=(1, 1), bias=False, activation=ACTIVATIONS["relu"])),
    "7x7_tanh_b1": ((1, 16, 7, 7), 24, dict(k=(1, 1), activation=ACTIVATIONS["tanh"])),
}


def _check_dot_tail(seed):
    net, ys, ref, p = _inference(DOT_TAIL, lambda net, shape, o, kw: _split(net, shape, o, kw, "wide"), seed=seed)
    for case, y in ys.items():
        g = p.geometry[y[0]]
        assert g["MODE"] == "wide" and g["SMALL"] and not g["GATHER"] and g["PREFETCH_W"], case
        assert_close(p.view(y), ref[y], case)
    assert p.geometry[ys["7x7_project_k_passes_b1"][0]]["KC"] == 256


def test_wide_dot_tail_inference():
    _check_dot_tail(seed=64)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 flags")
def test_wide_dot_tail_inference_avx2_build(monkeypatch):
    monkeypatch.setenv("N2D2_CFLAGS", "-march=x86-64-v3")
    _check_dot_tail(seed=65)


def test_wide_dot_tail_training():
    """The training forward of a 7x7 grid takes the same dot products (gradients checked too)."""
    suite = Suite(seed=66)
    suite.add("expand", lambda net: _split(net, *DOT_TAIL["7x7_expand_relu6_b1"], "wide"))
    p, (y,) = suite.run().check("expand")
    assert p.geometry[y]["MODE"] == "wide" and p.geometry[y]["SMALL"] and not p.geometry[y]["PREFETCH_W"]


def test_wide_dot_tail_nan_inf_as_the_reference():
    """NaN / Inf inputs (the 49th pixel of a 7x7 map among them) and a NaN weight land where the
    reference puts them when the last columns are dot products."""
    rng = np.random.default_rng(67)
    net = Net(seed=67)
    x = net.input((1, 36, 7, 7))
    y1 = net.conv(x, 24, k=(1, 1), activation=RELU6)
    y2 = net.conv(x, 20, k=(1, 1))
    net.output(y1, y2)
    y1, y2 = net.g.outputs
    net.feeds[x] = poison(rng, net.feeds[x], count=3)
    net.feeds[x][0, 3, 6, 6] = np.inf
    net.feeds[x][0, 9, 6, 6] = -np.inf   # +Inf and -Inf in one dot product: NaN
    net.feeds[x][0, 5, 6, 5] = np.inf
    net.g.params[f"{y2[0]}.weights"].array[3, 7, 0, 0] = np.nan
    ref = dict(zip(net.g.outputs, numpy_exec.run(net.g, net.feeds)))
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    assert all(p.geometry[y[0]]["SMALL"] for y in (y1, y2))
    assert np.isnan(ref[y2][0, 3]).all()
    assert_same_pattern(ref, {t: p.view(t).copy() for t in net.g.outputs}, "C wide dot tail")


@pytest.mark.parametrize("momentum,act,batch", [(0.1, "relu", 2), (0.0, "none", 1), (0.3, "tanh", 3)])
def test_batchnorm_of_concatenated_inputs(momentum, act, batch):
    """DenseNet's BatchNorm after a Concat: several inputs, concatenated along channels, on C
    (forward in training and inference, moving statistics, gradients of the inputs that
    need one: the middle input is a raw input without gradient)."""
    net = Net(seed=55)
    a = net.source((batch, 3, 5, 7), "a")
    b = net.input((batch, 2, 5, 7), "b")
    c = net.source((batch, 4, 5, 7), "c")
    y, before = check_batchnorm_training(net, [a, b, c], momentum, act,
                                         lambda out, ref, what: assert_close(out, ref, what, tol=1e-5))
    for k, v in before.items():
        net.g.params[k].array[...] = v
    ref = numpy_exec.run(net.g, net.feeds)[0]
    q = c_backend.CProgram(net.g, [net.g.topological_order()])
    q.feed(net.feeds)
    q.run_phase(0)
    assert q.where[y] == "c"
    assert_close(q.view(net.g.outputs[0]), ref, "inference")


MAXPOOL = {
    # name: (input shape, pool, stride, padding, activation): padded max pooling (PADROW)
    "resnet_3x3_s2_p1_b1": ((1, 8, 23, 21), (3, 3), (2, 2), (1, 1), None),
    "3x3_s1_p1_relu": ((2, 3, 9, 10), (3, 3), (1, 1), (1, 1), ACTIVATIONS["relu"]),
    "2x2_s2_p1_odd": ((1, 4, 7, 9), (2, 2), (2, 2), (1, 1), None),
    "5x3_s2x1_p2x1": ((2, 3, 11, 8), (5, 3), (2, 1), (2, 1), None),
    "3x3_s2_p1_parallel": ((1, 64, 60, 58), (3, 3), (2, 2), (1, 1), None),
}


def _maxpool(net, shape, pool, stride, pad, act):
    return [net.op("Pool", [net.source(shape)], {"pooling": "Max", "pool": pool, "stride": stride, "padding": pad,
                                                 "mapping": None, "activation": act})]


@pytest.fixture(scope="module")
def maxpool_training():
    suite = Suite(seed=56)
    for case, args in MAXPOOL.items():
        suite.add(case, lambda net, args=args: _maxpool(net, *args))
    return suite.run()


@pytest.mark.parametrize("case", sorted(MAXPOOL))
def test_padded_max_pool_training(maxpool_training, case):
    p, (y,) = maxpool_training.check(case)
    assert p.geometry[y]["PADROW"]


@pytest.mark.parametrize("case", sorted(MAXPOOL))
def test_padded_max_pool_inference(case):
    net, ys, ref, p = _inference({case: MAXPOOL[case]}, _maxpool, seed=57)
    y = ys[case]
    assert p.where[y[0]] == "c" and p.geometry[y[0]]["PADROW"]
    assert_close(p.view(y), ref[y], case)


def test_padded_max_pool_nan_inf_as_the_reference():
    rng = np.random.default_rng(58)
    net = Net(seed=58)
    x = net.input((1, 5, 13, 11))
    net.output(net.op("Pool", [x], {"pooling": "Max", "pool": (3, 3), "stride": (2, 2), "padding": (1, 1),
                                    "mapping": None}))
    net.feeds[x] = poison(rng, net.feeds[x], count=3)
    ref = dict(zip(net.g.outputs, numpy_exec.run(net.g, net.feeds)))
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    assert p.geometry[net.g.outputs[0][0]]["PADROW"]
    assert_same_pattern(ref, {t: p.view(t).copy() for t in net.g.outputs}, "C max pool")


TILED_2X2 = {
    # name: (input shape, pool, stride, padding, activation): 2x2 tiles on few images (VEC2); output rows
    # of 14 (LeNet's pool1), 5, 16 (whole vectors with VL 16 / 8), 21 and 40 (several, ragged)
    "lenet_pool1": ((1, 6, 28, 28), (2, 2), (2, 2), (0, 0), None),
    "lenet_pool2_b3": ((3, 16, 10, 10), (2, 2), (2, 2), (0, 0), None),
    "32_wide": ((1, 3, 4, 32), (2, 2), (2, 2), (0, 0), None),
    "80_wide_b2": ((2, 2, 6, 80), (2, 2), (2, 2), (0, 0), None),
    "42_wide": ((1, 2, 6, 42), (2, 2), (2, 2), (0, 0), None),
}


@pytest.mark.parametrize("avx2", [False, True])
def test_tiled_2x2_max_pool_few_images(monkeypatch, avx2):
    """Vectors along the output rows (VEC2), the last one overlapping, rows narrower than a vector
    by masked moves or lane by lane, NaN / Inf where the reference puts them (built for AVX2 too:
    VL 8, no masked moves)."""
    if avx2:
        if platform.machine() not in ("x86_64", "AMD64"):
            pytest.skip("x86-64 flags")
        monkeypatch.setenv("N2D2_CFLAGS", "-march=x86-64-v3")
    net, ys, ref, p = _inference(TILED_2X2, _maxpool, seed=59)
    for case, y in ys.items():
        assert p.where[y[0]] == "c" and p.geometry[y[0]]["VEC2"]
        assert_close(p.view(y), ref[y], case)
    rng = np.random.default_rng(60)
    net = Net(seed=60)
    x = net.input((1, 4, 10, 42))
    net.output(net.op("Pool", [x], {"pooling": "Max", "pool": (2, 2), "stride": (2, 2), "padding": (0, 0),
                                    "mapping": None}))
    net.feeds[x] = poison(rng, net.feeds[x], count=12)
    ref = dict(zip(net.g.outputs, numpy_exec.run(net.g, net.feeds)))
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    p.feed(net.feeds)
    p.run_phase(0)
    assert p.geometry[net.g.outputs[0][0]]["VEC2"]
    assert_same_pattern(ref, {t: p.view(t).copy() for t in net.g.outputs}, "C 2x2 max pool")


BLOCKED = {
    # 4 images or more, one per block, an im2col matrix larger than SPLIT_COL_BYTES: pixel blocks
    # on private buffers (the threads take whole images)
    "stem_7x7_s2_b4": ((4, 3, 95, 93), 8, dict(k=(7, 7), stride=(2, 2), padding=(3, 3), activation=RELU6)),
    "3x3_s2_valid_b5": ((5, 64, 49, 47), 6, dict(k=(3, 3), stride=(2, 2))),
}


def _blocked(net, shape, o, kw):
    return [net.conv(net.source(shape), o, **kw)]


@pytest.mark.parametrize("case", sorted(BLOCKED))
def test_blocked_image_mode(case):
    net, ys, ref, p = _inference({case: BLOCKED[case]}, _blocked, seed=59)
    y = ys[case]
    g = p.geometry[y[0]]
    assert g["MODE"] == "image" and g["BLOCKED"] and not g["SPLIT"] and g["PB"] < g["P"]
    assert_close(p.view(y), ref[y], case)


def test_blocked_image_mode_training():
    suite = Suite(seed=60)
    for case, args in BLOCKED.items():
        suite.add(case, lambda net, args=args: _blocked(net, *args))
    suite.run()
    for case in BLOCKED:
        p, (y,) = suite.check(case)
        assert p.geometry[y]["BLOCKED"]


MANY_GROUPS = {
    # batch 1, 4+ groups: the threads take (image, group) pairs (no SPLIT, no barrier per group)
    "wide_5_groups_b1": ((1, 40, 20, 20), 40, dict(k=(3, 3), groups=5, padding=(1, 1), activation=RELU6), "wide"),
    "wide_4_groups_7x7": ((1, 32, 7, 7), 32, dict(k=(3, 3), groups=4, padding=(1, 1)), "wide"),
    "image_6_groups_s2_b1": ((1, 48, 15, 15), 48, dict(k=(3, 3), groups=6, stride=(2, 2), padding=(1, 1)), "image"),
}


def test_many_groups_batch1():
    net, ys, ref, p = _inference(MANY_GROUPS, _split, seed=61)
    for case, y in ys.items():
        g = p.geometry[y[0]]
        assert g["MODE"] == MANY_GROUPS[case][3] and not g["SPLIT"], case
        assert_close(p.view(y), ref[y], case)
    assert p.geometry[ys["wide_5_groups_b1"][0]]["PAR"]
    suite = Suite(seed=62)
    for case, args in MANY_GROUPS.items():
        suite.add(case, lambda net, args=args: _split(net, *args))
    suite.run()
    for case in MANY_GROUPS:
        suite.check(case)


def test_only_clamp_activations_are_fused_into_the_gemm_stores():
    """act_clamp: the (lo, hi) of `v < lo ? lo : v` then `v > hi ? hi : v` that the micro-kernel
    applies (NaN kept, as the reference), or None for the activations it cannot express."""
    assert c_clamp(None, cfloat) == ("-INFINITY", "INFINITY")
    relu, leaky_clip = ({"name": "Rectifier", **dict(ACTIVATIONS[a][1])} for a in ("relu", "leaky_clip"))
    assert c_clamp(relu, cfloat) == (cfloat(0.0), "INFINITY")
    assert c_clamp(dict(relu, clipping=6.0), cfloat) == (cfloat(0.0), cfloat(6.0))
    assert c_clamp(leaky_clip, cfloat) is None
    assert c_clamp({"name": "Tanh", "alpha": 1.5}, cfloat) is None


def test_max_pool_forward_loops_vectorise(tmp_path):
    """LeNet's max pools (2x2 on 28x28 planes: separable; on 10x10: straight from the row pairs)
    take the NaN-exact maximum n2d2_nanmax (maxps with the unordered mask OR'ed in). Every loop
    holding one, or the loop around it, must vectorise with the backend's own flags (each part
    of the program compiled); where a chain stays scalar it must not branch on the data, as
    n2d2_fmax's nested selects do on AVX2."""
    net = Net(seed=63, name="pools")
    ys = [_pool(net, (2, 6, 28, 28), "Max", (2, 2), (2, 2), (0, 0)),
          _pool(net, (2, 16, 10, 10), "Max", (2, 2), (2, 2), (0, 0))]
    net.output(*ys)
    p = c_backend.CProgram(net.g, [net.g.topological_order()])
    assert [p.geometry[y]["DIRECT2"] for y in ys] == [False, True]
    src = tmp_path / "pools.c"
    src.write_text(p.source)
    flags = [f for f in compiler.default_flags() if f not in ("-shared", "-fPIC") and not f.startswith("-W")]
    vectorised = set()
    for part in sorted({int(k) for k in re.findall(r"N2D2_PART == (\d+)", p.source)}):
        out = subprocess.run([compiler.find_compiler(), *flags, f"-DN2D2_PART={part}", "-fopt-info-vec-optimized",
                              "-c", str(src), "-o", str(tmp_path / "pools.o")], capture_output=True, text=True,
                             check=True).stderr
        vectorised |= {int(m) for m in re.findall(r"pools\.c:(\d+):\d+: optimized: loop vectorized", out)}
    text = p.source.splitlines()
    uses = [i for i, line in enumerate(text) if "n2d2_nanmax(" in line and "static inline" not in line]
    assert len(uses) >= 3
    scalar = []
    for i in uses:
        # the two innermost loops around line i (1-based numbers, as gcc reports them)
        loops, indent = [], len(text[i]) - len(text[i].lstrip())
        for j in range(i, -1, -1):
            lead = len(text[j]) - len(text[j].lstrip())
            if text[j].lstrip().startswith("for (") and (j == i or lead < indent):
                loops.append(j + 1)
                indent = lead
            if len(loops) == 2:
                break
        if not vectorised & set(loops):
            scalar.append(text[i].strip())
    assert not scalar, f"max-pool loops left scalar: {scalar}"
    # outside those loops (short rows unrolled, a global pool's chain across its row): no branch
    # on the data, where n2d2_fmax has some (which makes the check able to fail)
    chain = tmp_path / "chain.c"
    includes = "#include <math.h>\n#include <stdint.h>\n#include <string.h>\n"
    chain.write_text(includes + render("c/runtime.c.j2") + "".join(
        f"\nfloat {f}_chain(const float *x) {{ return {f}({f}({f}(x[0], x[1]), x[2]), x[3]); }}"
        for f in ("n2d2_nanmax", "n2d2_fmax")))
    subprocess.run([compiler.find_compiler(), *flags, "-S", str(chain), "-o", str(tmp_path / "chain.s")], check=True)
    asm = (tmp_path / "chain.s").read_text()
    body = {f: asm.split(f + "_chain:")[1].split(".cfi_endproc")[0] for f in ("n2d2_nanmax", "n2d2_fmax")}
    branches = {f: len(re.findall(r"^\s+(j(?!mp\b)[a-z]+|b\.[a-z]+|cbn?z)\s", b, re.M)) for f, b in body.items()}
    assert branches["n2d2_fmax"] > 0 and branches["n2d2_nanmax"] == 0, branches
