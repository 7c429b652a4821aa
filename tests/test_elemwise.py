"""ElemWise: every operation and coefficient mode vs PyTorch and finite differences, API."""
import numpy as np
import pytest
import torch

import n2d2
from n2d2.activation import Rectifier
from n2d2.cells import ElemWise, Fc, Layer, Sequence
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ops import elemwise as ops
from n2d2.utils import reset_name_counters
from tests.conftest import fd_grad, rel_err

SHAPE = (2, 3, 4, 5)



def _coefficients(mode, k, c, rng):
    """(weights, shifts) lists for the cell and the per-input torch coefficients they mean."""
    if mode == "PerLayer":
        w, s = [float(rng.uniform(0.5, 2))], [float(rng.standard_normal())]
        return w, s, [torch.tensor(w[0])] * k, [torch.tensor(s[0])] * k
    if mode == "PerInput":
        w, s = rng.uniform(-2, 2, k).tolist(), rng.standard_normal(k).tolist()
        return w, s, [torch.tensor(v) for v in w], [torch.tensor(v) for v in s]
    w, s = rng.uniform(-2, 2, k * c).tolist(), rng.standard_normal(k * c).tolist()
    per = lambda v, i: torch.tensor(v[i * c:(i + 1) * c], dtype=torch.float32).reshape(1, c, 1, 1)  # noqa: E731
    return w, s, [per(w, i) for i in range(k)], [per(s, i) for i in range(k)]


def _torch_elemwise(op, xts, ws, ss):
    if op == "Sum":
        return sum(w * x + s for x, w, s in zip(xts, ws, ss))
    if op == "AbsSum":
        return sum(w * x.abs() for x, w in zip(xts, ws))
    if op == "EuclideanSum":
        return torch.sqrt(sum(w * w * x * x + s * s for x, w, s in zip(xts, ws, ss)))
    if op == "Prod":
        out = xts[0]
        for x in xts[1:]:
            out = out * x
        return out
    return torch.stack(xts).amax(dim=0)


@pytest.mark.parametrize("operation", ops.OPERATIONS)
@pytest.mark.parametrize("mode", ["PerLayer", "PerInput", "PerChannel"])
@pytest.mark.parametrize("k", [1, 3])
def test_elemwise_matches_torch(operation, mode, k):
    rng = np.random.default_rng(len(operation) * 7 + len(mode) + k)
    xs = [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(k)]
    weights, shifts, tw, ts = _coefficients(mode, k, SHAPE[1], rng)
    cell = ElemWise(operation=operation, mode=mode, weights=weights, shifts=shifts, activation=Rectifier())
    inputs = n2d2.Interface([n2d2.Tensor.from_numpy(x) for x in xs]) if k > 1 else n2d2.Tensor.from_numpy(xs[0])
    y = cell(inputs)
    dy = rng.standard_normal(SHAPE).astype(np.float32)
    record = y.get_deepnet().records()[-1]
    dxs = cell._backward(record.ctx, dy, [True] * k)
    xts = [torch.tensor(x, requires_grad=True) for x in xs]
    yt = torch.relu(_torch_elemwise(operation, xts, tw, ts))
    yt.backward(torch.tensor(dy))
    assert rel_err(y.to_numpy(), yt.detach().numpy()) < 1e-5
    for dx, xt in zip(dxs, xts):
        assert rel_err(dx, xt.grad.numpy()) < 1e-5


@pytest.mark.parametrize("operation", ops.OPERATIONS)
def test_op_finite_differences(operation):
    rng = np.random.default_rng(len(operation))
    xs = [rng.standard_normal((2, 2, 2, 3)) for _ in range(3)]
    weights = [1.5, rng.uniform(-2, 2, 2), -0.5]
    shifts = [0.25, rng.standard_normal(2), 1.0]
    dy = rng.standard_normal(xs[0].shape)
    y, ctx = ops.elemwise_forward(xs, operation, weights, shifts)
    dxs = ops.elemwise_backward(dy, xs, ctx, operation, weights, shifts)
    for k in range(3):
        def f(a, k=k):
            inputs = list(xs)
            inputs[k] = a
            return ops.elemwise_forward(inputs, operation, weights, shifts)[0]
        assert dxs[k].dtype == np.float64
        assert rel_err(dxs[k], fd_grad(f, xs[k].copy(), dy)) < 1e-6


def test_max_ties_go_to_the_first_input_and_euclidean_zero_has_no_gradient():
    x = np.ones((1, 1, 2, 2))
    y, arg = ops.elemwise_forward([x, x.copy()], "Max", [1.0, 1.0], [0.0, 0.0])
    dxs = ops.elemwise_backward(np.ones_like(x), [x, x], arg, "Max", [1.0, 1.0], [0.0, 0.0])
    assert np.array_equal(dxs[0], np.ones_like(x)) and not dxs[1].any()
    z = np.zeros((1, 1, 1, 2))
    y, ctx = ops.elemwise_forward([z, z], "EuclideanSum", [1.0, 1.0], [0.0, 0.0])
    dxs = ops.elemwise_backward(np.ones_like(z), [z, z], ctx, "EuclideanSum", [1.0, 1.0], [0.0, 0.0])
    assert not y.any() and all(np.isfinite(d).all() and not d.any() for d in dxs)


def test_residual_sum_through_a_layer_and_back_propagation():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)
    fc1, fc2 = Fc(4, 3), Fc(4, 3)
    layer = Layer([fc1, fc2])
    add = ElemWise(operation="Sum", mode="PerInput", weights=[1.0, -1.0])
    y = Sequence([layer, add])(n2d2.Tensor.from_numpy(x))
    expected = (x.reshape(2, 4) @ (fc1._weights - fc2._weights).T + fc1._biases - fc2._biases)
    assert rel_err(y.to_numpy().reshape(2, 3), expected) < 1e-5
    dy = rng.standard_normal((2, 3, 1, 1)).astype(np.float32)
    y.get_deepnet().seed_gradient(y, dy)
    y.get_deepnet().back_propagate()
    assert rel_err(-add.get_diffoutputs(0).to_numpy(), dy) < 1e-7
    assert rel_err(-add.get_diffoutputs(1).to_numpy(), -dy) < 1e-7
    assert rel_err(fc2._param_grads["biases"], -dy.reshape(2, 3).sum(axis=0)) < 1e-6


def test_printing_and_parameters():
    reset_name_counters()
    params = {"operation": "Max", "mode": "PerInput", "weights": [0.5], "shifts": [0.25]}
    cell = ElemWise(**params)
    cell(n2d2.Tensor([1, 5, 4, 4]))
    for key, value in params.items():
        assert cell.get_parameter(key) == value
    assert str(cell) == ("'ElemWise_0' ElemWise(Frame)(operation=Max, mode=PerInput, weights=[0.5], shifts=[0.25] "
                         "| activation=None)(['TensorPlaceholder_0'])")
    with pytest.raises(RuntimeError):
        cell.operation = "Sum"


@pytest.mark.parametrize("kwargs,error", [
    (dict(operation=1), WrongInputType), (dict(operation="Mean"), WrongValue), (dict(mode=0), WrongInputType),
    (dict(mode="PerPixel"), WrongValue), (dict(weights=1.0), WrongInputType), (dict(shifts=(0.0,)), WrongInputType),
])
def test_constructor_rejects(kwargs, error):
    with pytest.raises(error):
        ElemWise(**kwargs)


def test_input_validation():
    pair = lambda: n2d2.Interface([n2d2.Tensor([1, 2, 3, 3]), n2d2.Tensor([1, 2, 3, 3])])  # noqa: E731
    with pytest.raises(ValueError, match="'ew'"):
        ElemWise(mode="PerInput", weights=[1.0, 2.0, 3.0], name="ew")(pair())
    with pytest.raises(ValueError, match="PerChannel"):
        ElemWise(mode="PerChannel", weights=[1.0, 2.0])(pair())
    with pytest.raises(ValueError, match="same shape"):
        ElemWise()(n2d2.Interface([n2d2.Tensor([1, 2, 3, 3]), n2d2.Tensor([1, 3, 3, 3])]))
    cell = ElemWise(name="ew2")
    cell(pair())
    with pytest.raises(RuntimeError, match="ew2"):
        cell(n2d2.Interface([n2d2.Tensor([1, 2, 3, 3]) for _ in range(3)]))
