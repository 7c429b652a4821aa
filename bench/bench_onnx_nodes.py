"""Per-node C kernel time of an ONNX model imported by `DeepNetCell.load_from_ONNX`: a before / after
comparison that holds on a loaded machine.

Each run builds the model in a fresh process per tree (this checkout, and `--before DIR`, another
checkout of n2d2), on one thread with `N2D2_PROFILE=cpu` (the calling thread's CPU time per
kernel), runs `--calls` inferences and keeps, per node, its fastest call; the processes of the
two trees alternate `--rounds` times and the per-node minimum over the rounds is kept. The sum of
the per-node minima is compared (a load spike inflates some calls, rarely the fastest of each node),
then the nodes that moved most are listed with their C lowering (MODE / SMALL) on both sides.

    python bench/bench_onnx_nodes.py MODEL.onnx --before /tmp/before [--batch 1] [--rounds 3] [--ort]

`--ort` also lists onnxruntime's per-node kernel times (its profiler, 1 intra-op thread, fastest
of `--rounds` x `--calls` calls per node, in a torch-free process) for a side-by-side read: they
are wall times (the profiler has no CPU clock: a loaded machine inflates some), and onnxruntime
fuses nodes (a Conv with its Relu / Add, in NCHWc layout), so its names are not matched to ours.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(path, batch, calls, out):
    """One tree, in this process: {node: [op, mode, small, fastest us]} written to `out`."""
    from onnx_runner import inference_programs, load_runner

    dn, run = load_runner(path, batch)
    run()
    programs = inference_programs(dn)
    best = {}
    for _ in range(calls):
        before = {n: v[1] for p in programs for n, v in p.profile().items()}
        run()
        for p in programs:
            for n, v in p.profile().items():
                best[n] = min(best.get(n, float("inf")), v[1] - before[n])
    rows = {}
    for p in programs:
        for n, t in best.items():
            if n in p.graph.nx:
                g = p.geometry.get(n, {})
                rows[n] = [p.graph.op(n), g.get("MODE", ""), str(g.get("SMALL", "")), t]
    with open(out, "w") as f:
        json.dump(rows, f)


def measure_ort(path, batch, calls, out):
    """onnxruntime's fastest call per node (its profiler's kernel times, us): {node: [op, us]}."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(os.path.dirname(out), "ort_profile")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    for _ in range(calls + 1):
        sess.run(None, {sess.get_inputs()[0].name: x})
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    rows = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            name = e["name"][:-len("_kernel_time")]
            rows[name] = [e["args"].get("op_name", ""), min(rows.get(name, ["", float("inf")])[1], e["dur"])]
    with open(out, "w") as f:
        json.dump(rows, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--before", required=True, help="another checkout of n2d2")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--ort", action="store_true", help="also list onnxruntime's per-node times")
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--out-ort", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.out:
        measure(args.model, args.batch, args.calls, args.out)
        return
    if args.out_ort:
        measure_ort(args.model, args.batch, args.calls, args.out_ort)
        return
    trees = {"after": ROOT, "before": os.path.abspath(args.before)}
    best = {k: {} for k in trees}
    env = dict(os.environ, N2D2_PROFILE="cpu", N2D2_THREADS="1")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, tree in trees.items():
                out = os.path.join(tmp, f"{name}_{r}.json")
                cmd = [sys.executable, os.path.abspath(__file__), args.model, "--before", args.before,
                       "--batch", str(args.batch), "--calls", str(args.calls), "--out", out]
                subprocess.run(cmd, check=True, env=dict(env, PYTHONPATH=tree), cwd=tree,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                with open(out) as f:
                    for n, row in json.load(f).items():
                        if n not in best[name] or row[3] < best[name][n][3]:
                            best[name][n] = row
    a, b = best["after"], best["before"]
    ta, tb = sum(v[3] for v in a.values()), sum(v[3] for v in b.values())
    print(f"{os.path.basename(args.model)} batch {args.batch}: sum of per-node minima (1 thread, CPU time) "
          f"{ta / 1e3:.2f} ms against {tb / 1e3:.2f} ms before: {ta / tb:.3f}x")
    common = [n for n in a if n in b]
    for n in sorted(common, key=lambda n: -abs(a[n][3] - b[n][3]))[:args.top]:
        print(f"  {a[n][3]:9.1f} us  before {b[n][3]:9.1f} us  {a[n][1]}/{a[n][2]} <- {b[n][1]}/{b[n][2]}  {n}")
    if args.ort:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "ort.json")
            subprocess.run([sys.executable, os.path.abspath(__file__), args.model, "--before", args.before, "--batch",
                            str(args.batch), "--calls", str(args.calls * args.rounds), "--out-ort", out], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(out) as f:
                o = json.load(f)
        print(f"onnxruntime (1 thread, fastest call per node): {sum(v[1] for v in o.values()) / 1e3:.2f} ms; "
              f"this tree's slowest nodes beside onnxruntime's:")
        ours = sorted(a, key=lambda n: -a[n][3])[:args.top]
        theirs = sorted(o, key=lambda n: -o[n][1])[:args.top]
        for n, m in zip(ours, theirs):
            print(f"  {a[n][3]:9.1f} us  {n:<44.44s} | {o[m][1]:9.1f} us  {o[m][0]:<8s} {m}")


if __name__ == "__main__":
    main()
