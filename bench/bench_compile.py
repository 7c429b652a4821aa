"""Cold-cache compile time of the C backend: LeNet (models/LeNet.ini layout) training program,
batch 128 (`to_deepnet_cell` + the first training step), and ResNet-18 inference, batch 1,
224x224 (`to_deepnet_cell` + the first test-mode call). Each case runs in a fresh process with
`N2D2_CACHE` pointed at an empty temporary folder (then again after the other model was built
in that folder: a new program whose templates are compiled already); the time is split into
tracing (the eager dummy batch), codegen (Python: passes, planning, rendering) and gcc (wall).

CPU time, steadier than wall on a loaded machine, is reported too: the Python process's own
(tracing, then the rest) and each compiler process's (user + system, from its rusage); the
"critical path" Python + slowest part + link is the wall time of a quiet machine with a core
per part.

Usage: python bench/bench_compile.py [--rounds 3] [--case lenet|resnet18|all]"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _case(name):
    sys.path.insert(0, ROOT)
    import numpy as np

    import n2d2
    from n2d2.codegen import artifact_cache

    gcc = {"s": 0.0, "n": 0, "bytes": 0, "cpu": []}
    build = getattr(artifact_cache, "_run_build", None)

    def run_with_rusage(command, capture_output=True, text=True, cwd=None):
        """subprocess.run recording the process's CPU time (os.wait4 reaps it)."""
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            p = subprocess.Popen(command, stdout=out, stderr=err, text=text, cwd=cwd)
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            gcc["cpu"].append((usage.ru_utime + usage.ru_stime, "-c" in command))
            out.seek(0)
            err.seek(0)
            return subprocess.CompletedProcess(command, p.returncode, out.read(), err.read())

    if build is not None:
        artifact_cache.subprocess = type("subprocess", (), {"run": staticmethod(run_with_rusage)})

    def timed_build(command, cwd):
        t0 = time.perf_counter()
        try:
            return build(command, cwd)
        finally:
            gcc["s"] += time.perf_counter() - t0
            gcc["n"] += 1 if isinstance(command[0], str) else len(command[0])
            gcc["bytes"] += sum(os.path.getsize(os.path.join(cwd, f)) for f in os.listdir(cwd) if f.endswith(".c"))

    if build is not None:
        artifact_cache._run_build = timed_build
    else:  # before the parallel builds: one subprocess.run per library
        run = artifact_cache.subprocess.run

        def timed_run(command, *a, **k):
            return timed_build([command], k.get("cwd"))

        build = lambda command, cwd: run(command[0], capture_output=True, text=True, cwd=cwd)  # noqa: E731
        artifact_cache.subprocess.run = timed_run
    n2d2.global_variables.seed = 1
    if name == "lenet":
        from n2d2.cells import Sequence, Softmax
        from n2d2.models.lenet import LeNetINI
        from n2d2.solver import SGD

        batch, shape = 128, [32, 32, 1]
        net = Sequence([LeNetINI(mapping=True), Softmax(with_loss=True)])
        net.set_solver(SGD(learning_rate=0.05, momentum=0.9, decay=0.0005))
    else:
        from n2d2.models.resnet import ResNet18

        batch, shape = 1, [224, 224, 3]
        net = ResNet18()
    provider = n2d2.provider.DataProvider(n2d2.database.Numpy(), shape, batch_size=batch)
    t0, c0 = time.perf_counter(), time.process_time()
    dn = net.to_deepnet_cell(provider, backend="c")
    t1, c1 = time.perf_counter(), time.process_time()
    x = np.random.default_rng(0).random([batch] + shape[::-1], dtype=np.float32)
    if name == "lenet":
        program = dn._program("training", batch)
        y = program.forward({program.tg.graph.inputs[0]: x})[0]
        program.backward({program.tg.graph.outputs[0]: y - 0.1})
        program.update()
    else:
        dn.test()
        t = n2d2.Tensor.from_numpy(x)
        n2d2.provider.TensorPlaceholder(t)
        dn(t).to_numpy()
    t2, c2 = time.perf_counter(), time.process_time()
    compiles = [t for t, is_compile in gcc["cpu"] if is_compile]
    links = [t for t, is_compile in gcc["cpu"] if not is_compile]
    print(json.dumps({"total": t2 - t0, "trace": t1 - t0, "first_step": t2 - t1, "gcc": gcc["s"],
                      "units": gcc["n"], "source_bytes": gcc["bytes"], "cpu_trace": c1 - c0, "cpu_rest": c2 - c1,
                      "cpu_parts": compiles, "cpu_link": sum(links),
                      "cpu_path": c2 - c0 + max(compiles, default=0.0) + sum(links)}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--case", default="all", choices=["lenet", "resnet18", "all"])
    ap.add_argument("--_run", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._run:
        return _case(args._run)
    print("RESULTS")
    cases = ["lenet", "resnet18"] if args.case == "all" else [args.case]
    other = {"lenet": "resnet18", "resnet18": "lenet"}
    for case, before in [(c, None) for c in cases] + [(c, other[c]) for c in cases]:
        rows = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="n2d2-cold-") as cache:
                env = dict(os.environ, N2D2_CACHE=cache, PYTHONPATH=ROOT)
                for run in ([before] if before else []) + [case]:
                    out = subprocess.run([sys.executable, __file__, "--_run", run], env=env, capture_output=True,
                                         text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
        best = min(rows, key=lambda r: r["total"])
        med = sorted(r["total"] for r in rows)[len(rows) // 2]
        where = f"cache holding {before}'s build" if before else "cold"
        print(f"{case}: {where}: total best {best['total']:.2f} s (median {med:.2f} s over {len(rows)}); best round: "
              f"trace {best['trace']:.2f} s, first step {best['first_step']:.2f} s of which gcc {best['gcc']:.2f} s "
              f"({best['units']} unit(s) of {best['source_bytes'] / 1e3:.0f} kB of C), codegen+run "
              f"{best['first_step'] - best['gcc']:.2f} s")
        cpu = min(rows, key=lambda r: r["cpu_path"])
        print(f"  CPU, best round: critical path {cpu['cpu_path']:.2f} s = Python {cpu['cpu_trace']:.2f} (trace) + "
              f"{cpu['cpu_rest']:.2f} (codegen, run) + slowest gcc part {max(cpu['cpu_parts'], default=0):.2f} + link "
              f"{cpu['cpu_link']:.2f}; gcc parts " + " ".join(f"{t:.2f}" for t in cpu["cpu_parts"]) +
              f" (sum {sum(cpu['cpu_parts']):.2f}); median critical path "
              f"{sorted(r['cpu_path'] for r in rows)[len(rows) // 2]:.2f} s")


if __name__ == "__main__":
    main()
