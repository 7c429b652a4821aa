#!/usr/bin/env python3
"""Per-node CPU time of the ResNet-20 b128 C training step (bench_c.py's ResNet-20), one thread.

Each kernel's time is the calling thread's CPU time (`N2D2_PROFILE=cpu`, `N2D2_THREADS=1`: steady
on a loaded machine); a node's figure is its best over `--steps` steps (after one warm-up step).
Prints the step's process CPU time, the totals per op, then the nodes, slowest first, with the
convolution mode the C backend picked. `--threads 2` profiles the 2-thread team by wall clock
(`N2D2_PROFILE=1`: CPU time would count the calling thread only); `--clock process` sums the CPU
time of all the team's threads per node (`N2D2_PROFILE=process`): against one thread's figures it
counts the team's spinning and duplicated work, steady on a loaded machine. Not a test.

    python bench/profile_resnet20.py [--steps 3] [--top 60] [--threads 1] [--clock process]
"""
import argparse
import atexit
import os
import sys
import time

_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv[:-1] else "1"
_PROCESS = "--clock" in sys.argv[:-1] and sys.argv[sys.argv.index("--clock") + 1] == "process"
os.environ["N2D2_PROFILE"] = "process" if _PROCESS else "cpu" if _THREADS == "1" else "1"
os.environ["N2D2_THREADS"] = _THREADS
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import bench_c  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1, help="N2D2_THREADS (read before the imports)")
    ap.add_argument("--clock", choices=("default", "process"), default="default",
                    help="process: every thread's CPU time (read before the imports)")
    args = ap.parse_args()
    step = bench_c.resnet_training(False)
    program = step.program
    atexit.unregister(program.print_profile)
    step()
    process = args.clock == "process"
    clock = time.process_time if args.threads == 1 or process else time.perf_counter
    best, cpu = {}, []
    for _ in range(args.steps):
        p0, t0 = program.profile(), clock()
        step()
        t1, p1 = clock(), program.profile()
        cpu.append(1000 * (t1 - t0))
        for node, (_, us, _) in p1.items():
            best[node] = min(best.get(node, float("inf")), (us - p0.get(node, (0, 0.0, ""))[1]) / 1000)
    graph = program.graph
    nodes = set(graph.nodes())
    ops = {}
    for node, ms in best.items():
        key = graph.op(node) if node in nodes else "?"
        if key == "Grad":   # grad:<forward node>
            key = "grad:" + graph.op(node.split(":", 1)[1])
        ops[key] = ops.get(key, 0.0) + ms
    clock_name = "process CPU" if process else "CPU" if args.threads == 1 else "wall"
    print(f"step {clock_name} time, {args.threads} thread(s), {args.steps} steps: "
          + ", ".join(f"{t:.1f}" for t in cpu) + " ms")
    print(f"kernels (best per node): {sum(best.values()):.1f} ms")
    for key, ms in sorted(ops.items(), key=lambda r: -r[1]):
        print(f"  {key:24s} {ms:8.2f} ms")
    for node, ms in sorted(best.items(), key=lambda r: -r[1])[:args.top]:
        geo = program.geometry.get(node.split(":", 1)[-1], {})
        print(f"  {node:28s} {ms:8.2f} ms  {geo.get('MODE', '')}")


if __name__ == "__main__":
    main()
