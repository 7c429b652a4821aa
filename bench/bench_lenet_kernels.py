"""Per-kernel CPU time of the LeNet.ini b128 training step on the C backend (bench_c.py's step:
forward, loss seed, backward, SGD update), one thread (`N2D2_PROFILE=cpu` accounting), the best
of `rounds` rounds of `steps` steps for every node, microseconds per step, slowest first:

    PYTHONPATH=$PWD python bench/bench_lenet_kernels.py [--steps 40] [--rounds 3] [--json]

The update nodes are the Python-side SGD calls (one per parameter, each a fused C loop). Before /
after a kernel change: run it from a copy of each tree (`git archive REV | tar -x -C DIR`) in
turn, a few times, and take each node's best (the numbers in bench/RESULTS.md were taken so);
`N2D2_CFLAGS=-mno-avx512f` times the AVX2 kernels on an AVX-512 machine."""
import argparse
import atexit
import json
import os
import sys

os.environ["N2D2_PROFILE"] = "cpu"
os.environ["N2D2_THREADS"] = "1"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_c  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="one JSON line instead of the table")
    args = ap.parse_args()
    step, _ = bench_c.n2d2_training(mapping=True)
    program = step.program
    atexit.unregister(program.print_profile)
    for _ in range(5):
        step()
    best = {}
    for _ in range(args.rounds):
        before = {node: t for node, (_, t, _) in program.profile().items()}
        for _ in range(args.steps):
            step()
        for node, (_, t, _) in program.profile().items():
            best[node] = min(best.get(node, float("inf")), (t - before.get(node, 0.0)) / args.steps)
    rows = sorted(best.items(), key=lambda kv: -kv[1])
    total = sum(best.values())
    if args.json:
        print(json.dumps({"total": round(total, 1), **{k: round(v, 1) for k, v in rows}}))
        return
    for node, t in rows:
        print(f"{node:28s} {t:9.1f} us  {100 * t / total:5.1f} %")
    print(f"{'total':28s} {total:9.1f} us")


if __name__ == "__main__":
    main()
