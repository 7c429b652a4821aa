"""Shared pieces of the ops' kernel lowering (numpy only: `n2d2.ops` uses them, never `n2d2.codegen`).

An op lowers a forward node for a compiled backend with `OpDef.lower_c(graph, node, training)` /
`lower_cuda(...)`: a geometry dict (shapes and constants baked into its template
`templates/c/ops/<Op>.c.j2`, `templates/cuda/ops/<Op>.cu.j2`), or an `Unsupported` naming why
the node runs on the numpy reference instead. The CUDA launch plan of a node is the op's
`plan_cuda_forward` / `plan_cuda_backward`, written with the launch helpers the CUDA backend
passes in.
"""
import numpy as np

# A kernel uses the thread team only above this many multiply-adds (waking it costs
# microseconds, which small kernels, e.g. every layer of LeNet at batch 1, cannot repay).
PARALLEL_MIN_MACS = 1_000_000
PARALLEL_MIN_ELEMENTS = 200_000
# A stride-1 convolution on a large map reads its input windows in place (no im2col) when at
# least this share of the computed output grid is kept (WO / padded input width), and when
# the wasted columns cost less than an im2col would: the GEMM rows computed for nothing,
# (1 - WO / Wp) * OG, stay under WIDE_MAX_WASTED_ROWS (im2col costs about one GEMM row per
# output pixel), or the image's im2col matrix would outgrow L2 (WIDE_IM2COL_BYTES).
# Measured at b128 (2 threads): 16 channels at 32x32 (waste 0.9 rows) wide 2.4 / 5.4 ms vs
# image 2.9 / 7.0 ms (forward / backward); 32 channels at 16x16 (3.6 rows) wide 2.3 / 5.3 ms
# vs image 2.0 / 4.2 ms; LeNet's conv1 (0.75 rows) is faster wide.
WIDE_MIN_EFFICIENCY = 0.75
# Inference on fewer than SPLIT_MAX_IMAGES images (one thread, per-kernel CPU time, AMD EPYC AVX2):
# wide beats image mode from 0.55 kept up, e.g. LeNet's conv2 (6 -> 16, 14x14, 5x5: 0.71) 9.6 vs
# 16.6 us, 16 -> 32 at 14x14 7x7 (0.57) 67 vs 79 us, 512 -> 512 at 7x7 3x3 pad 1 (0.78) 3.07 vs 3.22 ms.
WIDE_MIN_EFFICIENCY_FEW = 0.5
# ... and pack the whole grid's panels first, then one tiled GEMM (a grid buffer for the junk
# columns), when those stay under this size: LeNet's conv2 8.4 vs 9.6 us, conv1 4.9 vs 5.4 us,
# MobileNet V2's 32 -> 192 1x1 at 28x28 102 vs 122 us (instead of strip by strip)
WIDE_SMALL_BYTES = 128 * 1024
WIDE_MAX_WASTED_ROWS = 2.0
WIDE_IM2COL_BYTES = 1 << 20
# image-mode convolutions with at most this many outputs per group compute their weight gradient
# as dot products along the pixels (see Conv.c.j2, DWNT)
DWNT_MAX_OUTPUTS = 16
SLACK_FLOATS = 64   # readable floats after every buffer (ragged GEMM strips)


class Unsupported:
    """A lowering's answer when the node has no kernel: `reason` says why (the backend records
    it and runs the numpy reference). Test it with isinstance (it is truthy, like a geometry)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = str(reason)

    def __repr__(self):
        return f"Unsupported({self.reason!r})"


class Context(dict):
    """Attribute-style dict for templates (a missing key is undefined, so `is defined` works)."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def nchw(shape):
    """A shape padded / cut to 4 dimensions (N, C, H, W)."""
    s = tuple(shape) + (1,) * (4 - len(shape))
    return s[:4]


def concat_channels(ins):
    """[{C, off}] of inputs concatenated along channels (None if batch / H / W differ)."""
    first = nchw(ins[0])
    out, off = [], 0
    for s in ins:
        s4 = nchw(s)
        if s4[0] != first[0] or s4[2:] != first[2:]:
            return None
        out.append({"C": s4[1], "off": off})
        off += s4[1]
    return out


def shapes(graph, node):
    """([input shapes], [output shapes]) of a node, as tuples."""
    return ([tuple(t.shape) for t in graph.input_types(node)], [tuple(t.shape) for t in graph.output_types(node)])


def flat_inputs(ins):
    """[{S, off}] of inputs laid end to end per sample (S = C*H*W of each)."""
    inputs, off = [], 0
    for s in ins:
        per = int(np.prod(s[1:]))
        inputs.append({"S": per, "off": off})
        off += per
    return inputs


def round16(n):
    return -(-int(n) // 16) * 16


class Scratch:
    """Scratch layout of one C kernel: shared regions, then one private slice per thread.

    Offsets are in floats, 64-byte aligned, each region followed by slack."""

    def __init__(self):
        self.shared = 0
        self.private = 0
        self.offsets = {}

    @staticmethod
    def _size(n):
        return -(-(int(n) + SLACK_FLOATS) // 16) * 16

    def add_shared(self, name, n):
        self.offsets[name] = self.shared
        self.shared += self._size(n)

    def add_private(self, name, n):
        self.offsets[name] = self.private
        self.private += self._size(n)

    def layout(self):
        return Context(self.offsets, SH=self.shared, T=max(self.private, 16))

    @staticmethod
    def floats(layout, nthreads):
        return layout["SH"] + nthreads * layout["T"] if layout else 0


def dense_geometry(n, k, o, inputs, conn=None, kk=1):
    """C geometry of y[n, o] = x[n, k] W[o, k]^T (Fc, or a convolution covering its input)."""
    macs = n * k * o
    g = dict(N=n, K=k, O=o, OLD=round16(o), inputs=inputs, conn=conn, KK=kk, DOT=n <= 4,
             PAR=macs >= PARALLEL_MIN_MACS, PARB=2 * macs >= PARALLEL_MIN_MACS)
    sf, sb = Scratch(), Scratch()
    if len(inputs) > 1:
        sf.add_shared("XG", n * k)
        sb.add_shared("XG", n * k)
        sb.add_shared("DXG", n * k)
    if g["DOT"]:
        if conn is not None:
            sf.add_shared("WM", o * k)
    else:
        sf.add_shared("WT", k * g["OLD"])
    if conn is not None:
        sb.add_shared("WM", o * k)
    sb.add_private("EDGE", o * 32)
    g["sf"], g["sb"] = sf.layout(), sb.layout()
    return g


def images_per_block(n, p, kg, max_cols=1024, max_col_bytes=512 * 1024):
    """Images per im2col block: side by side, small maps fill whole 32-wide GEMM strips. Among
    the block sizes whose im2col matrix stays cache-sized, the one wasting the fewest columns
    of its last strip (ties: the largest)."""
    if p >= 256:
        return 1
    best, best_waste = 1, None
    for nb in range(1, n + 1):
        cols = nb * p
        if cols > max_cols or 4 * kg * cols > max_col_bytes:
            break
        waste = (-cols % 32) / cols
        if best_waste is None or waste <= best_waste + 1e-9:
            best, best_waste = nb, waste
    return best


def kernel_window(graph, node, attrs):
    """(kh, kw, (sy, sx), (py, px), (dy, dx), groups, mapping) of a Conv / Deconv node, or an
    Unsupported when the C kernels do not cover it (negative padding, a connection table with groups)."""
    groups, mapping = attrs.get("groups", 1), attrs.get("mapping")
    (py, px) = attrs["padding"]
    if py < 0 or px < 0:
        return Unsupported(f"negative padding {[py, px]} (a crop)")
    if mapping is not None and groups != 1:
        return Unsupported(f"a connection table with {groups} groups")
    wshape = graph.params[graph.node(node).params["weights"]].shape
    return wshape[2], wshape[3], tuple(attrs["stride"]), (py, px), tuple(attrs["dilation"]), groups, mapping


# -- geometries shared by several ops ------------------------------------------------------------------
def copy_geometry(ins, outs, par=True):
    """Geometry of an op that copies its inputs, laid end to end per sample, into its output
    (Activation, Dropout, Reshape, Concat: templates with one loop per input)."""
    if len(ins) > 1 and concat_channels(ins) is None:
        return Unsupported(f"inputs {[list(s) for s in ins]} differ on batch or H, W")
    n = ins[0][0]
    size = int(np.prod(outs[0]))
    g = dict(N=n, SIZE=size, PER=size // max(n, 1), inputs=flat_inputs(ins))
    if par:
        g["PAR"] = size >= PARALLEL_MIN_ELEMENTS
    return g


def same_shape_geometry(ins, par=True):
    """Geometry of an elementwise op over same-shape inputs (ElemWise, Epilogue, AddN)."""
    if any(tuple(s) != tuple(ins[0]) for s in ins):
        return Unsupported(f"inputs of different shapes {[list(s) for s in ins]} (no broadcasting kernel)")
    n, c = nchw(ins[0])[:2]
    hw = int(np.prod(ins[0][2:])) if len(ins[0]) > 2 else 1   # every axis after the channels (rank 5 too)
    size = n * c * hw
    g = dict(N=n, C=c, HW=hw, SIZE=size)
    if par:
        g["PAR"] = size * len(ins) >= PARALLEL_MIN_ELEMENTS
    return g


def one_input(ins, op):
    """None when the node has one input, else the Unsupported saying the kernel takes one."""
    if len(ins) != 1:
        return Unsupported(f"{op} kernels take one input, the node has {len(ins)} (a concatenation)")
    return None


class CopyLowering:
    """Lowering of the ops that copy their inputs, laid end to end per sample, to their output
    (then apply their fused activation / mask): Activation, Dropout, Reshape, Concat. A mixin
    placed before OpDef in the bases."""

    #: no forward kernel when the single input already is the output (planned in place) and no
    #: activation applies
    copy_in_place = True

    def lower_c(self, graph, node, training):
        return copy_geometry(*shapes(graph, node))

    def lower_cuda(self, graph, node, training):
        return copy_geometry(*shapes(graph, node), par=False)

    def plan_cuda_forward(self, n, g, k):
        single = len(g["inputs"]) == 1
        specs = []
        for i, inp in enumerate(g["inputs"]):
            if n.get("aliased") and n.aliased[i]:   # a Concat input planned inside the output
                continue
            if self.copy_in_place and single and n.act is None and n.x[0].offset == n.y.offset:
                continue
            specs.append(k.elementwise("fwd", g["N"] * inp["S"], inp=i, single=single, PER=g["PER"], **inp))
        return specs

    def plan_cuda_backward(self, n, g, k):
        return [k.elementwise("bwd", g["N"] * inp["S"], inp=i, single=len(g["inputs"]) == 1, PER=g["PER"], **inp)
                for i, inp in enumerate(g["inputs"]) if n.dx[i] is not None]


# -- strided kernels of the ONNX-semantics ops (templates/c/onnx.c.j2) ---------------------------------
def contiguous_strides(shape):
    """Element strides of a C-contiguous tensor of `shape`."""
    out, acc = [], 1
    for d in reversed(tuple(shape)):
        out.append(acc)
        acc *= int(d)
    return out[::-1]


def broadcast_strides(shape, out):
    """Strides that read a contiguous tensor of `shape` at the index of its numpy broadcast to
    `out` (0 along the broadcast axes)."""
    shape = (1,) * (len(out) - len(shape)) + tuple(int(d) for d in shape)
    return [0 if d == 1 and o != 1 else s for d, o, s in zip(shape, out, contiguous_strides(shape))]


def strided_geometry(out, operands, par=True):
    """Geometry of a loop nest over the output `out` (contiguous) reading each operand
    (offset, strides per output axis) at offset + sum(i_k * stride_k): DIMS (the loop extents
    after dropping size-1 axes and merging the axes every operand walks contiguously), OSTR (the
    output strides of the loops), OPS ([{OFF, STR}] per operand), SIZE, PAR."""
    out = tuple(int(d) for d in out)
    lists = [contiguous_strides(out)] + [list(s) for _, s in operands]
    dims, merged = [], [[] for _ in lists]
    for k, d in enumerate(out):
        if d == 1:
            continue
        if dims and all(m[-1] == s[k] * d for m, s in zip(merged, lists)):
            dims[-1] *= d
            for m, s in zip(merged, lists):
                m[-1] = s[k]
        else:
            dims.append(d)
            for m, s in zip(merged, lists):
                m.append(s[k])
    if not dims:
        dims, merged = [1], [[0] for _ in lists]
    size = int(np.prod(out)) if out else 1
    g = dict(DIMS=dims, OSTR=merged[0], OPS=[{"OFF": int(off), "STR": m} for (off, _), m in zip(operands, merged[1:])],
             SIZE=size)
    g["PAR"] = bool(par) and size >= PARALLEL_MIN_ELEMENTS
    return g


class SameShapeLowering:
    """Lowering of the ops whose inputs and output share one shape, computed element by element
    (ElemWise, AddN, Epilogue): one geometry, one elementwise launch per direction. A mixin placed
    before OpDef in the bases."""

    def lower_c(self, graph, node, training):
        return same_shape_geometry(shapes(graph, node)[0])

    def lower_cuda(self, graph, node, training):
        return same_shape_geometry(shapes(graph, node)[0], par=False)

    def plan_cuda_forward(self, n, g, k):
        return [k.elementwise("fwd", g["SIZE"], C=g["C"], HW=g["HW"])]

    def plan_cuda_backward(self, n, g, k):
        return [k.elementwise("bwd", g["SIZE"], C=g["C"], HW=g["HW"])]
