"""DeepNetCell: tracing a Sequence, compiled training equal to the eager loop, inference, editing."""
import numpy as np
import pytest

import n2d2
from n2d2.activation import Rectifier
from n2d2.cells import BatchNorm2d, Conv, Dropout, Fc, Pool2d, Sequence, Softmax
from n2d2.solver import SGD
from tests.conftest import rel_err


def _database(n=96, seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.random((1, 8, 8)).astype(np.float32) for _ in range(n)]
    ys = [int(x[0, :4].mean() > x[0, 4:].mean()) for x in xs]
    db = n2d2.database.Numpy()
    db.load(xs[: n * 3 // 4], ys[: n * 3 // 4], partition="Learn")
    db.load(xs[n * 3 // 4:], ys[n * 3 // 4:], partition="Test")
    return db


_ARRAYS = ("_weights", "_biases", "_scales", "_means", "_variances")


def _model(dropout=False, bn=False):
    n2d2.global_variables.seed = 3
    cells = [Conv(1, 4, [3, 3], activation=None if bn else Rectifier())]
    if bn:
        cells.append(BatchNorm2d(4, activation=Rectifier()))
    cells += [Pool2d([2, 2], stride_dims=[2, 2]), Fc(36, 8, activation=Rectifier())]
    if dropout:
        cells.append(Dropout(dropout=0.3))
    cells += [Fc(8, 2), Softmax(with_loss=True)]
    model = Sequence(cells)
    model.set_solver(SGD(learning_rate=0.05, momentum=0.9))
    return model


@pytest.mark.parametrize("dropout,bn", [(False, False), (True, True)])
def test_fit_equals_the_eager_loop(dropout, bn):
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _model(dropout, bn).to_deepnet_cell(provider)
    n2d2.global_variables.seed = 5
    dn.fit(1)
    fitted = [(c, {k: getattr(c, k).copy() for k in _ARRAYS if getattr(c, k, None) is not None}) for c in dn]

    eager = _model(dropout, bn)
    provider.set_partition("Learn")
    target = n2d2.target.Score(provider)
    n2d2.global_variables.seed = 5
    provider.set_batch(shuffle=True)
    eager.learn()
    while not provider.all_batchs_provided():
        loss = target(eager(provider.read_batch()))
        loss.back_propagate()
        loss.update()
    assert len(fitted) == len(eager)
    for (cell, arrays), twin in zip(fitted, eager):
        for key, values in arrays.items():
            assert rel_err(values, getattr(twin, key)) < 1e-4, (cell.get_name(), key)


def _residual_model():
    """Residual blocks (Epilogue chains in training: BN -> ElemWise Sum -> ReLU) ending in an
    Activation cell that the training passes fuse into its Fc (the output changes name)."""
    from n2d2.activation import Tanh
    from n2d2.cells import Activation
    from n2d2.models.resnet import BuildingBlock

    n2d2.global_variables.seed = 3
    model = Sequence([Conv(1, 4, [3, 3], padding_dims=[1, 1], no_bias=True), BatchNorm2d(4, activation=Rectifier()),
                      BuildingBlock(4, 4, 1), BuildingBlock(4, 6, 2), Fc(6 * 4 * 4, 2), Activation(activation=Tanh())])
    model.set_solver(SGD(learning_rate=0.05, momentum=0.9))
    return model


def test_fit_of_fused_training_graph_equals_the_eager_loop():
    from n2d2.cells.deepnet_cell import training_graph

    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _residual_model().to_deepnet_cell(provider)
    ops = {dn._graph_for("training", 16).graph.op(n) for n in dn._graph_for("training", 16).graph.nodes()}
    assert "Epilogue" in ops and "Activation" not in ops
    assert training_graph(dn._graph).graph.outputs != dn._graph.outputs   # the fused Activation's place
    n2d2.global_variables.seed = 5
    dn.fit(1)
    fitted = [{k: getattr(c, k).copy() for k in _ARRAYS if getattr(c, k, None) is not None} for c in dn]

    eager = _residual_model()
    provider.set_partition("Learn")
    target = n2d2.target.Score(provider)
    n2d2.global_variables.seed = 5
    eager.learn()
    provider.set_batch(shuffle=True)
    while not provider.all_batchs_provided():
        loss = target(eager(provider.read_batch()))
        loss.back_propagate()
        loss.update()
    twins = [{k: getattr(c, k) for k in _ARRAYS if getattr(c, k, None) is not None} for c in eager.get_cells().values()]
    assert any(fitted) and len(fitted) == len(twins)
    for arrays, twin in zip(fitted, twins):
        for key, values in arrays.items():
            assert rel_err(values, twin[key]) < 1e-4, key


def test_inference_matches_eager_and_run_test(capsys):
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    model = _model(bn=True)
    dn = model.to_deepnet_cell(provider)
    dn.fit(2)
    dn.test()
    provider.set_partition("Test")
    x = provider.read_batch(0)
    y = dn(x).to_numpy()
    model.test()
    expected = model(provider.read_batch(0)).to_numpy()
    assert rel_err(y, expected) < 1e-5
    success = dn.run_test()
    assert 0.0 <= success <= 1.0 and "Test: 24 stimuli" in capsys.readouterr().out


def test_tracing_a_block_runs_no_numpy_forward(monkeypatch):
    """`to_deepnet_cell` traces with deferred values (shapes from the op registry): no cell computes
    the dummy batch, yet a cell output read after tracing has the eager value, and the network
    built runs as the eager model does."""
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=4)
    model = _model(bn=True)
    calls = []
    for cell in model.get_cells().values():
        original = cell._forward
        monkeypatch.setattr(cell, "_forward", lambda xs, f=original, c=cell: calls.append(c.get_name()) or f(xs))
    dn = model.to_deepnet_cell(provider)
    assert calls == []
    conv = next(iter(model.get_cells().values()))
    traced = conv.get_outputs().to_numpy()      # read: computed now, in test mode, on the zero batch
    assert traced.shape == (4, 4, 6, 6)
    conv.test()
    assert np.array_equal(traced, conv(n2d2.Tensor([4, 1, 8, 8])).to_numpy())
    dn.test()
    provider.set_partition("Test")
    model.test()
    x = provider.read_batch(0)
    assert rel_err(dn(x).to_numpy(), model(provider.read_batch(0)).to_numpy()) < 1e-5


def test_deepnet_cell_inside_a_sequence_trains_like_eager():
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    provider.set_partition("Learn")
    core = Sequence(list(_model())[:-1])
    dn = core.to_deepnet_cell(provider)
    net = Sequence([dn, Softmax(with_loss=True)])
    target = n2d2.target.Score(provider)
    x = provider.read_batch(0)
    loss = target(net(x))
    loss.back_propagate()
    loss.update()
    eager = Sequence(list(_model())[:-1] + [Softmax(with_loss=True)])
    target2 = n2d2.target.Score(provider)
    loss2 = target2(eager(provider.read_batch(0)))
    loss2.back_propagate()
    loss2.update()
    assert loss[0] == pytest.approx(loss2[0], rel=1e-5)
    assert rel_err(dn[0]._weights, eager[0]._weights) < 1e-5


def test_input_is_a_raw_tensor_or_comes_from_a_provider():
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _model().to_deepnet_cell(provider)
    dn.test()
    data = np.random.default_rng(3).standard_normal((16, 1, 8, 8)).astype(np.float32)
    wrapped = dn(n2d2.provider.TensorPlaceholder(n2d2.Tensor.from_numpy(data)).get_data()).to_numpy()
    raw = dn(n2d2.Tensor.from_numpy(data)).to_numpy()          # the Cells chapter's model(Tensor(dims))
    np.testing.assert_array_equal(raw, wrapped)
    produced = n2d2.cells.Fc(64, 64)(n2d2.Tensor([16, 1, 8, 8]))   # the output of another cell
    with pytest.raises(ValueError, match="provider"):
        dn(produced)
    with pytest.raises(ValueError, match="does not match"):
        dn(n2d2.provider.TensorPlaceholder(n2d2.Tensor([16, 1, 9, 9])).get_data())


def test_other_batch_sizes_are_specialised():
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    model = _model()
    dn = model.to_deepnet_cell(provider).test()
    x = n2d2.Tensor([3, 1, 8, 8])
    x.to_numpy()[...] = np.random.default_rng(1).random((3, 1, 8, 8))
    y = dn(n2d2.provider.TensorPlaceholder(x).get_data())
    assert y.shape() == [3, 2, 1, 1]
    model.test()
    assert rel_err(y.to_numpy(), model(n2d2.Tensor.from_numpy(x.to_numpy())).to_numpy()) < 1e-5


def test_remove_and_summary(capsys):
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = Sequence([Fc(64, 10), Fc(10, 10), Softmax(with_loss=True)]).to_deepnet_cell(provider)
    dn.remove(dn[1].get_name(), reconnect=True)
    assert len(dn) == 2
    dn.summary()
    out = capsys.readouterr().out
    assert "Layer (type)" in out and "Total params:  650" in out
    with pytest.raises(ValueError, match="no cell named"):
        dn.remove("nope")


def test_free_parameters_round_trip(tmp_path, capsys):
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _model().to_deepnet_cell(provider)
    dn.export_free_parameters(str(tmp_path))
    assert f"Exporting DeepNetCell '{dn.get_name()}' parameters from {tmp_path}" in capsys.readouterr().out
    before = dn[0]._weights.copy()
    dn[0]._weights[...] = 0
    dn.import_free_parameters(str(tmp_path))
    assert np.array_equal(dn[0]._weights, before)


def test_solvers_and_back_propagate_set_after_tracing_are_used():
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    model = _model()
    dn = model.to_deepnet_cell(provider)
    dn.set_solver(SGD(learning_rate=0.0))
    before = [c._weights.copy() for c in dn if getattr(c, "_weights", None) is not None]
    dn.fit(1)
    after = [c._weights for c in dn if getattr(c, "_weights", None) is not None]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))

    dn.set_solver(SGD(learning_rate=0.1))
    dn[2].back_propagate = False  # the Fc after the pooling: no gradient reaches the Conv
    conv_before = dn[0]._weights.copy()
    fc_before = dn[2]._weights.copy()
    dn.fit(1)
    assert np.array_equal(dn[0]._weights, conv_before) and not np.array_equal(dn[2]._weights, fc_before)


def test_memory_report(capsys):
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _model(bn=True).to_deepnet_cell(provider, backend="numpy")
    report = dn.memory_report()
    for kind in ("inference", "training"):
        r = report[kind]
        assert r["lower_bound"] <= r["planned"] <= r["naive"]
    assert report["training"]["naive"] > report["inference"]["naive"]
    assert "naive / planned" in capsys.readouterr().out


def test_dump_sources(tmp_path):
    from n2d2.codegen.c_backend import available

    if not available():
        pytest.skip("no C compiler")
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _model().to_deepnet_cell(provider, backend="c")
    paths = dn.dump_sources(str(tmp_path))
    assert len(paths) == 2
    text = open(paths[1]).read()
    assert "IR node 'Conv_" in text or "Conv_" in text
    with pytest.raises(RuntimeError, match="no source"):
        _model().to_deepnet_cell(provider, backend="numpy").dump_sources(str(tmp_path))
