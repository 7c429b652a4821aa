"""Softmax: forward and Jacobian vs PyTorch and finite differences, with_loss pass-through, groups, API."""
import numpy as np
import pytest
import torch

import n2d2
from n2d2.activation import Rectifier
from n2d2.cells import Fc, Softmax
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ops import softmax as ops
from n2d2.utils import reset_name_counters
from tests.conftest import fd_grad, rel_err


def _run(cell, x, dy):
    y = cell(n2d2.Tensor.from_numpy(x))
    record = y.get_deepnet().records()[-1]
    return y.to_numpy(), cell._backward(record.ctx, dy, [True])[0]


def _torch_softmax(x, group_size, dy):
    n, c, h, w = x.shape
    g = group_size or c
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.softmax(xt.reshape(n, c // g, g, h, w), dim=2).reshape(n, c, h, w)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("shape,group_size", [((3, 10, 1, 1), 0), ((2, 4, 3, 5), 0), ((2, 6, 2, 2), 2),
                                              ((1, 6, 3, 1), 3), ((4, 1, 2, 2), 0)])
def test_softmax_matches_torch(shape, group_size):
    rng = np.random.default_rng(sum(shape) + group_size)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, dx = _run(Softmax(group_size=group_size), x, dy)
    yt, dxt = _torch_softmax(x, group_size, dy)
    assert rel_err(y, yt) < 1e-5
    assert rel_err(dx, dxt) < 1e-5


def test_softmax_is_numerically_stable():
    x = np.array([[1000.0, 1001.0, -1000.0]], dtype=np.float32).reshape(1, 3, 1, 1)
    y = Softmax()(n2d2.Tensor.from_numpy(x)).to_numpy()
    assert np.all(np.isfinite(y))
    assert rel_err(y.reshape(-1), torch.softmax(torch.tensor(x.reshape(-1)), 0).numpy()) < 1e-6


def test_with_loss_passes_the_gradient_through():
    """The target seeds softmax - onehot: that is the cross-entropy gradient wrt the logits."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 1, 1)).astype(np.float32)
    labels = np.array([0, 3, 1, 4])
    cell = Softmax(with_loss=True)
    y = cell(n2d2.Tensor.from_numpy(x)).to_numpy()
    seed = y - np.eye(5, dtype=np.float32)[labels].reshape(4, 5, 1, 1)
    record = cell.get_outputs().get_deepnet().records()[-1]
    dx = cell._backward(record.ctx, seed, [True])[0]
    assert np.array_equal(dx, seed)
    xt = torch.tensor(x.reshape(4, 5), requires_grad=True)
    torch.nn.functional.cross_entropy(xt, torch.tensor(labels), reduction="sum").backward()
    assert rel_err(dx.reshape(4, 5), xt.grad.numpy()) < 1e-5
    # with_loss may be switched later (bool only); the full Jacobian is then used.
    cell.with_loss = False
    assert cell.get_parameter("with_loss") is False
    dx = cell._backward(record.ctx, seed, [True])[0]
    assert not np.allclose(dx, seed)
    with pytest.raises(WrongInputType):
        cell.with_loss = 1


def test_op_finite_differences():
    rng = np.random.default_rng(2)
    for group_size in (0, 2):
        x = rng.standard_normal((2, 4, 2, 3))
        dy = rng.standard_normal(x.shape)
        y = ops.softmax_forward(x, group_size)
        dx = ops.softmax_backward(dy, y, group_size)
        assert dx.dtype == np.float64
        assert rel_err(dx, fd_grad(lambda a: ops.softmax_forward(a, group_size), x, dy)) < 1e-6


def test_printing_and_parameters():
    reset_name_counters()
    cell = Softmax(with_loss=True, activation=Rectifier())
    cell(n2d2.Tensor([1, 5, 4, 4]))
    assert cell.group_size == 0 and cell.with_loss is True and isinstance(cell.activation, Rectifier)
    cell = Softmax(with_loss=True)
    cell(n2d2.Tensor([1, 5, 4, 4]))
    assert str(cell) == ("'Softmax_1' Softmax(Frame<float>)(with_loss=True, group_size=0 | activation=None)"
                         "(['TensorPlaceholder_1'])")
    fc = Fc(4, 3)
    softmax = Softmax()
    softmax(fc(n2d2.Tensor([2, 4, 1, 1])))
    assert softmax.get_deepnet().get_cells() == [fc, softmax]
    assert softmax.get_input_cells() == [fc.get_name()]
    with pytest.raises(RuntimeError):
        cell.group_size = 5


@pytest.mark.parametrize("kwargs,error", [
    (dict(with_loss=1), WrongInputType), (dict(group_size=1.0), WrongInputType), (dict(group_size=-1), WrongValue),
])
def test_constructor_rejects(kwargs, error):
    with pytest.raises(error):
        Softmax(**kwargs)


def test_input_validation():
    with pytest.raises(ValueError, match="'sm'"):
        Softmax(group_size=3, name="sm")(n2d2.Tensor([1, 5, 2, 2]))
    cell = Softmax(name="sm2")
    cell(n2d2.Tensor([1, 5, 2, 2]))
    with pytest.raises(RuntimeError, match="sm2"):
        cell(n2d2.Tensor([1, 4, 2, 2]))
