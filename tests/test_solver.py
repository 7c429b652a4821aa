"""Solvers: updates against hand-written references and PyTorch optimisers, policies, validation."""
import math

import numpy as np
import pytest
import torch

from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.solver import SGD, Adam, Solver
from tests.conftest import rel_err

BATCH = 4


def _grads(steps, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(steps)]


def test_plain_sgd_reference():
    w = np.ones(5, dtype=np.float32)
    ref = w.copy()
    s = SGD(learning_rate=0.1)
    for g in _grads(3, 5):
        s.update(w, g, BATCH)
        ref = ref - 0.1 / BATCH * g
    assert rel_err(w, ref) < 1e-6


@pytest.mark.parametrize("momentum,decay", [(0.9, 0.0), (0.9, 5e-4), (0.0, 1e-2)])
def test_sgd_momentum_decay_matches_torch(momentum, decay):
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal(6).astype(np.float32)
    w = w0.copy()
    s = SGD(learning_rate=0.05, momentum=momentum, decay=decay)
    wt = torch.tensor(w0.copy(), requires_grad=True)
    opt = torch.optim.SGD([wt], lr=0.05, momentum=momentum, weight_decay=decay)
    for g in _grads(5, 6):
        s.update(w, g, BATCH)  # g summed over the batch
        opt.zero_grad()
        wt.grad = torch.tensor(g / BATCH)  # torch sees the batch mean
        opt.step()
    assert rel_err(w, wt.detach().numpy()) < 1e-5


def test_adam_matches_torch():
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal(7).astype(np.float32)
    w = w0.copy()
    s = Adam(learning_rate=0.01)
    wt = torch.tensor(w0.copy(), requires_grad=True)
    opt = torch.optim.Adam([wt], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    for g in _grads(6, 7):
        s.update(w, g, BATCH)
        opt.zero_grad()
        wt.grad = torch.tensor(g / BATCH)
        opt.step()
    assert rel_err(w, wt.detach().numpy()) < 1e-5


def test_adam_hand_reference():
    w = np.full(3, 0.5)
    ref = w.copy()
    m = np.zeros(3)
    v = np.zeros(3)
    s = Adam(learning_rate=0.1, beta1=0.8, beta2=0.9, epsilon=1e-3)
    for t, g in enumerate(_grads(4, 3, seed=9), start=1):
        g = g.astype(np.float64)
        s.update(w, g, 2)
        gm = g / 2
        m = 0.8 * m + 0.2 * gm
        v = 0.9 * v + 0.1 * gm * gm
        alpha = 0.1 * math.sqrt(1 - 0.9 ** t) / (1 - 0.8 ** t)
        ref = ref - alpha * m / (np.sqrt(v) + 1e-3 * math.sqrt(1 - 0.9 ** t))
    assert rel_err(w, ref) < 1e-12


@pytest.mark.parametrize("policy,expected", [
    ("None", lambda it, step: 0.1),
    ("StepDecay", lambda it, step: 0.1 * 0.5 ** step),
    ("ExponentialDecay", lambda it, step: 0.1 * math.exp(-0.5 * step)),
    ("InvTDecay", lambda it, step: 0.1 / (1 + 0.5 * step)),
    ("PolyDecay", lambda it, step: 0.1 * (1 - it / 20) ** 2.0),
    ("InvDecay", lambda it, step: 0.1 * (1 + 0.5 * it) ** -2.0),
])
def test_learning_rate_policies(policy, expected):
    s = SGD(learning_rate=0.1, learning_rate_policy=policy, learning_rate_decay=0.5,
            learning_rate_step_size=8, max_iterations=20, power=2.0)
    for it in range(12):
        step = it * BATCH // 8
        assert s.learning_rate_at(it, BATCH) == pytest.approx(expected(it, step))


def test_cosine_decay_with_warm_up():
    s = SGD(learning_rate=1.0, learning_rate_policy="CosineDecay", warm_up_duration=4, warm_up_lr_frac=0.25,
            max_iterations=12, min_decay=0.1)
    assert s.learning_rate_at(0, 1) == pytest.approx(0.25)
    assert s.learning_rate_at(2, 1) == pytest.approx(0.75 * 2 / 4 + 0.25)
    assert s.learning_rate_at(4, 1) == pytest.approx(1.0)
    assert s.learning_rate_at(8, 1) == pytest.approx(0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)) + 0.1)
    assert s.learning_rate_at(12, 1) == pytest.approx(0.1)
    assert s.learning_rate_at(30, 1) == pytest.approx(0.1)  # counter stops at max_iterations


def test_step_decay_applies_in_updates(capsys):
    w = np.zeros(1)
    s = SGD(learning_rate=1.0, learning_rate_policy="StepDecay", learning_rate_decay=0.5,
            learning_rate_step_size=2)
    for _ in range(3):
        s.update(w, np.array([-1.0]), 1)
    # iterations 0, 1, 2 are steps 0, 0, 1 (step = it * batch // 2) -> lr 1, 1, 0.5
    assert w[0] == pytest.approx(2.5)
    assert "Learning rate after" in capsys.readouterr().out


def test_iteration_size_accumulates():
    w = np.zeros(2)
    s = SGD(learning_rate=1.0, iteration_size=2)
    s.update(w, np.array([1.0, 2.0]), 1)
    assert np.all(w == 0)
    s.update(w, np.array([3.0, 4.0]), 1)
    assert np.allclose(w, [-2.0, -3.0])


def test_clamping():
    w = np.zeros(3)
    s = SGD(learning_rate=1.0, clamping="-0.5:0.25")
    s.update(w, np.array([-10.0, 10.0, 0.1]), 1)
    assert np.allclose(w, [0.25, -0.5, -0.1])
    w = np.zeros(1)
    SGD(learning_rate=1.0, clamping=":1").update(w, np.array([-5.0]), 1)
    assert w[0] == 1.0
    with pytest.raises(WrongValue):
        SGD(clamping="1..2")
    with pytest.raises(WrongValue):
        SGD(clamping="a:b")


def test_state_is_per_parameter():
    s = SGD(learning_rate=1.0, momentum=0.5)
    a, b = np.zeros(1), np.zeros(1)
    s.update(a, np.array([1.0]), 1)
    s.update(b, np.array([1.0]), 1)
    assert a[0] == b[0] == -1.0


@pytest.mark.parametrize("solver,kwargs,error", [
    (SGD, dict(learning_rate=1), WrongInputType), (SGD, dict(iteration_size=1.0), WrongInputType),
    (SGD, dict(learning_rate_policy="Linear"), WrongValue), (Adam, dict(beta1=1), WrongInputType),
    (Solver, {}, TypeError),
])
def test_constructor_rejects(solver, kwargs, error):
    with pytest.raises(error):
        solver(**kwargs)


def test_unknown_parameter():
    with pytest.raises(ValueError):
        SGD().get_parameter("foo")


def test_copy_is_independent():
    s = SGD(learning_rate=0.2, momentum=0.9)
    c = s.copy()
    assert c is not s and str(c) == str(s)
    c.learning_rate = 0.3
    assert s.learning_rate == 0.2
