"""The int8 Conv / Fc kernels of the integer C export (templates/export/int/kernels.c.j2), each path
built with its compiler flags (AVX-512 VNNI, AVX-VNNI, AVX2 with 16-bit products, portable C), on
a hand-made integer network with random weights and inputs at the extremes (-128 / 127 weights,
-128 / 127 or 0 / 255 inputs, saturating outputs): every program's int32 outputs equal the Python
simulation (`IntegerNetwork.run`) bit for bit, in every scaling mode, 8 and 4 bits, signed and
unsigned inputs. The network covers padding, strides, dilation, groups, two-input Conv and Fc (an
unsigned and a signed input: the +128 offset's bias correction on part of the taps), output
positions in the vector lanes (>= 16 positions, rows narrower than 16) and dot products (< 16
positions, Fc with K neither a multiple of 4 nor of 64)."""
import os
import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

from n2d2.codegen.compiler import find_compiler
from n2d2.quantization import SCALING_MODES
from n2d2.quantization.export import generate_files
from n2d2.quantization.integer import approximate, saturation, signed_max, unsigned_max
from n2d2.quantization.ptq import IntegerNetwork

pytestmark = pytest.mark.skipif(shutil.which("make") is None or find_compiler() is None,
                                reason="needs make and a C compiler")

N = 24   # stimuli


def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# (ARCHFLAGS, the path the program reports, the CPU flags it needs to run)
PATHS = [("-march=x86-64-v4 -mavx512vnni", "avx512vnni", {"avx512_vnni", "avx512bw", "avx512dq"}),
         ("-march=x86-64-v3 -mavxvnni", "avxvnni", {"avx_vnni", "avx2"}),
         ("-march=x86-64-v3", "avx2", {"avx2", "bmi2", "fma"}),
         ("-DN2D2_INT_PORTABLE", "portable", set())]


def _runnable(flags):
    import platform

    return platform.machine() in ("x86_64", "AMD64") and flags <= _cpu_flags() if flags else True


def _out_hw(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _node(rng, name, op, inputs, in_shapes, in_signed, nb, mode, out, signed, relu, scales=None, **conv):
    """A Conv / Fc integer node with random weights (extremes included), biases and per-channel scales
    that put the outputs around the n-bit range (some saturate)."""
    wmin, wmax = (-128, 127) if nb == 8 else (-8, 7)
    if op == "Conv":
        kh, kw = conv["kernel"]
        groups = conv.get("groups", 1)
        cin = sum(s[0] for s in in_shapes)
        wshape = (out, cin // groups, kh, kw)
        h, w = in_shapes[0][1:]
        shape = (out, _out_hw(h, kh, conv["stride"][0], conv["padding"][0], conv["dilation"][0]),
                 _out_hw(w, kw, conv["stride"][1], conv["padding"][1], conv["dilation"][1]))
        attrs = {"stride": conv["stride"], "padding": conv["padding"], "dilation": conv["dilation"],
                 "groups": groups, "mapping": None, "sub_sample": (1, 1)}
    else:
        wshape = (out, sum(int(np.prod(s)) for s in in_shapes))
        shape, attrs = (out, 1, 1), {}
    weights = rng.integers(wmin, wmax + 1, size=wshape)
    weights.reshape(out, -1)[:, 0] = wmin
    weights.reshape(out, -1)[:, -1] = wmax
    k = weights[0].size
    in_max = max(2 ** (nb - 1) if s else 2 ** nb - 1 for s in in_signed)
    spread = np.sqrt(k) * (wmax / 1.7) * (in_max / 1.7)          # typical |sum|
    biases = rng.integers(-int(spread), int(spread) + 1, size=out)
    qmax = signed_max(nb) if signed else unsigned_max(nb)
    M = rng.uniform(0.5, 4.0, size=out) * qmax / (3 * spread)
    for channel, value in (scales or {}).items():
        M[channel] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scaling = approximate(M, mode, name)
    bound = int((np.abs(weights).reshape(out, -1).sum(axis=1) * in_max + np.abs(biases)).max())
    assert bound < 2 ** 31
    return {"weights": weights.astype(np.int64), "biases": biases.astype(np.int64), "scaling": scaling,
            "relu": relu, "signed": signed, "Q": qmax, "T": np.ones(out), "acc_bits": 32, "attrs": attrs,
            "name": name, "op": op, "kernel": op, "inputs": inputs, "shape": shape}


def _network(nb, mode, signed_input, seed=0):
    rng = np.random.default_rng(seed)
    inp = {"name": "input", "shape": (2, 13, 37), "signed": signed_input, "Q": 127 if signed_input else 255,
           "range": 1.0}
    shapes, signs, nodes = {"input": inp["shape"]}, {"input": signed_input}, []

    def add(name, op, inputs, out, signed, relu, **conv):
        node = _node(rng, name, op, inputs, [shapes[s] for s in inputs], [signs[s] for s in inputs], nb, mode, out,
                     signed, relu, **conv)
        shapes[name], signs[name] = node["shape"], signed
        nodes.append(node)

    # lanes, rows of 37 positions (two full vectors and a partial one), padding
    add("a", "Conv", ["input"], 8, False, True, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1))
    # lanes, a 5x3 kernel (K = 30: a partial last group of 4 taps), signed output; channel 0 scaled by
    # 2^-9: exact halves (ties, both signs) under FLOAT_MULT
    add("b", "Conv", ["input"], 4, True, False, kernel=(5, 3), stride=(1, 1), padding=(2, 1), dilation=(1, 1),
        scales={0: 2.0 ** -9})
    # two inputs (unsigned, signed), 3 groups, stride 2, dilation 2: lanes on the strided im2col
    add("c", "Conv", ["a", "b"], 6, False, True, kernel=(3, 3), stride=(2, 2), padding=(2, 2), dilation=(2, 2),
        groups=3)
    # 6 positions: dot products; channels 0 and 1 with the shifts the int32 forms leave to int64
    # (DOUBLE_SHIFT 2^-1 + 2^-2: s2 - s1 = 1; a shift past 31)
    add("d", "Conv", ["c"], 10, True, False, kernel=(4, 8), stride=(2, 4), padding=(0, 0), dilation=(1, 1),
        scales={0: 0.75, 1: 1.5 * 2.0 ** -33})
    # 2x2 max pools of an unsigned and a signed tensor (18 outputs a row: vector steps and a scalar rest)
    for name, src in (("pa", "a"), ("pb", "b")):
        c, h, w = shapes[src]
        shapes[name], signs[name] = (c, h // 2, w // 2), signs[src]
        nodes.append({"signed": signs[src], "Q": nodes[-1]["Q"], "T": np.ones(c), "name": name, "op": "Pool",
                      "kernel": "Pool", "inputs": [src], "shape": shapes[name],
                      "attrs": {"pooling": "Max", "pool": (2, 2), "stride": (2, 2), "padding": (0, 0), "mapping": None,
                                "activation": None}})
    # lanes on rows of 13 (< 16) positions, a 3x25 kernel
    add("k", "Conv", ["input"], 3, False, True, kernel=(3, 25), stride=(1, 1), padding=(0, 0), dilation=(1, 1))
    # three inputs (signed 60, unsigned 798, signed 432): K = 1290
    add("e", "Fc", ["d", "c", "pb"], 7, True, False)
    add("f", "Fc", ["e", "pa", "k"], 5, False, True)           # K = 7 + 864 + 429
    add("g", "Fc", ["f"], 3, True, False)
    return IntegerNetwork("kernels", nb, mode, inp, nodes, "g", {})


def _inputs(net, rng):
    lo, hi = saturation(net.nb_bits, net.input["signed"])
    x = rng.integers(lo, hi + 1, size=(N,) + tuple(net.input["shape"]))
    x[:, :, ::3, ::2] = hi
    x[:, :, 1::4, 1::3] = lo
    return x


def _write(net, folder, xq):
    files = generate_files(net, "kernels", "test", "export_c")
    files.pop("_arena_bytes")
    files["stimuli/inputs.bin"] = xq.astype(("<i1" if net.input["signed"] else "<u1")).tobytes()
    files["stimuli/labels.bin"] = np.full(len(xq), -1, "<i4").tobytes()
    for rel, text in files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)


def _build_and_compare(folder, net, xq, archflags, expect_path, binary="bin/network_test"):
    r = subprocess.run(["make", "-s", f"ARCHFLAGS={archflags}", f"BIN={binary}"], cwd=folder, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"{archflags}:\n{r.stdout}\n{r.stderr}"
    r = subprocess.run([os.path.join(folder, binary), "-q", "-d", str(len(xq)), "out.bin"], cwd=folder,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"Integer kernels: {expect_path}" in r.stdout, (archflags, r.stdout)
    out = np.fromfile(os.path.join(folder, "out.bin"), dtype="<i4").reshape(len(xq), -1)
    ref = net.run(xq).reshape(len(xq), -1)
    assert np.array_equal(out, ref), (archflags, int(np.sum(out != ref)))


@pytest.mark.parametrize("archflags,path,needs", PATHS, ids=[p[1] for p in PATHS])
def test_every_kernel_path_equals_the_simulation(tmp_path, archflags, path, needs):
    if not _runnable(needs):
        pytest.skip(f"the CPU cannot run the {path} path")
    rng = np.random.default_rng(1)
    # every scaling mode where the requantization has its own vector code (AVX-512); elsewhere it is the C loop
    cases = [(8, mode, True) for mode in SCALING_MODES] if path == "avx512vnni" else [(8, "DOUBLE_SHIFT", True)]
    cases += [(8, "SINGLE_SHIFT", False), (4, "FIXED_MULT32", True), (4, "FLOAT_MULT", False)]
    for i, (nb, mode, signed) in enumerate(cases):
        net = _network(nb, mode, signed, seed=i)
        xq = _inputs(net, rng)
        outputs = net.run(xq, keep_all=True)
        # outputs saturate at both ends somewhere, and most do not (the corner cases are exercised)
        ends = {"hi": 0, "lo": 0, "inside": 0}
        for node in net.nodes:
            lo, hi = saturation(nb, node["signed"])
            v = outputs[node["name"]]
            ends["hi"] += int((v == hi).sum())
            ends["lo"] += int((v == lo).sum()) if node["signed"] else 0
            ends["inside"] += int(((v > lo) & (v < hi)).sum())
        assert min(ends.values()) > 0 and ends["inside"] > ends["hi"] + ends["lo"], (nb, mode, ends)
        folder = str(tmp_path / f"{nb}_{mode}_{signed}")
        _write(net, folder, xq)
        _build_and_compare(folder, net, xq, archflags, path)


def test_kernels_are_used_and_int4_weights_are_packed(tmp_path):
    """8 bits: int8 [O][K] weights with slack, +128 bias correction where an input is signed; 4 bits:
    two weights per byte, rows of K rounded up to even; the 4-bit weights.h is about half the 8-bit one."""
    net8, net4 = _network(8, "SINGLE_SHIFT", True), _network(4, "SINGLE_SHIFT", True)
    w8 = generate_files(net8, "kernels", "test", "export_c")["include/weights.h"]
    w4 = generate_files(net4, "kernels", "test", "export_c")["include/weights.h"]
    source = generate_files(net8, "kernels", "test", "export_c")["src/network.c"]
    assert source.count("n2d2_gemm_lanes(col") == 4 and source.count("n2d2_dot_rows(") >= 5
    assert source.count("_mm_max_epu8(a, b)") == 2
    for node in (n for n in net4.nodes if "weights" in n):
        o, k = node["weights"].shape[0], node["weights"][0].size
        m = re.search(r"static const uint8_t n\d+_%s_w\[(\d+)\]" % node["name"], w4)
        assert m and int(m.group(1)) == o * (k + k % 2) // 2 + 16, node["name"]
    for node in (n for n in net8.nodes if "weights" in n):
        m = re.search(r"static const int8_t n\d+_%s_w\[(\d+)\]" % node["name"], w8)
        assert m and int(m.group(1)) == node["weights"].size + 4, node["name"]

    def array_bytes(text):
        return sum(len(m.split(",")) - 1 for m in re.findall(r"_w\[\d+\][^{]*\{(.*?)\};", text, re.S))

    assert array_bytes(w4) <= 0.55 * array_bytes(w8)
    # the bias correction: -128 x the weights over the signed input's taps (node a: the signed input)
    a = net8.nodes[0]
    b = re.search(r"static const int32_t n0_a_b\[\d+\][^{]*\{(.*?)\};", w8, re.S).group(1)
    values = np.array([int(v) for v in b.replace("\n", "").split(",") if v.strip()])
    assert np.array_equal(values, a["biases"] - 128 * a["weights"].reshape(len(values), -1).sum(axis=1))


@pytest.mark.parametrize("archflags,path,needs", [PATHS[0], PATHS[2]], ids=["avx512vnni", "avx2"])
def test_kernels_run_clean_under_address_sanitizer(tmp_path, archflags, path, needs):
    """The vector kernels' reads and writes past a row (im2col, pools, unpacking) stay inside their
    buffers: `make asan` (ASan + UBSan, the same ARCHFLAGS) on a signed 8-bit and a 4-bit network."""
    from tests.test_export import _asan_available

    if not _runnable(needs) or not _asan_available():
        pytest.skip(f"needs a CPU with the {path} path and a working AddressSanitizer")
    for nb, mode in ((8, "FLOAT_MULT"), (4, "DOUBLE_SHIFT")):
        net = _network(nb, mode, True, seed=5)
        xq = _inputs(net, np.random.default_rng(5))
        folder = str(tmp_path / f"{nb}")
        _write(net, folder, xq)
        r = subprocess.run(["make", "-s", "asan", f"ARCHFLAGS={archflags}"], cwd=folder, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["./bin/network_test_asan", "-q", "-d", str(len(xq)), "out.bin"], cwd=folder,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and f"Integer kernels: {path}" in r.stdout, r.stderr
        out = np.fromfile(os.path.join(folder, "out.bin"), dtype="<i4").reshape(len(xq), -1)
        assert np.array_equal(out, net.run(xq).reshape(len(xq), -1))
