"""CUDA backend: generated kernels against the numpy reference.

Without a GPU (here, CI): every op's kernels (forward and backward, several shapes and
attributes, fused activations) are rendered, compiled by nvcc (device code, as NVRTC sees it)
and run on the CPU by the host emulator (the same source, g++, block threads as fibers), step
for step against the numpy executor: every node's outputs, every gradient, the parameters after
the fused SGD updates. Whole LeNet and ResNet-20 training graphs render and compile. With a GPU:
the same comparisons on the device, LeNet / ResNet-20 training steps, CUDA-graph replay equal to
eager launches, and DeepNetCell on the "cuda" backend.
"""
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import n2d2
import n2d2.ir.epilogue  # noqa: F401 (registers the Epilogue op)
from n2d2.codegen import cuda_backend
from n2d2.codegen.cuda_backend import CudaProgram, HostEmulator, compile_check
from n2d2.codegen.numpy_exec import Session
from n2d2.ir.autodiff import build_training_graph
from n2d2.ir.graph import Graph, Param
from n2d2.ir.ops import activation_spec
from n2d2.solver import SGD

REPO = Path(__file__).resolve().parent.parent
HAVE_NVCC = cuda_backend.find_nvcc() is not None
requires_cuda = pytest.mark.skipif(not n2d2.global_variables.cuda_available, reason="needs CuPy and a CUDA device")
requires_nvcc = pytest.mark.skipif(not HAVE_NVCC, reason="needs nvcc")

A = n2d2.activation
RELU = activation_spec(A.Rectifier())
LEAKY = activation_spec(A.Rectifier(leak_slope=0.1, clipping=2.0))
TANH = activation_spec(A.Tanh(alpha=0.7))
SIGM = activation_spec(A.Logistic())
SAT = activation_spec(A.Saturation(threshold=0.8))
SOFTPLUS = activation_spec(A.Softplus())
CLIPLIN = activation_spec(A.Linear(clipping=1.5))


# -- graph builders ------------------------------------------------------------------------------------
class B:
    """add_op shorthands with seeded parameters (SGD solvers on every trained parameter)."""

    def __init__(self, name, seed=0, solver=None):
        self.g = Graph(name)
        self.rng = np.random.default_rng(seed)
        self.solver = solver or (lambda: SGD(learning_rate=0.05, momentum=0.9, decay=5e-4))

    def _p(self, name, shape, scale=1.0, trainable=True, positive=False):
        a = self.rng.standard_normal(shape) * scale
        if positive:
            a = np.abs(a) + 0.5
        return self.g.add_param(name, a.astype(np.float32), trainable=trainable,
                                solver=self.solver() if trainable else None)

    def shape(self, x):
        src, out = x if isinstance(x, tuple) else (x, 0)
        return self.g.output_types(src)[out].shape

    def input(self, name, shape):
        return self.g.add_input(name, shape)

    def conv(self, name, xs, cout, k=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1), groups=1, mapping=None,
             bias=True, act=None):
        xs = xs if isinstance(xs, list) else [xs]
        cin = sum(self.shape(x)[1] for x in xs)
        params = {"weights": self._p(name + ".w", (cout, cin // groups) + tuple(k), 1 / np.sqrt(cin * k[0] * k[1]))}
        if bias:
            params["biases"] = self._p(name + ".b", (cout,), 0.1)
        return self.g.add_op(name, "Conv", xs, {"stride": stride, "padding": pad, "dilation": dil, "groups": groups,
                                                "mapping": mapping, "activation": act}, params)

    def fc(self, name, xs, cout, bias=True, act=None):
        xs = xs if isinstance(xs, list) else [xs]
        k = sum(int(np.prod(self.shape(x)[1:])) for x in xs)
        params = {"weights": self._p(name + ".w", (cout, k), 1 / np.sqrt(k))}
        if bias:
            params["biases"] = self._p(name + ".b", (cout,), 0.1)
        return self.g.add_op(name, "Fc", xs, {"activation": act}, params)

    def pool(self, name, x, kind="Max", pool=(2, 2), stride=(2, 2), pad=(0, 0), mapping=None, act=None):
        return self.g.add_op(name, "Pool", [x], {"pooling": kind, "pool": pool, "stride": stride, "padding": pad,
                                                 "mapping": mapping, "activation": act})

    def bn(self, name, x, act=None, momentum=0.1, unbiased=False, trainable=True):
        c = self.shape(x)[1]
        params = {"scales": self._p(name + ".s", (c,), 0.3, trainable, positive=True),
                  "biases": self._p(name + ".b", (c,), 0.3, trainable),
                  "means": self._p(name + ".m", (c,), 0.1, False),
                  "variances": self._p(name + ".v", (c,), 0.2, False, positive=True)}
        return self.g.add_op(name, "BatchNorm", [x], {"epsilon": 1e-5, "momentum": momentum, "unbiased": unbiased,
                                                      "activation": act}, params)

    def op(self, name, op, xs, **attrs):
        return self.g.add_op(name, op, xs if isinstance(xs, list) else [xs], attrs)


def clone(graph):
    """The same graph with its own copies of the parameters and fresh solvers."""
    g = graph.copy()
    g.params = {k: Param(p.array.copy(), p.trainable, p.owner, p.role, p.solver.copy() if p.solver else None)
                for k, p in graph.params.items()}
    return g


def feeds_for(graph, rng):
    return {name: rng.standard_normal(graph.output_types(name)[0].shape).astype(np.float32)
            for name in graph.inputs}


def inference_outputs(prog, graph, feeds):
    """What the inference program `prog` of `graph` records on `feeds`, and the numpy executor's values."""
    prog.feed(feeds)
    record = {}
    prog.run_phase(0, record=record)
    session = Session(graph, training=False)
    session.feed(feeds)
    session.run_nodes(session.order)
    return record, session.values


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return np.linalg.norm(a - b) / nb if nb > 0 else np.linalg.norm(a)


def to_host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def compare(record, values, what, tol=1e-5, skip=()):
    bad = []
    for node, outs in record.items():
        if node in skip or node not in values:
            continue
        for k, (a, b) in enumerate(zip(outs, values[node])):
            b = to_host(b)
            if a.shape != b.shape:
                bad.append(f"{node}:{k} shape {a.shape} vs {b.shape}")
                continue
            e = rel(to_host(a), b)
            if not e < tol:
                bad.append(f"{node}:{k} rel {e:.3g}")
    assert not bad, f"{what}: " + "; ".join(bad)


def run_training(graph, device, steps=2, seed=0, tol=1e-5, graphs=False, on_device=None):
    """`steps` training steps of `graph` through a CudaProgram and through the numpy executor
    (twin parameters); compares every node's outputs, gradients and the updated parameters."""
    ref_graph = clone(graph)
    on_device = on_device or (lambda a: a)
    for p in graph.params.values():
        p.array = on_device(p.array)
    tg, tr = build_training_graph(graph), build_training_graph(ref_graph)
    seeds = list(tg.grad_inputs.values())
    prog = CudaProgram(tg.graph, [tg.forward_nodes, seeds + tg.backward_nodes, tg.update_nodes], training=True,
                       device=device, graphs=graphs)
    rng = np.random.default_rng(seed + 1)
    for step in range(steps):
        feeds = feeds_for(graph, rng)
        seed_values = {k: rng.standard_normal(graph.output_types(k[0])[k[1]].shape).astype(np.float32)
                       for k in tg.grad_inputs}
        n = next(iter(feeds.values())).shape[0]
        n2d2.global_variables.seed = 100 + step
        session = Session(tr.graph, training=True, order=tr.forward_nodes)
        session.feed(feeds)
        session.run_nodes(tr.forward_nodes)
        session.feed({tr.grad_inputs[k]: v for k, v in seed_values.items()})
        session.run_nodes(tr.backward_nodes)
        session.batch_size = n
        session.run_nodes(tr.update_nodes)
        n2d2.global_variables.seed = 100 + step
        fwd, bwd = {}, {}
        prog.feed({k: on_device(v) for k, v in feeds.items()})
        prog.run_phase(0, n, record=fwd if not graphs else None)
        if graphs:
            for t in tg.graph.outputs:
                fwd[t[0]] = [prog.view(t).copy()]
        prog.feed({tg.grad_inputs[k]: on_device(v) for k, v in seed_values.items()})
        prog.run_phase(1, n, record=bwd if not graphs else None)
        grads = {f"{g}:{k}": [to_host(prog.view((g, k)))] for g, k in tg.param_grads.values()}
        prog.run_phase(2, n)
        compare({k: [to_host(a) for a in v] for k, v in fwd.items()}, session.values, f"forward, step {step}", tol)
        compare({k: [to_host(a) for a in v] for k, v in bwd.items()}, session.values, f"backward, step {step}", tol)
        compare(grads, {f"{g}:{k}": [session.values[g][k]] for g, k in tr.param_grads.values()},
                f"parameter gradients, step {step}", tol)
        params = {k: [to_host(p.array)] for k, p in graph.params.items()}
        compare(params, {k: [p.array] for k, p in ref_graph.params.items()}, f"parameters after step {step}", tol)
    return prog


EMU = HostEmulator()


# -- op zoo --------------------------------------------------------------------------------------------
def conv_graph(batch=2):
    """Convolutions: padding, stride, dilation, groups, depthwise, mapping, two inputs, no bias, 1x1,
    a kernel covering its input, negative padding; every fused activation on the way."""
    b = B("convs")
    x = b.input("x", (batch, 3, 12, 10))
    h = b.bn("bn0", x)                                                          # x needs no gradient: give it one
    c1 = b.conv("c1", h, 6, act=RELU)
    c2 = b.conv("c2", c1, 8, k=(3, 2), stride=(2, 1), pad=(1, 0), act=TANH)
    c3 = b.conv("c3", c2, 8, dil=(2, 2), pad=(2, 2), groups=2, bias=False, act=LEAKY)
    c4 = b.conv("c4", c3, 8, groups=8, act=SIGM)                                # depthwise
    m = np.random.default_rng(3).random((8, 6)) < 0.5
    m[:, 0] = False                                                             # an output without channel
    c5 = b.conv("c5", c4, 6, k=(1, 1), pad=(0, 0), mapping=m, act=SAT)
    c6 = b.conv("c6", [c5, c3], 5, k=(2, 3), stride=(1, 1), pad=(0, 0), act=SOFTPLUS)  # two inputs
    c7 = b.conv("c7", c6, 4, k=(2, 2), pad=(-1, 0), act=CLIPLIN)                # negative padding (crop)
    f = b.fc("f", c7, 7, act=RELU)
    g = b.conv("g", c7, 3, k=tuple(b.shape(c7)[2:]), pad=(0, 0))                # covers its input
    b.g.set_outputs([f, g])
    return b.g


def fc_pool_graph(batch=3):
    b = B("fcpool")
    x = b.input("x", (batch, 4, 10, 9))
    h = b.conv("c0", x, 6, act=RELU)
    p1 = b.pool("p1", h, "Max", (3, 3), (2, 2), (1, 1), act=TANH)               # overlapping, padded
    p2 = b.pool("p2", h, "Average", (3, 2), (1, 2), (1, 0))                     # overlapping, padded
    p3 = b.pool("p3", h, "Max", (2, 2), (2, 2))                                 # tiled
    p4 = b.pool("p4", h, "Average", (3, 3), (3, 3), act=LEAKY)                  # disjoint, not covering
    m = np.random.default_rng(4).random((6, 5)) < 0.5
    m[:, 1] = False
    m[0, 2] = m[1, 2] = True
    p5 = b.pool("p5", h, "Max", (2, 3), (2, 2), (0, 1), mapping=m)
    p6 = b.pool("p6", h, "Average", (2, 2), (1, 1), mapping=m)
    gp = b.pool("gp", h, "Max", (10, 9), (1, 1))                                # global
    f1 = b.fc("f1", [p1, p3], 9, act=SIGM)                                      # two inputs
    f2 = b.fc("f2", [p2, p4, p5, p6, gp], 5, bias=False)
    sm = b.op("sm", "Softmax", f1, group_size=3, with_loss=False, activation=None)
    sl = b.op("sl", "Softmax", f2, group_size=0, with_loss=True, activation=None)
    b.g.set_outputs([sm, sl])
    return b.g


def elementwise_graph(batch=2):
    b = B("elementwise")
    x = b.input("x", (batch, 4, 5, 6))
    h = b.conv("c0", x, 4)
    h2 = b.conv("c1", x, 4, act=TANH)
    h3 = b.conv("c2", x, 2)
    wc = [0.5, -1.0, 2.0, 1.5]
    e1 = b.op("e1", "ElemWise", [h, h2], operation="Sum", weights=[wc, 0.7], shifts=[0.1, [0.2, 0.0, -0.1, 0.3]],
              activation=RELU)
    e2 = b.op("e2", "ElemWise", [h, h2, e1], operation="AbsSum", weights=[1.0, 2.0, -0.5], shifts=[0.0, 0.0, 0.0],
              activation=None)
    e3 = b.op("e3", "ElemWise", [e1, h2], operation="EuclideanSum", weights=[1.2, 0.8], shifts=[0.1, 0.2],
              activation=SIGM)
    e4 = b.op("e4", "ElemWise", [h, e2, e3], operation="Prod", weights=[1.0] * 3, shifts=[0.0] * 3, activation=None)
    e5 = b.op("e5", "ElemWise", [h, h2], operation="Max", weights=[1.0, 1.0], shifts=[0.0, 0.0], activation=TANH)
    a1 = b.op("a1", "Activation", [e4], activation=SOFTPLUS)
    a2 = b.op("a2", "Activation", [e5, h3], activation=SAT)                     # concatenating
    d1 = b.op("d1", "Dropout", [a1], dropout=0.4, activation=None)
    d2 = b.op("d2", "Dropout", [a2, h], dropout=0.3, activation=LEAKY)
    pd = b.op("pd", "Padding", [d1], top=1, bot=2, left=-1, right=1, activation=TANH)
    pc = b.op("pc", "Padding", [d2], top=-1, bot=0, left=2, right=-2, activation=None)
    cc = b.op("cc", "Concat", [pd, b.conv("c3", pd, 3)])
    r1 = b.op("r1", "Reshape", [cc], shape=(int(np.prod(b.shape(cc)[1:])) // 2, 2, 1), activation=RELU)
    c4 = b.conv("c4", pc, 2)
    r2 = b.op("r2", "Reshape", [pc, c4], shape=(int(np.prod(b.shape(pc)[1:])) + int(np.prod(b.shape(c4)[1:])),),
              activation=None)
    bnf = b.bn("bnf", h2, act=LEAKY, unbiased=True, trainable=False)           # frozen scales, dx needed
    ep = b.op("ep", "Epilogue", [bnf, h, h2], steps=(("scale", (0.5, 1.0, -1.0, 2.0)), ("bias", 0.1),
                                                     ("add", 1, 1.0, 0.0), ("activation", TANH),
                                                     ("add", 2, (0.5, 0.5, 1.0, -1.0), 0.2), ("scale", 1.5)),
              activation=SIGM)
    b.g.set_outputs([r1, r2, ep])
    return b.g


def bn_graph(batch=3):
    b = B("bn")
    x = b.input("x", (batch, 5, 7, 6))
    h = b.conv("c0", x, 6, bias=False)                                          # a bias before BN gets ~0
    n1 = b.bn("n1", h, act=RELU)
    n2 = b.bn("n2", n1, unbiased=True)
    n3 = b.bn("n3", n2, act=TANH, momentum=0.0)                                 # moving statistics in training
    f = b.fc("f", n3, 4, bias=False)
    n4 = b.bn("n4", f, act=SIGM)                                                # 1x1 maps
    b.g.set_outputs([n4])
    return b.g


ZOO = {"conv": conv_graph, "fc_pool": fc_pool_graph, "elementwise": elementwise_graph, "bn": bn_graph}


def inference_program(graph, device):
    return CudaProgram(graph, [graph.topological_order()], training=False, device=device)


# -- rendering and compiling (no GPU) ------------------------------------------------------------------
def all_sources():
    """Training and inference sources of the op zoo."""
    out = {}
    for name, build in ZOO.items():
        g = build()
        tg = build_training_graph(g)
        out[name + ".train"] = CudaProgram(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) +
                                                      tg.backward_nodes, tg.update_nodes], training=True,
                                           device=_RenderOnly()).source
        out[name + ".infer"] = inference_program(build(), _RenderOnly()).source
    return out


class _RenderOnly(HostEmulator):
    """A device that only renders (no build): for compile-only checks."""

    def load(self, source, names):
        return {}


def traced(block, shape):
    from n2d2.ir.trace import trace

    block.test()
    y = block(n2d2.Tensor(list(shape)))
    return trace(y.get_deepnet(), name=block.get_name(), input_names=["input"]).graph


def lenet_graph(batch, mapping=True):
    from n2d2.cells import Sequence, Softmax
    from n2d2.models import LeNetINI

    n2d2.global_variables.seed = 7
    net = Sequence([LeNetINI(mapping=mapping, name="LeNet"), Softmax(with_loss=True)])
    return traced(net, (batch, 1, 32, 32))


def resnet20_graph(batch, size=32):
    from n2d2.cells import Sequence, Softmax
    from n2d2.models import ResNet20

    n2d2.global_variables.seed = 7
    net = Sequence([ResNet20(name="ResNet20"), Softmax(with_loss=True)])
    return traced(net, (batch, 3, size, size))


@requires_nvcc
def test_every_source_compiles_with_nvcc():
    sources = all_sources()
    for name, src in sources.items():
        assert "#include" not in src and "__global__" in src and "IR node" in src, name
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(compile_check, sources.values()))


@requires_nvcc
def test_bench_dry_run_renders_and_compiles_lenet_and_resnet20_training():
    """bench/bench_cuda.py --dry-run: LeNet b128 and ResNet-20 b1024 training graphs, every node on a
    kernel, sources compiled by nvcc (LeNet to cubin, ResNet-20 to PTX: the same front end, faster)."""
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_cuda.py"), "--dry-run"], capture_output=True,
                       text=True, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = {line.split(":")[0]: line for line in r.stdout.splitlines() if line.startswith(("lenet", "resnet20"))}
    assert set(lines) == {"lenet b128", "resnet20 b1024"}, r.stdout
    for line in lines.values():
        assert "'numpy_fallback_nodes': []" in line and "'nvcc_s'" in line, line


@requires_nvcc
def test_compile_errors_are_reported():
    with pytest.raises(cuda_backend.CudaCompileError, match="nvcc"):
        compile_check('extern "C" __global__ void broken(float *a) { a[0] = undefined_name; }')


def test_every_zoo_node_runs_as_a_kernel():
    for name, build in ZOO.items():
        tg = build_training_graph(build())
        prog = CudaProgram(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes,
                                      tg.update_nodes], training=True, device=_RenderOnly())
        slow = [n for n, w in prog.where.items() if w != "cuda"]
        assert not slow, f"{name}: nodes on the numpy fallback: {slow}"
        for k in prog.kernels:
            assert f"IR node '{k.node}'" in prog.source


# -- emulated runs (no GPU) ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ZOO))
def test_emulated_training_steps_match_numpy(name):
    run_training(ZOO[name](), EMU, steps=2)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_emulated_inference_matches_numpy(name):
    g = ZOO[name]()
    prog = inference_program(g, EMU)
    feeds = feeds_for(g, np.random.default_rng(5))
    compare(*inference_outputs(prog, g, feeds), "inference")


def test_emulated_lenet_training_steps_match_numpy():
    run_training(lenet_graph(3, mapping=True), EMU, steps=2)


def test_emulated_resnet20_training_step_matches_numpy():
    run_training(resnet20_graph(2, size=8), EMU, steps=1)


def test_emulated_graph_replay_path_matches_numpy():
    """The capture / replay path (after a first eager run) gives the same steps."""
    run_training(bn_graph(), EMU, steps=3, graphs=True)


@pytest.mark.parametrize("config", [
    dict(learning_rate=0.1),                                                    # plain: w -= rate g
    dict(learning_rate=0.05, momentum=0.9, polyak_momentum=False, decay=1e-3),  # velocity of raw gradients
    dict(learning_rate=0.05, momentum=0.5, clamping="-0.2:0.25"),
    dict(learning_rate=0.2, learning_rate_policy="StepDecay", learning_rate_decay=0.5,
         learning_rate_step_size=2),
    dict(learning_rate=0.05, momentum=0.9, iteration_size=2),                   # Python solver (accumulates)
])
def test_emulated_sgd_updates_match_the_solver(config, capsys):
    g = fc_pool_graph()
    for p in g.params.values():
        if p.solver is not None:
            p.solver = SGD(**config)
    prog = run_training(g, EMU, steps=3)
    fused = [n for n in prog.where if n.startswith("update:")]
    assert fused and all(prog.where[n] == ("numpy" if config.get("iteration_size") else "cuda") for n in fused)


def test_emulated_adam_and_unsupported_ops_run_on_the_numpy_fallback():
    b = B("fallback", solver=lambda: n2d2.solver.Adam(learning_rate=0.01))
    x = b.input("x", (2, 3, 6, 5))
    h = b.conv("c0", x, 4, act=RELU)
    t = b.op("t", "Transpose", h, perm=(1, 0, 2, 3))                            # no CUDA kernel
    s = b.conv("c1", t, 3, act=TANH)
    sub = b.conv("c2", s, 2, k=(2, 2), pad=(0, 0))
    b.g.nx.nodes[sub]["attrs"]["sub_sample"] = (1, 1)
    b.g.set_outputs([b.fc("f", sub, 4)])
    prog = run_training(b.g, EMU, steps=2)
    assert prog.where["t"] == prog.where["grad:t"] == "numpy"
    assert prog.where["c1"] == prog.where["grad:c1"] == "cuda"
    assert all(prog.where[n] == "numpy" for n in prog.where if n.startswith("update:"))


def test_emulated_runs_are_deterministic():
    other = inference_program(conv_graph(), EMU)     # a second program (library) on the same emulator
    g = bn_graph()
    tg = build_training_graph(g)
    prog = CudaProgram(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes,
                                  tg.update_nodes], training=True, device=EMU)
    feeds = feeds_for(g, np.random.default_rng(0))
    outs = []
    for _ in range(2):   # training mode: batch statistics, so the moving averages do not matter
        prog.feed(feeds)
        prog.run_phase(0, 3)
        outs.append(prog.view(g.outputs[0]).copy())
        other.run_phase(0)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_the_emulator_reports_writes_outside_the_arena():
    g = bn_graph()
    prog = inference_program(g, HostEmulator())
    prog.feed(feeds_for(g, np.random.default_rng(0)))
    raw, start, end = prog.device._guards[prog._arena.ctypes.data]
    raw[end + 10] = 0                                  # as if a kernel scribbled past the end
    with pytest.raises(RuntimeError, match="outside the arena"):
        prog.run_phase(0)


def test_parameters_must_live_on_the_program_device():
    g = bn_graph()
    tg = build_training_graph(g)
    prog = CudaProgram(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes,
                                  tg.update_nodes], training=True, device=EMU)
    param = tg.graph.params["c0.w"]
    param.array = param.array.astype(np.float64)     # replaced after the build, wrong dtype
    with pytest.raises(n2d2.ir.types.GraphError, match="contiguous float32"):
        prog.run_phase(0, 3)


@pytest.mark.skipif(n2d2.global_variables.cuda_available, reason="checks the refusal without a GPU")
def test_cuda_backend_refuses_without_a_device():
    from n2d2.codegen.programs import select_backend

    with pytest.raises(RuntimeError, match="CUDA device"):
        select_backend("cuda")
    old = n2d2.global_variables.default_model
    try:
        # a script-level setting warns and keeps the CPU path; only an explicit backend raises
        with pytest.warns(n2d2.backend.CudaUnavailableWarning, match="default_model = 'Frame_CUDA'"):
            n2d2.global_variables.default_model = "Frame_CUDA"
        assert select_backend() in ("c", "numpy")
    finally:
        n2d2.global_variables.default_model = old
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        CudaProgram(bn_graph(), [["x"]])


# -- on a GPU --------------------------------------------------------------------------------------------
def _device_arrays():
    import cupy as cp

    return cp.asarray


@requires_cuda
@pytest.mark.parametrize("name", sorted(ZOO))
def test_gpu_training_steps_match_numpy(name):
    run_training(ZOO[name](), cuda_backend.CupyDevice(), steps=2, on_device=_device_arrays())


@requires_cuda
@pytest.mark.parametrize("name", sorted(ZOO))
def test_gpu_inference_matches_numpy(name):
    import cupy as cp

    g = ZOO[name]()
    ref = clone(g)
    for p in g.params.values():
        p.array = cp.asarray(p.array)
    prog = inference_program(g, cuda_backend.CupyDevice())
    feeds = feeds_for(g, np.random.default_rng(5))
    prog.feed({k: cp.asarray(v) for k, v in feeds.items()})
    record = {}
    prog.run_phase(0, record=record)
    session = Session(ref, training=False)
    session.feed(feeds)
    session.run_nodes(session.order)
    compare({k: [a.get() for a in v] for k, v in record.items()}, session.values, "inference")


@requires_cuda
def test_gpu_lenet_training_steps_match_numpy():
    run_training(lenet_graph(16, mapping=True), cuda_backend.CupyDevice(), steps=3, on_device=_device_arrays())


@requires_cuda
def test_gpu_resnet20_training_steps_match_numpy():
    run_training(resnet20_graph(8), cuda_backend.CupyDevice(), steps=2, on_device=_device_arrays(), tol=2e-5)


@requires_cuda
@pytest.mark.parametrize("name", ["conv", "bn"])
def test_gpu_graph_replay_equals_eager_launches(name):
    """Two programs on the same parameters, one eager, one replaying CUDA graphs: the same bits."""
    import cupy as cp

    outs = []
    for graphs in (False, True):
        g = ZOO[name]()
        for p in g.params.values():
            p.array = cp.asarray(p.array)
        tg = build_training_graph(g)
        prog = CudaProgram(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes,
                                      tg.update_nodes], training=True, device=cuda_backend.CupyDevice(),
                           graphs=graphs)
        rng = np.random.default_rng(1)
        seen = []
        for step in range(4):
            n2d2.global_variables.seed = 50 + step
            feeds = feeds_for(g, rng)
            prog.feed({k: cp.asarray(v) for k, v in feeds.items()})
            prog.run_phase(0, 2)
            seen += [prog.view(t).get() for t in tg.graph.outputs]
            prog.feed({v: cp.asarray(rng.standard_normal(tg.graph.output_types(v)[0].shape).astype(np.float32))
                       for v in tg.grad_inputs.values()})
            prog.run_phase(1, 2)
            prog.run_phase(2, 2)
        seen += [p.array.get() for p in g.params.values()]
        outs.append(seen)
        if graphs:
            assert prog._graphs, "no CUDA graph was captured"
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


@requires_cuda
def test_gpu_training_program_of_frame_cuda_cells_uses_the_cuda_backend():
    """The training program DeepNetCell runs: Frame_CUDA cells select the cuda backend, whose steps
    match the numpy backend's on the same (CuPy) parameters."""
    import cupy as cp

    from n2d2.cells import Sequence, Softmax
    from n2d2.codegen.programs import TrainingProgram, select_backend
    from n2d2.models import LeNetINI

    old = n2d2.global_variables.default_model
    results = {}
    try:
        n2d2.global_variables.default_model = "Frame_CUDA"
        for backend in ("cuda", "numpy"):
            n2d2.global_variables.seed = 11
            net = Sequence([LeNetINI(mapping=False, name="LeNet"), Softmax(with_loss=True)])
            net.set_solver(SGD(learning_rate=0.05, momentum=0.9))
            if backend == "cuda":
                assert select_backend() == "cuda"
            prog = TrainingProgram(build_training_graph(traced(net, (8, 1, 32, 32))), backend)
            x = cp.asarray(np.random.default_rng(0).standard_normal((8, 1, 32, 32)).astype(np.float32))
            seq = []
            for step in range(2):
                n2d2.global_variables.seed = 20 + step
                y = prog.forward({prog.tg.graph.inputs[0]: x})[0]
                seq.append(cp.asnumpy(y))
                prog.backward({prog.tg.graph.outputs[0]: y - 0.1})
                prog.update()
            results[backend] = seq
    finally:
        n2d2.global_variables.default_model = old
    for a, b in zip(results["cuda"], results["numpy"]):
        assert rel(a, b) < 1e-5


@pytest.mark.parametrize("tiles", [(128, 128), (64, 32), (32, 64), (16, 16)])
def test_emulated_gemm_tile_shapes(tiles, monkeypatch):
    """Every tile shape (float4 and scalar thread tiles, k-fast and n-fast loads) on the conv zoo."""
    monkeypatch.setattr(cuda_backend, "FORCE_TILES", tiles)
    run_training(conv_graph(), EMU, steps=1)


def test_profile_phase_times_every_node():
    g = bn_graph()
    tg = build_training_graph(g)
    prog = CudaProgram(tg.graph, [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes,
                                  tg.update_nodes], training=True, device=EMU)
    prog.feed(feeds_for(g, np.random.default_rng(0)))
    times = prog.profile_phase(0, 3)
    assert set(times) == {n for n in tg.forward_nodes if tg.graph.op(n) != "Input"}
    assert times["n1"][1] == 3 and all(ms >= 0 for ms, _ in times.values())
