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


requires_cuda = pytest.mark.skipif(not n2d2.global_variables.cuda_available, reason="needs a CUDA device and CuPy")
