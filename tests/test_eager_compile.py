"""The eager loop compiler (`n2d2.eager_compile`): a repeated eager step runs as the compiled
training program and every value the user can read equals the eager path's.

Each test trains the same network twice from the same seed, once with
`global_variables.eager_compile = False` (the eager reference) and once with it on, and
compares losses, success rates, confusion matrices, weights, outputs and gradients; the
counters of `n2d2.eager_compile.stats` show which steps ran compiled. Tolerances are float32
summation-order ones (the C kernels add in another order than numpy).
"""
import copy
import os
import subprocess
import sys

import numpy as np
import pytest

import n2d2
from n2d2 import eager_compile
from n2d2.activation import Rectifier, Tanh
from n2d2.cells import BatchNorm2d, Conv, Dropout, ElemWise, Fc, Pool2d, Sequence, Softmax
from n2d2.solver import SGD

RTOL, ATOL = 2e-4, 2e-5
STEPS = 24


@pytest.fixture(autouse=True)
def _compile_on():
    previous = n2d2.global_variables.eager_compile
    yield
    n2d2.global_variables.eager_compile = previous


def _database(n=200, size=8, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.random((1, size, size)).astype(np.float32) for _ in range(n)]
    ys = [int(x[0, :size // 2].mean() > x[0, size // 2:].mean()) for x in xs]
    db = n2d2.database.Numpy()
    db.load(xs[:160], ys[:160], partition="Learn")
    db.load(xs[160:], ys[160:], partition="Test")
    return db


def _mlp():
    fc1, fc2 = Fc(64, 20, activation=Rectifier()), Fc(20, 2)
    for cell in (fc1, fc2):
        cell.solver = SGD(learning_rate=0.05, momentum=0.9)
    cells = {"fc1": fc1, "fc2": fc2, "softmax": Softmax(with_loss=True)}
    return cells, lambda x: cells["softmax"](cells["fc2"](cells["fc1"](x)))   # cells called one by one


def _lenet_like(bn=False, dropout=False):
    cells = [Conv(1, 4, [3, 3], activation=None if bn else Rectifier(), name="conv1")]
    if bn:
        cells.append(BatchNorm2d(4, activation=Rectifier(), name="bn1"))
    cells += [Pool2d([2, 2], stride_dims=[2, 2], name="pool1"), Fc(36, 12, activation=Rectifier(), name="fc1")]
    if dropout:
        cells.append(Dropout(dropout=0.3, name="drop"))
    cells += [Fc(12, 2, name="fc2")]
    model = Sequence(cells)
    model.set_solver(SGD(learning_rate=0.05, momentum=0.9, decay=1e-4))
    softmax = Softmax(with_loss=True, name="softmax")
    named = {c.get_name(): c for c in cells}
    named["softmax"] = softmax
    return named, lambda x: softmax(model(x))


def _train(compiled, make=_mlp, steps=STEPS, between=None, batch=16):
    """Run the upstream eager loop; returns what a user can observe."""
    n2d2.global_variables.eager_compile = compiled
    n2d2.global_variables.seed = 3
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=batch)
    provider.set_partition("Learn")
    cells, model = make()
    target = n2d2.target.Score(provider)
    seen = {"losses": [], "outputs": []}
    for i in range(steps):
        if between is not None:
            between(i, cells, provider)
        x = provider.read_random_batch()
        x = model(x)
        x = target(x)
        x.back_propagate()
        x.update()
        seen["losses"].append(target.loss())
    seen["success"] = target.get_success_rate()
    seen["confusion"] = target.get_confusion_matrix().copy()
    seen["weights"] = {name: c._weights.copy() for name, c in cells.items() if getattr(c, "_weights", None) is not None}
    seen["bn"] = {name: (c._means.copy(), c._variances.copy()) for name, c in cells.items()
                  if getattr(c, "_means", None) is not None}
    # values of the last step, read after its update (lazy on the compiled path)
    seen["fc1_out"] = cells["fc1"].get_outputs().to_numpy().copy()
    seen["fc2_out"] = copy.copy(cells["fc2"].get_outputs()).to_numpy()   # a pending tensor copies as values
    seen["fc2_diffin"] = cells["fc2"].get_diffinputs().to_numpy().copy()
    seen["fc2_diffout"] = cells["fc2"].get_diffoutputs().to_numpy().copy()
    return seen


def _assert_same(eager, compiled):
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=RTOL, atol=ATOL)
    assert compiled["success"] == eager["success"]
    np.testing.assert_array_equal(compiled["confusion"], eager["confusion"])
    for name, w in eager["weights"].items():
        np.testing.assert_allclose(compiled["weights"][name], w, rtol=RTOL, atol=ATOL, err_msg=name)
    for name, (m, v) in eager["bn"].items():
        np.testing.assert_allclose(compiled["bn"][name][0], m, rtol=RTOL, atol=ATOL, err_msg=name)
        np.testing.assert_allclose(compiled["bn"][name][1], v, rtol=RTOL, atol=ATOL, err_msg=name)
    for key in ("fc1_out", "fc2_out", "fc2_diffin", "fc2_diffout"):
        np.testing.assert_allclose(compiled[key], eager[key], rtol=RTOL, atol=ATOL, err_msg=key)


def _counts():
    s = eager_compile.stats
    return dict(compiles=s.compiles, forward=s.forward_replays, training=s.training_replays,
                fallbacks=s.eager_fallbacks)


def _delta(before):
    now = _counts()
    return {k: now[k] - before[k] for k in now}


# -- equality with the eager path -------------------------------------------------------------------
def test_mlp_loop_runs_compiled_and_equals_eager():
    eager = _train(False)
    before = _counts()
    compiled = _train(True)
    d = _delta(before)
    assert d["compiles"] == 1 and d["training"] == STEPS - 2 and d["fallbacks"] == 0, d
    assert n2d2.deepnet.compiled_replays() >= STEPS - 2 and n2d2.eager_compile.stats is eager_compile.stats
    _assert_same(eager, compiled)


@pytest.mark.parametrize("bn,dropout,backend", [(False, False, None), (True, True, None), (True, True, "numpy")])
def test_conv_net_loop_runs_compiled_and_equals_eager(bn, dropout, backend, monkeypatch):
    monkeypatch.setattr(eager_compile, "backend", backend)   # None: C here when gcc is found
    make = lambda: _lenet_like(bn, dropout)   # noqa: E731
    eager = _train(False, make)
    before = _counts()
    compiled = _train(True, make)
    d = _delta(before)
    assert d["compiles"] == 1 and d["training"] == STEPS - 2 and d["fallbacks"] == 0, d
    assert not eager_compile.stats.failures
    _assert_same(eager, compiled)


def _branches():
    """Two branches summed (an Interface input) and a cell called twice (shared weights)."""
    fc1, mid = Fc(64, 20, activation=Rectifier(), name="fc1"), Fc(20, 20, activation=Tanh(), name="mid")
    fc2, add, softmax = Fc(20, 2, name="fc2"), ElemWise(operation="Sum", name="add"), Softmax(with_loss=True)
    for cell in (fc1, mid, fc2):
        cell.solver = SGD(learning_rate=0.05, momentum=0.9)

    def model(x):
        h = fc1(x)
        return softmax(fc2(add(n2d2.Interface([h, mid(mid(h))]))))
    return {"fc1": fc1, "mid": mid, "fc2": fc2}, model


def test_branches_and_shared_cells_equal_eager():
    eager = _train(False, _branches)
    before = _counts()
    compiled = _train(True, _branches)
    d = _delta(before)
    # ElemWise sets itself up at its first call: the first batch has no key, two more compile
    assert d["compiles"] == 1 and d["training"] == STEPS - 3, d
    _assert_same(eager, compiled)


def _mapped_convs():
    """Convolutions with a connection table (the eager update masks the unconnected kernels)."""
    table = np.array([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1], [1, 1, 0, 1, 1, 0], [1, 0, 0, 1, 1, 1]], dtype=bool)
    cells = [Conv(1, 4, [3, 3], activation=Rectifier(), name="conv1"),
             Conv(4, 6, [3, 3], mapping=n2d2.Tensor.from_numpy(table), activation=Rectifier(), name="conv2"),
             Fc(6 * 4 * 4, 12, activation=Rectifier(), name="fc1"), Fc(12, 2, name="fc2")]
    model = Sequence(cells)
    model.set_solver(SGD(learning_rate=0.05, momentum=0.9, decay=1e-3))
    softmax = Softmax(with_loss=True)
    return {c.get_name(): c for c in cells}, lambda x: softmax(model(x))


def test_connection_table_equals_eager():
    eager = _train(False, _mapped_convs)
    before = _counts()
    compiled = _train(True, _mapped_convs)
    assert _delta(before)["training"] == STEPS - 2
    _assert_same(eager, compiled)


def test_intermediate_reads_during_a_step_equal_eager():
    """Reading a pending intermediate before the target runs the step eagerly from there."""
    def run(compiled):
        n2d2.global_variables.eager_compile = compiled
        n2d2.global_variables.seed = 3
        provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
        provider.set_partition("Learn")
        cells, _ = _mlp()
        target = n2d2.target.Score(provider)
        hidden, outs = [], []
        for i in range(8):
            x = provider.read_random_batch()
            h = cells["fc1"](x)
            if i == 6:
                hidden.append(h.to_numpy().copy())           # read before the rest of the step
            y = cells["softmax"](cells["fc2"](h))
            loss = target(y)
            loss.back_propagate()
            if i == 5:
                hidden.append(h.to_numpy().copy())           # read after backward, before update
            loss.update()
            outs.append(y.to_numpy().copy())
        return hidden, outs, target.loss()

    eager = run(False)
    before = _counts()
    compiled = run(True)
    d = _delta(before)
    assert d["fallbacks"] == 1 and d["training"] == 5, d   # steps 2-5 and 7 compiled, 6 went eager
    for a, b in zip(compiled[0] + compiled[1], eager[0] + eager[1]):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)
    assert abs(compiled[2] - eager[2]) < 1e-5


# -- fallbacks ----------------------------------------------------------------------------------------
def _fallback_case(between, make=_mlp):
    eager = _train(False, make, between=between)
    before = _counts()
    compiled = _train(True, make, between=between)
    _assert_same(eager, compiled)
    return _delta(before)


def test_batch_shape_change_falls_back_then_recompiles():
    def between(i, cells, provider):
        if i == 10:
            provider._batch_size = 12   # no public setter (upstream has none either)
    d = _fallback_case(between)
    assert d["compiles"] == 2 and d["fallbacks"] == 1 and d["training"] == STEPS - 4, d


def test_cell_swap_falls_back():
    def between(i, cells, provider):
        if i == 10:
            other = Fc(20, 2, name="fc2_swapped")
            other.solver = SGD(learning_rate=0.05, momentum=0.9)
            other._weights[...] = cells["fc2"]._weights
            cells["fc2"] = other
    d = _fallback_case(between)
    assert d["compiles"] == 2 and d["fallbacks"] == 1, d


def test_weights_set_by_hand_are_used():
    """In place (set_weight): the compiled program reads the cell's array, no fallback; a new
    filler and a refill (config changed): the step key changes, eager then recompiled."""
    def between(i, cells, provider):
        if i == 8:
            cells["fc1"].set_weight(0, 0, n2d2.Tensor([1], value=0.5))
        if i == 14:
            cells["fc2"].set_weights_filler(n2d2.filler.Constant(value=0.01), refill=True)
    d = _fallback_case(between)
    assert d["compiles"] == 2 and d["fallbacks"] == 1 and d["training"] == STEPS - 4, d


def test_solver_changes_are_followed():
    def between(i, cells, provider):
        if i == 8:
            cells["fc1"].set_solver_parameter("learning_rate", 0.2)        # same solver objects
        if i == 14:
            cells["fc2"].solver = SGD(learning_rate=0.01, momentum=0.5)    # new solvers (fresh state)
    d = _fallback_case(between)
    assert d["compiles"] == 3 and d["fallbacks"] == 2, d


def test_test_mode_and_partial_batches():
    """Learn steps, then test-mode Test passes with a partial last batch (padded to the batch
    shape, invalid slots ignored): the test loop compiles its own inference program."""
    def run(compiled):
        n2d2.global_variables.eager_compile = compiled
        n2d2.global_variables.seed = 3
        provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
        cells, model = _lenet_like(bn=True, dropout=True)
        target = n2d2.target.Score(provider)
        rates = []
        for epoch in range(2):
            provider.set_partition("Learn")
            for c in cells.values():
                c.learn()
            for _ in range(6):
                loss = target(model(provider.read_random_batch()))
                loss.back_propagate()
                loss.update()
            provider.set_partition("Test")
            for c in cells.values():
                c.test()
            target.clear_success()
            for idx in range(0, 40, 16):   # 40 Test stimuli: the last batch holds 8
                target(model(provider.read_batch(idx)))
            rates.append(target.get_success_rate())
        return rates, target.get_confusion_matrix("Test").copy(), cells["fc1"]._weights.copy()

    eager = run(False)
    before = _counts()
    compiled = run(True)
    d = _delta(before)
    assert d["compiles"] == 2 and d["forward"] > d["training"] > 0, d
    assert compiled[0] == eager[0]
    np.testing.assert_array_equal(compiled[1], eager[1])
    np.testing.assert_allclose(compiled[2], eager[2], rtol=RTOL, atol=ATOL)


def test_learn_and_test_blocks_on_one_provider_stay_compiled():
    """Blocks of learn steps and test-mode passes taking turns on one provider: each block's first
    call selects its own compiled plan (it used to go eager once per block, the provider's active
    plan being the other block's)."""
    def run(compiled):
        n2d2.global_variables.eager_compile = compiled
        n2d2.global_variables.seed = 3
        provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
        provider.set_partition("Learn")
        cells, model = _lenet_like(bn=True, dropout=True)
        target = n2d2.target.Score(provider)
        losses, outputs = [], []
        for _ in range(4):
            for c in cells.values():
                c.learn()
            for _ in range(3):
                loss = target(model(provider.read_random_batch()))
                loss.back_propagate()
                loss.update()
                losses.append(target.loss())
            for c in cells.values():
                c.test()
            for idx in (0, 16, 32):
                outputs.append(model(provider.read_batch(idx)).to_numpy().copy())
        return losses, outputs, {k: c._weights.copy() for k, c in cells.items()
                                 if getattr(c, "_weights", None) is not None}

    eager = run(False)
    before = _counts()
    compiled = run(True)
    d = _delta(before)
    # each plan compiles on its block's third batch; then only the first test pass (no plan yet)
    # leaves a plan: 1 + 3 * 3 steps of each block run compiled
    assert d == {"compiles": 2, "training": 10, "forward": 20, "fallbacks": 1}, d
    np.testing.assert_allclose(compiled[0], eager[0], rtol=RTOL, atol=ATOL)
    for got, want in zip(compiled[1], eager[1]):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
    for name, w in eager[2].items():
        np.testing.assert_allclose(compiled[2][name], w, rtol=RTOL, atol=ATOL, err_msg=name)


def test_epochs_with_a_partial_last_batch_equal_eager():
    """`set_batch` epochs of 160 stimuli in batches of 24: the last batch of each epoch holds 16
    (padded to the batch shape, the rest invalid), trained as the others."""
    def run(compiled):
        n2d2.global_variables.eager_compile = compiled
        n2d2.global_variables.seed = 3
        provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=24)
        provider.set_partition("Learn")
        cells, model = _lenet_like(bn=True, dropout=False)
        target = n2d2.target.Score(provider)
        losses = []
        for _ in range(3):
            provider.set_batch(shuffle=True)
            while not provider.all_batchs_provided():
                loss = target(model(provider.read_batch()))
                loss.back_propagate()
                loss.update()
                losses.append(target.loss())
        return losses, target.get_success_rate(), {k: c._weights.copy() for k, c in cells.items()
                                                    if getattr(c, "_weights", None) is not None}

    eager = run(False)
    before = _counts()
    compiled = run(True)
    assert _delta(before)["training"] == 3 * 7 - 2
    np.testing.assert_allclose(compiled[0], eager[0], rtol=RTOL, atol=ATOL)
    assert compiled[1] == eager[1]
    for name, w in eager[2].items():
        np.testing.assert_allclose(compiled[2][name], w, rtol=RTOL, atol=ATOL, err_msg=name)


# -- switch -----------------------------------------------------------------------------------------
def test_off_switch():
    before = _counts()
    _train(False, steps=6)
    assert _delta(before) == {"compiles": 0, "forward": 0, "training": 0, "fallbacks": 0}
    with pytest.raises(TypeError):
        n2d2.global_variables.eager_compile = "no"
    env = dict(os.environ, N2D2_EAGER_COMPILE="0")
    out = subprocess.run([sys.executable, "-c", "import n2d2; print(n2d2.global_variables.eager_compile)"],
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- upstream scripts ---------------------------------------------------------------------------------
def test_upstream_example_loops_run_compiled(capsys):
    """tests/test_examples.py's reproductions of mnist_minimal.py and train_lenet.py, unchanged."""
    from n2d2.utils import reset_name_counters
    from tests.test_examples import _mnist_dir, mnist_minimal, train_lenet

    n2d2.global_variables.eager_compile = True
    results = {}
    for name, run in (("mnist_minimal", lambda: mnist_minimal(_mnist_dir(), epochs=1, max_batches=12)),
                      ("train_lenet", lambda: train_lenet(_mnist_dir(), epochs=1, max_batches=6))):
        reset_name_counters()
        before = _counts()
        run()
        results[name] = _delta(before)
    capsys.readouterr()
    for name, d in results.items():
        # training steps and the test / validation loops (their own inference programs)
        assert d["training"] > 0 and d["forward"] > d["training"], (name, d)
