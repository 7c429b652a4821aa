"""The backend interface (n2d2.codegen.backends), the one interpreter (n2d2.codegen.interpreter)
and the pipelines defined once (n2d2.ir.passes.manager.PIPELINES)."""
import numpy as np
import pytest

import n2d2
from n2d2.codegen import backends, c_backend, cuda_backend, numpy_exec
from n2d2.codegen.arena_exec import ArenaProgram
from n2d2.codegen.interpreter import ArenaStore, DictStore, Interpreter
from n2d2.error_handler import WrongValue
from n2d2.ir import GraphError, planner
from n2d2.ir.autodiff import build_training_graph
from tests.test_c_backend import Net, _normal, _rng

RELU = ("Rectifier", (("clipping", 0.0), ("leak_slope", 0.0)))
needs_cc = pytest.mark.skipif(not c_backend.available(), reason="needs a C compiler")


def small_net(seed=0, batch=3):
    """Conv -> BatchNorm + ReLU -> two branches (Pool, Conv) concatenated -> Fc + Tanh."""
    net = Net(seed=seed)
    x = net.source((batch, 3, 8, 8))
    c = net.conv(x, 4, padding=(1, 1))
    rng = net.rng
    bn = net.op("BatchNorm", [c], {"epsilon": 1e-5, "momentum": 0.1, "unbiased": False, "activation": RELU},
                {"scales": rng.uniform(0.5, 1.5, 4), "biases": _normal(rng, (4,), 0.2),
                 "means": np.zeros(4), "variances": np.ones(4)})
    p = net.op("Pool", [bn], {"pool": (1, 1), "stride": (1, 1), "padding": (0, 0), "pooling": "Max",
                              "activation": None})
    q = net.conv(bn, 3, k=(1, 1))
    cat = net.op("Concat", [p, q], {"axis": 1})
    f = net.op("Fc", [cat], {"activation": ("Tanh", (("alpha", 1.0),))},
               {"weights": _normal(rng, (5, 7 * 8 * 8), 0.05), "biases": _normal(rng, (5,), 0.1)})
    return net.output(f)


def _phases(tg):
    return [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes, tg.update_nodes]


def _kernel_nodes(module):
    """The node of each kernel (C kernels are dicts, CUDA launch specs carry attributes)."""
    return [getattr(k, "node", None) or k["node"] for k in module.kernels]


# -- the registry -----------------------------------------------------------------------------------
def test_registry_lists_every_backend_with_its_availability():
    assert backends.NAMES == ("numpy", "c", "cuda")
    got = backends.availability()
    assert got == {"numpy": True, "c": c_backend.available(), "cuda": cuda_backend.available()}
    for name in backends.NAMES:
        backend = backends.get(name)
        assert isinstance(backend, backends.Backend) and backend.name == name
    assert backends.get("c").source_extension == ".c" and backends.get("cuda").source_extension == ".cu"
    assert backends.get("numpy").source_extension is None
    with pytest.raises(WrongValue):
        backends.get("fortran")


def test_selection_follows_availability_and_preference(monkeypatch):
    assert backends.select("numpy") == "numpy"
    old = n2d2.global_variables.default_model
    try:
        n2d2.global_variables.default_model = "Frame"
        monkeypatch.setattr(c_backend.CBackend, "available", lambda self: False)
        assert backends.select() == "numpy"
        with pytest.raises(RuntimeError, match="backend 'c' needs a C compiler"):
            backends.select("c")
        monkeypatch.setattr(c_backend.CBackend, "available", lambda self: True)
        assert backends.select() == "c"
        monkeypatch.setattr(cuda_backend.CudaBackend, "available", lambda self: False)
        with pytest.raises(RuntimeError, match="backend 'cuda' needs CuPy and a visible CUDA device"):
            backends.select("cuda")
    finally:
        n2d2.global_variables.default_model = old


# -- lowering is pure ---------------------------------------------------------------------------------
@pytest.fixture
def no_compiler(monkeypatch):
    """Every way to a compiler or a device fails loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError("lowering called a compiler or a device")

    monkeypatch.setattr(c_backend.compiler, "build_shared_library", refuse)
    monkeypatch.setattr(c_backend.compiler, "load_library", refuse)
    monkeypatch.setattr(c_backend.compiler, "find_compiler", refuse)
    monkeypatch.setattr(c_backend.compiler.artifact_cache, "cached_library", refuse)
    monkeypatch.setattr(cuda_backend, "_build_emulator", refuse)
    monkeypatch.setattr(cuda_backend.CupyDevice, "__init__", refuse)
    monkeypatch.setattr("subprocess.run", refuse)


@pytest.mark.parametrize("name", ["c", "cuda"])
def test_lowering_is_pure_and_deterministic(name, no_compiler):
    backend = backends.get(name)
    tg = build_training_graph(small_net().g)
    first = backend.lower(tg.graph, _phases(tg), training=True)
    second = backend.lower(tg.graph, _phases(tg), training=True)
    assert first.source == second.source and len(first.source) > 1000
    assert first.where == second.where
    assert _kernel_nodes(first) == _kernel_nodes(second) and _kernel_nodes(first)
    assert first.plan.offsets == second.plan.offsets and first.plan.arena_bytes > 0
    ran = {n for phase in _phases(tg) for n in phase if tg.graph.op(n) not in ("Input", "Update")}
    assert ran <= set(first.where) and any(w == name for w in first.where.values())
    inference = small_net().g
    module = backend.lower(inference, [inference.topological_order()])
    assert module.source == backend.lower(inference, [inference.topological_order()]).source


@needs_cc
def test_c_program_loads_the_module_it_is_given():
    g = small_net().g
    module = c_backend.lower(g, [g.topological_order()])
    program = backends.get("c").load(module)
    assert program.module is module and program.source == module.source and program.where is module.where
    program.feed(small_net().feeds)
    program.run_phase(0)
    ref = numpy_exec.run(g, small_net().feeds)[0]
    np.testing.assert_allclose(program.fetch(g.outputs[0]), ref, rtol=1e-4, atol=1e-5)


def test_cuda_lowering_is_the_cuda_programs_source():
    class RenderOnly(cuda_backend.HostEmulator):
        def load(self, source, names):
            return {}

    tg = build_training_graph(small_net().g)
    program = cuda_backend.CudaProgram(tg.graph, _phases(tg), training=True, device=RenderOnly())
    assert program.source == cuda_backend.lower(tg.graph, _phases(tg), True).source


# -- one interpreter, two stores --------------------------------------------------------------------
class _Recording(Interpreter):
    """Copies of every node's outputs right after it ran."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = {}

    def run_node(self, name):
        super().run_node(name)
        outs = self.graph.node(name).outputs
        self.record[name] = [np.array(self.store.read((name, k))) for k in range(len(outs))]


class _RecordingArena(ArenaProgram):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.record = {}

    def run_node(self, name):
        super().run_node(name)
        outs = self.graph.node(name).outputs
        self.record[name] = [np.array(self.views[(name, k)]) for k in range(len(outs))]


def test_dict_and_arena_stores_give_identical_outputs_and_gradients():
    net = small_net(seed=4)
    tg = build_training_graph(net.g)
    rng = _rng(9)
    seeds = {name: _normal(rng, tg.graph.output_types(name)[0].shape) for name in tg.grad_inputs.values()}
    order = tg.forward_nodes + list(seeds) + tg.backward_nodes          # no Update: parameters stay
    plan = planner.plan(tg.graph, order=order + tg.update_nodes)
    assert plan.inplace, "the plan should run some node in place (the arena store must honour it)"

    n2d2.global_variables.seed = 3
    by_dict = _Recording(tg.graph, DictStore(), training=True)
    by_dict.feed(net.feeds)
    by_dict.feed(seeds)
    by_dict.run_nodes(order)

    n2d2.global_variables.seed = 3
    arena = _RecordingArena(tg.graph, plan)
    arena.training = True
    arena.feed(net.feeds)
    arena.feed(seeds)
    arena.run_nodes(order)

    grads = [n for n in tg.backward_nodes if tg.graph.op(n) == "Grad"]
    assert len(grads) >= 5 and set(by_dict.record) == set(arena.record)
    # The same op definitions on the same values; the only difference is memory layout: the
    # reference returns some outputs channels-last (strided) and the arena holds C-contiguous
    # copies, so reductions (BatchNorm statistics, weight gradients) sum in another order: the
    # values agree to float32 rounding (a few ulps, 1e-5 of each tensor's scale).
    for node, values in by_dict.record.items():
        for k, (a, b) in enumerate(zip(values, arena.record[node])):
            assert np.isfinite(a).all() and (a.size == 0 or np.abs(a).max() > 0), (node, k)
            err = float(np.abs(b.astype(np.float64) - a).max()) if a.size else 0.0
            assert a.shape == b.shape and err <= 1e-5 * float(np.abs(a).max()) + 1e-6, (node, k, err)
    # arena contexts were released after their Grad; the dict interpreter keeps them all
    assert not arena.saved and set(tg.forward_nodes) - set(tg.graph.inputs) <= set(by_dict.saved)


def test_arena_store_refuses_a_wrong_output():
    net = small_net()
    g = net.g
    views = ArenaProgram(g).views
    store = ArenaStore(views)
    node = g.outputs[0][0]
    opdef = n2d2.ir.ops.get(g.op(node))
    shape = views[(node, 0)].shape
    with pytest.raises(GraphError, match=rf"node '{node}' \(Fc\): output 0 has shape"):
        store.write(g, node, opdef, [np.zeros((shape[0] + 1,) + shape[1:], np.float32)])
    with pytest.raises(GraphError, match=rf"node '{node}' \(Fc\): produced 2 outputs, the graph declares 1"):
        store.write(g, node, opdef, [np.zeros(shape, np.float32)] * 2)
    with pytest.raises(ValueError, match="input 'input' has shape"):
        store.feed(g, "input", np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(GraphError, match="no value fed for input 'input'"):
        store.load_input(g, "input")


def test_numpy_program_runs_phases_afresh():
    net = small_net()
    g = net.g
    program = backends.get("numpy").program(g, [g.topological_order()])
    assert program.where and set(program.where.values()) == {"numpy"} and program.source is None
    program.feed(net.feeds)
    program.run_phase(0)
    np.testing.assert_array_equal(program.fetch(g.outputs[0]), numpy_exec.run(g, net.feeds)[0])
    with pytest.raises(GraphError, match="no value fed for input 'input'"):
        program.run_phase(0)     # the previous run's input is not reused silently


# -- the C program's fallback is the interpreter -------------------------------------------------------
def _graph_with_a_fallback_node():
    """Conv -> Normalize -> Fc: Normalize has no C kernel (it runs on its reference)."""
    from n2d2.cells import Conv, Fc, Normalize, Sequence
    from n2d2.ir.trace import trace

    n2d2.global_variables.seed = 5
    model = Sequence([Conv(2, 3, [3, 3]), Normalize(), Fc(3 * 4 * 4, 4)])
    model.test()
    y = model(n2d2.Tensor([2, 2, 6, 6]))
    return trace(y.get_deepnet(), input_names=["input"]).graph


@needs_cc
def test_c_fallback_node_runs_through_the_interpreter(monkeypatch):
    g = _graph_with_a_fallback_node()
    fallback = [n for n in g.nodes() if g.op(n) == "Normalize"]
    assert len(fallback) == 1
    program = c_backend.CProgram(g, [g.topological_order()])
    assert program.where[fallback[0]] == "numpy" and "c" in program.where.values()
    ran = []
    original = Interpreter.run_forward

    def spy(self, name, d, opdef, xs):
        ran.append(name)
        return original(self, name, d, opdef, xs)

    monkeypatch.setattr(Interpreter, "run_forward", spy)
    x = _normal(_rng(2), (2, 2, 6, 6))
    program.feed({"input": x})
    program.run_phase(0)
    assert ran == fallback
    ref = numpy_exec.run(g, {"input": x})[0]
    got = program.fetch(g.outputs[0])
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


# -- pipelines defined once -------------------------------------------------------------------------
def test_live_pipelines_keep_the_parameter_arrays():
    """The live pipelines DeepNetCell runs never replace a parameter array (the program keeps
    reading the cells' own arrays); the inference pipeline does (it folds BatchNorm)."""
    from n2d2.ir.passes.manager import PASSES, PIPELINES, PassManager

    assert PIPELINES["live_training"] == PIPELINES["training"]
    assert "fold_batchnorm" not in PIPELINES["live_inference"]
    assert all(name in PASSES for pipeline in PIPELINES.values() for name in pipeline)

    def arrays(graph):
        return {id(graph.params[p].array) for n in graph.nodes() for p in graph.node(n).params.values()}

    g = small_net().g
    before = arrays(g)
    for name, mode in (("live_inference", "inference"), ("live_training", "training")):
        out = PassManager(pipeline=PIPELINES[name], mode=mode).run(g)
        assert arrays(out) <= before, name
    folded = PassManager(pipeline=PIPELINES["inference"], mode="inference").run(g)
    assert not arrays(folded) <= before


def test_deepnet_cell_runs_the_live_pipelines(monkeypatch):
    from n2d2.cells import Conv, Fc, Sequence
    from n2d2.cells.deepnet_cell import DeepNetCell, training_graph
    from n2d2.ir.passes import manager

    seen = []
    original = manager.PassManager.run

    def spy(self, graph):
        seen.append(tuple(self.names))
        return original(self, graph)

    monkeypatch.setattr(manager.PassManager, "run", spy)
    model = Sequence([Conv(1, 2, [3, 3]), Fc(2 * 4 * 4, 3)])
    model.test()
    y = model(n2d2.Tensor([2, 1, 6, 6]))
    from n2d2.ir.trace import trace

    graph = trace(y.get_deepnet(), input_names=["input"]).graph
    DeepNetCell._optimize(graph)
    training_graph(graph)
    assert seen == [manager.PIPELINES["live_inference"], manager.PIPELINES["live_training"]]


@needs_cc
def test_c_backward_of_a_batchnorm_with_frozen_scales():
    """A BatchNorm whose scales and biases are frozen still needs d(scale) and d(bias) for its
    input gradient: the C lowering gives them scratch buffers (it failed in the template)."""
    from tests.test_c_backend import _training_outputs, run_c_training, run_numpy_training

    net = Net(seed=6)
    x = net.source((2, 3, 5, 5))
    rng = net.rng
    params = {role: net.param("bnf", role, a, trainable=False) for role, a in (
        ("scales", rng.uniform(0.5, 1.5, 3)), ("biases", _normal(rng, (3,), 0.2)),
        ("means", np.zeros(3)), ("variances", np.ones(3)))}
    net.g.add_op("bnf", "BatchNorm", [x], {"epsilon": 1e-5, "momentum": 0.1, "unbiased": False,
                                           "activation": RELU}, params)
    net.output("bnf")
    tg, seeds = _training_outputs(net)
    ref = run_numpy_training(tg, net.feeds, seeds)
    out, program = run_c_training(tg, net.feeds, seeds)
    assert program.where["bnf"] == "c" and program.where["grad:bnf"] == "c"
    grads = [t for t in ref if t[0].startswith("grad:")]
    assert grads
    for t in grads:
        assert np.abs(ref[t]).max() > 0
        assert np.abs(out[t] - ref[t]).max() <= 1e-4 * np.abs(ref[t]).max(), t
