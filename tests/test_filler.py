"""Fillers: distributions, fan computation, reproducibility from the global seed, validation."""
import numpy as np
import pytest

import n2d2
from n2d2.cells import Fc
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.filler import Constant, Filler, He, Normal, Uniform, Xavier


def test_constant():
    assert np.all(Constant(value=6.0).fill((3, 2)) == 6.0)


def test_normal_statistics():
    a = Normal(mean=1.0, std_dev=2.0).fill((200000,))
    assert abs(a.mean() - 1.0) < 0.02 and abs(a.std() - 2.0) < 0.02


def test_uniform_bounds():
    a = Uniform(min=-2.0, max=3.0).fill((10000,))
    assert a.min() >= -2.0 and a.max() <= 3.0 and abs(a.mean() - 0.5) < 0.05


@pytest.mark.parametrize("norm,n", [("FanIn", 40), ("FanOut", 10), ("Average", 25)])
def test_he_and_xavier_scale(norm, n):
    he = He(variance_norm=norm).fill((200000,), fan_in=40, fan_out=10)
    assert abs(he.std() - np.sqrt(2.0 / n)) < 0.01 * np.sqrt(2.0 / n) * 5
    xu = Xavier(variance_norm=norm).fill((200000,), fan_in=40, fan_out=10)
    assert abs(np.abs(xu).max() - np.sqrt(3.0 / n)) < 1e-3
    xn = Xavier(variance_norm=norm, distribution="Normal", scaling=2.0).fill((200000,), fan_in=40, fan_out=10)
    assert abs(xn.std() - 2.0 * np.sqrt(1.0 / n)) < 0.02 * 2.0 * np.sqrt(1.0 / n) * 3


def test_same_seed_same_weights():
    n2d2.global_variables.seed = 7
    a = Fc(10, 5)._weights.copy()
    n2d2.global_variables.seed = 7
    b = Fc(10, 5)._weights.copy()
    c = Fc(10, 5)._weights.copy()
    assert np.array_equal(a, b) and not np.array_equal(b, c)


def test_validation():
    with pytest.raises(WrongValue):
        He(variance_norm="Fan")
    with pytest.raises(WrongValue):
        Xavier(distribution="Gaussian")
    with pytest.raises(WrongInputType):
        He(scaling=1)
    with pytest.raises(WrongInputType):
        Normal(std_dev=1)
    with pytest.raises(WrongInputType):
        Constant(value=1)
    with pytest.raises(TypeError):
        Filler()
