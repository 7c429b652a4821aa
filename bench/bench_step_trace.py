#!/usr/bin/env python3
"""Per-step trace of LeNet b128 training in n2d2 (C backend): where the Python around the
compiled step costs, each contender alone in its own process.

Contenders (the same network, solver and data as bench/bench_training.py):
  eager        the upstream-style eager loop (`target(net(x)); back_propagate(); update()`),
               which n2d2.eager_compile runs as a compiled program from its third step;
  deepnetcell  the same loop on `Sequence.to_deepnet_cell(provider)` (DeepNetCell's own step);
  fit          one `DeepNetCell.fit` Learn pass (prefetching provider, Score target,
               non-finite check), timed per batch from inside the loop.
Per step: wall time, CPU time of the process, minor page faults (`getrusage`), garbage
collections (all generations) and objects they freed; with `--tracemalloc`, a second run
also gives the bytes allocated and still alive at each step's peak above its start (numpy
arrays included). The rounds alternate the contenders' processes; each line is the median
over a round's steps (min of the medians over rounds for the times). Not a test.

`--peer DIR` runs every contender from the n2d2 of another checkout too (its processes taking
turns with this tree's), for before/after figures under the same load.

`--python` gives instead the main thread's time outside the compiled code per step (thread
time of each call site minus the thread time inside its ctypes calls of the C programs: segment
functions and the fused SGD update), per call site for the step loops (read, model call, target,
back_propagate, update) and per Learn-pass batch for `fit` (whole step; its prefetch thread not
counted): the Python that a 2-thread team waits for.

    python bench/bench_step_trace.py [--threads 1] [--steps 200] [--rounds 3] [--tracemalloc]
                                     [--contenders eager,deepnetcell,fit] [--peer /tmp/base] [--python]
"""
import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from lenet_mnist_setup import NB_BATCHES, mnist_provider, step_contender

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="N2D2_THREADS of the children (default 1)")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per process")
    ap.add_argument("--rounds", type=int, default=3, help="processes per contender, alternated")
    ap.add_argument("--contenders", default="eager,deepnetcell,fit")
    ap.add_argument("--tracemalloc", action="store_true", help="also a run under tracemalloc (bytes per step)")
    ap.add_argument("--peer", default=None, help="another checkout whose n2d2 runs the same contenders, alternated")
    ap.add_argument("--python", action="store_true", help="main-thread time outside the C calls, per call site")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--trace-memory", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


class Probe:
    """Samples of one step: wall, CPU, minor faults, collections, objects collected, time in GC."""

    def __init__(self, memory):
        self.rows = []
        self.memory = memory
        self._start = None
        self.gc_seconds = 0.0
        self._gc_t0 = None
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase, info):
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        elif self._gc_t0 is not None:
            self.gc_seconds += time.perf_counter() - self._gc_t0

    @staticmethod
    def _gc():
        s = gc.get_stats()
        return sum(g["collections"] for g in s), sum(g["collected"] for g in s)

    def start(self):
        import tracemalloc

        if self.memory:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
        else:
            base = 0
        self._start = (time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt,
                       *self._gc(), self.gc_seconds, base)

    def stop(self):
        import tracemalloc

        w, c, f, g, o, s, base = self._start
        gn, on = self._gc()
        row = [time.perf_counter() - w, time.process_time() - c,
               resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f, gn - g, on - o, self.gc_seconds - s]
        if self.memory:
            now, peak = tracemalloc.get_traced_memory()
            row += [peak - base, now - base]
        self.rows.append(row)


class CClock:
    """Thread time spent inside the C programs' ctypes calls (`CProgram` segment functions and
    its fused SGD update), installed before any program is built."""

    def __init__(self):
        import ctypes

        from n2d2.codegen import c_backend

        self.ns = 0
        clock = self
        real_init = c_backend.CProgram.__init__

        def timed(f):
            def call(*args):
                t = time.thread_time_ns()
                f(*args)
                clock.ns += time.thread_time_ns() - t
            return call

        def init(program, *args, **kwargs):
            real_init(program, *args, **kwargs)
            program._phase_items = [[(k, timed(v) if k == "c" else v) for k, v in items]
                                    for items in program._phase_items]
            lib = program._lib
            if lib is not None:
                sgd = lib.n2d2_sgd_parameters
                sgd.argtypes, sgd.restype = [ctypes.c_int, ctypes.POINTER(c_backend._SgdParameter)], None
                wrapped = timed(sgd)
                wrapped.argtypes = sgd.argtypes
                lib.n2d2_sgd_parameters = wrapped

        c_backend.CProgram.__init__ = init


SITES = ("read", "call", "target", "back_propagate", "update")


def _python_loop(provider, net, target, steps, clock):
    """Per step, the main thread's microseconds outside the C calls at each call site."""
    batch = provider.get_batch_size()
    rows = []
    for i in range(steps + 5):
        row = []
        t, c = time.thread_time_ns(), clock.ns

        def lap():
            nonlocal t, c
            t2, c2 = time.thread_time_ns(), clock.ns
            row.append(((t2 - t) - (c2 - c)) / 1e3)
            t, c = time.thread_time_ns(), clock.ns

        x = provider.read_batch((i % NB_BATCHES) * batch)
        lap()
        y = net(x)
        lap()
        loss = target(y)
        lap()
        loss.back_propagate()
        lap()
        loss.update()
        lap()
        if i >= 5:
            rows.append(row)
    return rows


def _step_loop(provider, net, target, probe, steps):
    batch = provider.get_batch_size()
    for i in range(steps + 5):
        if i >= 5:
            probe.start()
        x = provider.read_batch((i % NB_BATCHES) * batch)
        loss = target(net(x))
        loss.back_propagate()
        loss.update()
        if i >= 5:
            probe.stop()


def python_child(name, steps):
    """`--python`: per step, microseconds of the main thread outside the C calls."""
    clock = CClock()
    import n2d2

    provider = mnist_provider()
    if name in ("eager", "deepnetcell"):
        net, target = step_contender(name, provider)
        rows = _python_loop(provider, net, target, steps, clock)
        cols = list(SITES)
    else:
        import tempfile

        os.environ["TQDM_DISABLE"] = "1"
        os.chdir(tempfile.mkdtemp(prefix="bench_trace_"))
        dn, _ = step_contender("fit", provider)
        rows, mark = [], {"n": 0, "t": 0, "c": 0}

        def on_batch(x, _real=type(dn).__call__):
            t, c = time.thread_time_ns(), clock.ns
            if mark["n"] > 5:
                rows.append([((t - mark["t"]) - (c - mark["c"])) / 1e3])
            mark.update(n=mark["n"] + 1, t=t, c=c)
            return _real(dn, x)

        dn.__class__ = type("TracedDeepNetCell", (type(dn),), {"__call__": lambda self, x: on_batch(x)})
        dn._run_epoch("Learn", True, nb_max=(steps + 7) * provider.get_batch_size(), check_finite=True)
        rows = rows[:steps]
        cols = ["step"]
    print("@@" + json.dumps({"cols": cols, "rows": rows, "replays": n2d2.eager_compile.stats.training_replays}))


def child(name, steps, memory):
    import n2d2

    provider = mnist_provider()
    probe = Probe(memory)
    if memory:
        import tracemalloc

        tracemalloc.start()
    if name in ("eager", "deepnetcell"):
        _step_loop(provider, *step_contender(name, provider), probe, steps)
    else:
        import tempfile

        os.environ["TQDM_DISABLE"] = "1"
        os.chdir(tempfile.mkdtemp(prefix="bench_trace_"))
        dn, _ = step_contender("fit", provider)
        calls = {"n": 0}

        def on_batch(x, _real=type(dn).__call__):
            if calls["n"] > 5:
                probe.stop()
            calls["n"] += 1
            if calls["n"] > 5:
                probe.start()
            return _real(dn, x)

        # each forward call of the pass closes the last batch's probe and opens the next one
        dn.__class__ = type("TracedDeepNetCell", (type(dn),), {"__call__": lambda self, x: on_batch(x)})
        dn._run_epoch("Learn", True, nb_max=(steps + 6) * provider.get_batch_size(), check_finite=True)
        probe.rows = probe.rows[:steps]
    cols = ["wall", "cpu", "minflt", "gc", "gc_freed", "gc_s"] + (["peak_bytes", "kept_bytes"] if memory else [])
    print("@@" + json.dumps({"cols": cols, "rows": probe.rows,
                             "replays": n2d2.eager_compile.stats.training_replays}))


def main():
    args = _parse()
    if args.child:
        if args.python:
            python_child(args.child, args.steps)
        else:
            child(args.child, args.steps, args.trace_memory)
        return
    names = [n for n in args.contenders.split(",") if n]
    trees = [("", REPO)] + ([(" (peer)", os.path.abspath(args.peer))] if args.peer else [])
    results, mem = {}, {}
    runs = [(n + tag, tree, False) for n in names for tag, tree in trees] * args.rounds
    runs += [(n + tag, tree, True) for n in names for tag, tree in trees] if args.tracemalloc else []
    for label, tree, memory in runs:
        env = dict(os.environ, N2D2_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
                   OPENBLAS_NUM_THREADS=str(args.threads), PYTHONPATH=tree)
        name = label.split(" ")[0]
        argv = [sys.executable, os.path.abspath(__file__), "--child", name, "--steps", str(args.steps)]
        argv += ["--python"] if args.python else []
        out = subprocess.run(argv + (["--trace-memory"] if memory else []), env=env, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("@@")), None)
        if line is None:
            sys.exit(f"{label} failed:\n{out.stderr}")
        r = json.loads(line[2:])
        (mem if memory else results).setdefault(label, []).append(r)
    if args.python:
        _print_python(results, args)
        return
    print(f"# per step, {args.steps} steps per process, N2D2_THREADS={args.threads}, {args.rounds} round(s); "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| contender | wall ms (best round median) | CPU ms (best round median) | minor faults/step | "
          "GCs/100 steps | objects freed by GC/step | GC us/step | transient MB/step | kept MB/step |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in results:
        med = [[statistics.median(col) for col in zip(*r["rows"])] for r in results[name]]
        mean = [[sum(col) / len(col) for col in zip(*r["rows"])] for r in results[name]]
        wall, cpu = min(m[0] for m in med), min(m[1] for m in med)
        faults = statistics.median(m[2] for m in mean)
        gcs = statistics.median(m[3] for m in mean) * 100
        freed = statistics.median(m[4] for m in mean)
        gc_us = statistics.median(m[5] for m in mean) * 1e6
        peak = kept = "-"
        if name in mem:
            rows = mem[name][0]["rows"]
            peak = f"{statistics.median(r[6] for r in rows) / 2**20:.2f}"
            kept = f"{statistics.mean(r[7] for r in rows) / 2**20:.3f}"
        print(f"| {name} | {1e3 * wall:.2f} | {1e3 * cpu:.2f} | {faults:.1f} | {gcs:.1f} | {freed:.1f} | {gc_us:.1f} | "
              f"{peak} | {kept} |")


def _print_python(results, args):
    print(f"# main-thread microseconds per step outside the C calls, {args.steps} steps per process, "
          f"N2D2_THREADS={args.threads}, {args.rounds} round(s) (best of the round medians); "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| contender | " + " | ".join(SITES) + " | whole step |")
    print("|---|" + "---:|" * (len(SITES) + 1))
    for name, runs in results.items():
        cells = ["-"] * len(SITES)
        if runs[0]["cols"] != ["step"]:
            cells = [f"{min(statistics.median(r[k] for r in run['rows']) for run in runs):.0f}"
                     for k in range(len(SITES))]
        whole = min(statistics.median(sum(r) for r in run["rows"]) for run in runs)
        print(f"| {name} | " + " | ".join(cells) + f" | {whole:.0f} |")


if __name__ == "__main__":
    main()
