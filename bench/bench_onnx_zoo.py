"""The torchvision classifiers at 224x224 through `DeepNetCell.load_from_ONNX`
against onnxruntime: import time, inference time per batch, relative error and top-1 agreement.

Each architecture (torchvision==0.28.0, installed with --no-deps; its op registrations stubbed)
gets torch's default initialisation with BatchNorm statistics away from the identity, and is
exported once (legacy exporter, opset 17) into --cache. For each backend (numpy, c) the model is
imported, its first run (which compiles) is timed apart, then --repeat runs on the same batch,
the best kept; onnxruntime (CPUExecutionProvider, default threads) runs the same batch. Nodes
that no N2D2 cell represents run as OnnxNode cells: on C kernels where the op has one
(broadcasting elementwise ops, LayerNormalization, Slice, Transpose, Reshape, MatMul, Erf), else on their
numpy reference.

Run from the repository root: `python bench/bench_onnx_zoo.py --models resnet18 squeezenet1_1`
(see --help; every model on both backends takes minutes on a small machine).
"""
import argparse
import os
import platform
import sys
import time
import warnings

import numpy as np
from repo_info import git_commit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import n2d2  # noqa: E402
from n2d2.cells.deepnet_cell import DeepNetCell  # noqa: E402
from n2d2.provider import TensorPlaceholder  # noqa: E402
from tests.test_onnx_torchvision import ARCHITECTURES, IMPORT_ERROR, MODELS, _randomised  # noqa: E402


def export(name, cache, size):
    import torch

    path = os.path.join(cache, f"{name}_{size}.onnx")
    if not os.path.exists(path):
        model = _randomised(ARCHITECTURES[name](MODELS))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(1, 3, size, size),), path + ".tmp", dynamo=False,
                              opset_version=17)
        os.replace(path + ".tmp", path)
    return path


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=sorted(ARCHITECTURES), choices=sorted(ARCHITECTURES))
    parser.add_argument("--backends", nargs="+", default=["numpy", "c"], choices=["numpy", "c"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "n2d2_onnx_zoo"))
    args = parser.parse_args()
    if MODELS is None:
        sys.exit(f"torchvision is not importable ({IMPORT_ERROR}): pip install --no-deps torchvision==0.28.0")
    import onnxruntime as ort

    os.makedirs(args.cache, exist_ok=True)
    print(f"# bench_onnx_zoo: {args.size}x{args.size}, batch {args.batch}, best of {args.repeat}; commit "
          f"{git_commit()}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| model | backend | import s | first run s | run ms | onnxruntime ms | rel. error | same top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    for name in args.models:
        path = export(name, args.cache, args.size)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = session.get_inputs()[0].name
        ref_time, ref = best(lambda: np.concatenate([session.run(None, {feed: x[i:i + 1]})[0]
                                                     for i in range(len(x))]), args.repeat)
        for backend in args.backends:
            t = time.perf_counter()
            provider = n2d2.provider.DataProvider(n2d2.database.Numpy(), [args.size, args.size, 3],
                                                  batch_size=args.batch)
            dn = DeepNetCell.load_from_ONNX(provider, path, backend=backend, generic_ops=True)
            dn.test()
            imported = time.perf_counter() - t

            def run():
                tensor = n2d2.Tensor.from_numpy(x)
                TensorPlaceholder(tensor)
                return dn(tensor).to_numpy().reshape(ref.shape)
            t = time.perf_counter()
            run()
            first = time.perf_counter() - t
            run_time, y = best(run, args.repeat)
            err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
            top1 = bool((y.argmax(1) == ref.argmax(1)).all())
            print(f"| {name} | {backend} | {imported:.1f} | {first:.1f} | {run_time * 1e3:.1f} | "
                  f"{ref_time * 1e3:.1f} | {err:.1e} | {top1} |", flush=True)


if __name__ == "__main__":
    main()
