"""Fc: forward and gradients vs PyTorch and finite differences, weight API, free parameters."""
import numpy as np
import pytest
import torch

import n2d2
from n2d2.activation import Rectifier, Tanh
from n2d2.cells import Fc
from n2d2.error_handler import WrongInputType
from n2d2.filler import Constant
from n2d2.ops import fc as ops
from tests.conftest import numeric_grad, rel_err, run_weighted_cell


@pytest.mark.parametrize("shape,nb_out,act", [((3, 5, 1, 1), 4, None), ((2, 2, 3, 3), 7, Rectifier()),
                                              ((4, 1, 4, 2), 3, Tanh(alpha=0.5))])
def test_fc_matches_torch(shape, nb_out, act):
    rng = np.random.default_rng(0)
    n = int(np.prod(shape[1:]))
    cell = Fc(n, nb_out, activation=act)
    x = rng.standard_normal(shape).astype(np.float32)
    dy = rng.standard_normal((shape[0], nb_out, 1, 1)).astype(np.float32)
    y, dx, dw, db = run_weighted_cell(cell, x, dy)

    xt = torch.tensor(x.reshape(shape[0], -1), requires_grad=True)
    wt = torch.tensor(cell._weights.copy(), requires_grad=True)
    bt = torch.tensor(cell._biases.copy(), requires_grad=True)
    zt = xt @ wt.T + bt
    if isinstance(act, Rectifier):
        zt = torch.relu(zt)
    elif isinstance(act, Tanh):
        zt = torch.tanh(0.5 * zt)
    zt.backward(torch.tensor(dy.reshape(shape[0], -1)))
    assert rel_err(y.reshape(shape[0], -1), zt.detach().numpy()) < 1e-5
    assert rel_err(dx.reshape(shape[0], -1), xt.grad.numpy()) < 1e-5
    assert rel_err(dw, wt.grad.numpy()) < 1e-5
    assert rel_err(db, bt.grad.numpy()) < 1e-5


def test_fc_op_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6))
    w = rng.standard_normal((4, 6))
    b = rng.standard_normal(4)
    dy = rng.standard_normal((3, 4))
    dx, dw, db = ops.fc_backward(dy, x, w)

    def loss():
        return float((ops.fc_forward(x, w, b) * dy).sum())

    for arr, grad in ((x, dx), (w, dw), (b, db)):
        assert rel_err(grad, numeric_grad(loss, arr)) < 1e-7


def test_fc_accepts_any_input_with_matching_size_and_rejects_others():
    cell = Fc(12, 2, name="fc12")
    assert cell(n2d2.Tensor([2, 3, 2, 2])).shape() == [2, 2, 1, 1]
    with pytest.raises(RuntimeError, match="fc12"):
        cell(n2d2.Tensor([2, 5, 1, 1]))


def test_fc_argument_validation():
    with pytest.raises(WrongInputType):
        Fc(2.0, 3)
    with pytest.raises(WrongInputType):
        Fc(2, 3, activation="relu")
    with pytest.raises(WrongInputType):
        Fc(2, 3, weights_solver=1)
    with pytest.raises(WrongInputType):
        Fc(2, 3, bias_filler="x")
    with pytest.raises(WrongInputType):
        Fc(2, 3, quantizer=object())


def test_parameter_access():
    cell = Fc(2, 3)
    assert cell.get_parameter("nb_outputs") == 3 and cell.nb_inputs == 2
    with pytest.raises(RuntimeError):
        cell.set_parameter("nb_inputs", 4)
    with pytest.raises(RuntimeError):
        cell.nb_outputs = 4
    with pytest.raises(ValueError):
        cell.get_parameter("nope")
    cell.back_propagate = False
    assert cell.get_parameter("back_propagate") is False
    with pytest.raises(WrongInputType):
        cell.back_propagate = 1
    with pytest.raises(WrongInputType):
        cell.drop_connect = 1


def test_weight_api_round_trip():
    cell = Fc(3, 2)
    w = n2d2.Tensor([1], value=0.25)
    cell.set_weight(1, 2, w)
    assert cell.get_weight(1, 2) == w
    assert cell.get_weights()[1][2][0] == 0.25
    cell.set_bias(0, n2d2.Tensor([1], value=-2.0))
    assert cell.get_bias(0)[0] == -2.0 and len(cell.get_biases()) == 2
    with pytest.raises(ValueError):
        cell.get_weight(2, 0)
    with pytest.raises(ValueError):
        cell.set_weight(0, 0, n2d2.Tensor([2]))


def test_no_bias():
    cell = Fc(3, 2, no_bias=True)
    assert not cell.has_bias()
    with pytest.raises(RuntimeError):
        cell.get_biases()
    with pytest.raises(RuntimeError):
        cell.set_bias_filler(Constant(value=1.0))


def test_fillers_and_refill():
    cell = Fc(2, 2, filler=Constant(value=1.0))
    assert all(w[0] == 1.0 for row in cell.get_weights() for w in row)
    cell.set_filler(Constant(value=6.0))
    assert cell.get_weights()[0][0][0] == 1.0  # not refilled yet
    cell.refill_bias()
    cell.refill_weights()
    assert cell.get_biases()[0][0] == 6.0 and cell.get_weights()[0][0][0] == 6.0
    cell.filler = Constant(value=2.0)
    assert cell.weights_filler.get_parameter("value") == 2.0


def test_solver_shortcuts_copy_and_direct_assignment_keeps_object():
    from n2d2.solver import SGD, Adam

    s = SGD(learning_rate=0.5)
    cell = Fc(2, 2, solver=s)
    assert cell.weights_solver is not s and cell.weights_solver.learning_rate == 0.5
    a = Adam()
    cell.weights_solver = a
    assert cell.weights_solver is a
    cell.solver = Adam(learning_rate=0.2)
    assert isinstance(cell.bias_solver, Adam) and cell.bias_solver.learning_rate == 0.2
    cell.set_solver_parameter("learning_rate", 0.3)
    assert cell.weights_solver.learning_rate == 0.3 and cell.bias_solver.learning_rate == 0.3


def test_free_parameters_round_trip(tmp_path, capsys):
    cell = Fc(5, 3, name="fc")
    cell.export_free_parameters(str(tmp_path / "params"))
    out = capsys.readouterr().out
    assert f"Export to {tmp_path / 'params' / 'fc'}_weights.syntxt" in out  # the real file names (issue 10)
    lines = (tmp_path / "params" / "fc_weights.syntxt").read_text().splitlines()
    assert len(lines) == 3 and all(len(line.split()) == 5 and line.endswith(" ") for line in lines)
    other = Fc(5, 3, name="fc")
    other.import_free_parameters(str(tmp_path / "params"))
    assert np.array_equal(other._weights, cell._weights) and np.array_equal(other._biases, cell._biases)


def test_free_parameters_errors_name_cell_and_file(tmp_path):
    cell = Fc(5, 3, name="fc")
    cell.export_free_parameters(str(tmp_path), verbose=False)
    (tmp_path / "fc_weights.syntxt").write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"'fc'.*fc_weights.syntxt.*expected 15"):
        cell.import_free_parameters(str(tmp_path))
    (tmp_path / "fc_weights.syntxt").write_text("1 2 x\n")
    with pytest.raises(ValueError, match="not a number"):
        cell.import_free_parameters(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="'fc2'"):
        Fc(5, 3, name="fc2").import_free_parameters(str(tmp_path))
    Fc(5, 3, name="fc3").import_free_parameters(str(tmp_path), ignore_not_exists=True)


def test_drop_connect_masks_in_learning_only():
    cell = Fc(50, 4, drop_connect=0.5, no_bias=True)
    x = n2d2.Tensor([1, 50, 1, 1], value=1.0)
    full = x.to_numpy().reshape(1, -1) @ cell._weights.T
    y_learn = cell(x).to_numpy().reshape(1, -1)
    assert not np.allclose(y_learn, full)
    cell.test()
    assert np.allclose(cell(x).to_numpy().reshape(1, -1), full, rtol=1e-6)


def test_abstract_classes_refuse_instantiation():
    from n2d2.activation import ActivationFunction
    from n2d2.cells import Cell, NeuralNetworkCell
    from n2d2.filler import Filler
    from n2d2.provider import Provider
    from n2d2.solver import Solver

    for cls in (Cell, NeuralNetworkCell, Solver, Filler, ActivationFunction, Provider):
        with pytest.raises(TypeError):
            cls()
