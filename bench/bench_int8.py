"""int8 LeNet at batch 1: our float32 and int8 C exports, our QDQ ONNX model, onnxruntime's own
static quantization and PyTorch's int8 path, side by side (issue 13's peers).

The network is the one `n2d2 train --model lenet --database mnist` trains (N2D2's LeNet.ini:
conv2 with its 6x16 connection table, baked into dense weights in every contender), from a run
folder (`--run RUN_DIR`) or trained by this script first (`--epochs`, default 10). From it:

- "C float32": `n2d2.export.export_c` (float32), `make`, the test program's best pass;
- "C int8": `export_c(nb_bits=8, calibration=N)` (SINGLE_SHIFT, per-layer weights: the defaults
  of `n2d2 export --nb-bits 8`), `make`, the same;
- "ORT float32": n2d2's float ONNX export (`export_onnx(nb_bits=-32)`) on onnxruntime;
- "ORT quantize_static": onnxruntime.quantization.quantize_static of that float model, QDQ
  format, per-channel weights, int8 activations and weights, MinMax calibration on the same N
  calibration stimuli as our PTQ;
- "ORT on n2d2 QDQ": our `export_onnx(nb_bits=8)` model (FLOAT_MULT, per-output-channel
  weights) on onnxruntime, with its per-stimulus agreement with our integer simulation;
- "PyTorch int8": the same inference graph rebuilt as torch modules (Conv2d / MaxPool2d /
  Linear / ReLU with our weights), torch.ao.quantization FX static quantization (x86 engine,
  default qconfig: per-channel int8 weights, uint8 activations, histogram observers), the same
  calibration stimuli; plus its float32 model as a check of the rebuild.

Each contender runs in its own process (`--peer NAME`); accuracy is measured on every test
stimulus written (`--stimuli`, default 10000), latency at batch 1 on the first `--latency-stimuli`
(default 1000), best of `--passes` passes per process, `--rounds` rounds (each round restarts
every contender's process, interleaved, so that they share the machine's load); best and median
over the rounds are reported. onnxruntime / PyTorch are timed around each Python call (one
stimulus, perf_counter_ns): their figures include their Python binding's few microseconds, the
C programs' the bare `network_run`. Threads: 1 and 2 for onnxruntime and PyTorch (the C
programs are single-threaded).

Run from the repository root: `python bench/bench_int8.py` (see --help).
"""
import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from bench_export import _cpu_model, ort_sessions
from repo_info import git_commit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PEERS = ("c_float", "c_int8", "ort_float", "ort_static_qdq", "ort_n2d2_qdq", "torch_int8")
LABELS = {
    "c_float": "C export float32 (n2d2)",
    "c_int8": "C export int8 (n2d2, SINGLE_SHIFT)",
    "ort_float": "onnxruntime float32",
    "ort_static_qdq": "onnxruntime quantize_static QDQ per-channel",
    "ort_n2d2_qdq": "onnxruntime on n2d2's QDQ (export_onnx)",
    "torch_int8": "PyTorch int8 (FX, x86)",
}


# -- preparation (parent process) ---------------------------------------------------------------------
def prepare(args, work):
    import n2d2
    from n2d2.cli import load_run
    from n2d2.quantization.onnx_qdq import qdq_model
    from n2d2.quantization.ptq import calibration_partition, quantize_network, read_stimuli

    run = args.run
    if run is None:
        run = os.path.join(work, "run")
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "n2d2", "train", "--model", "lenet", "--database", "mnist",
                              "--epochs", str(args.epochs), "--output", run, "--no-progress"],
                             capture_output=True, text=True, check=True).stdout
        line = [x for x in out.splitlines() if "est" in x and "%" in x]
        print(f"n2d2 train --model lenet --epochs {args.epochs}: {time.perf_counter() - t:.0f} s; "
              f"{line[-1].strip() if line else ''}")
    dn, provider, _, _ = load_run(run)
    info = {"run": os.path.abspath(run)}
    t = time.perf_counter()
    x, y = read_stimuli(provider, "Test", args.stimuli)
    partition = calibration_partition(provider)
    xc, _ = read_stimuli(provider, partition, args.calibration)
    np.save(os.path.join(work, "x.npy"), x)
    np.save(os.path.join(work, "y.npy"), y)
    np.save(os.path.join(work, "calib.npy"), xc)
    info.update(stimuli=len(x), calibration=len(xc), calibration_partition=partition)
    n2d2.export.export_c(dn, provider, nb_bits=-32, export_folder_name=os.path.join(work, "export_C_float32"),
                         export_nb_stimuli_max=args.stimuli)
    n2d2.export.export_c(dn, provider, nb_bits=8, calibration=args.calibration, act_scaling_mode="SINGLE_SHIFT",
                         export_folder_name=os.path.join(work, "export_C_int8"), export_nb_stimuli_max=args.stimuli)
    n2d2.export.export_onnx(dn, nb_bits=-32, export_file_name=os.path.join(work, "float.onnx"))
    network = quantize_network(dn, provider, nb_bits=8, calibration=args.calibration, act_scaling_mode="FLOAT_MULT",
                               act_rescale_per_output=True)
    with open(os.path.join(work, "n2d2_qdq.onnx"), "wb") as f:
        f.write(qdq_model(network).SerializeToString())
    sim = network.predict(x)
    np.save(os.path.join(work, "sim_pred.npy"), sim)
    info["sim_accuracy"] = float(np.mean(sim == y))
    shift = quantize_network(dn, provider, nb_bits=8, calibration=args.calibration, act_scaling_mode="SINGLE_SHIFT")
    info["sim_shift_accuracy"] = float(np.mean(shift.predict(x) == y))
    # the parameters of the exported layers: float32 words against int8 weights + int32 biases
    weights = sum(int(qn["weights"].size) for qn in network.nodes if "weights" in qn)
    biases = sum(int(qn["biases"].size) for qn in network.nodes if "weights" in qn)
    info.update(float_weight_bytes=4 * (weights + biases), int8_weight_bytes=int(network.weight_bytes()),
                weights=weights, biases=biases)
    info["prepare_s"] = time.perf_counter() - t
    with open(os.path.join(work, "info.json"), "w") as f:
        json.dump(info, f)
    return info


# -- peers (one process each) ----------------------------------------------------------------------------
def _c_peer(folder, passes, latency_stimuli, accuracy, clock):
    subprocess.run(["make", "-s"], cwd=folder, check=True, capture_output=True)
    out = {}
    if accuracy:
        text = subprocess.run(["./bin/network_test", "-q"], cwd=folder, capture_output=True, text=True,
                              check=True).stdout
        out["accuracy"] = float(re.search(r"Success rate = ([0-9.]+)%", text).group(1)) / 100
    text = subprocess.run(["./bin/network_test", "-q", "-n", str(latency_stimuli), "-r", str(passes)]
                          + (["-c"] if clock == "cpu" else []), cwd=folder,
                          capture_output=True, text=True, check=True).stdout
    out["latency_1"] = float(re.search(r"Best pass time per stimulus = ([0-9.]+) us", text).group(1))
    return out


CLOCK = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}


def _time_calls(call, stimuli, passes, budget_s=30.0, clock="wall"):
    """Best pass's mean microseconds per call (wall clock, or the calling thread's CPU time); a pass
    stops early (its mean over the calls made) and no further pass starts once `budget_s` seconds
    are spent (a contender starved on a busy machine)."""
    best, start, now = float("inf"), time.perf_counter(), CLOCK[clock]
    for _ in range(passes):
        total = done = 0
        for s in stimuli:
            t0 = now()
            call(s)
            total += now() - t0
            done += 1
            if time.perf_counter() - start > budget_s:
                break
        best = min(best, total / 1e3 / done)
        if time.perf_counter() - start > budget_s:
            break
    return best


class _Reader:
    """quantize_static's calibration data: the calibration stimuli one at a time."""

    def __init__(self, name, stimuli):
        self.items = iter([{name: s[None]} for s in stimuli])

    def get_next(self):
        return next(self.items, None)


def _ort_peer(work, kind, passes, latency_stimuli, accuracy, clock):
    import onnxruntime as ort

    path = os.path.join(work, {"ort_float": "float.onnx", "ort_n2d2_qdq": "n2d2_qdq.onnx",
                               "ort_static_qdq": "ort_static_qdq.onnx"}[kind])
    out = {"version": ort.__version__}
    if kind == "ort_static_qdq" and accuracy:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process

        pre = os.path.join(work, "float_pre.onnx")
        quant_pre_process(os.path.join(work, "float.onnx"), pre)
        name = ort_sessions(pre, 1).get_inputs()[0].name
        quantize_static(pre, path, _Reader(name, np.load(os.path.join(work, "calib.npy"))),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    out["file_bytes"] = os.path.getsize(path)
    x = np.load(os.path.join(work, "x.npy"))
    session = ort_sessions(path, 1)
    name = session.get_inputs()[0].name
    if accuracy:
        y = np.load(os.path.join(work, "y.npy"))
        pred = np.concatenate([session.run(None, {name: x[s:s + 1]})[0].reshape(1, -1).argmax(axis=1)
                               for s in range(len(x))])
        out["accuracy"] = float(np.mean(pred == y))
        if kind == "ort_n2d2_qdq":
            sim = np.load(os.path.join(work, "sim_pred.npy"))
            out["agreement"] = float(np.mean(pred == sim))
            out["disagreements"] = int(np.sum(pred != sim))
    stimuli = [np.ascontiguousarray(s[None]) for s in x[:latency_stimuli]]
    for threads in (1,) if clock == "cpu" else (1, 2):   # CPU time of 2 threads is not a latency
        session = ort_sessions(path, threads)

        def call(s, session=session):
            return session.run(None, {name: s})

        _time_calls(call, stimuli[:100], 1, budget_s=5)   # warm-up
        out[f"latency_{threads}"] = _time_calls(call, stimuli, passes, clock=clock)
    return out


def torch_module(graph):
    """The batch-1 inference graph of n2d2's PTQ as torch modules (Conv / Pool / Fc with ReLU or no
    activation, a final Softmax dropped: the arg-max is the same); refuses any other node."""
    import torch
    import torch.nn as nn

    from n2d2.backend import to_host

    layers = []
    for node in graph.topological_order():
        op, attrs = graph.op(node), graph.attrs(node)
        if op == "Input":
            continue
        params = {r: torch.tensor(np.asarray(to_host(graph.params[p].array), np.float32))
                  for r, p in graph.node(node).params.items() if p in graph.params}
        if op == "Conv":
            w = params["weights"]
            m = nn.Conv2d(w.shape[1] * int(attrs.get("groups", 1) or 1), w.shape[0], tuple(w.shape[2:]),
                          stride=tuple(attrs["stride"]), padding=tuple(attrs["padding"]),
                          dilation=tuple(attrs["dilation"]), groups=int(attrs.get("groups", 1) or 1),
                          bias="biases" in params)
        elif op == "Fc":
            w = params["weights"].reshape(params["weights"].shape[0], -1)
            layers.append(nn.Flatten())
            m = nn.Linear(w.shape[1], w.shape[0], bias="biases" in params)
        elif op == "Pool" and attrs["pooling"] in ("Max", "Average") and attrs.get("mapping") is None:
            cls = nn.MaxPool2d if attrs["pooling"] == "Max" else nn.AvgPool2d
            layers.append(cls(tuple(attrs["pool"]), tuple(attrs["stride"]), tuple(attrs["padding"])))
            continue
        elif op == "Softmax" and not graph.consumers(node):
            continue
        else:
            raise NotImplementedError(f"node '{node}' (op {op}) has no torch equivalent here")
        with torch.no_grad():
            m.weight.copy_(w.reshape(m.weight.shape))
            if "biases" in params:
                m.bias.copy_(params["biases"].reshape(-1))
        layers.append(m)
        spec = attrs.get("activation")
        name = spec[0] if spec else "Linear"
        if name == "Rectifier" and not dict(spec[1]).get("leak_slope") and not dict(spec[1]).get("clipping"):
            layers.append(nn.ReLU())
        elif name != "Linear":
            raise NotImplementedError(f"node '{node}': activation {name} has no torch equivalent here")
    return nn.Sequential(*layers).eval()


def _torch_peer(work, passes, latency_stimuli, accuracy, clock):
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    from n2d2.cli import load_run
    from n2d2.quantization.ptq import inference_graph

    info = json.load(open(os.path.join(work, "info.json")))
    dn, _, _, _ = load_run(info["run"])
    model = torch_module(inference_graph(dn))
    torch.backends.quantized.engine = "x86"
    x = torch.tensor(np.load(os.path.join(work, "x.npy")))
    calib = torch.tensor(np.load(os.path.join(work, "calib.npy")))
    prepared = prepare_fx(model, get_default_qconfig_mapping("x86"), (x[:1],))
    with torch.inference_mode():
        for s in range(0, len(calib), 100):
            prepared(calib[s:s + 100])
    qmodel = convert_fx(prepared)
    out = {"version": torch.__version__, "engine": torch.backends.quantized.engine}
    with torch.inference_mode():
        if accuracy:
            y = np.load(os.path.join(work, "y.npy"))
            out["accuracy"] = float(np.mean(np.concatenate([qmodel(x[s:s + 500]).argmax(1).numpy()
                                                            for s in range(0, len(x), 500)]) == y))
            out["float_accuracy"] = float(np.mean(np.concatenate([model(x[s:s + 500]).argmax(1).numpy()
                                                                  for s in range(0, len(x), 500)]) == y))
        stimuli = [x[s:s + 1].clone() for s in range(min(latency_stimuli, len(x)))]
        for threads in (1,) if clock == "cpu" else (1, 2):
            torch.set_num_threads(threads)
            _time_calls(qmodel, stimuli[:100], 1, budget_s=5)
            out[f"latency_{threads}"] = _time_calls(qmodel, stimuli, passes, clock=clock)
    return out


def run_peer(args):
    work = args.work
    if args.peer in ("c_float", "c_int8"):
        folder = os.path.join(work, "export_C_float32" if args.peer == "c_float" else "export_C_int8")
        out = _c_peer(folder, args.passes, args.latency_stimuli, args.accuracy, args.clock)
    elif args.peer.startswith("ort_"):
        out = _ort_peer(work, args.peer, args.passes, args.latency_stimuli, args.accuracy, args.clock)
    else:
        out = _torch_peer(work, args.passes, args.latency_stimuli, args.accuracy, args.clock)
    print(json.dumps(out))


def call_peer(args, peer, accuracy):
    cmd = [sys.executable, os.path.abspath(__file__), "--peer", peer, "--work", args.work, "--passes",
           str(args.passes), "--latency-stimuli", str(args.latency_stimuli), "--clock", args.clock]
    cmd += ["--accuracy"] if accuracy else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- report ---------------------------------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default=None, help="an `n2d2 train --model lenet` output folder (default: train one)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs when the script trains (default 10)")
    parser.add_argument("--calibration", type=int, default=1000, help="calibration stimuli (default 1000)")
    parser.add_argument("--stimuli", type=int, default=10000, help="Test stimuli for accuracy (default 10000)")
    parser.add_argument("--latency-stimuli", type=int, default=1000, help="stimuli per timed pass (default 1000)")
    parser.add_argument("--passes", type=int, default=5, help="timed passes per process (default 5)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall clock (default) or the calling thread's CPU time (busy machines; 1 thread only)")
    parser.add_argument("--reuse", action="store_true", help="reuse the exports of an earlier run in --work")
    parser.add_argument("--peer", choices=PEERS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--accuracy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return run_peer(args)

    args.work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="bench_int8_"))
    os.makedirs(args.work, exist_ok=True)
    if args.reuse and os.path.exists(os.path.join(args.work, "info.json")):
        info = json.load(open(os.path.join(args.work, "info.json")))
    else:
        info = prepare(args, args.work)
    print(f"prepared in {info['prepare_s']:.0f} s ({args.work}); integer simulation (FLOAT_MULT, per channel): "
          f"{100 * info['sim_accuracy']:.2f} %, (SINGLE_SHIFT, per layer): {100 * info['sim_shift_accuracy']:.2f} %")
    results = {p: [] for p in PEERS}
    load = []
    for r in range(args.rounds):
        for peer in PEERS:
            load.append(os.getloadavg()[0])
            results[peer].append(call_peer(args, peer, accuracy=r == 0))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{p} {results[p][-1].get('latency_1', float('nan')):.1f}" for p in PEERS))

    import onnxruntime
    import torch

    print()
    print(f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M')} UTC, commit {git_commit()}")
    print(f"Machine: {_cpu_model()}, {os.cpu_count()} CPUs, load average during the rounds "
          f"{min(load):.1f}-{max(load):.1f}")
    print(f"Python {platform.python_version()}, numpy {np.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"torch {torch.__version__}")
    print(f"Network: {info['run']}; {info['stimuli']} MNIST test stimuli for accuracy, calibration "
          f"{info['calibration']} stimuli of {info['calibration_partition']}; latency at batch 1 on "
          f"{args.latency_stimuli} stimuli, best of {args.passes} passes x {args.rounds} rounds, clock: "
          f"{'thread CPU time' if args.clock == 'cpu' else 'wall (monotonic)'}")
    print()
    print("| contender | accuracy (%) | b1 1 thread, best (us) | median (us) | b1 2 threads, best (us) |")
    print("|---|---:|---:|---:|---:|")
    for peer in PEERS:
        rows = [r for r in results[peer] if "error" not in r]
        if not rows:
            print(f"| {LABELS[peer]} | failed: {results[peer][0]['error']} | | | |")
            continue
        acc = rows[0].get("accuracy")
        l1 = [r["latency_1"] for r in rows]
        l2 = [r["latency_2"] for r in rows if "latency_2" in r]
        print(f"| {LABELS[peer]} | {100 * acc:.2f} | {min(l1):.2f} | {statistics.median(l1):.2f} | "
              f"{(f'{min(l2):.2f}' if l2 else '-')} |")
    ours = next((r for r in results["ort_n2d2_qdq"] if "agreement" in r), None)
    if ours:
        print()
        print(f"n2d2 QDQ on onnxruntime vs n2d2's integer simulation (same IntegerNetwork): accuracy "
              f"{100 * ours['accuracy']:.2f} % vs {100 * info['sim_accuracy']:.2f} %, same prediction on "
              f"{100 * ours['agreement']:.2f} % of the stimuli ({ours['disagreements']} differ)")
    torch_row = next((r for r in results["torch_int8"] if "float_accuracy" in r), None)
    if torch_row:
        print(f"PyTorch float32 rebuild of the same graph: {100 * torch_row['float_accuracy']:.2f} % "
              f"(C float32 export: {100 * results['c_float'][0].get('accuracy', float('nan')):.2f} %)")
    print(f"Parameters ({info['weights']} weights, {info['biases']} biases): float32 {info['float_weight_bytes']} "
          f"bytes, int8 weights + int32 biases {info['int8_weight_bytes']} bytes: "
          f"{info['float_weight_bytes'] / info['int8_weight_bytes']:.2f}x smaller (weights alone 4x); "
          "ONNX files: " + ", ".join(f"{p} {results[p][0]['file_bytes']} B" for p in PEERS
                                     if results[p] and "file_bytes" in results[p][0]))
    best = {p: min(r["latency_1"] for r in results[p] if "latency_1" in r) for p in PEERS
            if any("latency_1" in r for r in results[p])}
    if "c_int8" in best and "c_float" in best:
        print(f"C int8 / C float32 (best, 1 thread): {best['c_int8'] / best['c_float']:.2f}x (goal <= 0.6x)")
    if "c_int8" in best and "ort_static_qdq" in best:
        ort_best = min([best["ort_static_qdq"]] + [r["latency_2"] for r in results["ort_static_qdq"]
                                                   if "latency_2" in r])
        print(f"C int8 / onnxruntime quantize_static (best of 1 and 2 threads, {ort_best:.2f} us): "
              f"{best['c_int8'] / ort_best:.2f}x (goal < 1)")


if __name__ == "__main__":
    main()
