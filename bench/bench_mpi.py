#!/usr/bin/env python3
"""Data-parallel training throughput: `DeepNetCell.fit` on 1 process x 1 thread, 2 MPI ranks x
1 thread (`mpirun -np 2`, batch split over the ranks; n2d2's default on shared cores, Open
MPI yielding while it waits, and Open MPI's busy-polling) and 1 process x 2 threads, same global
batch, same network (LeNet of bench_training.py: dense conv2, dropout; SGD momentum), synthetic
32x32x1 data (no file reads), C backend by default.

Each configuration runs in its own processes, configurations interleaved for R rounds (so they
see the same machine load); per run: one warm-up epoch (compilation, caches), then E timed
epochs; img/s = images / median epoch wall time. The MPI runs also report the gradient bytes
and, per step (rank 0), the time `update` waits for the gradient all-reduces (the part of the
communication the backward pass did not hide) and the number of buckets: the inputs of the
step-time model of docs/distributed.md. The 2-rank runs use the default bucket size (1 MiB:
LeNet's 246 KB of gradients are one bucket, started when the last gradient is final) and
64 KiB buckets (3 buckets started during the backward). `--model lenet-bn` trains LeNetBN
(a BatchNorm after each convolution) instead, where "sync BatchNorm" configurations normalise
with the global batch (`fit(sync_batchnorm=True)`). Not a test.

    python bench/bench_mpi.py [--rounds 3] [--epochs 3] [--images 4096] [--batch 128] [--backend c]
                              [--model lenet|lenet-bn] [--only NAME,NAME] [--json out.json]
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def worker(args):
    """Run in each process: train, print one JSON line (rank 0)."""
    import numpy as np

    import n2d2
    from n2d2 import distributed
    from n2d2.cells import Sequence, Softmax
    from n2d2.models import LeNetBN, LeNetINI
    from n2d2.solver import SGD

    world = distributed.current()
    bucket_bytes = None if args.bucket_bytes < 0 else args.bucket_bytes
    n2d2.global_variables.seed = 1
    rng = np.random.default_rng(0)
    db = n2d2.database.Numpy()
    xs = [rng.random((1, 32, 32)).astype(np.float32) for _ in range(args.images)]
    db.load(xs, [int(k) for k in rng.integers(0, 10, args.images)], partition="Learn")
    provider = n2d2.provider.DataProvider(db, [32, 32, 1], batch_size=args.batch // world.size)
    model = LeNetBN(name="LeNet") if args.model == "lenet-bn" else LeNetINI(mapping=False, name="LeNet")
    model.set_solver(SGD(learning_rate=0.01, momentum=0.9, decay=5e-4))
    dn = Sequence([model, Softmax(with_loss=True)]).to_deepnet_cell(provider, n2d2.target.Score(provider))
    dn.set_backend(args.backend)
    waits = {"seconds": 0.0, "steps": 0, "buckets": 0, "bytes": 0}
    start_reduction, wait_all = world.iallreduce_sum, world.wait_all

    def counted(array, what=""):
        if "gradient" in what:
            waits["buckets"] += 1
            waits["bytes"] += array.nbytes
        return start_reduction(array, what)

    def timed(what=""):
        t = time.perf_counter()
        out = wait_all(what)
        if "gradient" in what:
            waits["seconds"] += time.perf_counter() - t
            waits["steps"] += 1
        return out
    world.iallreduce_sum, world.wait_all = counted, timed
    epochs = []
    for k in range(args.epochs + 1):
        if k == 1:
            waits.update(seconds=0.0, steps=0, buckets=0, bytes=0)
        start = time.perf_counter()
        dn.fit(1, checkpoint=None, bucket_bytes=bucket_bytes, sync_batchnorm=args.sync_batchnorm)
        epochs.append(time.perf_counter() - start)
    if world.is_root:
        steps = max(1, waits["steps"])
        print("RESULT " + json.dumps({
            "ranks": world.size, "epoch_seconds": epochs[1:],
            "img_per_s": args.images / statistics.median(epochs[1:]),
            "allreduce_wait_ms_per_step": 1e3 * waits["seconds"] / steps,
            "buckets_per_step": waits["buckets"] / steps,
            "gradient_bytes": waits["bytes"] // steps}), flush=True)


#: name: (ranks (0: no mpirun), OMP_NUM_THREADS, extra environment, bucket bytes (-1: the default),
#: synchronised BatchNorm)
CONFIGS = {
    "1 process x 1 thread": (0, "1", {}, -1, False),
    "2 MPI ranks x 1 thread": (2, "1", {}, -1, False),
    "2 MPI ranks x 1 thread, 64 KiB buckets": (2, "1", {}, 64 << 10, False),
    "2 MPI ranks x 1 thread, sync BatchNorm": (2, "1", {}, -1, True),
    "2 MPI ranks x 1 thread, busy-poll": (2, "1", {"OMPI_MCA_mpi_yield_when_idle": "0"}, -1, False),
    "1 process x 2 threads": (0, "2", {}, -1, False),
}
DEFAULT_CONFIGS = {"lenet": [name for name in CONFIGS if "BatchNorm" not in name],
                   "lenet-bn": ["1 process x 1 thread", "2 MPI ranks x 1 thread",
                                "2 MPI ranks x 1 thread, sync BatchNorm", "1 process x 2 threads"]}


def run_config(name, args, tmp):
    ranks, threads, extra, bucket_bytes, sync = CONFIGS[name]
    env = dict(os.environ, **extra, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS="1", TQDM_DISABLE="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--epochs", str(args.epochs), "--images",
           str(args.images), "--batch", str(args.batch), "--backend", args.backend, "--bucket-bytes",
           str(bucket_bytes), "--model", args.model] + (["--sync-batchnorm"] if sync else [])
    if ranks:
        local = os.path.join(os.path.dirname(sys.executable), "mpirun")
        cmd = [local if os.access(local, os.X_OK) else shutil.which("mpirun"), "--oversubscribe", "-np",
               str(ranks)] + cmd
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[0][7:])


def versions() -> dict:
    import numpy

    out = {"python": platform.python_version(), "numpy": numpy.__version__}
    try:
        import mpi4py
        from mpi4py import MPI

        out["mpi4py"] = mpi4py.__version__
        out["mpi"] = MPI.Get_library_version().split(",")[0].strip()
    except ImportError:
        out["mpi4py"] = None
    return out


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs, {model}, load average {os.getloadavg()[0]:.1f} at start"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=128, help="global batch (split over the ranks)")
    p.add_argument("--backend", default="c")
    p.add_argument("--json", default=None)
    p.add_argument("--only", default=None, help="comma-separated configuration names (default: all)")
    p.add_argument("--model", default="lenet", choices=("lenet", "lenet-bn"))
    p.add_argument("--bucket-bytes", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--sync-batchnorm", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    configs = DEFAULT_CONFIGS[args.model] if not args.only else [c.strip() for c in args.only.split(",")]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        p.error(f"--only: unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    print(f"machine: {machine()}; {versions()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    results = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in configs:
                results[name].append(run_config(name, args, tmp))
                print(f"round {r + 1} {name}: {results[name][-1]['img_per_s']:.0f} img/s", flush=True)
    base = statistics.median(x["img_per_s"] for x in results[configs[0]])
    model = "LeNetBN" if args.model == "lenet-bn" else "LeNet"
    print(f"\n{model}, global batch {args.batch}, {args.images} images/epoch, backend {args.backend}, "
          f"{args.rounds} rounds x {args.epochs} epochs\n")
    print(f"| configuration | img/s median [min-max] | vs {configs[0]} | update waits for the all-reduce, "
          "ms/step | buckets/step | gradient bytes |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        rates = [x["img_per_s"] for x in runs]
        wait = statistics.median(x["allreduce_wait_ms_per_step"] for x in runs)
        print(f"| {name} | {statistics.median(rates):,.0f} [{min(rates):,.0f}-{max(rates):,.0f}] | "
              f"{statistics.median(rates) / base:.2f}x | {wait:.3f} | {runs[0]['buckets_per_step']:.0f} | "
              f"{runs[0]['gradient_bytes']:,} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": machine(), "versions": versions(), "results": results}, f,
                      indent=1)


if __name__ == "__main__":
    sys.exit(main())
