"""Checkpoints of DeepNetCell.fit: resume gives the run that was never interrupted; the file is
safe (no pickle) and checked against the network."""
import json
import os

import numpy as np
import pytest

import n2d2
from n2d2 import checkpoint
from n2d2.activation import Rectifier
from n2d2.cells import Conv, Fc, Pool2d, Sequence, Softmax
from n2d2.solver import SGD, Adam
from n2d2.utils import reset_name_counters


def _database(n=120, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.random((1, 8, 8)).astype(np.float32) for _ in range(n)]
    ys = [int(x[0, :4].mean() > x[0, 4:].mean()) for x in xs]
    db = n2d2.database.Numpy()
    db.load(xs[:80], ys[:80], partition="Learn")
    db.load(xs[80:100], ys[80:100], partition="Validation")
    db.load(xs[100:], ys[100:], partition="Test")
    return db


def _deepnet(backend, solver="sgd"):
    """A fresh network, provider and target, all from seed 3 (as a new process would build them)."""
    reset_name_counters()
    n2d2.global_variables.seed = 3
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    model = Sequence([Conv(1, 4, [3, 3], activation=Rectifier()), Pool2d([2, 2], stride_dims=[2, 2]),
                      Fc(36, 8, activation=Rectifier()), Fc(8, 2), Softmax(with_loss=True)])
    if solver == "sgd":
        model.set_solver(SGD(learning_rate=0.2, momentum=0.9, decay=1e-3, learning_rate_policy="StepDecay",
                             learning_rate_step_size=80, learning_rate_decay=0.5))
    else:
        model.set_solver(Adam(learning_rate=0.01))
    dn = model.to_deepnet_cell(provider, n2d2.target.Score(provider))
    dn.set_backend(backend)
    return dn


def _params(dn):
    return {name: p.array.copy() for name, p in dn._graph.params.items()}


@pytest.mark.parametrize("backend,solver", [("numpy", "sgd"), ("numpy", "adam"), ("c", "sgd")])
def test_resume_equals_the_uninterrupted_run(tmp_path, backend, solver):
    straight = _deepnet(backend, solver)
    straight_score = straight.fit(3, checkpoint=str(tmp_path / "straight.npz"))
    expected = _params(straight)

    first = _deepnet(backend, solver)
    first.fit(1, checkpoint=str(tmp_path / "run.npz"))
    meta, _ = checkpoint.load(str(tmp_path / "run.npz"))
    assert meta["epoch"] == 1
    resumed = _deepnet(backend, solver)   # a new process: fresh weights, fresh generator
    resumed_score = resumed.fit(3, resume=str(tmp_path / "run.npz"), checkpoint=str(tmp_path / "run.npz"))
    got = _params(resumed)
    assert resumed_score == straight_score
    for name in expected:
        if backend == "numpy":
            assert np.array_equal(got[name], expected[name]), name
        else:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
    # the last checkpoints agree too (weights after the last epoch, not the restored best)
    a, arrays_a = checkpoint.load(str(tmp_path / "straight.npz"))
    b, arrays_b = checkpoint.load(str(tmp_path / "run.npz"))
    assert a["epoch"] == b["epoch"] == 3 and a["rng"] == b["rng"] and a["solvers"] == b["solvers"]


def test_checkpoint_holds_solver_state_and_resumes_from_a_folder(tmp_path):
    dn = _deepnet("numpy")
    dn.fit(1, checkpoint=str(tmp_path / checkpoint.FILE_NAME))
    meta, arrays = checkpoint.load(str(tmp_path))
    assert meta["best"]["has_weights"] and meta["best"]["score"] is not None
    iterations = {e["iteration"] for e in meta["solvers"].values()}
    assert iterations == {5}                     # 80 stimuli / batch 16
    assert any(k.startswith("solver_") and k.endswith("_momentum") for k in arrays)
    assert not os.listdir(tmp_path) == [] and all(not f.startswith(".tmp_") for f in os.listdir(tmp_path))


def _rewrite(path, change):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    change(meta, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


def test_bad_checkpoints_are_refused_and_change_nothing(tmp_path):
    path = str(tmp_path / "c.npz")
    _deepnet("numpy").fit(1, checkpoint=path)
    dn = _deepnet("numpy")
    before = _params(dn)

    def wrong_shape(meta, arrays):
        k = next(iter(meta["params"].values()))
        arrays[f"param_{k}"] = np.zeros((3, 3), np.float32)

    _rewrite(path, wrong_shape)
    with pytest.raises(checkpoint.CheckpointError, match="shape"):
        dn.fit(2, resume=path)
    assert all(np.array_equal(before[k], v) for k, v in _params(dn).items())
    # a pickled object array is never loaded
    np.savez(path, meta=np.array([object()], dtype=object))
    with pytest.raises(checkpoint.CheckpointError, match="meta|readable"):
        dn.fit(2, resume=path)
    with pytest.raises(checkpoint.CheckpointError, match="no such file"):
        dn.fit(2, resume=str(tmp_path / "missing.npz"))
