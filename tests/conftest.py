"""Shared test set-up: a fresh seed, default settings and a private working directory per test."""
import numpy as np
import pytest

import n2d2
from n2d2.settings import Verbosity


@pytest.fixture(autouse=True)
def _fresh_settings(tmp_path, monkeypatch):
    """Every test starts with seed 1, CPU model, detailed verbosity, cwd in a temp dir."""
    monkeypatch.chdir(tmp_path)
    n2d2.global_variables.seed = 1
    n2d2.global_variables.default_model = "Frame"
    n2d2.global_variables.verbosity = Verbosity.detailed
    yield


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / (denom if denom > 0 else 1.0))


def fd_grad(f, x, dy, eps=1e-6):
    """Central differences of sum(f(x) * dy) with respect to x (x float64, changed in place and restored)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = float((f(x) * dy).sum())
        x[idx] = old - eps
        down = float((f(x) * dy).sum())
        x[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


requires_cuda = pytest.mark.skipif(not n2d2.global_variables.cuda_available, reason="needs a CUDA device and CuPy")
