"""LeNet inference latency at batch 1: the exported standalone C project vs onnxruntime.

The network is N2D2's LeNet.ini (`n2d2.models.LeNetINI` + Softmax, conv2 with its 6x16
connection table) traced at batch 1. The same DeepNetCell is
- exported with `n2d2.export.export_c` (float32, `make`: -O3 -march=native, no OpenMP), and its
  test program timed on the exported MNIST test stimuli: `bin/network_test -q -r PASSES` times
  every `network_run` call (CLOCK_MONOTONIC) and prints the best pass's mean time per stimulus;
- exported to ONNX with n2d2's own exporter (`DeepNetCell.export_onnx`; conv2's table as dense
  zero-padded weights, the same function) and run by onnxruntime (CPUExecutionProvider,
  ORT_ENABLE_ALL, inter_op 1, intra_op 1 and 2 threads) on the same stimuli, one call per
  stimulus timed with perf_counter_ns: `InferenceSession.run` (the usual Python call) and
  `run_with_iobinding` on a pre-bound input buffer (the least Python overhead).
Every figure is a mean time per stimulus over one pass of the stimuli; a round runs every
contender for PASSES passes and keeps its best pass (the C program in one process: `-r`), the
contenders interleaved so that they share the machine's load; the best round is reported along
with the median. Outputs of the C program and onnxruntime are compared too.
`--clock cpu` times with the calling thread's CPU time instead of the wall clock (the C
program's `-c`, `time.thread_time_ns` for onnxruntime with one intra-op thread, which runs on
the calling thread): on a machine shared with other jobs, time spent waiting for a core is
then left out; the 2-thread contenders are skipped (their CPU time is not a latency).

Run from the repository root: `python bench/bench_export.py` (see --help).
"""
import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from repo_info import git_commit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import n2d2  # noqa: E402


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _cc_version() -> str:
    try:
        return subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        return "?"


def build_network(nb_stimuli: int, folder: str):
    from n2d2.cells import Sequence, Softmax
    from n2d2.models import LeNetINI

    n2d2.global_variables.seed = 1
    database = n2d2.database.MNIST(data_path=n2d2.datasets.mnist_path())
    provider = n2d2.provider.DataProvider(database, [32, 32, 1], batch_size=1)
    provider.add_transformation(n2d2.transform.Rescale(width=32, height=32))
    dn = Sequence([LeNetINI(), Softmax(with_loss=True)]).to_deepnet_cell(provider)
    export = n2d2.export.export_c(dn, export_folder_name=os.path.join(folder, "export_C_float32"),
                                  export_nb_stimuli_max=nb_stimuli)
    onnx_path = os.path.join(folder, "lenet.onnx")
    dn.export_onnx(onnx_path)
    return dn, export, onnx_path


def run_c(export: str, passes: int, cpu: bool) -> float:
    """Best pass's mean microseconds per stimulus, as the test program prints it."""
    out = subprocess.run(["./bin/network_test", "-q", "-r", str(passes)] + (["-c"] if cpu else []), cwd=export,
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Best pass time per stimulus = ([0-9.]+) us", out).group(1))


def ort_sessions(onnx_path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])


def time_ort_run(session, stimuli, clock=time.perf_counter_ns) -> float:
    name = session.get_inputs()[0].name
    total = 0
    for x in stimuli:
        t0 = clock()
        session.run(None, {name: x})
        total += clock() - t0
    return total / 1e3 / len(stimuli)


def time_ort_iobinding(session, stimuli, clock=time.perf_counter_ns) -> float:
    import onnxruntime as ort

    buffer = np.zeros_like(stimuli[0])
    value = ort.OrtValue.ortvalue_from_numpy(buffer)
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
    binding.bind_output(session.get_outputs()[0].name)
    total = 0
    for x in stimuli:
        np.copyto(buffer, x)
        t0 = clock()
        session.run_with_iobinding(binding)
        total += clock() - t0
    return total / 1e3 / len(stimuli)


def best_of(passes, timer, *args) -> float:
    return min(timer(*args) for _ in range(passes))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stimuli", type=int, default=1000, help="MNIST test stimuli (default 1000)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--passes", type=int, default=5, help="passes per contender and round (default 5)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall clock (default) or the thread's CPU time (busy machines)")
    parser.add_argument("--keep", default=None, help="write the export and the ONNX file here (default: temp)")
    args = parser.parse_args()

    import onnxruntime as ort

    folder = args.keep or tempfile.mkdtemp(prefix="bench_export_")
    os.makedirs(folder, exist_ok=True)
    t = time.perf_counter()
    dn, export, onnx_path = build_network(args.stimuli, folder)
    subprocess.run(["make", "-s"], cwd=export, check=True)
    print(f"export + build: {time.perf_counter() - t:.1f} s ({export})")

    inputs = np.fromfile(os.path.join(export, "stimuli", "inputs.bin"), dtype="<f4").reshape(-1, 1, 1, 32, 32)
    stimuli = [np.ascontiguousarray(x) for x in inputs]
    sessions = {threads: ort_sessions(onnx_path, threads) for threads in (1, 2)}

    # same answers: the C program's outputs vs onnxruntime's
    n = min(100, len(stimuli))
    subprocess.run(["./bin/network_test", "-q", "-n", str(n), "-d", str(n), "outputs.bin"], cwd=export,
                   check=True, capture_output=True)
    c_out = np.fromfile(os.path.join(export, "outputs.bin"), dtype="<f4").reshape(n, -1)
    name = sessions[1].get_inputs()[0].name
    ort_out = np.concatenate([sessions[1].run(None, {name: x})[0].reshape(1, -1) for x in stimuli[:n]])
    rel = float(np.linalg.norm(c_out - ort_out) / np.linalg.norm(ort_out))
    print(f"C vs onnxruntime outputs on {n} stimuli: relative error {rel:.2e}")

    cpu = args.clock == "cpu"
    clock = time.thread_time_ns if cpu else time.perf_counter_ns
    contenders = {
        "C export (1 thread)": lambda: run_c(export, args.passes, cpu),
        "onnxruntime 1 thread, run": lambda: best_of(args.passes, time_ort_run, sessions[1], stimuli, clock),
        "onnxruntime 1 thread, iobinding": lambda: best_of(args.passes, time_ort_iobinding, sessions[1], stimuli,
                                                           clock),
    }
    if not cpu:
        contenders["onnxruntime 2 threads, run"] = lambda: best_of(args.passes, time_ort_run, sessions[2], stimuli)
        contenders["onnxruntime 2 threads, iobinding"] = lambda: best_of(args.passes, time_ort_iobinding,
                                                                         sessions[2], stimuli)
    for f in contenders.values():   # warm-up
        f()
    times = {k: [] for k in contenders}
    load = []
    for r in range(args.rounds):
        load.append(os.getloadavg()[0])
        for key, f in contenders.items():
            times[key].append(f())
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()))

    best = {k: min(v) for k, v in times.items()}
    c = best["C export (1 thread)"]
    print()
    print(f"Date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, commit {git_commit()}")
    print(f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs, load average during the rounds "
          f"{min(load):.1f}-{max(load):.1f}")
    print(f"Python {platform.python_version()}, numpy {np.__version__}, onnxruntime {ort.__version__}, "
          f"{_cc_version()}")
    print(f"LeNet.ini batch 1, {len(stimuli)} MNIST test stimuli, {args.rounds} rounds "
          f"(best of {args.passes} passes per round), clock: "
          f"{'thread CPU time' if cpu else 'wall (monotonic)'}")
    print()
    print("| contender | best us/stimulus | median us/stimulus | C export / contender (best) |")
    print("|---|---:|---:|---:|")
    for key, values in times.items():
        print(f"| {key} | {min(values):.2f} | {statistics.median(values):.2f} | {c / min(values):.2f}x |")
    goal = min(v for k, v in best.items() if k.endswith(", run"))
    print()
    print(f"Goal (C export latency <= 1.0x onnxruntime's best `run` latency, {goal:.2f} us): "
          f"{'PASS' if c <= goal else 'FAIL'} ({c / goal:.2f}x)")


if __name__ == "__main__":
    main()
