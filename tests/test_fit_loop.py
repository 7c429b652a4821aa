"""DeepNetCell.fit's per-batch work: cells synchronised once per pass, best weights restored in
place under the live programs (no rebuild), parameter files written as before."""
import numpy as np
import pytest

import n2d2
from n2d2.codegen import c_backend
from n2d2.solver import SGD
from tests.conftest import rel_err
from tests.test_deepnet_cell import _database, _model

BACKENDS = ["numpy", pytest.param("c", marks=pytest.mark.skipif(not c_backend.available(),
                                                                reason="needs a C compiler"))]


def _validated_database():
    db = _database()
    db.load([np.random.default_rng(7).random((1, 8, 8)).astype(np.float32) for _ in range(16)], [0, 1] * 8,
            partition="Validation")
    return db


@pytest.mark.parametrize("backend", BACKENDS)
def test_restored_weights_reach_the_programs_built_before(backend):
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _model().to_deepnet_cell(provider)
    dn.set_backend(backend)
    provider.set_partition("Test")
    x = provider.read_batch(0)
    dn.test()
    before = dn(x).to_numpy().copy()
    program = dn._program("inference", 16)
    snapshot = dn._snapshot()
    for cell in dn:
        if getattr(cell, "_weights", None) is not None:
            cell._weights *= 0.5
    halved = dn(x).to_numpy().copy()
    assert rel_err(halved, before) > 1e-3
    dn._restore(snapshot)
    assert dn._program("inference", 16) is program   # restored in place: nothing rebuilt
    assert np.array_equal(dn(x).to_numpy(), before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_with_validation_leaves_programs_that_read_the_kept_weights(backend):
    provider = n2d2.provider.DataProvider(_validated_database(), [8, 8, 1], batch_size=16)
    dn = _model().to_deepnet_cell(provider)
    dn.set_backend(backend)
    dn.fit(3, checkpoint=None)
    provider.set_partition("Test")
    x = provider.read_batch(0)
    dn.test()
    compiled = dn(x).to_numpy().copy()
    dn.set_backend("numpy")      # a fresh program over the same (restored) arrays
    assert rel_err(compiled, dn(x).to_numpy()) < 1e-5


def test_settings_changed_after_fit_reach_the_next_steps():
    """fit synchronises the cells with the graph once per pass; outside fit every call does."""
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _model().to_deepnet_cell(provider)
    dn.fit(1, checkpoint=None)
    assert not dn._synced
    dn.set_solver(SGD(learning_rate=0.0))
    weights = [c._weights.copy() for c in dn if getattr(c, "_weights", None) is not None]
    target = n2d2.target.Score(provider)
    provider.set_partition("Learn")
    dn.learn()
    for i in range(2):
        loss = target(dn(provider.read_batch(16 * i)))
        loss.back_propagate()
        loss.update()
    assert all(np.array_equal(a, c._weights) for a, c in zip(weights, [c for c in dn if getattr(c, "_weights", None)
                                                                        is not None]))


def test_a_failing_pass_does_not_leave_the_cells_unsynchronised():
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _model().to_deepnet_cell(provider)

    class Broken(n2d2.target.Score):
        def __call__(self, inputs):
            raise RuntimeError("target failed")

    dn._target = Broken(provider)
    with pytest.raises(RuntimeError, match="target failed"):
        dn.fit(1, checkpoint=None)
    assert not dn._synced


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_without_the_prefetch_thread_trains_the_same(backend, tmp_path, monkeypatch):
    """`global_variables.prefetch_depth = 0` (batches assembled in fit's own thread) trains to
    the same weights and scores, bit for bit, as the default background thread."""
    monkeypatch.chdir(tmp_path)
    results = []
    for depth in (2, 0):
        monkeypatch.setattr(n2d2.global_variables, "prefetch_depth", depth)
        n2d2.global_variables.seed = 4
        provider = n2d2.provider.DataProvider(_validated_database(), [8, 8, 1], batch_size=6)
        dn = _model().to_deepnet_cell(provider)
        dn.set_backend(backend)
        score = dn.fit(2, checkpoint=None)
        results.append((score, list(dn._snapshot().values()), list(dn.get_target()._losses)))
    (s2, w2, l2), (s0, w0, l0) = results   # (cells get fresh names per build: parameters by order)
    assert s2 == s0 and l2 == l0 and len(l2) > 2
    assert len(w2) == len(w0) and all(np.array_equal(a, b) for a, b in zip(w2, w0))


def test_ir_params_answer_as_the_ir_node():
    """`_ir_params()` (what DeepNetCell re-reads from its cells at each training call) gives the
    parameters and weight quantizer of `_ir_node()`, for the cells that override it (weighted
    cells with and without a weight quantizer, LSQ's learned step included; pools) and the others."""
    from n2d2.cells import Conv, Deconv, Fc, Pool2d, Softmax
    from n2d2.quantizer import LSQCell, SATCell

    x = n2d2.Tensor([2, 2, 8, 8])
    cells = [Conv(2, 3, [3, 3]), Conv(2, 3, [3, 3], no_bias=True), Conv(2, 3, [3, 3], quantizer=SATCell()),
             Conv(2, 3, [3, 3], quantizer=LSQCell()), Deconv(2, 3, [3, 3]), Pool2d([2, 2], stride_dims=[2, 2]),
             Softmax()]
    for cell in cells:
        cell(x)
    fc = Fc(2 * 8 * 8, 4, quantizer=SATCell())
    fc(x)
    for cell in cells + [fc]:
        _, attrs, params = cell._ir_node()
        got, weight_quantizer = cell._ir_params()
        assert weight_quantizer == attrs.get("weight_quantizer")
        assert got.keys() == params.keys(), cell
        for role, (array, solver) in params.items():
            assert got[role][0] is array and got[role][1] is solver
    assert any(cell._ir_params()[1] is not None for cell in cells)
    assert "weight_step" in cells[3]._ir_params()[0]
