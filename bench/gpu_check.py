#!/usr/bin/env python3
"""The Python steps of bench/gpu_check.sh (issue 16: the CUDA backend on a lent GPU).

    python bench/gpu_check.py device     # CuPy sees a GPU, and a DeepNetCell really runs on the CUDA backend
    python bench/gpu_check.py fit        # one epoch of DeepNetCell.fit on MNIST: CUDA vs C test accuracy
    python bench/gpu_check.py latency    # inference latency at batch 1 and 64 (CUDA graphs) vs PyTorch eager
    python bench/gpu_check.py step       # one small LeNet training step, eager launches (for compute-sanitizer)

`--emulate` (the dry mode of gpu_check.sh, no GPU): the same code paths on the CUDA host emulator (the
generated source compiled by g++) and PyTorch on the CPU, with small sizes; `device --emulate` also checks
that asking for the CUDA backend without a device is refused (a missing CuPy must never pass for a GPU run).
Each command prints one JSON line of results last, writes it to $OUT/gpu_check_<command>.json when $OUT is
set, and exits non-zero when a check fails.

"Really ran on CUDA": every kernel launch and CUDA-graph replay of the device is counted (the class
methods `CupyDevice.launch` / `replay`, or the emulator's), and the programs DeepNetCell built are
inspected (backend, device, nodes on kernels); a run that fell back to the CPU has no launches.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import bench_cuda  # noqa: E402  (bench/: the benchmark networks, CUDA-event timing)
import numpy as np  # noqa: E402

# one epoch of LeNet (with BatchNorm): two backends that only round differently stay within this many
# percentage points of test accuracy (seed 1: 98.6-98.9 % after one epoch)
FIT_TOLERANCE_POINTS = 0.5


class CheckFailed(Exception):
    pass


def _require(ok, what):
    if not ok:
        raise CheckFailed(what)


# -- counting what really runs on the device ----------------------------------------------------------
class LaunchCounter:
    """Counts kernel launches and graph replays of a device class while active."""

    def __init__(self, device_cls):
        self.cls, self.launches, self.replays = device_cls, 0, 0

    def __enter__(self):
        counter, launch, replay = self, self.cls.launch, self.cls.replay

        def counted_launch(dev, *args, **kwargs):
            counter.launches += 1
            return launch(dev, *args, **kwargs)

        def counted_replay(dev, graph):
            counter.replays += 1
            return replay(dev, graph)

        self._saved = (launch, replay)
        self.cls.launch, self.cls.replay = counted_launch, counted_replay
        return self

    def __exit__(self, *exc):
        self.cls.launch, self.cls.replay = self._saved


def _device_classes(emulate):
    from n2d2.codegen import cuda_backend

    return cuda_backend.HostEmulator if emulate else cuda_backend.CupyDevice


def _cuda_programs(dn):
    """The CudaPrograms behind a DeepNetCell's cached programs."""
    from n2d2.codegen.cuda_backend import CudaProgram

    return [p._c for key, p in dn._programs.items() if not key[0].endswith(".graph")
            and isinstance(getattr(p, "_c", None), CudaProgram)]


# -- device -------------------------------------------------------------------------------------------
class EmulatedCudaBackend:
    """--emulate: the "cuda" backend counts as available and its programs run on the host emulator, so
    that DeepNetCell and `n2d2 train` take their CUDA path on a machine without GPU (parameters stay
    numpy arrays, which the emulator reads)."""

    def __enter__(self):
        from n2d2.codegen import cuda_backend

        self.mod = cuda_backend
        self.saved = (cuda_backend.CudaBackend.available, cuda_backend.CudaProgram.__init__)
        init = self.saved[1]

        def emulated_init(prog, graph, phases, training=False, name=None, device=None, **kwargs):
            init(prog, graph, phases, training, name, device if device is not None else cuda_backend.HostEmulator(),
                 **kwargs)

        cuda_backend.CudaBackend.available = lambda backend: True
        cuda_backend.CudaProgram.__init__ = emulated_init
        return self

    def __exit__(self, *exc):
        self.mod.CudaBackend.available, self.mod.CudaProgram.__init__ = self.saved


def _lenet_deepnet(batch, backend):
    """LeNet (N2D2's LeNet.ini, connection table) + softmax as a DeepNetCell on `backend`, fed by a provider
    of random images (seeded: the same weights and data for every backend)."""
    import n2d2
    from n2d2.cells import Sequence, Softmax
    from n2d2.models import LeNetINI

    n2d2.global_variables.seed = 5
    net = Sequence([LeNetINI(mapping=True, name="LeNet"), Softmax(with_loss=True)])
    db = n2d2.database.Numpy()
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((1, 32, 32)).astype(np.float32) for _ in range(batch)]
    db.load(xs, [int(v) for v in rng.integers(0, 10, batch)], partition="Test")
    provider = n2d2.provider.DataProvider(db, [32, 32, 1], batch_size=batch)
    dn = net.to_deepnet_cell(provider)
    dn.set_backend(backend)
    return dn, provider


def _deepnet_outputs(backend, device_cls):
    """(outputs of a LeNet DeepNetCell on one batch, launches + replays on `device_cls`, its CUDA programs)."""
    dn, provider = _lenet_deepnet(16, backend)
    dn.test()
    x = provider.read_batch(idx=0)
    with LaunchCounter(device_cls) as counter:
        ys = [dn(x).to_numpy().astype(np.float64) for _ in range(2)]   # the second call replays the graph
    np.testing.assert_array_equal(ys[0], ys[1])
    return ys[0], counter.launches + counter.replays, _cuda_programs(dn)


def cmd_device(args):
    """CuPy sees a device (or, --emulate, the CUDA backend is refused without one); a DeepNetCell on the
    cuda backend runs its program as kernels (counted) and gives the numpy backend's outputs."""
    import n2d2
    from n2d2.codegen.programs import select_backend

    out = {"emulate": args.emulate}
    if args.emulate:
        _require(not n2d2.global_variables.cuda_available, "--emulate is for machines without a CUDA device")
        try:
            select_backend("cuda")
        except RuntimeError as e:
            out["refusal_without_device"] = str(e).splitlines()[0]
        else:
            raise CheckFailed("select_backend('cuda') succeeded without a CUDA device")
    else:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
        _require(count > 0, "CuPy sees no CUDA device")
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        out.update(devices=count, name=name.decode() if isinstance(name, bytes) else name,
                   compute_capability=f"{props['major']}.{props['minor']}", cupy=cupy.__version__)
        _require(n2d2.global_variables.cuda_available, "n2d2.global_variables.cuda_available is False with a device")
        n2d2.global_variables.default_model = "Frame_CUDA"       # the cells' parameters on the GPU
        _require(select_backend() == "cuda", f"Frame_CUDA selects the {select_backend()} backend, not cuda")
    device_cls = _device_classes(args.emulate)
    if args.emulate:
        with EmulatedCudaBackend():
            y, launches, progs = _deepnet_outputs("cuda", device_cls)
    else:
        y, launches, progs = _deepnet_outputs("cuda", device_cls)
    y_ref, ref_launches, _ = _deepnet_outputs("numpy", device_cls)
    out.update(device_launches=launches, programs=len(progs), kernels=sum(len(p.kernels) for p in progs),
               nodes_on_numpy=sorted({n for p in progs for n, w in p.where.items() if w != "cuda"}))
    _require(progs and all(p.device.name == ("emulator" if args.emulate else "cuda") for p in progs),
             "the DeepNetCell built no CUDA program")
    _require(launches > 0, "no kernel launch nor graph replay on the CUDA device: a CPU fallback ran")
    _require(ref_launches == 0, "the numpy backend launched CUDA kernels")
    err = bench_cuda.rel(y, y_ref)
    out["rel_error_vs_numpy"] = err
    _require(err < 1e-5, f"the CUDA outputs differ from the numpy backend's (rel {err:.2e})")
    return out


# -- fit -----------------------------------------------------------------------------------------------
def _fit_one(backend, device, args, workdir):
    """`n2d2 train --model lenet --epochs 1` in this process (the CLI itself) on `backend`, with the CUDA
    device's launches counted: (summary, launches + replays)."""
    from n2d2 import cli

    output = os.path.join(workdir, f"fit_{backend}")
    argv = ["train", "--model", "lenet", "--database", "mnist", "--epochs", "1", "--device", device,
            "--backend", backend, "--data-path", args.data_path, "--output", output, "--no-progress",
            "--seed", "1", "--batch-size", str(args.batch_size)]
    if args.limit_train:
        argv += ["--limit-train", str(args.limit_train)]
    if args.limit_test:
        argv += ["--limit-test", str(args.limit_test)]
    t0 = time.perf_counter()
    with LaunchCounter(_device_classes(args.emulate)) as counter:
        if backend == "cuda" and args.emulate:
            with EmulatedCudaBackend():
                rc = cli.main(argv)
        else:
            rc = cli.main(argv)
    wall = time.perf_counter() - t0
    _require(rc == 0, f"n2d2 train on {backend} returned {rc}")
    with open(os.path.join(output, "summary.json")) as f:
        summary = json.load(f)
    return {"backend": backend, "device": device, "test_accuracy": summary["test_accuracy"],
            "test_images": summary["test_images"], "train_seconds": summary["train_seconds"],
            "wall_seconds": round(wall, 1), "device_launches": counter.launches + counter.replays}


def cmd_fit(args):
    """One epoch of DeepNetCell.fit (n2d2 train's LeNet) on MNIST on each backend; test accuracies within
    FIT_TOLERANCE_POINTS; the CUDA run counted on the device."""
    backends = args.backends.split(",")
    runs = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_fit_") as workdir:
        for backend in backends:
            device = "cuda" if backend == "cuda" and not args.emulate else "cpu"
            runs[backend] = _fit_one(backend, device, args, workdir)
            print(json.dumps(runs[backend]), flush=True)
    if "cuda" in runs:
        _require(runs["cuda"]["device_launches"] > 0, "the cuda fit launched nothing on the device: a CPU fallback")
    accuracies = [100 * r["test_accuracy"] for r in runs.values()]
    spread = max(accuracies) - min(accuracies)
    out = {"runs": runs, "spread_points": round(spread, 3), "tolerance_points": args.tolerance}
    _require(spread <= args.tolerance, f"test accuracies {accuracies} differ by {spread:.2f} points "
             f"(> {args.tolerance})")
    return out


# -- inference latency ---------------------------------------------------------------------------------
def _inference_graph(name, batch):
    """The inference graph DeepNetCell runs for a benchmark network at `batch` (live inference passes)."""
    import n2d2
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.ir.trace import trace

    shape, _ = bench_cuda.SIZES[name]
    net = bench_cuda.network(name)
    net.test()
    y = net(n2d2.Tensor([batch] + list(shape)))
    return DeepNetCell._optimize(trace(y.get_deepnet(), name=name, input_names=["input"]).graph)


def _timer(emulate):
    """(time(fn) -> ms of one call, synchronize): CUDA events on the GPU, wall clock on the emulator."""
    if emulate:
        def once(fn):
            t = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - t)
        return once
    import cupy as cp

    def once(fn):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        return cp.cuda.get_elapsed_time(a, b)
    return once


def _median_ms(fn, once, rounds, warmup):
    for _ in range(warmup):
        fn()
    times = [once(fn) for _ in range(rounds)]
    return round(statistics.median(times), 4), round(min(times), 4)


def cmd_latency(args):
    """Inference at batch 1 and 64: n2d2's CUDA program (input copied in, one replayed graph) vs PyTorch
    eager (no_grad, eval, cuDNN benchmark) on the same card; medians of `rounds` calls."""
    import torch

    from n2d2.codegen.cuda_backend import CudaProgram, CupyDevice, HostEmulator

    emulate = args.emulate
    once = _timer(emulate)
    dev = "cpu" if emulate else "cuda"
    torch.backends.cudnn.benchmark = True
    import torch_peers

    out = {"emulate": emulate, "rows": []}
    for name in args.nets.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            graph = _inference_graph(name, batch)
            if emulate:
                device = HostEmulator()
                xp = np
            else:
                import cupy as cp

                device, xp = CupyDevice(), cp
                for p in graph.params.values():
                    p.array = cp.asarray(p.array)
            with LaunchCounter(type(device)) as counter:
                prog = CudaProgram(graph, [graph.topological_order()], device=device)
                shape = graph.output_types(graph.inputs[0])[0].shape
                x = xp.asarray(np.random.default_rng(0).standard_normal(shape).astype(np.float32))

                def ours():
                    prog.feed({graph.inputs[0]: x})
                    prog.run_phase(0)
                ours_ms = _median_ms(ours, once, args.rounds, args.warmup)
            _require(counter.launches + counter.replays > 0, f"{name} b{batch}: nothing ran on the device")
            model = (torch_peers.lenet() if name == "lenet" else torch_peers.resnet20()).to(dev).eval()
            xt = torch.randn(*shape, device=dev)

            def theirs():
                with torch.no_grad():
                    model(xt)
            theirs_ms = _median_ms(theirs, once, args.rounds, args.warmup)
            row = {"net": name, "batch": batch, "n2d2_ms": ours_ms, "torch_ms": theirs_ms,
                   "speedup": round(theirs_ms[0] / ours_ms[0], 2), "kernels": len(prog.kernels),
                   "nodes_on_numpy": sorted(n for n, w in prog.where.items() if w != "cuda")}
            print(json.dumps(row), flush=True)
            out["rows"].append(row)
    return out


# -- one step for compute-sanitizer ------------------------------------------------------------------------
def cmd_step(args):
    """One LeNet training step (batch 4, every kernel launched eagerly: no CUDA graph) and one inference."""
    from n2d2.codegen.cuda_backend import CudaProgram, CupyDevice, HostEmulator

    tg = bench_cuda.training_graph("lenet", 4)
    if args.emulate:
        device, xp = HostEmulator(), np
    else:
        import cupy as cp

        device, xp = CupyDevice(), cp
        for p in tg.graph.params.values():
            p.array = cp.asarray(p.array)
    rng = np.random.default_rng(0)
    with LaunchCounter(type(device)) as counter:
        prog = CudaProgram(tg.graph, bench_cuda.phases(tg), training=True, device=device, graphs=False)
        prog.feed({tg.graph.inputs[0]: xp.asarray(rng.standard_normal((4, 1, 32, 32)).astype(np.float32))})
        prog.run_phase(0, 4)
        out_t = tg.graph.outputs[0]
        seed = rng.standard_normal(tg.graph.output_types(out_t[0])[out_t[1]].shape).astype(np.float32)
        prog.feed({tg.grad_inputs[out_t]: xp.asarray(seed)})
        prog.run_phase(1, 4)
        prog.run_phase(2, 4)
        prog.synchronize()
    finite = all(bool(xp.isfinite(p.array).all()) for p in tg.graph.params.values())
    _require(counter.launches > 0, "no kernel launched")
    _require(finite, "non-finite parameters after one step")
    return {"emulate": args.emulate, "launches": counter.launches, "kernels": len(prog.kernels)}


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("device", "fit", "latency", "step"):
        p = sub.add_parser(name)
        p.add_argument("--emulate", action="store_true", help="no GPU: the CUDA host emulator, PyTorch on the CPU")
        if name == "fit":
            p.add_argument("--backends", default="cuda,c", help="backends to compare (default: cuda,c)")
            p.add_argument("--data-path", default=os.path.join(REPO, "data", "mnist"))
            p.add_argument("--batch-size", type=int, default=128)
            p.add_argument("--limit-train", type=int, default=0)
            p.add_argument("--limit-test", type=int, default=0)
            p.add_argument("--tolerance", type=float, default=FIT_TOLERANCE_POINTS,
                           help="largest test accuracy spread in percentage points")
        if name == "latency":
            p.add_argument("--nets", default="lenet,resnet20")
            p.add_argument("--batches", default="1,64")
            p.add_argument("--rounds", type=int, default=50)
            p.add_argument("--warmup", type=int, default=10)
    return ap.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    commands = {"device": cmd_device, "fit": cmd_fit, "latency": cmd_latency, "step": cmd_step}
    try:
        result = {"ok": True, **commands[args.command](args)}
    except CheckFailed as e:
        result = {"ok": False, "failed": str(e)}
    text = json.dumps(result, default=str)
    print(text, flush=True)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], f"gpu_check_{args.command}.json"), "w") as f:
            f.write(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
