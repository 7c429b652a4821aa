#!/usr/bin/env python3
"""NCCL through CuPy on one GPU: a communicator of one rank, checked and timed (issue 14).

The GPU machines within reach have one GPU, so this is the most of the NCCL path that can run:
1. `cupy.cuda.nccl.NcclCommunicator(1, id, 0)`: ncclAllReduce (sum) of random float32 arrays, in
   place and out of place, must return the input bit for bit (a sum over one rank);
2. n2d2's `distributed.NCCLWorld` over a one-rank host world: `allreduce_sum`, and the
   `iallreduce_sum` / `wait_all` pair on a device array;
3. a training program of a small network on the cuda backend: its gradients packed into buckets
   on the device, all-reduced by the NCCLWorld and unpacked (`TrainingProgram._start_reduction`
   / `_finish_reduction`), must come back unchanged;
4. timing: ncclAllReduce of 4 KiB .. 64 MiB on one rank (median of --iterations, CUDA events):
   the per-call overhead and the device-local copy bandwidth, not a network figure.

    python bench/nccl_check.py [--iterations 20] [--json out.json]

Exit status 0: every check passed; 1: a check failed; 2: cannot run here (no CuPy, no NCCL in
CuPy, or no GPU), with the reason. With $OUT set, the results also go to $OUT/nccl_check.json.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class OneRank:
    """The host world of one process as NCCLWorld uses it (no MPI needed for one rank)."""

    rank, size, is_root = 0, 1, True

    def broadcast_object(self, value, what=""):
        return value

    def allreduce_sum(self, array, what=""):
        return array

    def iallreduce_sum(self, array, what=""):
        pass

    def progress(self):
        pass

    def wait_all(self, what=""):
        pass


def check(results, name, ok, detail=""):
    results["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)


def time_allreduce(cp, nccl, comm, nbytes, iterations):
    x = cp.random.random(nbytes // 4, dtype=cp.float32)
    stream = cp.cuda.get_current_stream()
    for _ in range(3):
        comm.allReduce(x.data.ptr, x.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream.ptr)
    times = []
    for _ in range(iterations):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        comm.allReduce(x.data.ptr, x.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream.ptr)
        end.record(stream)
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e3)   # microseconds
    return statistics.median(times)


def training_program_check(results):
    """Check 3: a cuda-backend training program's gradients through NCCL buckets."""
    import n2d2
    from n2d2 import distributed
    from n2d2.activation import Rectifier
    from n2d2.cells import BatchNorm2d, Conv, Fc, Sequence, Softmax
    from n2d2.codegen.programs import TrainingProgram, gradient_tensors

    n2d2.global_variables.default_model = "Frame_CUDA"
    db = n2d2.database.Numpy()
    rng = np.random.default_rng(0)
    db.load([rng.random((2, 6, 6)).astype(np.float32) for _ in range(8)], [k % 3 for k in range(8)],
            partition="Learn")
    provider = n2d2.provider.DataProvider(db, [6, 6, 2], batch_size=8)
    model = Sequence([Conv(2, 4, [3, 3], no_bias=True), BatchNorm2d(4, activation=Rectifier()), Fc(64, 3),
                      Softmax(with_loss=True)])
    dn = model.to_deepnet_cell(provider, n2d2.target.Score(provider), backend="cuda")
    tg = dn._graph_for("training", 8)
    program = TrainingProgram(tg, "cuda")
    import cupy as cp

    out = program.forward({tg.graph.inputs[0]: cp.asarray(rng.random((8, 2, 6, 6)).astype(np.float32))})[0]
    program.backward({tg.graph.outputs[0]: cp.asarray(rng.normal(size=out.shape).astype(np.float32))})
    tensors = gradient_tensors(tg)
    before = [cp.asnumpy(program._c.view(t)) for t in tensors]
    world = distributed.NCCLWorld(OneRank())
    for bucket in (tensors[:2], tensors[2:]):
        program._start_reduction(world, bucket)
    program._finish_reduction(world)
    after = [cp.asnumpy(program._c.view(t)) for t in tensors]
    same = all(np.array_equal(a, b) for a, b in zip(before, after))
    check(results, "cuda TrainingProgram gradients through NCCL buckets unchanged on one rank", same,
          f"{len(tensors)} gradients, {sum(a.size for a in before)} floats")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    results = {"checks": [], "timings_us": {}}
    try:
        from n2d2 import distributed

        cp, nccl = distributed._import_nccl()
        devices = cp.cuda.runtime.getDeviceCount()
        if devices < 1:
            raise RuntimeError("no CUDA device")
        results["device"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
        results["nccl_version"] = nccl.get_version()
    except Exception as e:   # noqa: BLE001 (any reason it cannot run is reported, exit 2)
        print(f"SKIP: the NCCL check cannot run here ({type(e).__name__}: {e})")
        return 2
    print(f"device: {results['device']}, NCCL {results['nccl_version']}, CuPy {cp.__version__}", flush=True)
    start = time.perf_counter()
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    results["communicator_ms"] = 1e3 * (time.perf_counter() - start)
    stream = cp.cuda.get_current_stream()
    x = cp.random.random(1 << 20, dtype=cp.float32)
    expected = cp.asnumpy(x)
    y = cp.empty_like(x)
    comm.allReduce(x.data.ptr, y.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream.ptr)
    comm.allReduce(x.data.ptr, x.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM, stream.ptr)
    stream.synchronize()
    check(results, "ncclAllReduce of one rank, out of place", np.array_equal(cp.asnumpy(y), expected))
    check(results, "ncclAllReduce of one rank, in place", np.array_equal(cp.asnumpy(x), expected))
    world = distributed.NCCLWorld(OneRank())
    z = cp.asarray(expected.copy())
    world.allreduce_sum(z)
    w = cp.asarray(expected[:1000].astype(np.float64))
    world.iallreduce_sum(w)
    world.wait_all("check")
    check(results, "NCCLWorld allreduce_sum / iallreduce_sum + wait_all",
          np.array_equal(cp.asnumpy(z), expected) and np.array_equal(cp.asnumpy(w), expected[:1000]))
    try:
        training_program_check(results)
    except Exception as e:   # noqa: BLE001 (reported as a failed check)
        check(results, "cuda TrainingProgram gradients through NCCL buckets", False, f"{type(e).__name__}: {e}")
    print("\nncclAllReduce, one rank, float32, in place (median of %d, CUDA events)" % args.iterations)
    print("| bytes | us | GB/s |\n|---:|---:|---:|")
    for nbytes in (4 << 10, 64 << 10, 1 << 20, 16 << 20, 64 << 20):
        us = time_allreduce(cp, nccl, comm, nbytes, args.iterations)
        results["timings_us"][nbytes] = us
        print(f"| {nbytes:,} | {us:.1f} | {nbytes / us / 1e3:.1f} |")
    ok = all(c["ok"] for c in results["checks"])
    for path in filter(None, (args.json, os.path.join(os.environ["OUT"], "nccl_check.json")
                              if os.environ.get("OUT") else None)):
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    print("\nNCCL check: " + ("every check passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
