"""Shared test set-up: a fresh seed, default settings and a private working directory per test."""
import os

import numpy as np
import pytest

import n2d2
from n2d2.settings import Verbosity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The project's shared folder (real model files): beside the clone, as on the developers'
# machines and in CI; N2D2_SHARED points elsewhere.
SHARED = os.environ.get("N2D2_SHARED") or os.path.normpath(os.path.join(ROOT, "..", "shared"))
SHARED_MODELS = os.path.join(SHARED, "models")


def pytest_collection_modifyitems(config, items):
    """Tests marked `slow` (long fuzzing, end-to-end training) run with `-m slow` or
    N2D2_SLOW_TESTS=1; the default run (CI, the README's command) skips them, saying how."""
    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("N2D2_SLOW_TESTS"):
        return
    skip = pytest.mark.skip(reason="slow: select it with -m slow or N2D2_SLOW_TESTS=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _session_cwd(tmp_path_factory):
    """The whole session runs in a temp dir: module- and session-scoped fixtures (set up before
    `_fresh_settings`) would otherwise leave upstream's default log folders (`Target/`, `Score_0/`,
    `weights_init/`) in the folder pytest was started from."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))
        yield


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


def numeric_grad(loss, x, eps=1e-6):
    """Central differences of the scalar `loss()` with respect to x (x float64, changed in place
    and restored: `loss` reads it)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + eps
        up = loss()
        x[idx] = old - eps
        down = loss()
        x[idx] = old
        g[idx] = (up - down) / (2 * eps)
    return g


def fd_grad(f, x, dy, eps=1e-6):
    """Central differences of sum(f(x) * dy) with respect to x (x float64, changed in place and restored)."""
    return numeric_grad(lambda: float((f(x) * dy).sum()), x, eps)


def run_weighted_cell(cell, x, dy):
    """Forward of a weighted cell on a raw array (a list of arrays: an Interface), then its backward
    with the input gradients forced on and the parameter gradients zeroed first.

    Returns (y, dx (a list for a list), dweights, dbiases or None)."""
    xs = x if isinstance(x, list) else [x]
    tensors = [n2d2.Tensor.from_numpy(a) for a in xs]
    y = cell(tensors[0] if len(tensors) == 1 else n2d2.Interface(tensors))
    record = y.get_deepnet().records()[-1]
    cell._zero_param_grads()
    dxs = cell._backward(record.ctx, dy, [True] * len(xs))
    return y.to_numpy(), dxs if isinstance(x, list) else dxs[0], cell._param_grads["weights"], \
        cell._param_grads.get("biases")


requires_cuda = pytest.mark.skipif(not n2d2.global_variables.cuda_available, reason="needs a CUDA device and CuPy")


def small_cnn_ini(database, size, batch, conv, classes):
    """INI text of a small network on `size`x`size` images: conv1 (4 maps, ReLU; `conv`: its
    KernelDims and Stride lines), 2x2 max pool, fc (`classes` outputs), softmax with loss; SGD.
    `database`: the lines of the [database] section (the INI runner and `-export` tests)."""
    return f"""DefaultModel=Frame
[database]
{database}

[sp]
SizeX={size}
SizeY={size}
BatchSize={batch}

[conv1]
Input=sp
Type=Conv
{conv}
NbOutputs=4
ActivationFunction=Rectifier
WeightsFiller=HeFiller
ConfigSection=common.config

[pool1]
Input=conv1
Type=Pool
PoolDims=2 2
Stride=2
NbOutputs=[conv1]NbOutputs
Pooling=Max
Mapping.Size=1

[fc]
Input=pool1
Type=Fc
NbOutputs={classes}
ConfigSection=common.config

[softmax]
Input=fc
Type=Softmax
NbOutputs=[fc]NbOutputs
WithLoss=1

[softmax.Target]

[common.config]
Solvers.LearningRate=0.05
Solvers.Momentum=0.9
"""


def mnist_provider(batch=50):
    """MNIST (the shared copy) at 32x32, as the integer-export tests feed LeNet.ini."""
    database = n2d2.database.MNIST(data_path=n2d2.datasets.mnist_path())
    provider = n2d2.provider.DataProvider(database, [32, 32, 1], batch_size=batch)
    provider.add_transformation(n2d2.transform.Rescale(width=32, height=32))
    return provider


def trained_lenet(seed, steps, nb_test):
    """LeNet.ini + Softmax trained `steps` batches of MNIST from `seed`, and `nb_test` Test stimuli:
    {"dn", "provider", "x", "y"} (the PTQ and integer-export tests quantize it)."""
    from n2d2.cells import Sequence, Softmax
    from n2d2.models import LeNetINI
    from n2d2.quantization.ptq import read_stimuli

    n2d2.global_variables.seed = seed
    provider = mnist_provider()
    dn = Sequence([LeNetINI(), Softmax(with_loss=True)]).to_deepnet_cell(provider)
    target = dn.get_target()
    provider.set_partition("Learn")
    dn.learn()
    for _ in range(steps):
        loss = target(dn(provider.read_random_batch()))
        loss.back_propagate()
        loss.update()
    dn.test()
    x, y = read_stimuli(provider, "Test", nb_test)
    return {"dn": dn, "provider": provider, "x": x, "y": y}


def residual_network(provider):
    """A residual block on MNIST's 32x32 (ElemWise Sum of two branches on different grids), seeded."""
    from n2d2.activation import Linear, Rectifier
    from n2d2.cells import Conv, ElemWise, Fc, Sequence

    n2d2.global_variables.seed = 4
    conv1 = Conv(1, 6, kernel_dims=[5, 5], stride_dims=[2, 2], activation=Rectifier())
    conv2 = Conv(6, 6, kernel_dims=[3, 3], padding_dims=[1, 1], activation=Linear())
    conv3 = Conv(6, 6, kernel_dims=[1, 1], activation=Linear())
    add = ElemWise(operation="Sum", activation=Rectifier())
    fc = Fc(6 * 14 * 14, 10, activation=Linear())

    class Residual(Sequence):
        def __call__(self, x):
            a = conv1(x)
            return fc(add(n2d2.Interface([conv2(a), conv3(a)])))

    return Residual([conv1, conv2, conv3, add, fc]).to_deepnet_cell(provider)
