"""ONNX import time of a large file: VGG-11 (torchvision's layout, ~133M parameters, ~531 MB)
exported by torch to a temporary folder, then imported with DeepNetCell.load_from_ONNX.

Usage: python bench/bench_onnx_import.py [--rounds 3] [--batch 1] [--profile] [--keep DIR]
Needs torch and onnx (the file is never written inside the repository)."""
import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def vgg11():
    """torchvision's vgg11 (no batch norm), written out: torchvision is not a dependency."""
    import torch.nn as nn

    layers, c = [], 3
    for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(1),
                         nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
                         nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, 1000))


def export(path):
    import torch

    torch.manual_seed(0)
    model = vgg11().eval()
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), path, opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}})


def import_once(path, batch=1):
    import n2d2
    from n2d2.cells.deepnet_cell import DeepNetCell

    provider = n2d2.provider.DataProvider(n2d2.database.Numpy(), [224, 224, 3], batch_size=batch)
    t0 = time.perf_counter()
    dn = DeepNetCell.load_from_ONNX(provider, path, backend="numpy")
    return time.perf_counter() - t0, dn


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="the provider's batch size")
    ap.add_argument("--profile", action="store_true", help="print the top cumulative-time entries")
    ap.add_argument("--keep", help="folder to keep (and reuse) the exported file in")
    args = ap.parse_args()
    folder = args.keep or tempfile.mkdtemp(prefix="n2d2-vgg11-")
    path = os.path.join(folder, "vgg11.onnx")
    if not os.path.exists(path):
        t0 = time.perf_counter()
        export(path)
        print(f"exported {path} in {time.perf_counter() - t0:.1f} s")
    size = os.path.getsize(path)
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        import_once(path, args.batch)
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(45)
    times = []
    for _ in range(args.rounds):
        dt, dn = import_once(path, args.batch)
        times.append(dt)
        del dn
    print("RESULTS")
    print(f"file: VGG-11, {size / 1e6:.0f} MB, input {args.batch}x3x224x224")
    print(f"load_from_ONNX: best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s "
          f"over {len(times)} rounds")
    if not args.keep:
        os.remove(path)
        os.rmdir(folder)


if __name__ == "__main__":
    main()
