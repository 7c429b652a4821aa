"""What splitting each kernel over two threads costs in CPU: per node, the process's CPU time per call
(`N2D2_PROFILE=process`: every thread of the team, its waits at barriers included) at
N2D2_THREADS=1 and 2, for this checkout and optionally others, processes alternating.

A kernel split evenly with no overhead costs the same CPU on two threads as on one (2T / 1T = 1);
uneven shares, barriers and wake-ups show as more, and a thread held up by another job on a loaded
machine shows as the other thread's spinning. The other threads' CPU time is accounted at scheduler
ticks, so each figure is a mean over `--calls` calls (one call per node is unreliable); the best of
`--rounds` such means is kept.

    python bench/bench_thread_cost.py MODEL.onnx [--batch 1] [--rounds 2] [--calls 10] [--before DIR ...]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.dirname(os.path.abspath(__file__))

CHILD = """
import json, sys
sys.path.insert(1, sys.argv[5])   # onnx_runner (after the tree: its n2d2 first)
from onnx_runner import inference_programs, load_runner
model, batch, calls, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
dn, run = load_runner(model, batch)
run()
run()
ps = inference_programs(dn)
before = {n: v[1] for p in ps for n, v in p.profile().items()}
for _ in range(calls):
    run()
rows = {n: [p.graph.op(n), (v[1] - before[n]) / calls] for p in ps for n, v in p.profile().items()}
json.dump(rows, open(out, "w"))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--before", nargs="*", default=[],
                    help="other checkouts of n2d2 (with N2D2_PROFILE=process: from 3c01428 on)")
    args = ap.parse_args()
    trees = [ROOT] + [os.path.abspath(t) for t in args.before]
    best = {(t, th): {} for t in trees for th in (1, 2)}
    ops = {}
    for _ in range(args.rounds):
        for tree in trees:
            for threads in (1, 2):
                with tempfile.TemporaryDirectory() as tmp:
                    out = os.path.join(tmp, "rows.json")
                    # cwd = the tree: `python -c` puts the working directory first on sys.path;
                    # a cache per tree, so that no tree loads another's library
                    env = dict(os.environ, N2D2_PROFILE="process", N2D2_THREADS=str(threads), PYTHONPATH=tree,
                               N2D2_CACHE=os.path.join(tempfile.gettempdir(),
                                                       "n2d2cache-threadcost-" + tree.strip("/").replace("/", "_")))
                    subprocess.run([sys.executable, "-c", CHILD, args.model, str(args.batch), str(args.calls), out,
                                    BENCH], env=env, check=True, cwd=tree, stdout=subprocess.DEVNULL)
                    with open(out) as f:
                        for node, (op, us) in json.load(f).items():
                            ops[node] = op
                            best[tree, threads][node] = min(best[tree, threads].get(node, float("inf")), us)
    for tree in trees:
        one, two = sum(best[tree, 1].values()), sum(best[tree, 2].values())
        print(f"{tree}: batch {args.batch}, process CPU per call: 1 thread {one / 1000:.2f} ms, "
              f"2 threads {two / 1000:.2f} ms = {two / one:.3f}x")
    print("| node | op | " + " | ".join(f"{os.path.basename(t)} 1T us | 2T us | 2T / 1T" for t in trees) + " |")
    print("|---|---|" + "---:|---:|---:|" * len(trees))
    for node in best[ROOT, 1]:
        cells = []
        for tree in trees:
            one, two = best[tree, 1].get(node), best[tree, 2].get(node)
            cells.append("- | - | -" if one is None or two is None or one <= 0
                         else f"{one:.0f} | {two:.0f} | {two / one:.2f}")
        print(f"| {node[:60]} | {ops[node]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
