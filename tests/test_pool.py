"""Pool, Pool2d, GlobalPool2d: ops and cells vs PyTorch and finite differences, mappings, API."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import n2d2
from n2d2.activation import Rectifier
from n2d2.cells import GlobalPool2d, Padding, Pool, Pool2d, Pooling
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ops import pool as ops
from n2d2.utils import reset_name_counters
from tests.conftest import fd_grad, rel_err

# (input NCHW, pool [X, Y], stride [X, Y], padding [X, Y])
GEOMETRIES = [
    ((2, 3, 8, 8), [2, 2], [2, 2], [0, 0]),     # LeNet-style, divisible
    ((2, 2, 7, 9), [2, 2], [2, 2], [0, 0]),     # floor: last row/column dropped
    ((2, 2, 7, 6), [3, 3], [1, 1], [1, 1]),     # overlapping, padded
    ((1, 3, 9, 8), [3, 2], [2, 3], [1, 0]),     # rectangular everything
    ((2, 2, 10, 10), [2, 2], [3, 3], [0, 0]),   # stride > pool: uncovered inputs
    ((2, 4, 5, 5), [5, 5], [1, 1], [0, 0]),     # global
    ((1, 2, 6, 7), [3, 2], [1, 2], [1, 1]),
]


def _np_geometry(pool, stride, pad):
    return (pool[1], pool[0]), (stride[1], stride[0]), (pad[1], pad[0])


def _torch_pool(x, pooling, pool, stride, pad, dy):
    xt = torch.tensor(x, requires_grad=True)
    k, s, p = _np_geometry(pool, stride, pad)
    if pooling == "Max":
        yt = F.max_pool2d(xt, k, s, p)
    else:
        yt = F.avg_pool2d(xt, k, s, p, count_include_pad=True)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


def _run_cell(cell, x, dy):
    """Forward through the cell, then its backward with the input gradient forced on."""
    y = cell(n2d2.Tensor.from_numpy(x))
    record = y.get_deepnet().records()[-1]
    dx = cell._backward(record.ctx, dy, [True])[0]
    return y.to_numpy(), dx



@pytest.mark.parametrize("pooling", ["Max", "Average"])
@pytest.mark.parametrize("shape,pool,stride,pad", GEOMETRIES)
def test_pool2d_cell_matches_torch(pooling, shape, pool, stride, pad):
    rng = np.random.default_rng(sum(shape) * 10 + sum(pool) + len(pooling))
    x = rng.standard_normal(shape).astype(np.float32)
    cell = Pool2d(pool, stride_dims=stride, padding_dims=pad, pooling=pooling)
    y = cell(n2d2.Tensor.from_numpy(x)).to_numpy()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    y, dx = _run_cell(cell, x, dy)
    yt, dxt = _torch_pool(x, pooling, pool, stride, pad, dy)
    assert y.shape == yt.shape
    assert rel_err(y, yt) < 1e-5
    assert rel_err(dx, dxt) < 1e-5


@pytest.mark.parametrize("pooling", ["Max", "Average"])
@pytest.mark.parametrize("shape,pool,stride,pad", GEOMETRIES[1:5])
def test_pool_ops_finite_differences(pooling, shape, pool, stride, pad):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape)
    k, s, p = _np_geometry(pool, stride, pad)
    if pooling == "Max":
        f = lambda a: ops.max_pool_forward(a, k, s, p)  # noqa: E731
    else:
        f = lambda a: ops.avg_pool_forward(a, k, s, p)  # noqa: E731
    y = f(x)
    dy = rng.standard_normal(y.shape)
    if pooling == "Max":
        dx = ops.max_pool_backward(dy, x, y, k, s, p)
    else:
        dx = ops.avg_pool_backward(dy, x.shape, k, s, p)
    assert dx.dtype == np.float64
    assert rel_err(dx, fd_grad(f, x, dy)) < 1e-6


def test_max_pool_ties_go_to_the_first_maximum_like_torch():
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = 3.0  # two maxima in the first window
    x[0, 0, 2:, 2:] = 1.0                 # four equal values in the last window
    cell = Pool2d([2, 2], stride_dims=[2, 2])
    dy = np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2)
    y, dx = _run_cell(cell, x, dy)
    yt, dxt = _torch_pool(x, "Max", [2, 2], [2, 2], [0, 0], dy)
    assert np.array_equal(dx, dxt)
    assert dx[0, 0, 0, 1] == 1 and dx[0, 0, 1, 0] == 0 and dx[0, 0, 2, 2] == 4 and dx.sum() == 10
    # Overlapping windows: a shared maximum collects the gradient of every window.
    cell = Pool2d([3, 3], stride_dims=[1, 1], padding_dims=[1, 1])
    x = np.ones((1, 1, 3, 3), dtype=np.float32)
    dy = np.ones((1, 1, 3, 3), dtype=np.float32)
    _, dx = _run_cell(cell, x, dy)
    assert np.array_equal(dx, _torch_pool(x, "Max", [3, 3], [1, 1], [1, 1], dy)[1])


def _mapped_reference(x, mapping, pooling, k, s, p):
    """N2D2's PoolCell_Frame_Kernels loops, transcribed (count-include-padding average)."""
    n, c, h, w = x.shape
    o = mapping.shape[1]
    oh = (h + 2 * p[0] - k[0] + s[0]) // s[0]
    ow = (w + 2 * p[1] - k[1] + s[1]) // s[1]
    y = np.zeros((n, o, oh, ow))
    for b in range(n):
        for out in range(o):
            for oy in range(oh):
                for ox in range(ow):
                    values, count = [], 0
                    for ch in range(c):
                        if not mapping[ch, out]:
                            continue
                        count += k[0] * k[1]
                        for sy in range(k[0]):
                            for sx in range(k[1]):
                                iy, ix = oy * s[0] + sy - p[0], ox * s[1] + sx - p[1]
                                if 0 <= iy < h and 0 <= ix < w:
                                    values.append(x[b, ch, iy, ix])
                    if pooling == "Max":
                        y[b, out, oy, ox] = max(values) if values else 0.0
                    else:
                        y[b, out, oy, ox] = sum(values) / count if count else 0.0
    return y


@pytest.mark.parametrize("pooling", ["Max", "Average"])
def test_mapped_pool_ops_match_n2d2_loops_and_finite_differences(pooling):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 6))
    mapping = rng.random((4, 4)) < 0.5
    mapping[:, 2] = False  # an output with no input: 0, no gradient
    mapping[1, 3] = True
    k, s, p = (2, 3), (1, 2), (1, 1)
    if pooling == "Max":
        f = lambda a: ops.mapped_max_pool_forward(a, mapping, k, s, p)[0]  # noqa: E731
    else:
        f = lambda a: ops.mapped_avg_pool_forward(a, mapping, k, s, p)  # noqa: E731
    y = f(x)
    assert rel_err(y, _mapped_reference(x, mapping, pooling, k, s, p)) < 1e-12
    dy = rng.standard_normal(y.shape)
    if pooling == "Max":
        _, ctx = ops.mapped_max_pool_forward(x, mapping, k, s, p)
        dx = ops.mapped_max_pool_backward(dy, x, ctx, mapping, k, s, p)
    else:
        dx = ops.mapped_avg_pool_backward(dy, x.shape, mapping, k, s, p)
    assert rel_err(dx, fd_grad(f, x, dy)) < 1e-6


def test_pool_without_mapping_pools_across_all_channels_as_n2d2():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    cell = Pool([2, 2], stride_dims=[2, 2])
    dy = rng.standard_normal((2, 3, 2, 2)).astype(np.float32)
    y, dx = _run_cell(cell, x, dy)
    expected = F.max_pool2d(torch.tensor(x), 2, 2).amax(dim=1, keepdim=True).numpy()
    assert np.array_equal(y, np.broadcast_to(expected, y.shape))
    # Every output's gradient lands on the single overall maximum of each window.
    assert np.count_nonzero(dx) == 2 * 2 * 2
    assert np.isclose(dx.sum(), dy.sum(), rtol=1e-5)


def test_pool_with_identity_mapping_equals_pool2d_and_average_mapping_cell():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    eye = n2d2.Tensor.from_numpy(np.eye(3, dtype=bool))
    dy = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    y1, dx1 = _run_cell(Pool([2, 2], stride_dims=[2, 2], mapping=eye), x, dy)
    y2, dx2 = _run_cell(Pool2d([2, 2], stride_dims=[2, 2]), x, dy)
    assert np.array_equal(y1, y2) and np.array_equal(dx1, dx2)
    m = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=bool)
    cell = Pool([2, 2], stride_dims=[2, 2], pooling="Average", mapping=n2d2.Tensor.from_numpy(m))
    y, dx = _run_cell(cell, x, dy)
    ref = _mapped_reference(x.astype(np.float64), m, "Average", (2, 2), (2, 2), (0, 0))
    assert rel_err(y, ref) < 1e-6
    assert rel_err(dx, ops.mapped_avg_pool_backward(dy.astype(np.float64), x.shape, m, (2, 2), (2, 2), (0, 0))) < 1e-6


def test_global_pool():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 4, 5, 7)).astype(np.float32)
    for pooling, torch_op in (("Max", lambda t: t.amax(dim=(2, 3), keepdim=True)),
                              ("Average", lambda t: t.mean(dim=(2, 3), keepdim=True))):
        cell = GlobalPool2d(pooling=pooling)
        assert cell.pool_dims == []
        dy = rng.standard_normal((3, 4, 1, 1)).astype(np.float32)
        y, dx = _run_cell(cell, x, dy)
        assert cell.pool_dims == [7, 5] and cell.stride_dims == [1, 1]
        xt = torch.tensor(x, requires_grad=True)
        yt = torch_op(xt)
        yt.backward(torch.tensor(dy))
        assert rel_err(y, yt.detach().numpy()) < 1e-6
        assert rel_err(dx, xt.grad.numpy()) < 1e-6
    with pytest.raises(RuntimeError):
        GlobalPool2d(pool_dims=[2, 2])


def _pad_grad(x, dy):
    """d loss / d (padded input) of relu(maxpool2x2(pad1(x)))."""
    p = torch.tensor(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), requires_grad=True)
    torch.relu(F.max_pool2d(p, 2, 2)).backward(torch.tensor(dy))
    return p.grad.numpy()


def test_pool_activation_and_back_propagation_through_the_graph():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    pad = Padding(1, 1, 1, 1)
    pool = Pool2d([2, 2], stride_dims=[2, 2], activation=Rectifier())
    y = pool(pad(n2d2.Tensor.from_numpy(x)))
    dy = rng.standard_normal(y.shape()).astype(np.float32)
    y.get_deepnet().seed_gradient(y, dy)
    y.get_deepnet().back_propagate()
    yt = torch.relu(F.max_pool2d(F.pad(torch.tensor(x), (1, 1, 1, 1)), 2, 2))
    assert rel_err(y.to_numpy(), yt.numpy()) < 1e-6
    # N2D2 sign convention on the accessors: -(d loss / d x).
    assert rel_err(-pool.get_diffoutputs().to_numpy(), _pad_grad(x, dy)) < 1e-6
    assert np.array_equal(pad.get_diffinputs().to_numpy(), pool.get_diffoutputs().to_numpy())
    with pytest.raises(RuntimeError):
        pad.get_diffoutputs()  # its input comes from a provider: no gradient asked


def test_printing_and_parameters_after_a_call():
    reset_name_counters()
    cell = Pool2d([2, 2], stride_dims=[2, 2])
    cell(n2d2.Tensor([1, 5, 4, 4]))
    assert str(cell) == ("'Pool2d_0' Pool2d(Frame<float>)(pool_dims=[2, 2], stride_dims=[2, 2], padding_dims=[0, 0], "
                         "pooling=Pooling.Max | activation=None)(['TensorPlaceholder_0'])")
    act = Rectifier()
    mapping = n2d2.Tensor.from_numpy(np.eye(5, dtype=bool))
    params = {"pooling": "Average", "stride_dims": [2, 1], "padding_dims": [1, 0], "activation": act,
              "mapping": mapping}
    cell = Pool([3, 2], **params)
    cell(n2d2.Tensor([1, 5, 4, 4]))
    assert cell.get_parameter("pooling") == Pooling.Average == "Average"
    assert cell.stride_dims == [2, 1] and cell.padding_dims == [1, 0] and cell.pool_dims == [3, 2]
    assert cell.activation is act and cell.get_parameter("mapping") is mapping
    assert "mapping=n2d2.Tensor(dims=[5, 5])" in str(cell)
    with pytest.raises(RuntimeError):
        cell.pool_dims = [2, 2]
    with pytest.raises(RuntimeError):
        cell.set_parameter("pooling", "Max")
    with pytest.raises(ValueError):
        cell.get_parameter("kernel_dims")


def test_pool_input_validation():
    with pytest.raises(WrongInputType):
        Pool2d(2)
    with pytest.raises(WrongInputType):
        Pool2d([2, 2], pooling=1)
    with pytest.raises(WrongValue):
        Pool2d([2, 2], pooling="Median")
    with pytest.raises(WrongInputType):
        Pool2d([2, 2], stride_dims=2)
    with pytest.raises(WrongInputType):
        Pool2d([2, 2], activation="relu")
    with pytest.raises(RuntimeError):
        Pool2d([2, 2], mapping=n2d2.Tensor([3, 3], datatype="bool"))
    with pytest.raises(ValueError):
        Pool([2, 2], mapping=n2d2.Tensor([3, 4], datatype="bool"))
    with pytest.raises(WrongInputType):
        Pool([2, 2], mapping=np.eye(3, dtype=bool))
    cell = Pool([2, 2], mapping=n2d2.Tensor([3, 3], datatype="bool"), name="p")
    with pytest.raises(ValueError, match="'p'"):
        cell(n2d2.Tensor([1, 4, 4, 4]))


def test_geometry_is_frozen_at_the_first_call():
    cell = Pool2d([2, 2], stride_dims=[2, 2], name="frozen")
    assert cell(n2d2.Tensor([2, 3, 8, 8])).shape() == [2, 3, 4, 4]
    assert cell(n2d2.Tensor([5, 3, 8, 8])).shape() == [5, 3, 4, 4]  # batch may change
    with pytest.raises(RuntimeError, match="frozen.*dimZ"):
        cell(n2d2.Tensor([2, 4, 8, 8]))
    with pytest.raises(RuntimeError, match="frozen.*Unmatching"):
        cell(n2d2.Tensor([2, 3, 6, 8]))
    with pytest.raises(ValueError, match="larger than the input"):
        Pool2d([5, 5])(n2d2.Tensor([1, 1, 4, 4]))


def test_interface_inputs_are_concatenated_along_channels():
    rng = np.random.default_rng(9)
    a = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    b = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    cell = Pool2d([2, 2], stride_dims=[2, 2])
    y = cell(n2d2.Interface([n2d2.Tensor.from_numpy(a), n2d2.Tensor.from_numpy(b)]))
    expected = F.max_pool2d(torch.tensor(np.concatenate([a, b], axis=1)), 2, 2).numpy()
    assert np.array_equal(y.to_numpy(), expected)
    record = y.get_deepnet().records()[-1]
    dxs = cell._backward(record.ctx, np.ones(y.shape(), dtype=np.float32), [True, True])
    assert [d.shape for d in dxs] == [a.shape, b.shape]


def test_ops_run_in_float32_and_float64():
    x = np.random.default_rng(10).standard_normal((1, 2, 6, 6))
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)
        y = ops.max_pool_forward(xd, (2, 2), (2, 2), (0, 0))
        assert y.dtype == dtype
        assert ops.max_pool_backward(np.ones_like(y), xd, y, (2, 2), (2, 2), (0, 0)).dtype == dtype
        assert ops.avg_pool_forward(xd, (3, 3), (1, 1), (1, 1)).dtype == dtype
        assert ops.avg_pool_backward(np.ones((1, 2, 6, 6), dtype), xd.shape, (3, 3), (1, 1), (1, 1)).dtype == dtype
