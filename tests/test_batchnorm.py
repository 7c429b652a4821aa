"""BatchNorm2d: learn/test numerics vs PyTorch and finite differences, moving averages, API."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import n2d2
from n2d2.activation import Rectifier
from n2d2.cells import BatchNorm2d, Sequence
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.filler import Constant
from n2d2.ops import batchnorm as ops
from n2d2.solver import SGD, Adam
from tests.conftest import fd_grad, rel_err


def _run(cell, x, dy):
    """Forward, then backward with the input gradient forced on; returns y, dx, dscales, dbiases."""
    y = cell(n2d2.Tensor.from_numpy(x))
    record = y.get_deepnet().records()[-1]
    cell._zero_param_grads()
    dx = cell._backward(record.ctx, dy, [True])[0]
    return y.to_numpy(), dx, cell._param_grads["scales"], cell._param_grads["biases"]


def _random_cell(c, rng, **config):
    cell = BatchNorm2d(c, **config)
    cell.set_scales(n2d2.Tensor.from_numpy(rng.uniform(0.5, 1.5, c).astype(np.float32)))
    cell.set_biases(n2d2.Tensor.from_numpy(rng.standard_normal(c).astype(np.float32)))
    cell.set_means(n2d2.Tensor.from_numpy(rng.standard_normal(c).astype(np.float32)))
    cell.set_variances(n2d2.Tensor.from_numpy(rng.uniform(0.5, 2.0, c).astype(np.float32)))
    return cell


def _torch_bn(x, cell, training, dy, act=False):
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(cell.get_scales().to_numpy().reshape(-1), requires_grad=True)
    bt = torch.tensor(cell.get_biases().to_numpy().reshape(-1), requires_grad=True)
    rm = torch.tensor(cell.get_means().to_numpy().reshape(-1))
    rv = torch.tensor(cell.get_variances().to_numpy().reshape(-1))
    yt = F.batch_norm(xt, rm, rv, wt, bt, training=training, momentum=cell.moving_average_momentum,
                      eps=cell.epsilon)
    if act:
        yt = torch.relu(yt)
    yt.backward(torch.tensor(dy))
    return yt.detach().numpy(), xt.grad.numpy(), wt.grad.numpy(), bt.grad.numpy(), rm.numpy(), rv.numpy()


@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (2, 6, 3, 7), (8, 2, 1, 1)])
@pytest.mark.parametrize("learn", [True, False])
def test_forward_and_gradients_match_torch(shape, learn):
    rng = np.random.default_rng(shape[1] * 10 + learn)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    cell = _random_cell(shape[1], rng, activation=Rectifier())
    if not learn:
        cell.test()
    expected = _torch_bn(x, cell, learn, dy, act=True)
    y, dx, ds, db = _run(cell, x, dy)
    for got, ref in zip((y, dx, ds, db), expected[:4]):
        assert rel_err(got, ref) < 1e-5


def test_moving_averages_over_three_steps_follow_n2d2_and_map_to_torch():
    """N2D2 (CPU) folds the biased batch variance; torch the unbiased one: same momentum convention."""
    rng = np.random.default_rng(1)
    c, shape = 3, (4, 3, 2, 3)
    count = shape[0] * shape[2] * shape[3]
    cell = BatchNorm2d(c, moving_average_momentum=0.2)
    torch_bn = torch.nn.BatchNorm2d(c, momentum=0.2, eps=1e-5)
    means, variances = np.zeros(c), np.ones(c)
    for _ in range(3):
        x = (rng.standard_normal(shape) * 3 - 2).astype(np.float32)
        cell(n2d2.Tensor.from_numpy(x))
        torch_bn(torch.tensor(x))
        means = 0.8 * means + 0.2 * x.mean(axis=(0, 2, 3), dtype=np.float64)
        variances = 0.8 * variances + 0.2 * x.var(axis=(0, 2, 3), dtype=np.float64)
    assert rel_err(cell.get_means().to_numpy().reshape(-1), means) < 1e-6
    assert rel_err(cell.get_variances().to_numpy().reshape(-1), variances) < 1e-6
    assert rel_err(cell.get_means().to_numpy().reshape(-1), torch_bn.running_mean.numpy()) < 1e-6
    # torch's running variance = init part + (count / (count - 1)) * the folded batch part.
    decay = 0.8 ** 3
    torch_from_ours = decay + (variances - decay) * count / (count - 1)
    assert rel_err(torch_bn.running_var.numpy(), torch_from_ours) < 1e-6
    # Test mode then normalises with those moving averages, as torch's eval mode does.
    x = rng.standard_normal(shape).astype(np.float32)
    cell.test()
    torch_bn.eval()
    torch_bn.running_var.copy_(torch.tensor(cell.get_variances().to_numpy().reshape(-1)))
    assert rel_err(cell(n2d2.Tensor.from_numpy(x)).to_numpy(), torch_bn(torch.tensor(x)).detach().numpy()) < 1e-5


def test_unbiased_moving_variance_option_matches_torch_running_var():
    rng = np.random.default_rng(2)
    cell = BatchNorm2d(2)
    cell.unbiased_moving_variance = True
    torch_bn = torch.nn.BatchNorm2d(2)
    for _ in range(3):
        x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
        cell(n2d2.Tensor.from_numpy(x))
        torch_bn(torch.tensor(x))
    assert rel_err(cell.get_variances().to_numpy().reshape(-1), torch_bn.running_var.numpy()) < 1e-6


def test_test_mode_leaves_statistics_alone_and_zero_momentum_freezes_them():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    cell = _random_cell(2, rng)
    before = cell.get_means().to_numpy().copy(), cell.get_variances().to_numpy().copy()
    cell.test()
    cell(n2d2.Tensor.from_numpy(x))
    assert np.array_equal(cell.get_means().to_numpy(), before[0])
    frozen = _random_cell(2, np.random.default_rng(3), moving_average_momentum=0.0)
    frozen_variances = frozen.get_variances().to_numpy().copy()
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, dx, ds, db = _run(frozen, x, dy)  # learn mode, but N2D2 uses the moving averages
    expected = _torch_bn(x, frozen, False, dy)
    for got, ref in zip((y, dx, ds, db), expected[:4]):
        assert rel_err(got, ref) < 1e-5
    assert np.array_equal(frozen.get_variances().to_numpy(), frozen_variances)


def test_ops_finite_differences():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 2, 3)) * 2 + 0.5
    scales, biases = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    means, variances = rng.standard_normal(2), rng.uniform(0.5, 2.0, 2)
    dy = rng.standard_normal(x.shape)
    y, ctx, _, _ = ops.batchnorm_forward_train(x, scales, biases, 1e-5)
    dx, ds, db = ops.batchnorm_backward_train(dy, ctx, scales)
    assert dx.dtype == np.float64
    assert rel_err(dx, fd_grad(lambda a: ops.batchnorm_forward_train(a, scales, biases, 1e-5)[0], x, dy)) < 1e-6
    assert rel_err(ds, fd_grad(lambda s: ops.batchnorm_forward_train(x, s, biases, 1e-5)[0], scales, dy)) < 1e-6
    assert rel_err(db, fd_grad(lambda b: ops.batchnorm_forward_train(x, scales, b, 1e-5)[0], biases, dy)) < 1e-6
    y, ctx = ops.batchnorm_forward_infer(x, scales, biases, means, variances, 1e-5)
    dx, ds, db = ops.batchnorm_backward_infer(dy, ctx, scales)
    f = lambda a: ops.batchnorm_forward_infer(a, scales, biases, means, variances, 1e-5)[0]  # noqa: E731
    assert rel_err(dx, fd_grad(f, x, dy)) < 1e-6
    f = lambda s: ops.batchnorm_forward_infer(x, s, biases, means, variances, 1e-5)[0]  # noqa: E731
    assert rel_err(ds, fd_grad(f, scales, dy)) < 1e-6


def test_update_applies_both_solvers():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    cell = BatchNorm2d(2, solver=SGD(learning_rate=0.5))
    seq = Sequence([cell])
    y = seq(n2d2.Tensor.from_numpy(x))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y.get_deepnet().seed_gradient(y, dy)
    y.get_deepnet().back_propagate()
    _, _, ds, db = _torch_bn(x, BatchNorm2d(2), True, dy)[:4]
    y.get_deepnet().update()
    assert rel_err(cell.get_scales().to_numpy().reshape(-1), 1 - 0.5 / 4 * ds) < 1e-5
    assert rel_err(cell.get_biases().to_numpy().reshape(-1), -0.5 / 4 * db) < 1e-5


def test_parameters_solvers_and_fillers():
    scale_solver, bias_solver = SGD(learning_rate=0.2), SGD(momentum=0.9)
    act = Rectifier()
    cell = BatchNorm2d(5, scale_solver=scale_solver, bias_solver=bias_solver, moving_average_momentum=0.3,
                       epsilon=1e-3, activation=act, name="bn")
    cell(n2d2.Tensor([1, 5, 4, 4]))
    assert cell.scale_solver is scale_solver and cell.bias_solver is bias_solver
    assert cell.moving_average_momentum == 0.3 and cell.epsilon == 1e-3 and cell.activation is act
    assert cell.get_name() == "bn" and cell.get_nb_outputs() == 5
    cell.solver = Adam()
    assert isinstance(cell.scale_solver, Adam) and isinstance(cell.bias_solver, Adam)
    assert cell.scale_solver is not cell.bias_solver
    cell.set_solver_parameter("learning_rate", 0.05)
    assert cell.scale_solver.learning_rate == 0.05 == cell.bias_solver.learning_rate
    assert cell.has_bias() and not cell.has_quantizer()
    with pytest.raises(ValueError):
        cell.set_filler(Constant(value=1.0))
    with pytest.raises(ValueError):
        BatchNorm2d(2, filler=Constant(value=1.0))
    for get, value in ((cell.get_scales, 1.0), (cell.get_biases, 0.0), (BatchNorm2d(5).get_means, 0.0),
                       (BatchNorm2d(5).get_variances, 1.0)):
        t = get()
        assert isinstance(t, n2d2.Tensor) and len(t) == 5 and all(v == value for v in t)
    with pytest.raises(RuntimeError):
        cell.nb_inputs = 3


def test_input_validation():
    with pytest.raises(WrongInputType):
        BatchNorm2d(1, epsilon=1)
    with pytest.raises(WrongInputType):
        BatchNorm2d(1, moving_average_momentum=1)
    with pytest.raises(WrongInputType):
        BatchNorm2d(2.0)
    with pytest.raises(WrongInputType):
        BatchNorm2d(2, scale_solver="SGD")
    with pytest.raises(WrongInputType):
        BatchNorm2d(2, activation=1)
    with pytest.raises(WrongValue):
        BatchNorm2d(2, moving_average_momentum=1.0)
    with pytest.raises(ValueError, match="'bn3'"):
        BatchNorm2d(3, name="bn3")(n2d2.Tensor([1, 4, 2, 2]))


def test_free_parameters_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    cell = _random_cell(4, rng, name="bn")
    cell.export_free_parameters(str(tmp_path), verbose=False)
    for suffix in ("scales", "biases", "means", "variances"):
        lines = open(os.path.join(tmp_path, f"bn_{suffix}.syntxt")).read().splitlines()
        assert len(lines) == 4 and all(len(line.split()) == 1 for line in lines)
    other = BatchNorm2d(4, name="bn")
    other.import_free_parameters(str(tmp_path))
    for name in ("get_scales", "get_biases", "get_means", "get_variances"):
        assert getattr(other, name)() == getattr(cell, name)()
    with open(os.path.join(tmp_path, "bn_means.syntxt"), "w") as f:
        f.write("1\n2\n")
    with pytest.raises(ValueError, match="bn"):
        other.import_free_parameters(str(tmp_path))
    BatchNorm2d(4, name="absent").import_free_parameters(str(tmp_path), ignore_not_exists=True)
    with pytest.raises(FileNotFoundError):
        BatchNorm2d(4, name="absent").import_free_parameters(str(tmp_path))
