"""QAT quantizers (n2d2.quantizer, n2d2.ops.quantizer): formulas of the reference (section 3),
gradients against PyTorch autograd, API and printing, eager training and the compiled graph."""
import numpy as np
import pytest

import n2d2
from n2d2.activation import Linear, Rectifier
from n2d2.cells import BatchNorm2d, Conv, Deconv, Fc, Pool2d, Sequence, Softmax
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.ops import quantizer as q
from n2d2.quantizer import LSQAct, LSQCell, SATAct, SATCell
from n2d2.solver import SGD
from tests.conftest import rel_err

torch = pytest.importorskip("torch")


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- forward against the reference's formulas ------------------------------------------------------
def _sat_reference(w, R, mode, quantize, scaling, n_out):
    """Section 3.1 written out element by element (float64)."""
    t = np.tanh(w.astype(np.float64))
    u = t / np.abs(t).max()
    h = R // 2
    if mode == "Asymmetric":
        a = (1 + 1 / (2 * h)) * u - 1 / (2 * h)
        out = np.rint(h * a) / h if quantize else a
    elif not quantize:
        out = u
    elif mode == "Default":
        out = 2 * np.rint(R * (u + 1) / 2) / R - 1
    elif mode == "FullRange":
        out = 2 * np.rint(R * ((1 + 0.9998 / R) * (u + 1) / 2 - 0.4999 / R)) / R - 1
    else:
        out = np.rint(h * u) / h
    if scaling:
        out = out / np.sqrt(n_out * np.var(out, ddof=1))
    return out


@pytest.mark.parametrize("mode", ["Default", "Symmetric", "Asymmetric", "FullRange"])
@pytest.mark.parametrize("quantize,scaling", [(True, False), (False, False), (True, True)])
@pytest.mark.parametrize("R", [15, 255])
def test_sat_weights_forward_matches_the_formulas(mode, quantize, scaling, R):
    w = _rng(R).normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32)
    wq, _ = q.sat_weight_forward(w, R, mode, quantize, scaling, n_out=6 * 9)
    ref = _sat_reference(w, R, mode, quantize, scaling, 6 * 9)
    assert np.abs(wq - ref).max() < 1e-6
    if quantize and not scaling:   # on the grid: R+1 levels (2h+1 for Symmetric)
        levels = {"Default": R + 1, "FullRange": R + 1, "Symmetric": 2 * (R // 2) + 1, "Asymmetric": 2 * (R // 2) + 2}
        assert len(np.unique(np.round(wq, 5))) <= levels[mode]


def test_sat_upstream_unit_anchor():
    """upstream python/tests/test_quantization.py: range 2**32, scaling on: w_hat = u / sqrt(Var(u) N),
    gradient g sech^2(w) / (m s) with the weights fed back as incoming gradient."""
    w = _rng(1).uniform(-1, 1, (2, 2, 1, 10)).astype(np.float32)   # N2D2 dims [X, Y, C, O] -> N = 10*1*2... per tensor
    n_out = w.size // w.shape[1]
    wq, ctx = q.sat_weight_forward(w, 2 ** 32, "Default", True, True, n_out)
    t = np.tanh(w.astype(np.float64))
    m = np.abs(t).max()
    u = t / m
    s = np.sqrt(np.var(u, ddof=1) * n_out)
    assert np.abs(wq - u / s).max() < 1e-3
    g = q.sat_weight_backward(w, ctx)
    assert np.abs(g - w * (1 - t ** 2) / (m * s)).max() < 1e-6


def test_sat_act_and_lsq_forward_match_the_formulas():
    x = _rng(2).normal(0.5, 1.0, (4, 3, 5, 5)).astype(np.float32)
    y, _ = q.sat_act_forward(x, -1.5, 15)   # alpha = |alpha|
    xc = np.clip(x.astype(np.float64), 0, 1.5)
    assert np.abs(y - 1.5 * np.rint(15 * xc / 1.5) / 15).max() < 1e-6
    assert len(np.unique(np.round(y, 5))) <= 16 and y.min() >= 0 and y.max() <= 1.5 + 1e-6
    qn, qp = q.lsq_bounds(255, signed=True)
    assert (qn, qp) == (-128, 127) and q.lsq_bounds(15, True) == (-8, 7) and q.lsq_bounds(15, False) == (0, 15)
    v, _ = q.lsq_forward(x, 0.03, -8, 7)
    assert np.abs(v - 0.03 * np.rint(np.clip(x / 0.03, -8, 7))).max() < 1e-6
    assert q.lsq_init_step(x, 7) == pytest.approx(2 * np.abs(x.astype(np.float64)).mean() / np.sqrt(7))


# -- gradients: reference formulas and PyTorch autograd -----------------------------------------------
class _RoundSTE(torch.autograd.Function):
    """rint forward, identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)   # torch.round is half to even, as rint

    @staticmethod
    def backward(ctx, g):
        return g


def _torch_sat_weights(w, R, mode, quantize, scaling, n_out):
    t = torch.tanh(w)
    m = t.abs().max().detach()
    u = t / m
    h = R // 2
    if mode == "Asymmetric":
        a = (1 + 1 / (2 * h)) * u - 1 / (2 * h)
        out = _RoundSTE.apply(h * a) / h if quantize else a
    elif not quantize:
        out = u
    elif mode == "Default":
        out = 2 * _RoundSTE.apply(R * (u + 1) / 2) / R - 1
    elif mode == "FullRange":
        out = 2 * _RoundSTE.apply(R * ((1 + 0.9998 / R) * (u + 1) / 2 - 0.4999 / R)) / R - 1
    else:
        out = _RoundSTE.apply(h * u) / h
    if scaling:
        out = out / torch.sqrt(n_out * torch.var(out.detach(), unbiased=True))
    return out


def _torch_pact(x, alpha, R):
    xc = torch.minimum(torch.relu(x), alpha)
    return alpha * _RoundSTE.apply(R * xc / alpha) / R


def _torch_lsq(v, s, qn, qp):
    g = 1.0 / np.sqrt(v.numel() * qp)
    s_scaled = s * g + (s - s * g).detach()   # value s, gradient scaled by g
    return s_scaled * _RoundSTE.apply(torch.clamp(v / s_scaled, qn, qp))


@pytest.mark.parametrize("mode", ["Default", "Symmetric", "Asymmetric", "FullRange"])
@pytest.mark.parametrize("quantize,scaling", [(True, False), (False, False), (True, True)])
def test_sat_weight_gradient_equals_torch_and_the_formula(mode, quantize, scaling):
    rng = _rng(3)
    w = rng.normal(0, 0.5, (8, 4, 3, 3))
    g = rng.normal(0, 1, w.shape)
    wq, ctx = q.sat_weight_forward(w, 15, mode, quantize, scaling, 8 * 9)
    dw = q.sat_weight_backward(g, ctx)
    wt = torch.tensor(w, requires_grad=True)
    out = _torch_sat_weights(wt, 15, mode, quantize, scaling, 8 * 9)
    out.backward(torch.tensor(g))
    assert np.abs(out.detach().numpy() - wq).max() < 1e-9
    assert rel_err(dw, wt.grad.numpy()) < 1e-9
    # the reference formula: g sech^2(w) / (m s) c
    t = np.tanh(w)
    s = np.sqrt(8 * 9 * np.var(_sat_reference(w, 15, mode, quantize, False, 1), ddof=1)) if scaling else 1.0
    c = {"FullRange": 1 + 0.9998 / 15, "Asymmetric": 1 + 1 / 14}.get(mode, 1.0) if (quantize or mode == "Asymmetric") \
        else 1.0
    assert rel_err(dw, g * (1 - t ** 2) / (np.abs(t).max() * s) * c) < 1e-9


def test_sat_clamp_mode_gradient_equals_finite_differences():
    """Clamp mode is smooth; its gradient treats m = max|tanh w| as a constant, which it is under a
    small change of any other weight: finite differences there (float64)."""
    rng = _rng(4)
    w = rng.normal(0, 0.5, (5, 7))
    g = rng.normal(0, 1, w.shape)
    _, ctx = q.sat_weight_forward(w, 255, "Default", False, False)
    dw = q.sat_weight_backward(g, ctx)
    top = np.unravel_index(np.argmax(np.abs(np.tanh(w))), w.shape)
    eps = 1e-6
    for idx in np.ndindex(w.shape):
        if idx == top:
            continue
        wp, wm = w.copy(), w.copy()
        wp[idx] += eps
        wm[idx] -= eps
        fd = (np.sum(g * q.sat_weight_forward(wp, 255, "Default", False, False)[0])
              - np.sum(g * q.sat_weight_forward(wm, 255, "Default", False, False)[0])) / (2 * eps)
        assert abs(fd - dw[idx]) < 1e-7 * max(1.0, abs(fd))


def test_sat_act_gradients_equal_torch_and_the_formula():
    rng = _rng(5)
    x = rng.normal(0.8, 1.2, (4, 3, 6, 6))
    g = rng.normal(0, 1, x.shape)
    alpha, R = 2.3, 15
    y, ctx = q.sat_act_forward(x, alpha, R)
    dx, dalpha = q.sat_act_backward(g, ctx, R)
    xt = torch.tensor(x, requires_grad=True)
    at = torch.tensor(alpha, dtype=torch.float64, requires_grad=True)
    out = _torch_pact(xt, at, R)
    out.backward(torch.tensor(g))
    assert np.abs(out.detach().numpy() - y).max() < 1e-9
    assert rel_err(dx, xt.grad.numpy()) < 1e-12
    assert dalpha == pytest.approx(float(at.grad), rel=1e-9)
    # formula: dx = g on (0, alpha]; dy/dalpha = 1 above alpha, the rounding residual inside
    xc = np.clip(x, 0, alpha)
    dya = np.where(x >= alpha, 1.0, np.where(x > 0, np.rint(R * xc / alpha) / R - xc / alpha, 0.0))
    assert np.array_equal(dx, np.where((x > 0) & (x <= alpha), g, 0.0))
    assert dalpha == pytest.approx(float(np.sum(g * dya)), rel=1e-12)
    assert (x > alpha).any() and (x < 0).any()   # every branch exercised


@pytest.mark.parametrize("signed", [True, False])
def test_lsq_gradients_equal_torch_and_the_formula(signed):
    rng = _rng(6)
    v = rng.normal(0.2, 1.0, (6, 4, 3, 3))
    g = rng.normal(0, 1, v.shape)
    qn, qp = q.lsq_bounds(15, signed)
    s = 0.11
    y, ctx = q.lsq_forward(v, s, qn, qp)
    dv, ds = q.lsq_backward(g, ctx, qn, qp)
    vt = torch.tensor(v, requires_grad=True)
    st = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    out = _torch_lsq(vt, st, qn, qp)
    out.backward(torch.tensor(g))
    assert np.abs(out.detach().numpy() - y).max() < 1e-12
    assert rel_err(dv, vt.grad.numpy()) < 1e-12
    assert ds == pytest.approx(float(st.grad), rel=1e-9)
    vbar = v / s
    dvds = np.where(vbar <= qn, qn, np.where(vbar >= qp, qp, np.rint(vbar) - vbar))
    assert ds == pytest.approx(float(np.sum(g * dvds)) / np.sqrt(v.size * qp), rel=1e-12)
    assert (vbar >= qp).any() and (vbar <= qn).any()


# -- API: validation, printing, hooks ----------------------------------------------------------------
def test_constructor_validation_and_setters():
    with pytest.raises(WrongInputType):
        SATAct(alpha=6)            # float parameters need a float, as upstream
    with pytest.raises(WrongValue):
        SATCell(quant_mode="Integer")   # documented upstream, rejected by its code
    with pytest.raises(WrongValue):
        SATCell(range=0)
    with pytest.raises(WrongInputType):
        SATCell(apply_scaling=1)
    with pytest.raises(ValueError):
        SATAct(desc_rule="x")       # listed by upstream's converter, absent in its C++
    with pytest.raises(WrongInputType):
        LSQAct(solver="SGD")
    cell_q = SATCell()
    with pytest.raises(WrongInputType):
        cell_q.set_quantization(1)
    cell_q.set_quantization(False)
    cell_q.set_range(15)
    cell_q.set_scaling(True)
    assert (cell_q.get_quantization(), cell_q.get_range(), cell_q.get_scaling()) == (False, 15, True)
    act_q = SATAct(alpha=6.0, range=15)
    assert act_q.get_alpha() == 6.0 and isinstance(act_q.get_solver(), SGD)
    act_q.solver = SGD(learning_rate=0.5)
    assert act_q.get_solver().learning_rate == 0.5
    assert np.isnan(LSQCell().get_step_size()) and LSQCell(set_opt_init_step_size=False).get_step_size() == 100.0
    with pytest.raises(TypeError):
        n2d2.quantizer.Quantizer()


def test_hooks_on_cells_and_activations():
    with pytest.raises(WrongInputType):
        Fc(4, 2, quantizer=SATAct())
    with pytest.raises(WrongInputType):
        Linear(quantizer=SATCell())
    with pytest.raises(WrongInputType):
        Conv(1, 2, [3, 3], quantizer="SAT")
    act = Linear()
    assert not act.has_quantizer()
    with pytest.raises(RuntimeError, match="No Quantizer in activation"):
        act.get_quantizer()
    act.set_quantizer(SATAct())
    assert act.has_quantizer()
    with pytest.raises(RuntimeError, match="Quantizer already exists"):
        act.set_quantizer(SATAct())
    fc = Fc(4, 2)
    assert not fc.has_quantizer()
    fc.quantizer = SATCell()
    assert fc.has_quantizer() and isinstance(fc.get_quantizer(), SATCell)
    de = Deconv(2, 3, [3, 3], quantizer=LSQCell())
    assert de.has_quantizer() and "quantizer" not in str(de).split("bias_filler")[-1]


def test_printing():
    assert str(SATCell()) == "SATCell(apply_quantization=True, apply_scaling=False, quant_mode=Default, range=255)"
    sgd = str(SGD())
    assert str(SATAct(alpha=6.0, range=15)) == f"SATAct(alpha=6.0, range=15, solver={sgd})"
    assert str(LSQAct()) == f"LSQAct(range=255, set_opt_init_step_size=True, step_size=100.0, solver={sgd})"
    assert str(LSQCell()) == ("LSQCell(quant_mode=Default, range=255, set_opt_init_step_size=True, "
                              f"step_size=100.0, solver={sgd})")
    assert str(Rectifier(quantizer=SATAct())) == \
        f"Rectifier(clipping=0.0, leak_slope=0.0, quantizer=SATAct(alpha=1.0, range=255, solver={sgd}))"
    assert str(Fc(4, 2, quantizer=SATCell(range=15))).endswith(
        "quantizer=SATCell(apply_quantization=True, apply_scaling=False, quant_mode=Default, range=15))")


# -- eager cells and the compiled graph ----------------------------------------------------------------
def _database(n=96, seed=0):
    rng = _rng(seed)
    ys = [int(v) for v in rng.integers(0, 2, n)]
    xs = [rng.random((1, 8, 8)).astype(np.float32) for _ in range(n)]
    for x, y in zip(xs, ys):   # class 1: a brighter top half (learnable in a few steps)
        x[0, :4] += 0.5 * y
    db = n2d2.database.Numpy()
    db.load(xs[: n * 3 // 4], ys[: n * 3 // 4], partition="Learn")
    db.load(xs[n * 3 // 4:], ys[n * 3 // 4:], partition="Test")
    return db


def _lenet_like(kind, bn=False, learning_rate=0.05):
    """Conv - (BN) - Pool - Fc - Fc with weight and activation quantizers (first and last 8 bits)."""
    n2d2.global_variables.seed = 3
    wq = (lambda r: SATCell(range=r, apply_scaling=True)) if kind == "SAT" else (lambda r: LSQCell(range=r))
    aq = (lambda: SATAct(alpha=2.0, range=15)) if kind == "SAT" else (lambda: LSQAct(range=15))
    cells = [Conv(1, 4, [3, 3], quantizer=wq(255), activation=None if bn else Linear(quantizer=aq()))]
    if bn:
        cells.append(BatchNorm2d(4, activation=Linear(quantizer=aq())))
    cells += [Pool2d([2, 2], stride_dims=[2, 2]), Fc(36, 8, quantizer=wq(15), activation=Linear(quantizer=aq())),
              Fc(8, 2, quantizer=wq(255)), Softmax(with_loss=True)]
    model = Sequence(cells)
    model.set_solver(SGD(learning_rate=learning_rate, momentum=0.9))
    return model


def _eager_epoch(model, provider):
    provider.set_partition("Learn")
    target = n2d2.target.Score(provider)
    n2d2.global_variables.seed = 5
    provider.set_batch(shuffle=True)
    model.learn()
    losses = []
    while not provider.all_batchs_provided():
        loss = target(model(provider.read_batch()))
        loss.back_propagate()
        loss.update()
        losses.append(float(loss[0]))
    return losses


def _learned(model):
    """Every array training changes: weights, biases, BN scales and the quantizers' scalars."""
    out = {}
    for i, cell in enumerate(model):
        for key in ("_weights", "_biases", "_scales"):
            if getattr(cell, key, None) is not None:
                out[f"{i}{key}"] = np.array(getattr(cell, key))
        if getattr(cell, "has_quantizer", lambda: False)() and cell.get_quantizer().learnable():
            out[f"{i}.step"] = cell.get_quantizer().learnable()[0].copy()
        aq = cell.activation_quantizer() if hasattr(cell, "activation_quantizer") else None
        if aq is not None:
            out[f"{i}.act"] = aq.learnable()[0].copy()
    return out


def _cross_entropy(model, n=64, seed=11):
    """Test-mode cross-entropy on fresh samples of the training distribution."""
    rng = _rng(seed)
    ys = rng.integers(0, 2, n)
    xs = rng.random((n, 1, 8, 8)).astype(np.float32)
    xs[:, 0, :4] += 0.5 * ys[:, None, None]
    model.test()
    p = model(n2d2.Tensor.from_numpy(xs)).to_numpy().reshape(n, 2)
    model.learn()
    return float(-np.mean(np.log(p[np.arange(n), ys] + 1e-12)))


@pytest.mark.parametrize("kind,bn", [("SAT", True), ("LSQ", False)])
def test_eager_quantized_net_trains(kind, bn):
    """SAT as upstream's LeNet flow: Conv - BatchNorm - Linear(SATAct)."""
    provider = n2d2.provider.DataProvider(_database(n=192), [8, 8, 1], batch_size=8)
    model = _lenet_like(kind, bn)
    before = _learned(model)
    loss_before = _cross_entropy(model)
    for _ in range(3):
        _eager_epoch(model, provider)
    after = _learned(model)
    assert _cross_entropy(model) < loss_before - 0.1
    for key in before:   # the quantizers' scalars are learned too
        if key.endswith((".act", ".step")):
            assert not np.array_equal(before[key], after[key]) and np.isfinite(after[key]).all(), key
    # the outputs are on the activation quantizer's grid
    model.test()
    conv = model[1 if bn else 0]
    y = model[0](n2d2.Tensor.from_numpy(_rng(9).random((2, 1, 8, 8)).astype(np.float32)))
    y = (model[1](y) if bn else y).to_numpy()
    step = conv.activation_quantizer().learnable()[0][0] / (15 if kind == "SAT" else 1)
    assert np.abs(y / step - np.rint(y / step)).max() < 1e-3 and len(np.unique(y)) > 2


@pytest.mark.parametrize("kind,bn", [("SAT", False), ("LSQ", False), ("SAT", True)])
@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_deepnet_cell_fit_equals_the_eager_loop(kind, bn, backend):
    if backend == "c":
        from n2d2.codegen import c_backend

        if not c_backend.available():
            pytest.skip("no C compiler")
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    dn = _lenet_like(kind, bn).to_deepnet_cell(provider, backend=backend)
    n2d2.global_variables.seed = 5
    dn.fit(1)
    fitted = _learned(dn)
    eager = _lenet_like(kind, bn)
    start = _learned(eager)
    _eager_epoch(eager, provider)
    expected = _learned(eager)
    assert fitted.keys() == expected.keys()
    for key, value in expected.items():
        assert not np.array_equal(value, start[key]) or key.endswith("_biases"), key
        assert rel_err(fitted[key], value) < 1e-4, key
    if backend == "c":   # every node ran compiled, the quantizers and their gradients included
        program = dn._program("training", 16)
        where = program._c.where
        graph = program.tg.graph
        quantized = [n for n in graph.nx if graph.op(n) == "FakeQuantize"
                     or graph.attrs(n).get("weight_quantizer") is not None]
        assert quantized and all(where[n] == "c" for n in quantized)
        assert program._c.fallback_reasons == {}
        assert all(w == "c" for n, w in where.items() if graph.op(n) not in ("Input", "Update"))


def test_passes_keep_fake_quantize_nodes_and_results():
    """Inference passes (BN folding, activation fusion, ...) give the same outputs before and after
    on a quantized graph, and never fold a BatchNorm into a quantized Conv."""
    from n2d2.codegen import numpy_exec
    from n2d2.ir.passes.manager import PassManager
    from n2d2.ir.trace import trace

    model = Sequence([Conv(1, 4, [3, 3], quantizer=SATCell(range=15)), BatchNorm2d(4, activation=Rectifier()),
                      Fc(400, 6, activation=Linear(quantizer=SATAct(alpha=1.5, range=15))),
                      Fc(6, 3, activation=Rectifier(), quantizer=LSQCell(range=15, set_opt_init_step_size=False,
                                                                          step_size=0.01))])
    bn = model[1]
    rng = _rng(7)
    bn._means[...] = rng.normal(0, 0.1, 4)
    bn._variances[...] = rng.uniform(0.5, 2, 4)
    bn._scales[...] = rng.uniform(0.5, 2, 4)
    model.test()
    x = rng.random((2, 1, 12, 12)).astype(np.float32)
    y = model(n2d2.Tensor.from_numpy(x))
    graph = trace(y.get_deepnet(), input_names=["input"]).graph
    assert sum(graph.op(n) == "FakeQuantize" for n in graph.nx) == 1
    optimized = PassManager(mode="inference").run(graph)
    before = numpy_exec.run(graph, {"input": x})[0]
    after = numpy_exec.run(optimized, {"input": x})[0]
    assert np.abs(after - y.to_numpy()).max() < 1e-6 and np.abs(before - after).max() < 1e-6
    assert any(optimized.op(n) == "BatchNorm" for n in optimized.nx)
    assert sum(optimized.op(n) == "FakeQuantize" for n in optimized.nx) == 1


def test_quantizer_scalars_are_saved_and_read_back(tmp_path, capsys):
    """Upstream's files: <cell>_QAct_SAT_Alpha, <cell>_QAct_LSQ_StepSize, <cell>_alphaW_LSQ; a folder
    written without quantizers (SAT's clamp phase) still imports."""
    def net(alpha, step):
        return Sequence([Conv(1, 2, [3, 3], name="c1", activation=Linear(quantizer=SATAct(alpha=alpha))),
                         BatchNorm2d(2, name="bn", activation=Linear(quantizer=LSQAct(set_opt_init_step_size=False,
                                                                                     step_size=step))),
                         Fc(72, 3, name="f1", quantizer=LSQCell(set_opt_init_step_size=False, step_size=step))])
    a = net(3.25, 0.125)
    a.export_free_parameters(str(tmp_path / "q"))
    names = sorted(p.name for p in (tmp_path / "q").iterdir())
    assert {"c1_QAct_SAT_Alpha.syntxt", "bn_QAct_LSQ_StepSize.syntxt", "f1_alphaW_LSQ.syntxt"} <= set(names)
    b = net(1.0, 0.5)
    b.import_free_parameters(str(tmp_path / "q"))
    assert b[0].activation_quantizer().get_alpha() == 3.25
    assert b[1].activation_quantizer().get_step_size() == 0.125 and b[2].get_quantizer().get_step_size() == 0.125
    plain = Sequence([Conv(1, 2, [3, 3], name="c1"), BatchNorm2d(2, name="bn"), Fc(72, 3, name="f1")])
    plain.export_free_parameters(str(tmp_path / "clamped"))
    c = net(2.0, 0.5)
    c.import_free_parameters(str(tmp_path / "clamped"))
    assert np.array_equal(c[0]._weights, plain[0]._weights) and c[0].activation_quantizer().get_alpha() == 2.0


def test_deepnet_cell_follows_quantizer_settings_changed_after_tracing():
    """SAT's two phases on one DeepNetCell: clamp (no rounding), then `set_quantization(True)` and
    `set_range(15)`; attaching a quantizer after tracing is refused by name."""
    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
    n2d2.global_variables.seed = 3
    quantizer = SATCell(apply_quantization=False, apply_scaling=True)
    act = SATAct(alpha=2.0, range=255)
    model = Sequence([Conv(1, 4, [3, 3], quantizer=quantizer, activation=Linear(quantizer=act)),
                      Fc(144, 2, name="last"), Softmax(with_loss=True)])
    dn = model.to_deepnet_cell(provider, backend="numpy")
    provider.set_partition("Learn")
    x = provider.read_random_batch()
    dn.learn()
    dn(x)
    quantizer.set_quantization(True)
    quantizer.set_range(15)
    act.set_range(3)
    dn(x)
    out = dn._graph_for("training", 16)
    attrs = [out.graph.attrs(n) for n in out.graph.nx if out.graph.op(n) == "Conv"][0]
    assert dict(attrs["weight_quantizer"][1])["apply_quantization"] is True
    assert dict(attrs["weight_quantizer"][1])["range"] == 15
    fq = [out.graph.attrs(n) for n in out.graph.nx if out.graph.op(n) == "FakeQuantize"][0]
    assert fq["quantizer"] == ("SAT", (("range", 3),))
    act.solver = SGD(learning_rate=0.5)
    dn(x)
    assert dn._graph.params[f"{dn[0].get_name()}.activation_quantizer"].solver is act.solver
    dn[1].quantizer = SATCell()
    with pytest.raises(RuntimeError, match="'last'.*after tracing"):
        dn(x)


def test_cuda_and_c_lowerings_give_quantized_nodes_kernels():
    """The CUDA and C backends' kernel choice (no device needed): a Conv with a weight quantizer
    and a FakeQuantize node get kernels (the quantizers' own: templates/*/ops/FakeQuantize), as
    the same Conv without quantizer does."""
    from n2d2.codegen import c_backend, cuda_backend
    from n2d2.ir.trace import trace

    def graph(quantized):
        conv = Conv(1, 4, [3, 3], quantizer=SATCell(range=15) if quantized else None,
                    activation=Linear(quantizer=SATAct()) if quantized else Rectifier())
        y = conv(n2d2.Tensor.from_numpy(_rng(8).random((2, 1, 8, 8)).astype(np.float32)))
        return trace(y.get_deepnet(), input_names=["input"]).graph

    for quantized in (True, False):
        g = graph(quantized)
        conv = next(n for n in g.nx if g.op(n) == "Conv")
        assert cuda_backend._geometry(g, conv, True, lambda a: True) is not None
        assert c_backend._geometry(g, conv, True) is not None
        for n in g.nx:
            if g.op(n) == "FakeQuantize":
                assert cuda_backend._geometry(g, n, True, lambda a: True)["KIND"] == "SAT"
                assert c_backend._geometry(g, n, True)["KIND"] == "SAT"


def test_get_quantized_weights_biases_and_full_precision_activations():
    """Upstream's unit test through the API (add_weights, range 2**32, scaling on), and the same
    methods on a cell's quantizer and on an activation quantizer."""
    w = _rng(10).uniform(-1, 1, (10, 1, 2, 2)).astype(np.float32)    # N2D2 dims [2, 2, 1, 10]
    b = _rng(11).uniform(-1, 1, (10,)).astype(np.float32)
    quantizer = SATCell(apply_scaling=True, apply_quantization=True)
    quantizer.set_range(2 ** 32)
    quantizer.add_weights(n2d2.Tensor.from_numpy(w), n2d2.Tensor.from_numpy(np.zeros_like(w)))
    quantizer.add_biases(n2d2.Tensor.from_numpy(b), n2d2.Tensor.from_numpy(np.zeros_like(b)))
    u = np.tanh(w.astype(np.float64)) / np.abs(np.tanh(w)).max()
    expected = u / np.sqrt(np.var(u, ddof=1) * 10 * 2 * 2)
    assert np.abs(quantizer.get_quantized_weights(0).to_numpy() - expected).max() < 1e-3
    assert np.array_equal(quantizer.get_quantized_biases().to_numpy(), b)
    with pytest.raises(WrongInputType):
        quantizer.add_weights(w, w)

    fc = Fc(6, 3, quantizer=LSQCell(range=15, set_opt_init_step_size=False, step_size=0.02),
            activation=Linear(quantizer=SATAct(alpha=1.0, range=15)))
    qw = fc.get_quantizer().get_quantized_weights(0).to_numpy()
    assert np.abs(qw - 0.02 * np.rint(np.clip(fc._weights / 0.02, -8, 7))).max() < 1e-7
    assert np.array_equal(fc.get_quantizer().get_quantized_biases().to_numpy(), fc._biases)
    x = _rng(12).normal(0, 1, (2, 6, 1, 1)).astype(np.float32)
    fc.learn()
    fc(n2d2.Tensor.from_numpy(x))
    full = fc.get_activation().get_quantizer().get_full_precision_activations().to_numpy()
    assert np.allclose(full.reshape(2, 3), x.reshape(2, 6) @ qw.T + fc._biases,
                       atol=1e-5)


def test_float_export_refuses_a_quantized_graph(tmp_path):
    """Until the integer export exists, a fake-quantized network is not exported as float silently."""
    from n2d2.export import ExportError, unsupported_nodes

    provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=4)
    dn = _lenet_like("SAT").to_deepnet_cell(provider, backend="numpy")
    bad = {op for _, op, _ in unsupported_nodes(dn._graph)}
    assert {"FakeQuantize", "Conv", "Fc"} <= bad
    with pytest.raises(ExportError, match="FakeQuantize"):
        n2d2.export.export_c(dn, export_folder_name=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind,bn", [("LSQ", False), ("SAT", True)])
def test_eager_compile_runs_quantized_cells_compiled_and_equal(kind, bn):
    """`global_variables.eager_compile`: the eager loop of a quantized network is replayed as its
    compiled training program (the quantizers' kernels, their learned scalars stepped by their
    own solvers), and equals the plain eager loop."""
    from n2d2 import eager_compile

    results = []
    for compiled in (False, True):
        provider = n2d2.provider.DataProvider(_database(), [8, 8, 1], batch_size=16)
        model = _lenet_like(kind, bn)
        old = n2d2.global_variables.eager_compile
        n2d2.global_variables.eager_compile = compiled
        try:
            assert model[0]._compilable() and model[1]._compilable()
            before = eager_compile.stats.training_replays
            _eager_epoch(model, provider)
            assert (eager_compile.stats.training_replays > before) == compiled
        finally:
            n2d2.global_variables.eager_compile = old
        results.append(_learned(model))
    for key, value in results[0].items():
        assert rel_err(results[1][key], value) < 1e-4, key
