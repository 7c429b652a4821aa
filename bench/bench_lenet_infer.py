"""LeNet.ini at batch 1 (inference latency): n2d2's C backend against onnxruntime, and where n2d2's
time goes.

The network of bench_c.py's inference row (N2D2's LeNet.ini + softmax, graph optimised as
DeepNetCell does), run by `InferenceProgram.run`; onnxruntime (CPUExecutionProvider,
ORT_ENABLE_ALL, inter_op 1) runs the same network exported by n2d2's ONNX exporter (same weights;
conv2's connection table becomes zero weights: ORT computes the dense convolution). No torch in
the process (its libgomp would be the one n2d2's kernels bind). Rounds alternate between the
two; each round times `--calls` calls; best and median of the rounds are printed, with the ratio.

Breakdown (n2d2): the fastest batch of calls of each part of `run`, the input copy (`feed`),
the ctypes call of the compiled segment alone, the whole phase (`run_phase`: segment call plus
its Python around it), the output copy (`fetch`); then the per-kernel time table
(`N2D2_PROFILE=cpu`, the calling thread's CPU time, in a second program). `--nodes`: instead of
that table, each kernel's entry point (`n2d2_node_<k>`) called alone through ctypes, best of 60
batches of 200 calls by process CPU time, less a ctypes call doing nothing (no profiler clock inside:
usable under load; the build follows $N2D2_CFLAGS, e.g. -mno-avx512f for an AVX2 build).

    python bench/bench_lenet_infer.py [--threads 1] [--cpu-time] [--rounds 9] [--calls 3000] [--nodes]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def build(profile=False):
    import numpy as np

    import n2d2
    from n2d2.cells import Sequence, Softmax
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.codegen.c_backend import CProgram
    from n2d2.codegen.programs import InferenceProgram
    from n2d2.ir.trace import trace
    from n2d2.models.lenet import LeNetINI

    n2d2.global_variables.seed = 1
    net = Sequence([LeNetINI(), Softmax(with_loss=True)])
    graph = DeepNetCell._optimize(trace(net(n2d2.Tensor([1, 1, 32, 32])).get_deepnet()).graph)
    x = np.random.default_rng(1).random((1, 1, 32, 32), dtype=np.float32)
    if profile:
        return graph, CProgram(graph, [graph.topological_order()], profile=2), x
    return graph, InferenceProgram(graph, "c"), x


def best_batch(fn, calls=100, batches=200, clock=time.perf_counter, args=()):
    """Fastest of `batches` timed batches of `calls` calls of fn(*args), in us per call (by
    `clock`: wall clock by default)."""
    best = float("inf")
    for _ in range(batches):
        t = clock()
        for _ in range(calls):
            fn(*args)
        best = min(best, clock() - t)
    return best / calls * 1e6


def print_node_times(graph, c, batches=60, calls=200):
    """Each kernel alone (n2d2_node_<k>, k = 1.. in schedule order), us per call, CPU time."""
    import ctypes

    args = c._call_args()

    def best(fn):
        return best_batch(fn, calls, batches, time.process_time, args)

    flag = c._profiling
    empty = best(lambda *a: c._lib.n2d2_set_profiling(flag))   # a ctypes call doing nothing
    names = [n for n in c.phases[0] if graph.op(n) != "Input"]
    print(f"n2d2 kernels called alone (best of {batches} x {calls} calls, process CPU time, us, less "
          f"{empty:.2f} us of a ctypes call doing nothing):")
    total = 0.0
    for k, name in enumerate(names, 1):
        f = getattr(c._lib, f"n2d2_node_{k}", None)
        if f is None:
            break
        f.argtypes = [ctypes.c_void_p] * 4
        f.restype = None
        t = best(f) - empty
        total += t
        print(f"  {name:12s} {graph.op(name):8s} {t:6.2f}")
    seg = c._phase_items[0][0][1] if len(c._phase_items[0]) == 1 else None
    if seg is not None:
        print(f"  sum {total:.2f}, the whole segment {best(seg) - empty:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="n2d2 (N2D2_THREADS) and onnxruntime intra-op threads")
    ap.add_argument("--cpu-time", action="store_true", help="time rounds by process CPU time")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--nodes", action="store_true", help="per-kernel times by direct calls (see above)")
    args = ap.parse_args()
    os.environ["N2D2_THREADS"] = str(args.threads)
    import numpy as np
    import onnxruntime as ort

    from n2d2.frontends.onnx_export import export_onnx

    graph, program, x = build()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "lenet.onnx")
        export_onnx(graph, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feeds = {graph.inputs[0]: x}
    name = session.get_inputs()[0].name
    ours, theirs = program.run(feeds)[0], session.run(None, {name: x})[0]
    diff = float(np.abs(ours.reshape(-1) - theirs.reshape(-1)).max())
    contenders = {"n2d2": lambda: program.run(feeds), "onnxruntime": lambda: session.run(None, {name: x})}
    clock = time.process_time if args.cpu_time else time.perf_counter
    for fn in contenders.values():
        for _ in range(args.calls // 2):
            fn()
    times = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for k, fn in contenders.items():
            t = clock()
            for _ in range(args.calls):
                fn()
            times[k].append((clock() - t) / args.calls * 1e6)
    print(f"LeNet.ini b1, {args.threads} thread(s), {'process CPU time' if args.cpu_time else 'wall clock'}, "
          f"{args.rounds} rounds of {args.calls} calls; max |n2d2 - onnxruntime| = {diff:.1e}")
    for k, v in times.items():
        print(f"  {k:12s} best {min(v):7.2f} us   median {statistics.median(v):7.2f} us")
    print(f"  n2d2 / onnxruntime: best {min(times['n2d2']) / min(times['onnxruntime']):.3f}, "
          f"median {statistics.median(times['n2d2']) / statistics.median(times['onnxruntime']):.3f}")

    c = program._c
    call = c._call_args()
    segments = [item for kind, item in c._phase_items[0] if kind == "c"]
    out = graph.outputs[0]
    parts = {"run (whole call)": lambda: program.run(feeds), "feed (input copy)": lambda: c.feed(feeds),
             "run_phase (segments + Python)": lambda: c.run_phase(0),
             f"segment calls alone ({len(segments)})": lambda: [f(*call) for f in segments],
             "fetch (output copy)": lambda: c.fetch(out)}
    print("n2d2 breakdown (fastest batch of 100 calls, wall clock, us per call):")
    for k, fn in parts.items():
        print(f"  {k:32s} {best_batch(fn):7.2f}")
    if args.nodes:
        print_node_times(graph, c)
        return
    _, prof, _ = build(profile=True)
    prof.feed(feeds)
    for _ in range(args.calls):
        prof.run_phase(0)
    prof.print_profile()


if __name__ == "__main__":
    main()
