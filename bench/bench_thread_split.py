"""How evenly a thread team shares each convolution of an ONNX model, computed from the schedule its
C lowering implies (no timing: usable on a loaded machine, where two threads cannot be timed).

For every Conv node of the compiled inference program, the work units the kernel hands out (the
strips of a wide convolution, the tiles of a packed-whole or image-mode GEMM, whole images when the
batch is large) are costed in vector lanes x rows x K (the lanes a tile computes: a ragged last
strip costs the vectors n2d2_tile_ragged uses), then dealt to `--threads` equal-speed threads as
the kernel deals them: `schedule(dynamic, c)` chunks to whichever thread is free first,
`schedule(static)` in contiguous blocks, a packed-whole wide GEMM in K passes (gemm(team=...)) in
equal-cost ranges of its tiles, the same in every pass; other GEMMs in K passes (KC) have a barrier
per pass. Per node: the largest
thread's work over the mean (1.00 = even), and the work lost to idle threads in ms at `--gmacs`.

    python bench/bench_thread_split.py MODEL.onnx [--batch 1] [--threads 2] [--avx2]
"""
import argparse
import heapq
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def lanes(nv, mr, vl):
    """Lanes a tile computes for a strip of nv <= 2 VL columns (see n2d2_tile_ragged)."""
    if vl == 16 and mr == 8 and (nv <= 8 or 16 < nv <= 24):
        return 8 if nv <= 8 else 24
    return vl if nv <= vl else 2 * vl


def deal_dynamic(costs, threads, chunk):
    """Chunks of `chunk` consecutive units to the first free thread: each thread's total."""
    load = [(0.0, t) for t in range(threads)]
    for i in range(0, len(costs), chunk):
        t0, t = heapq.heappop(load)
        heapq.heappush(load, (t0 + sum(costs[i:i + chunk]), t))
    return [w for w, _ in sorted(load, key=lambda x: x[1])]


def deal_static(costs, threads):
    """OpenMP's schedule(static) without a chunk: contiguous blocks of ceil(n / T) units."""
    n = len(costs)
    q, r = divmod(n, threads)
    out, i = [], 0
    for t in range(threads):
        k = q + (1 if t < r else 0)
        out.append(sum(costs[i:i + k]))
        i += k
    return out


def deal_ranges(costs, threads):
    """gemm(team=...)'s deal: unit u goes to the thread whose equal share of the total cost holds u's start."""
    total, s, out = sum(costs), 0.0, [0.0] * threads
    for c in costs:
        out[min(threads - 1, int(s * threads / total))] += c
        s += c
    return out


def conv_shares(g, threads, vl, mr_max):
    """(the team's time, the mean thread's work) in MAC lanes for one convolution's geometry g: the
    time is the largest thread's work (summed over the passes when each pass ends in a barrier);
    None when the kernel does not use the team."""
    nr = 2 * vl
    mode = g.get("MODE")
    og, kg, n = g["OG"], g["KG"], g["N"]
    rows = [min(mr_max, og - i) for i in range(0, og, mr_max)]
    if not g.get("PAR"):
        return None
    if not g.get("SPLIT"):
        per_image = float(g["O"] * g["P"] * kg)
        share = deal_static([per_image] * (n * g["G"]), threads)
        return max(share), sum(share) / threads
    npix = g["P"] if (mode == "image" or g.get("GATHER")) else g["LW"]
    strips = [min(nr, npix - j) for j in range(0, npix, nr)]
    if mode == "wide" and not g["SMALL"]:
        share = deal_dynamic([sum(r * lanes(nv, r, vl) * kg for r in rows) for nv in strips], threads, 1)
        return max(share), sum(share) / threads
    if mode in ("wide", "image"):
        kc = g.get("KC") or kg
        rows_outer = og > npix if mode == "wide" else g.get("ROWS_OUTER")
        pairs = [(r, nv) for r in rows for nv in strips] if rows_outer else [(r, nv) for nv in strips for r in rows]
        if mode == "wide" and g.get("KC"):   # gemm(team=...): fixed equal-cost ranges, no barrier between passes
            share = deal_ranges([r * lanes(nv, r, vl) * kg for r, nv in pairs], threads)
            return max(share), sum(share) / threads
        wall = mean = 0.0
        for k0 in range(0, kg, kc):
            k = min(kc, kg - k0)
            share = deal_dynamic([r * lanes(nv, r, vl) * k for r, nv in pairs], threads, 2)
            wall, mean = wall + max(share), mean + sum(share) / threads   # a barrier per pass
        return wall, mean
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--avx2", action="store_true", help="costs of the AVX2 build (VL 8, MR 6)")
    ap.add_argument("--gmacs", type=float, default=50.0, help="MAC lanes per ns of one thread, for the ms column")
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    import numpy as np

    import n2d2
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.provider import TensorPlaceholder

    provider = n2d2.provider.DataProvider(n2d2.database.Numpy(), [224, 224, 3], batch_size=args.batch)
    dn = DeepNetCell.load_from_ONNX(provider, args.model, backend="c", generic_ops=True)
    dn.test()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
    tensor = n2d2.Tensor.from_numpy(x)
    TensorPlaceholder(tensor)
    dn(tensor)
    programs = [c for key, p in dn._programs.items() if key[0] == "inference" for c in getattr(p, "programs", [p._c])]
    vl, mr = (8, 6) if args.avx2 else (16, 8)
    print(f"{os.path.basename(args.model)} batch {args.batch}, {args.threads} threads, "
          f"{'AVX2' if args.avx2 else 'AVX-512'} tiles: per-thread work from the schedule")
    print("| node | mode | strips | max / mean | idle ms |\n|---|---|---:|---:|---:|")
    sum_max = sum_mean = 0.0
    for p in programs:
        for node, g in p.geometry.items():
            if p.graph.op(node) != "Conv":
                continue
            shares = conv_shares(g, args.threads, vl, mr)
            if shares is None:
                continue
            wall, mean = shares
            sum_max, sum_mean = sum_max + wall, sum_mean + mean
            npix = g["P"]
            flags = "".join(f" {k}" for k in ("SPLIT", "SMALL", "KC") if g.get(k))
            print(f"| {node[:48]} | {g['MODE']}{flags} | {-(-npix // (2 * vl))} | {wall / mean:.3f} | "
                  f"{(wall - mean) / args.gmacs / 1e6:.3f} |")
    print(f"all convolutions: sum of the team's times / sum of the mean shares = {sum_max / sum_mean:.3f} "
          f"({(sum_max - sum_mean) / args.gmacs / 1e6:.2f} ms of {sum_mean / args.gmacs / 1e6:.2f} ms idle)")


if __name__ == "__main__":
    main()
