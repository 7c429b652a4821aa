"""Dropout, Padding, Activation, Reshape, Resize, Scaling, Transpose: numerics vs PyTorch and finite
differences, parameter round-trips and argument validation (reference sections 7, 14, 22)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import n2d2
from n2d2.activation import Linear, Rectifier, Tanh
from n2d2.cells import (
    Activation,
    BatchNorm2d,
    Dropout,
    ElemWise,
    GlobalPool2d,
    Padding,
    Pool2d,
    Reshape,
    Resize,
    Scaling,
    Softmax,
    Transpose,
)
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ops import padding as pad_ops
from n2d2.ops import resize as resize_ops
from n2d2.ops import scaling as scaling_ops
from n2d2.scaling import DoubleShiftScaling, FixedPointScaling, FloatingPointScaling, SingleShiftScaling
from n2d2.utils import reset_name_counters
from tests.conftest import fd_grad, rel_err, requires_cuda


def _run(cell, x, dy=None, seed=0):
    """Forward (a numpy array or an Interface) then backward with input gradients forced on."""
    inputs = n2d2.Tensor.from_numpy(x) if isinstance(x, np.ndarray) else x
    y = cell(inputs)
    if dy is None:
        dy = np.random.default_rng(seed).standard_normal(y.shape()).astype(np.float32)
    record = y.get_deepnet().records()[-1]
    dxs = cell._backward(record.ctx, dy, [True] * len(record.inputs))
    return y.to_numpy(), (dxs[0] if len(dxs) == 1 else dxs), dy


def _torch_grad(fn, x, dy):
    xt = torch.tensor(x, requires_grad=True)
    yt = fn(xt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


def _random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- Dropout ------------------------------------------------------------------------------------
def test_dropout_keeps_with_probability_one_minus_p_unscaled_and_is_identity_in_test_mode():
    x = np.abs(_random((8, 4, 16, 16))) + 0.1
    cell = Dropout(dropout=0.3)
    y, dx, dy = _run(cell, x)
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.02
    assert np.array_equal(y[kept], x[kept])  # no 1 / (1 - p) factor
    assert np.array_equal(dx, dy * kept)
    cell.test()
    y, dx, dy = _run(cell, x)
    assert np.array_equal(y, x) and np.array_equal(dx, dy)


def test_dropout_mask_follows_the_global_seed():
    x = np.ones((2, 3, 4, 4), dtype=np.float32)
    n2d2.global_variables.seed = 5
    first = Dropout()(n2d2.Tensor.from_numpy(x)).to_numpy()
    n2d2.global_variables.seed = 5
    second = Dropout()(n2d2.Tensor.from_numpy(x)).to_numpy()
    assert np.array_equal(first, second)
    assert np.array_equal(Dropout(dropout=0.0)(n2d2.Tensor.from_numpy(x)).to_numpy(), x)
    assert not Dropout(dropout=1.0)(n2d2.Tensor.from_numpy(x)).to_numpy().any()


def test_dropout_mask_drawn_in_place_equals_the_reference():
    """fill_dropout_mask (the C backend's per-step mask) draws what dropout_mask draws: same
    values, same generator state after, whatever the shape and rate (0 and 1 included)."""
    from n2d2.ops.dropout import dropout_mask, fill_dropout_mask

    for k, (shape, rate) in enumerate([((128, 84), 0.5), ((3, 5, 7, 2), 0.3), ((1,), 0.0), ((4, 9), 1.0),
                                       ((17, 3, 1, 1), 0.9)]):
        a, b = np.random.default_rng(k), np.random.default_rng(k)
        expected = dropout_mask(a, shape, rate)
        out = np.full(shape, np.nan, dtype=np.float32)
        fill_dropout_mask(b, out, rate)
        assert np.array_equal(out, expected) and out.dtype == expected.dtype
        assert a.bit_generator.state == b.bit_generator.state


# -- Padding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("pads", [(1, 2, 3, 0), (0, 0, 0, 0), (-1, 2, 1, -2), (-2, -1, -1, -3)])
def test_padding_matches_torch(pads):
    x = _random((2, 3, 5, 6), seed=sum(pads) + 10)
    top, bot, left, right = pads
    y, dx, dy = _run(Padding(*pads), x)
    yt, dxt = _torch_grad(lambda t: F.pad(t, (left, right, top, bot)), x, dy)
    assert np.array_equal(y, yt) and np.array_equal(dx, dxt)
    xd = x.astype(np.float64)
    dyd = dy.astype(np.float64)
    assert rel_err(pad_ops.pad_backward(dyd, *pads), fd_grad(lambda a: pad_ops.pad_forward(a, *pads), xd, dyd)) < 1e-8


# -- Activation cell (sections 14, 22 test_activation) ----------------------------------------------
def _activation_cell_output(activation, values):
    t = n2d2.Tensor([1, 1, 2, 2])
    t.set_values(values)
    return Activation(activation=activation)(t)


def test_activation_cell_numerics():
    out = _activation_cell_output(Linear(), [[[[0.0, 1.0], [2.0, 3.0]]]])
    assert list(out) == [0.0, 1.0, 2.0, 3.0]
    values = [[[[0.0, 1.0], [2.0, 3.0]]]]
    out = _activation_cell_output(Tanh(), values)
    for got, v in zip(out, [0.0, 1.0, 2.0, 3.0]):
        assert round(got, 5) == round(math.tanh(v), 5)
    out = _activation_cell_output(Rectifier(), [[[[-1.0, -2.0], [2.0, 3.0]]]])
    assert list(out) == [0.0, 0.0, 2.0, 3.0]


def test_activation_cell_gradient_and_interface_concatenation():
    a, b = _random((2, 2, 3, 3), 1), _random((2, 3, 3, 3), 2)
    cell = Activation(Tanh(alpha=0.5))
    y, dxs, dy = _run(cell, n2d2.Interface([n2d2.Tensor.from_numpy(a), n2d2.Tensor.from_numpy(b)]))
    yt, dxt = _torch_grad(lambda t: torch.tanh(0.5 * t), np.concatenate([a, b], axis=1), dy)
    assert y.shape == (2, 5, 3, 3)
    assert rel_err(y, yt) < 1e-6
    assert rel_err(np.concatenate(dxs, axis=1), dxt) < 1e-6


# -- Reshape ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims,shape", [([4, 4, 5], (1, 5, 4, 4)), ([16, 5], (1, 1, 5, 16)), ([80], (1, 1, 1, 80)),
                                        ([0, -1, 1], (1, 1, 20, 4)), ([2, 8, 5, 0], (1, 5, 8, 2))])
def test_reshape_uses_n2d2_order_without_batch(dims, shape):
    x = _random((1, 5, 4, 4))
    cell = Reshape(dims)
    y, dx, dy = _run(cell, x)
    assert y.shape == shape
    assert np.array_equal(y.reshape(-1), x.reshape(-1))
    assert np.array_equal(dx, dy.reshape(x.shape))
    assert cell.get_parameter("dims") == dims  # (cell.dims() is the output dims, as upstream)


def test_reshape_errors():
    with pytest.raises(WrongInputType):
        Reshape(80)
    with pytest.raises(WrongValue):
        Reshape([-1, -1])
    with pytest.raises(ValueError, match="'rs'"):
        Reshape([7, 7], name="rs")(n2d2.Tensor([1, 5, 4, 4]))


# -- Resize -------------------------------------------------------------------------------------
def _n2d2_bilinear_tf(x, out_h, out_w, align_corners):
    """ResizeCell_Frame::propagateBilinearTF, transcribed."""
    n, c, h, w = x.shape

    def table(out, size):
        scale = (size - 1) / (out - 1) if align_corners and out > 1 else size / out
        rows = []
        for i in range(out):
            src = i * scale
            low = int(src)
            rows.append((low, min(low + 1, size - 1), src - low))
        return rows

    ys, xs = table(out_h, h), table(out_w, w)
    y = np.zeros((n, c, out_h, out_w))
    for oy, (y0, y1, fy) in enumerate(ys):
        for ox, (x0, x1, fx) in enumerate(xs):
            top = x[:, :, y0, x0] + (x[:, :, y0, x1] - x[:, :, y0, x0]) * fx
            bottom = x[:, :, y1, x0] + (x[:, :, y1, x1] - x[:, :, y1, x0]) * fx
            y[:, :, oy, ox] = top + (bottom - top) * fy
    return y


@pytest.mark.parametrize("out_hw", [(9, 11), (3, 4), (6, 5), (1, 1)])
def test_resize_matches_torch(out_hw):
    x = _random((2, 3, 6, 5), seed=out_hw[0])
    oh, ow = out_hw
    for mode, torch_fn in (
            ("Bilinear", lambda t: F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=False)),
            ("BilinearTF", lambda t: F.interpolate(t, size=(oh, ow), mode="bilinear", align_corners=True)),
            ("NearestNeighbor", lambda t: F.interpolate(t, size=(oh, ow), mode="nearest"))):
        y, dx, dy = _run(Resize(ow, oh, mode), x)
        yt, dxt = _torch_grad(torch_fn, x, dy)
        assert rel_err(y, yt) < 1e-5, mode
        assert rel_err(dx, dxt) < 1e-5, mode
    y, dx, dy = _run(Resize(ow, oh, "BilinearTF", align_corners=False), x)
    assert rel_err(y, _n2d2_bilinear_tf(x.astype(np.float64), oh, ow, False)) < 1e-6


def test_resize_op_finite_differences():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 4, 5))
    for mode in resize_ops.MODES:
        a_h = resize_ops.interpolation_matrix(7, 4, mode, False)
        a_w = resize_ops.interpolation_matrix(3, 5, mode, False)
        dy = rng.standard_normal((1, 2, 7, 3))
        dx = resize_ops.resize_backward(dy, a_h, a_w)
        assert dx.dtype == np.float64
        assert rel_err(dx, fd_grad(lambda a: resize_ops.resize_forward(a, a_h, a_w), x, dy)) < 1e-6


# -- Scaling ------------------------------------------------------------------------------------
def _shift(v, s):
    """Python-int reference of (v + 2^(s-1)) >> s."""
    return (v + ((1 << (s - 1)) if s > 0 else 0)) >> s


def _round(v):
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def test_floating_point_scaling_matches_torch():
    x = _random((2, 3, 4, 4)) * 3
    scales, clip = [0.5, -2.0, 1.5], [1.0, 2.0, 0.5]
    y, dx, dy = _run(Scaling(FloatingPointScaling(scales, False, [])), x)
    s = torch.tensor(scales).reshape(1, 3, 1, 1)
    yt, dxt = _torch_grad(lambda t: t * s, x, dy)
    assert rel_err(y, yt) < 1e-6 and rel_err(dx, dxt) < 1e-6
    y, dx, dy = _run(Scaling(FloatingPointScaling(scales, True, clip)), x)
    c = torch.tensor(clip).reshape(1, 3, 1, 1)
    yt, dxt = _torch_grad(lambda t: torch.minimum(torch.clamp(t, min=0), c) * s, x, dy)
    assert rel_err(y, yt) < 1e-6 and rel_err(dx, dxt) < 1e-6
    xd, dyd = x.astype(np.float64), dy.astype(np.float64)
    f = lambda a: scaling_ops.floating_point_forward(a, scales, clip)  # noqa: E731
    assert rel_err(scaling_ops.floating_point_backward(dyd, xd, scales, clip), fd_grad(f, xd, dyd)) < 1e-6


def test_integer_scalings_match_integer_arithmetic():
    x = _random((2, 3, 3, 3)) * 40
    flat = [(b, c, i, j) for b in range(2) for c in range(3) for i in range(3) for j in range(3)]
    fixed = FixedPointScaling(4, [3, 21, -7])
    y, dx, dy = _run(Scaling(fixed), x)
    for b, c, i, j in flat:
        assert y[b, c, i, j] == _shift(_round(float(x[b, c, i, j])) * fixed.scaling[c], 4)
    assert rel_err(dx, dy * np.array([3, 21, -7], np.float32).reshape(1, 3, 1, 1) / 16) < 1e-7
    single = SingleShiftScaling([0, 2, 5], True, [1000.0, 1000.0, 10.0])
    y, dx, dy = _run(Scaling(single), x)
    for b, c, i, j in flat:
        v = min(float(x[b, c, i, j]), single.clipping[c])
        assert y[b, c, i, j] == _shift(_round(v), single.scaling[c])
    assert np.array_equal(dx[:, 2] == 0, x[:, 2] >= 10.0)
    double = DoubleShiftScaling([(1, 2), (0, 3), (3, 1)])
    y, dx, dy = _run(Scaling(double), x)
    for b, c, i, j in flat:
        a, s = double.scaling[c]
        v = _round(float(x[b, c, i, j]))
        assert y[b, c, i, j] == _shift(v + (v << a), s)
    factor = np.array([(1 + 2**a) / 2**s for a, s in double.scaling], np.float32).reshape(1, 3, 1, 1)
    assert rel_err(dx, dy * factor) < 1e-7


def test_scaling_validation():
    with pytest.raises(WrongInputType):
        Scaling(1.0)
    with pytest.raises(WrongInputType):
        FloatingPointScaling("1.0", False, [])
    with pytest.raises(WrongInputType):
        FloatingPointScaling([1.0], 1, [])
    with pytest.raises(WrongInputType):
        FixedPointScaling(4.0, [1])
    with pytest.raises(WrongInputType):
        FixedPointScaling(4, [1.5])
    with pytest.raises(WrongInputType):
        SingleShiftScaling([-1])
    with pytest.raises(WrongInputType):
        DoubleShiftScaling([1, 2])
    with pytest.raises(ValueError, match="'sc'"):
        Scaling(FloatingPointScaling([1.0, 2.0]), name="sc")(n2d2.Tensor([1, 5, 4, 4]))
    scaling = FloatingPointScaling([1.0] * 5, False, [])
    cell = Scaling(scaling)
    cell(n2d2.Tensor([1, 5, 4, 4]))
    assert cell.scaling is scaling
    assert str(scaling) == ("FloatingPointScaling(scaling_per_output=[1.0, 1.0, 1.0, 1.0, 1.0], is_clipped=False, "
                            "clipping=[])")


# -- Transpose ----------------------------------------------------------------------------------
@pytest.mark.parametrize("perm", [[1, 0, 2, 3], [2, 0, 1, 3], [0, 2, 1, 3], [1, 2, 0]])
def test_transpose_permutes_n2d2_axes(perm):
    x = _random((2, 3, 4, 5), seed=len(perm))
    cell = Transpose(perm)
    y = cell(n2d2.Tensor.from_numpy(x))
    full = perm + [3] if len(perm) == 3 else perm
    assert y.dims() == [n2d2.Tensor.from_numpy(x).dims()[p] for p in full]
    axes = tuple(3 - full[3 - j] for j in range(4))
    yv, dx, dy = _run(Transpose(perm), x)
    yt, dxt = _torch_grad(lambda t: t.permute(*axes), x, dy)
    assert np.array_equal(yv, yt) and np.array_equal(dx, dxt)
    if perm == [1, 0, 2, 3]:
        assert axes == (0, 1, 3, 2)


def test_transpose_validation():
    with pytest.raises(WrongInputType):
        Transpose((1, 0, 2, 3))
    with pytest.raises(WrongValue):
        Transpose([0, 1, 1, 3])
    with pytest.raises(WrongValue):
        Transpose([3, 1, 2, 0])


# -- reference section 22: parameters round-trip after a dummy [1, 5, 4, 4] call, input types ---
def test_parameters_reach_the_cells():
    reset_name_counters()
    dummy = lambda: n2d2.Tensor([1, 5, 4, 4])  # noqa: E731
    cases = [
        (Dropout, {"dropout": 0.2, "name": "d"}),
        (Padding, {"top_pad": 1, "bot_pad": 2, "left_pad": 3, "right_pad": 4}),
        (Activation, {"activation": Tanh()}),
        (Reshape, {"dims": [4, 4, 5]}),
        (Resize, {"outputs_width": 7, "outputs_height": 3, "resize_mode": "NearestNeighbor"}),
        (Softmax, {"with_loss": True, "group_size": 5}),
        (Transpose, {"perm": [1, 0, 2, 3]}),
        (Pool2d, {"pool_dims": [2, 2], "pooling": "Average", "stride_dims": [2, 2], "padding_dims": [1, 1],
                  "activation": Rectifier()}),
    ]
    for cls, params in cases:
        cell = cls(**params)
        cell(dummy())
        for key, value in params.items():
            if key == "name":
                assert cell.get_name() == value
            else:
                got = cell.get_parameter(key)
                assert got is value if key == "activation" else got == value, (cls, key)


def test_bad_argument_types():
    bad = [lambda: Dropout(dropout=1), lambda: Dropout(dropout="0.5"), lambda: Padding(1.0, 0, 0, 0),
           lambda: Padding(0, 0, 0, "1"), lambda: Reshape((4, 4, 5)), lambda: Softmax(with_loss="yes"),
           lambda: Resize(7.0, 3, "Bilinear"), lambda: Resize(7, 3, "Bilinear", 1),
           lambda: Activation("relu"), lambda: GlobalPool2d(pooling=0), lambda: Dropout(activation=Linear),
           lambda: BatchNorm2d(5, moving_average_momentum=0)]
    for make in bad:
        with pytest.raises(WrongInputType):
            make()
    with pytest.raises(WrongValue):
        Resize(7, 3, "Bicubic")
    with pytest.raises(WrongValue):  # enum-like: any value outside the modes, a non-string too
        Resize(7, 3, 1)
    with pytest.raises(WrongValue):
        Dropout(dropout=1.5)


def test_constructor_arguments_are_read_only_and_unknown_keys_refused():
    cell = Padding(1, 1, 1, 1)
    with pytest.raises(RuntimeError):
        cell.top_pad = 2
    with pytest.raises(ValueError):
        cell.set_parameter("no_such_key", 1)
    dropout = Dropout()
    dropout.dropout = 0.25
    assert dropout.get_parameter("dropout") == 0.25


def test_model_keys_print_plain_frame_for_untemplated_cells():
    reset_name_counters()
    assert str(Padding(1, 1, 1, 1)).startswith("'Padding_0' Padding(Frame)(top_pad=1")
    assert str(Resize(2, 2, "Bilinear")).startswith("'Resize_0' Resize(Frame)(")
    assert str(ElemWise()).startswith("'ElemWise_0' ElemWise(Frame)(")
    assert str(Dropout()) == "'Dropout_0' Dropout(Frame<float>)(dropout=0.5, activation=None)"


@requires_cuda
def test_cells_on_cuda_match_cpu():
    x = _random((4, 3, 8, 8), seed=11)
    for make in (lambda m: Pool2d([2, 2], stride_dims=[2, 2], model=m),
                 lambda m: Pool2d([3, 3], padding_dims=[1, 1], pooling="Average", model=m),
                 lambda m: BatchNorm2d(3, model=m), lambda m: Softmax(model=m), lambda m: Padding(1, 0, -1, 2, model=m),
                 lambda m: Resize(5, 11, "Bilinear", model=m), lambda m: Transpose([1, 0, 2, 3], model=m),
                 lambda m: Scaling(FloatingPointScaling([1.0, 2.0, 3.0], True, [1.0, 1.0, 1.0]), model=m)):
        dy = _random(make("Frame")(n2d2.Tensor.from_numpy(x)).shape(), seed=12)
        y_cpu, dx_cpu, _ = _run(make("Frame"), x, dy)
        cell = make("Frame_CUDA")
        y = cell(n2d2.Tensor.from_numpy(x))
        record = y.get_deepnet().records()[-1]
        import cupy

        dx = cupy.asnumpy(cell._backward(record.ctx, cupy.asarray(dy), [True])[0])
        assert rel_err(y.to_numpy(), y_cpu) < 1e-5
        assert rel_err(dx, dx_cpu) < 1e-5
