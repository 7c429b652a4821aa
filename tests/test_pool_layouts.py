"""Pooling ops on inputs of any memory layout: the reshape fast path (rows contiguous) and the
strided-view path give the same results, equal to PyTorch, to an explicit loop (ties: the first
maximum in row-major order) and to finite differences; results are laid out as the input.

Convolution outputs are NCHW views of [C, H, W, N] buffers, so the view path is what eager
LeNet runs; the tiles path is what a C-contiguous NCHW input runs.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from n2d2.ops import pool as ops
from tests.conftest import fd_grad, rel_err

# memory order of the NCHW axes: (1, 2, 3, 0) is a conv output ([C, H, W, N] in memory)
LAYOUTS = {"NCHW": (0, 1, 2, 3), "CHWN": (1, 2, 3, 0), "NHWC": (0, 2, 3, 1), "HWNC": (2, 3, 0, 1)}

# (input NCHW, pool, stride, pad) in numpy (height, width) order
GEOMETRIES = [
    ((3, 4, 8, 8), (2, 2), (2, 2), (0, 0)),     # LeNet: non-overlapping, exact tiling
    ((2, 3, 7, 9), (2, 2), (2, 2), (0, 0)),     # non-overlapping, last row/column dropped
    ((2, 2, 9, 8), (3, 2), (3, 2), (0, 0)),     # rectangular non-overlapping
    ((2, 2, 6, 6), (2, 2), (2, 2), (1, 1)),     # non-overlapping, padded (exact tiling of the padding)
    ((2, 3, 7, 6), (3, 3), (1, 1), (1, 1)),     # overlapping, padded
    ((2, 2, 9, 8), (3, 2), (2, 3), (1, 0)),     # rectangular everything
    ((2, 2, 10, 10), (2, 2), (3, 3), (0, 0)),   # stride > pool: uncovered inputs
]


def _laid_out(x, layout):
    """Copy of the NCHW array x whose memory holds the axes in the order LAYOUTS[layout]."""
    order = LAYOUTS[layout]
    return np.ascontiguousarray(x.transpose(order)).transpose(np.argsort(order))


def _order(a):
    """Axes from the largest stride to the smallest."""
    return tuple(np.argsort([-s for s in a.strides], kind="stable"))


def _torch_max(x, dy, pool, stride, pad):
    xt = torch.tensor(np.ascontiguousarray(x), requires_grad=True)
    yt = F.max_pool2d(xt, pool, stride, pad)
    yt.backward(torch.tensor(np.ascontiguousarray(dy)))
    return yt.detach().numpy(), xt.grad.numpy()


def _loop_max(x, dy, pool, stride, pad):
    """Max pooling by explicit loops: padding never wins, the first maximum (row-major) takes dy."""
    n, c, h, w = x.shape
    oh, ow = (ops.output_size(s, k, st, p) for s, k, st, p in zip((h, w), pool, stride, pad))
    y = np.zeros((n, c, oh, ow), x.dtype)
    dx = np.zeros_like(x)
    for i, j, oy, ox in np.ndindex(n, c, oh, ow):
        best = None
        for ky in range(pool[0]):
            for kx in range(pool[1]):
                r, s = oy * stride[0] + ky - pad[0], ox * stride[1] + kx - pad[1]
                if 0 <= r < h and 0 <= s < w and (best is None or x[i, j, r, s] > x[i, j, best[0], best[1]]):
                    best = (r, s)
        if best is not None:
            y[i, j, oy, ox] = x[i, j, best[0], best[1]]
            dx[i, j, best[0], best[1]] += dy[i, j, oy, ox]
    return y, dx


def _max(x, dy, pool, stride, pad):
    y = ops.max_pool_forward(x, pool, stride, pad)
    return y, ops.max_pool_backward(dy, x, y, pool, stride, pad)


@pytest.mark.parametrize("shape,pool,stride,pad", GEOMETRIES)
def test_max_pool_same_in_every_layout_and_matches_torch(shape, pool, stride, pad):
    rng = np.random.default_rng(sum(shape) + 10 * sum(pool) + sum(stride) + sum(pad))
    x = rng.standard_normal(shape).astype(np.float32)
    y_ref, dx_ref = None, None
    for layout in LAYOUTS:
        xl = _laid_out(x, layout)
        if y_ref is None:
            dy = rng.standard_normal(ops.max_pool_forward(x, pool, stride, pad).shape).astype(np.float32)
        y, dx = _max(xl, _laid_out(dy, layout), pool, stride, pad)
        if y_ref is None:
            y_ref, dx_ref = y, dx
            yt, dxt = _torch_max(x, dy, pool, stride, pad)
            assert rel_err(y, yt) < 1e-5 and rel_err(dx, dxt) < 1e-5
        # the tiles path (rows contiguous) and the view path agree bit for bit
        assert np.array_equal(y, y_ref), layout
        assert np.array_equal(dx, dx_ref), layout
        assert y.dtype == dx.dtype == np.float32


@pytest.mark.parametrize("shape,pool,stride,pad", GEOMETRIES)
def test_max_pool_ties_go_to_the_first_maximum_in_every_layout(shape, pool, stride, pad):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, shape).astype(np.float32)   # many tied windows
    y0 = ops.max_pool_forward(x, pool, stride, pad)
    dy = rng.integers(1, 5, y0.shape).astype(np.float32)  # distinct per window: routing is visible
    y_loop, dx_loop = _loop_max(x, dy, pool, stride, pad)
    yt, dxt = _torch_max(x, dy, pool, stride, pad)
    assert np.array_equal(dx_loop, dxt)  # the loop is PyTorch's rule
    for layout in LAYOUTS:
        y, dx = _max(_laid_out(x, layout), _laid_out(dy, layout), pool, stride, pad)
        assert np.array_equal(y, y_loop), layout
        assert np.array_equal(dx, dx_loop), layout


def test_max_pool_tie_rule_inside_one_window():
    # window values [[a, b], [c, d]]: the first of the tied maxima in row-major order wins;
    # a second window of four equal values beside it (so that this is not global pooling)
    cases = {(0, 1, 1, 0): (0, 1), (1, 0, 0, 1): (0, 0), (0, 0, 1, 1): (1, 0), (1, 1, 1, 1): (0, 0),
             (0, 0, 0, 1): (1, 1)}
    dy = np.tile(np.array([5.0, 7.0], np.float32).reshape(1, 1, 1, 2), (2, 3, 1, 1))
    for values, winner in cases.items():
        window = np.array(values, np.float32).reshape(2, 2)
        x = np.tile(np.concatenate([window, np.full((2, 2), 3.0, np.float32)], axis=1), (2, 3, 1, 1))
        expected = np.zeros((2, 3, 2, 4), np.float32)
        expected[:, :, winner[0], winner[1]] = 5.0
        expected[:, :, 0, 2] = 7.0
        for layout in LAYOUTS:
            _, dx = _max(_laid_out(x, layout), _laid_out(dy, layout), (2, 2), (2, 2), (0, 0))
            assert np.array_equal(dx, expected), (values, layout)


@pytest.mark.parametrize("shape,pool,stride,pad", [GEOMETRIES[i] for i in (0, 1, 3, 4, 6)])
@pytest.mark.parametrize("layout", ["NCHW", "CHWN"])
def test_max_pool_finite_differences_float64(shape, pool, stride, pad, layout):
    rng = np.random.default_rng(11)
    x = _laid_out(rng.standard_normal(shape), layout)
    f = lambda a: ops.max_pool_forward(a, pool, stride, pad)  # noqa: E731
    y = f(x)
    dy = rng.standard_normal(y.shape)
    dx = ops.max_pool_backward(dy, x, y, pool, stride, pad)
    assert y.dtype == dx.dtype == np.float64
    assert rel_err(dx, fd_grad(f, x, dy)) < 1e-6


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_results_and_gradients_are_laid_out_as_the_input(layout):
    rng = np.random.default_rng(5)
    x = _laid_out(rng.standard_normal((4, 3, 8, 8)).astype(np.float32), layout)
    for pool, stride, pad in (((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1))):
        y = ops.max_pool_forward(x, pool, stride, pad)
        dy = _laid_out(np.ones(y.shape, np.float32), layout)
        dx = ops.max_pool_backward(dy, x, y, pool, stride, pad)
        assert _order(y) == _order(dx) == _order(x) == LAYOUTS[layout]
        ya = ops.avg_pool_forward(x, pool, stride, pad)
        dxa = ops.avg_pool_backward(dy, x.shape, pool, stride, pad)
        assert _order(ya) == _order(dxa) == LAYOUTS[layout]


@pytest.mark.parametrize("shape,pool,stride,pad", GEOMETRIES)
def test_avg_pool_same_in_every_layout_and_matches_torch(shape, pool, stride, pad):
    rng = np.random.default_rng(sum(shape) + sum(pool))
    x = rng.standard_normal(shape).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt = F.avg_pool2d(xt, pool, stride, pad, count_include_pad=True)
    dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dy))
    y_ref = dx_ref = None
    for layout in LAYOUTS:
        y = ops.avg_pool_forward(_laid_out(x, layout), pool, stride, pad)
        dx = ops.avg_pool_backward(_laid_out(dy, layout), shape, pool, stride, pad)
        if y_ref is None:
            y_ref, dx_ref = y, dx
            assert rel_err(y, yt.detach().numpy()) < 1e-5 and rel_err(dx, xt.grad.numpy()) < 1e-5
        assert np.array_equal(y, y_ref) and np.array_equal(dx, dx_ref), layout


def test_avg_pool_finite_differences_float64_conv_layout():
    rng = np.random.default_rng(12)
    for pool, stride, pad in (((2, 2), (2, 2), (0, 0)), ((3, 3), (1, 1), (1, 1)), ((2, 2), (3, 3), (0, 0))):
        x = _laid_out(rng.standard_normal((2, 2, 7, 7)), "CHWN")
        f = lambda a: ops.avg_pool_forward(a, pool, stride, pad)  # noqa: E731
        dy = rng.standard_normal(f(x).shape)
        dx = ops.avg_pool_backward(dy, x.shape, pool, stride, pad)
        assert dx.dtype == np.float64
        assert rel_err(dx, fd_grad(f, x, dy)) < 1e-6


def test_strided_and_mapped_inputs():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 4, 8, 16)).astype(np.float32)
    every_other_column = x[:, :, :, ::2]          # rows not contiguous: the view path
    dense = np.ascontiguousarray(every_other_column)
    dy = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    for a, b in zip(_max(every_other_column, dy, (2, 2), (2, 2), (0, 0)), _max(dense, dy, (2, 2), (2, 2), (0, 0))):
        assert np.array_equal(a, b)
    mapping = rng.random((4, 3)) < 0.6
    mapping[:, 0] = True
    xc = dense[:, :, :, :6]
    y0, ctx0 = ops.mapped_max_pool_forward(xc, mapping, (2, 2), (2, 2))
    y1, ctx1 = ops.mapped_max_pool_forward(_laid_out(xc, "CHWN"), mapping, (2, 2), (2, 2))
    assert np.array_equal(y0, y1)
    dym = rng.standard_normal(y0.shape).astype(np.float32)
    assert np.array_equal(ops.mapped_max_pool_backward(dym, xc, ctx0, mapping, (2, 2), (2, 2)),
                          ops.mapped_max_pool_backward(dym, _laid_out(xc, "CHWN"), ctx1, mapping, (2, 2), (2, 2)))
