"""The C backend: one C translation unit per graph, built by gcc, run over a planned arena.

Each node whose op has a C template (`templates/c/ops/<Op>.c.j2`) and whose attributes the
template supports becomes a kernel function with its shapes baked in; the others run on the
numpy reference over the same arena views (the fallback). A `Grad` node runs where its forward
node ran. Consecutive C nodes of one phase are called through one exported segment function,
so a phase costs one ctypes call per C segment. `Update` nodes update the parameters with the
solvers' own state: `SGD` through a fused compiled pass (`_sgd_in_c`), other solvers in Python
on the arena's gradient views.

Kernels: convolutions and fully connected layers are GEMMs on a register-tiled micro-kernel
(templates/c/runtime.c.j2, gemm.c.j2) with bias and activation fused into the tile store; how a
convolution is lowered (one GEMM over the batch, im2col blocks of images, in-place windows for
stride 1, direct loops for depthwise) is decided per node from its shapes (`_conv_geometry`).
Kernels above a work threshold use the OpenMP team (`if` by construction: small ones never wake
it); `_ThreadTuner` picks, from measured step times, the team or one thread (a shared machine).

Memory: the arena holds every planned tensor (`n2d2.ir.planner`); kernels also get a scratch
buffer (im2col matrices, transposed weights, per-thread partial gradients), sized for the
largest kernel, with a private slice per thread. Both end with slack so that the GEMM may read
a ragged last strip of a row past its end.

Profiling: with `N2D2_PROFILE=1` in the environment (or `profile=True`), every kernel's wall
time is accumulated (`N2D2_PROFILE=cpu`: the calling thread's CPU time, steadier on a loaded
machine with one thread); `CProgram.profile()` returns it per node and `print_profile()` prints a
table (also printed at exit).
"""
import atexit
import ctypes
import os
import time

import numpy as np

from n2d2.backend import array_module
from n2d2.codegen import compiler
from n2d2.codegen.kernel_data import Buf, forward_context, run_reference
from n2d2.codegen.kernel_data import Context as _Context
from n2d2.codegen.kernel_data import activation_ok as _activation_ok
from n2d2.codegen.kernel_data import concat_channels as _concat_channels
from n2d2.codegen.kernel_data import nchw as _nchw
from n2d2.codegen.render import environment, render, template_exists
from n2d2.ir import ops as op_registry
from n2d2.ir import planner
from n2d2.ir.types import GraphError
from n2d2.names import c_identifier

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
WIDE_MAX_WASTED_ROWS = 2.0
WIDE_IM2COL_BYTES = 1 << 20
_SLACK_FLOATS = 64   # readable floats after every buffer (ragged GEMM strips)


class _Binder:
    """The pointers one kernel reads (arena tensors, parameters, aux buffers), named `b[i]` in
    its body: the body then depends on shapes and attributes only, so nodes of the same
    geometry share one compiled function, called with their own pointers."""

    def __init__(self):
        self.exprs = []

    def __call__(self, expr):
        if expr not in self.exprs:
            self.exprs.append(expr)
        return f"b[{self.exprs.index(expr)}]"


class _Scratch:
    """Scratch layout of one kernel: shared regions, then one private slice per thread.

    Offsets are in floats, 64-byte aligned, each region followed by slack."""

    def __init__(self):
        self.shared = 0
        self.private = 0
        self.offsets = {}

    @staticmethod
    def _size(n):
        return -(-(int(n) + _SLACK_FLOATS) // 16) * 16

    def add_shared(self, name, n):
        self.offsets[name] = self.shared
        self.shared += self._size(n)

    def add_private(self, name, n):
        self.offsets[name] = self.private
        self.private += self._size(n)

    def layout(self):
        return _Context(self.offsets, SH=self.shared, T=max(self.private, 16))

    @staticmethod
    def floats(layout, nthreads):
        return layout["SH"] + nthreads * layout["T"] if layout else 0


def _round16(n):
    return -(-int(n) // 16) * 16


# -- per-op geometry and support -------------------------------------------------------------------
def _dense_geometry(n, k, o, inputs, conn=None, kk=1):
    """Geometry of y[n, o] = x[n, k] W[o, k]^T (Fc, or a convolution covering its input)."""
    macs = n * k * o
    g = dict(N=n, K=k, O=o, OLD=_round16(o), inputs=inputs, conn=conn, KK=kk, DOT=n <= 4,
             PAR=macs >= PARALLEL_MIN_MACS, PARB=2 * macs >= PARALLEL_MIN_MACS)
    sf, sb = _Scratch(), _Scratch()
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


def _images_per_block(n, p, kg, max_cols=1024, max_col_bytes=512 * 1024):
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


def _kernel_window(graph, node, attrs):
    """(kh, kw, (sy, sx), (py, px), (dy, dx), groups, mapping) of a Conv / Deconv node, or None
    when the C kernels do not cover it (negative padding, a connection table with groups)."""
    groups, mapping = attrs.get("groups", 1), attrs.get("mapping")
    (py, px) = attrs["padding"]
    if py < 0 or px < 0 or (mapping is not None and groups != 1):
        return None
    wshape = graph.params[graph.node(node).params["weights"]].shape
    return wshape[2], wshape[3], tuple(attrs["stride"]), (py, px), tuple(attrs["dilation"]), groups, mapping


def _conv_geometry(graph, node, attrs, ins, outs):
    if tuple(attrs.get("sub_sample", (1, 1))) != (1, 1):
        return None
    chans = _concat_channels(ins)
    if chans is None:
        return None
    n, _, h, w = ins[0]
    c = sum(ch["C"] for ch in chans)
    _, o, ho, wo = outs[0]
    window = _kernel_window(graph, node, attrs)
    if window is None:
        return None
    kh, kw, (sy, sx), (py, px), (dy, dx), groups, mapping = window
    conn = None if mapping is None else np.asarray(mapping, dtype=bool).astype(int).tolist()
    p = ho * wo
    if p == 1 and h == kh and w == kw and py == 0 and px == 0 and groups == 1:
        g = _dense_geometry(n, c * kh * kw, o, [{"K": ch["C"] * h * w, "off": ch["off"] * h * w} for ch in chans],
                            conn, kh * kw)
        g.update(MODE="fc")
        return g
    cg, og = c // groups, o // groups
    kg = cg * kh * kw
    macs = n * o * p * kg
    nb = _images_per_block(n, p, kg)
    nblk = -(-n // nb)
    g = dict(N=n, C=c, H=h, W=w, O=o, HO=ho, WO=wo, KH=kh, KW=kw, SY=sy, SX=sx, PY=py, PX=px, DY=dy, DX=dx,
             G=groups, CG=cg, OG=og, P=p, KG=kg, NB=nb, NBLK=nblk, CLD=_round16(nb * p), conn=conn, inputs=chans,
             VALID=(py == 0 and px == 0), PAR=nblk >= 2 and macs >= PARALLEL_MIN_MACS,
             PARB=nblk >= 2 and 2 * macs >= PARALLEL_MIN_MACS)
    sf, sb = _Scratch(), _Scratch()
    hp, wp = h + 2 * py, w + 2 * px
    # the input gradient of a wide convolution is the wide convolution of dz, padded by the
    # dilated kernel extent minus the padding, with the flipped kernel (needs that padding >= 0)
    pqy, pqx = (kh - 1) * dy - py, (kw - 1) * dx - px
    wide_pays = (1 - wo / wp) * og <= WIDE_MAX_WASTED_ROWS or 4 * kg * p > WIDE_IM2COL_BYTES
    if (sy, sx) == (1, 1) and nb == 1 and wo / wp >= WIDE_MIN_EFFICIENCY and wide_pays \
            and not (groups > 1 and groups == c == o) and pqy >= 0 and pqx >= 0:
        # implicit im2col: the GEMM reads shifted windows of the (padded) input planes in place
        lw = ho * wp
        hq, wq = h + (kh - 1) * dy, w + (kw - 1) * dx
        g.update(MODE="wide", Hp=hp, Wp=wp, PS=hp * wp, LW=lw, LWD=-(-lw // 32) * 32, LWK=_round16(lw),
                 PADDED=py > 0 or px > 0, READ_PAST=(kw - 1) * dx + 64,
                 Hq=hq, Wq=wq, PSQ=hq * wq, PQY=pqy, PQX=pqx, LWX=h * wq, LWXD=-(-(h * wq) // 32) * 32)
        plane_floats = cg * hp * wp + 2 * wp + 64
        if conn is not None:
            sf.add_shared("WM", o * kg)
            sb.add_shared("WM", o * kg)
        sf.add_private("CW", og * g["LWD"])
        if g["PADDED"]:
            sf.add_private("XP", plane_floats)
            sb.add_private("XP", plane_floats)
        sb.add_shared("WF", o * kg)
        sb.add_private("DZW", o * g["LWD"])
        sb.add_private("DZQ", og * hq * wq + 2 * wq + 64)
        sb.add_private("CWX", cg * g["LWXD"])
        sb.add_private("DWP", 16 * o * kg)
        sb.add_private("DBP", o)
        sb.add_private("DUMMY", h * w)
    elif groups > 1 and groups == c == o:
        g["MODE"] = "direct"
        g["PAR"] = g["PARB"] = n >= 2 and macs >= PARALLEL_MIN_MACS
        sb.add_private("DUMMY", h * w)
    else:
        # padded convolutions copy their inputs into zero-padded planes first (when every
        # window stays inside them), so that im2col / col2im run without bounds checks
        planes = (py > 0 or px > 0) and (ho - 1) * sy + (kh - 1) * dy < hp and (wo - 1) * sx + (kw - 1) * dx < wp
        g.update(MODE="image", PLANES=planes, Hp=hp, Wp=wp, PS=hp * wp)
        if conn is not None:
            sf.add_shared("WM", o * kg)
            sb.add_shared("WM", o * kg)
        sf.add_private("COL", kg * g["CLD"])
        if nb > 1:
            sf.add_private("YB", og * g["CLD"])
        sb.add_private("COL", kg * g["CLD"])
        sb.add_private("DZB", o * g["CLD"])
        sb.add_private("DZT", nb * p * o)
        sb.add_private("DWT", o * kg)
        sb.add_private("DBP", o)
        sb.add_private("DUMMY", h * w)
        if planes:
            sf.add_private("XP", cg * nb * hp * wp)
            sb.add_private("XP", cg * nb * hp * wp)
            sb.add_private("DXP", cg * nb * hp * wp)
    g["sf"], g["sb"] = sf.layout(), sb.layout()
    return g


def _deconv_geometry(graph, node, attrs, ins, outs):
    """A transposed convolution as the convolution whose backward-data pass it is (the roles of
    input and output swapped), in the geometry of `_conv_geometry`'s image mode."""
    if len(ins) != 1:
        return None
    n, c_in, h, w = ins[0]
    _, c_out, ho, wo = outs[0]
    window = _kernel_window(graph, node, attrs)
    if window is None:
        return None
    kh, kw, (sy, sx), (py, px), (dy, dx), groups, mapping = window
    conn = None if mapping is None else np.asarray(mapping, dtype=bool).T.astype(int).tolist()
    cg, og = c_out // groups, c_in // groups
    p = h * w
    kg = cg * kh * kw
    macs = n * c_in * p * kg
    nb = _images_per_block(n, p, kg)
    nblk = -(-n // nb)
    g = dict(N=n, C=c_out, H=ho, W=wo, O=c_in, HO=h, WO=w, KH=kh, KW=kw, SY=sy, SX=sx, PY=py, PX=px, DY=dy, DX=dx,
             G=groups, CG=cg, OG=og, P=p, KG=kg, NB=nb, NBLK=nblk, CLD=_round16(nb * p), conn=conn,
             inputs=[{"C": c_out, "off": 0}], VALID=(py == 0 and px == 0), MODE="image",
             PAR=nblk >= 2 and macs >= PARALLEL_MIN_MACS, PARB=nblk >= 2 and 2 * macs >= PARALLEL_MIN_MACS)
    sf, sb = _Scratch(), _Scratch()
    for sc in (sf, sb):
        if conn is not None:
            sc.add_shared("WM", c_in * kg)
        sc.add_private("COL", kg * g["CLD"])
        sc.add_private("XB", c_in * g["CLD"])
    sb.add_private("YB", og * g["CLD"])
    sb.add_private("DWP", 16 * c_in * kg)
    sb.add_private("DBP", c_out)
    g["sf"], g["sb"] = sf.layout(), sb.layout()
    return g


def _geometry(graph, node, training):
    """Geometry dict of a forward node for its C template, or None when it has no C kernel."""
    op = graph.op(node)
    attrs = graph.attrs(node)
    in_types = graph.input_types(node)
    ins = [t.shape for t in in_types]
    outs = [t.shape for t in graph.output_types(node)]
    if not _activation_ok(attrs.get("activation")) or any(t.dtype != "float32" for t in in_types):
        return None
    if attrs.get("weight_quantizer") is not None:   # fake-quantized weights: the numpy reference runs it
        return None
    if any(t.dtype != "float32" for t in graph.output_types(node)):
        return None
    for role, pname in graph.node(node).params.items():
        a = graph.params[pname].array
        if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous):
            return None
    if op == "Conv":
        return _conv_geometry(graph, node, attrs, ins, outs)
    if op == "Deconv":
        return _deconv_geometry(graph, node, attrs, ins, outs)
    if op == "Fc":
        n = ins[0][0]
        inputs, off = [], 0
        for s in ins:
            k = int(np.prod(s[1:]))
            inputs.append({"K": k, "off": off})
            off += k
        return _dense_geometry(n, off, outs[0][1], inputs)
    if op == "Pool":
        if len(ins) != 1 or len(ins[0]) != 4:
            return None
        n, c, h, w = ins[0]
        (kh, kw), (sy, sx), (py, px) = attrs["pool"], attrs["stride"], attrs["padding"]
        ho, wo = outs[0][2], outs[0][3]
        mapping = attrs.get("mapping")
        conn = None if mapping is None else np.asarray(mapping, dtype=bool)
        fits = py == 0 and px == 0 and (ho - 1) * sy + kh <= h and (wo - 1) * sx + kw <= w
        # TILED: the windows tile the input exactly (each input pixel in exactly one window)
        tiled = fits and (sy, sx) == (kh, kw) and ho * kh == h and wo * kw == w
        g = dict(N=n, C=c, O=outs[0][1], H=h, W=w, HO=ho, WO=wo, KH=kh, KW=kw, SY=sy, SX=sx, PY=py, PX=px,
                 MAX=attrs["pooling"] == "Max", FITS=fits, TILED=tiled, PAR=n * c * h * w >= PARALLEL_MIN_ELEMENTS,
                 RW=(wo - 1) * sx + kw)
        if conn is not None:
            g["links"] = [[c_ for c_ in range(c) if conn[c_, o]] for o in range(conn.shape[1])]
            g["conn"] = conn.astype(int).tolist()
        else:
            g["links"] = None
        return g
    if op in ("Activation", "Dropout", "Reshape", "Concat"):
        chans = _concat_channels(ins) if len(ins) > 1 else [{"C": _nchw(ins[0])[1], "off": 0}]
        if chans is None:
            return None
        n = ins[0][0]
        size = int(np.prod(outs[0]))
        inputs, off = [], 0
        for s in ins:
            per = int(np.prod(s[1:]))
            inputs.append({"S": per, "off": off})
            off += per
        return dict(N=n, SIZE=size, PER=size // max(n, 1), inputs=inputs, PAR=size >= PARALLEL_MIN_ELEMENTS)
    c_geometry = getattr(op_registry.get(op, node=node), "c_geometry", None)
    if c_geometry is not None:   # an op that states its own C geometry (n2d2/ops/lrn.py)
        return c_geometry(attrs, ins, outs)
    if len(ins) != 1 and op not in ("ElemWise", "AddN", "Epilogue"):
        return None
    if op == "Softmax":
        n, c, h, w = _nchw(ins[0])
        return dict(N=n, C=c, HW=h * w, GS=attrs.get("group_size", 0) or c)
    if op == "BatchNorm":
        n, c, h, w = _nchw(ins[0])
        train = training and attrs["momentum"] != 0.0
        return dict(N=n, C=c, HW=h * w, M=n * h * w, TRAIN=train, PAR=n * c * h * w >= PARALLEL_MIN_ELEMENTS)
    if op in ("ElemWise", "Epilogue", "AddN"):
        n, c, h, w = _nchw(ins[0])
        if any(tuple(s) != tuple(ins[0]) for s in ins):
            return None
        if op == "Epilogue" and any(st[0] == "activation" and not _activation_ok(st[1]) for st in attrs["steps"]):
            return None
        size = n * c * h * w
        return dict(N=n, C=c, HW=h * w, SIZE=size, PAR=size * len(ins) >= PARALLEL_MIN_ELEMENTS)
    if op == "Padding":
        n, c, h, w = ins[0]
        return dict(N=n, C=c, H=h, W=w, HO=outs[0][2], WO=outs[0][3], T=attrs["top"], L=attrs["left"])
    if op == "Transpose":
        if len(ins[0]) != 4:
            return None
        from n2d2.ops import transpose as transpose_ops

        axes = transpose_ops.numpy_axes(attrs["perm"])
        shape = tuple(ins[0])
        strides = [int(np.prod(shape[a + 1:])) for a in range(4)]
        return dict(IN=shape, OUT=tuple(outs[0]), ISTR=[strides[a] for a in axes], SIZE=int(np.prod(shape)))
    if op == "Resize":
        from n2d2.ops import resize as resize_ops

        n, c, h, w = ins[0]
        ho, wo = attrs["height"], attrs["width"]
        align = attrs.get("align_corners", True)
        taps = []
        for size_out, size_in in ((ho, h), (wo, w)):
            a = resize_ops.interpolation_matrix(size_out, size_in, attrs["mode"], align)
            rows = []
            for r in range(size_out):
                nz = np.nonzero(a[r])[0].tolist()
                if len(nz) > 2:
                    return None
                nz = (nz + [nz[-1] if nz else 0])[:2] if nz else [0, 0]
                wts = [float(a[r, nz[0]]), float(a[r, nz[1]])]
                if nz[1] == nz[0]:   # one tap: two halves (exact), not w * x + 0 * x (Inf * 0 is NaN)
                    wts = [wts[0] / 2, wts[0] / 2]
                rows.append((nz[0], nz[1], wts[0], wts[1]))
            taps.append(rows)
        return dict(N=n, C=c, H=h, W=w, HO=ho, WO=wo, TH=taps[0], TW=taps[1])
    if op == "Scaling":
        scaling = attrs["scaling"]
        if type(scaling).__name__ != "FloatingPointScaling":
            return None
        n, c, h, w = _nchw(ins[0])
        args = scaling._args
        return dict(N=n, C=c, HW=h * w, S=[float(v) for v in args["scaling_per_output"]],
                    CLIP=[float(v) for v in args["clipping"]] if args["is_clipped"] else None)
    return None


class CProgram:
    """A graph compiled for the C backend, for a fixed execution order split in phases.

    Parameters
    ----------
    graph : Graph
    phases : list of list of node names
        Execution order, phase by phase (an inference graph: one phase).
    training : bool
        Forward nodes run in training mode (batch statistics, dropout).
    name : str, optional
        Base name of the built library in the cache.
    profile : bool, optional
        Time every kernel (default: `N2D2_PROFILE` set to a non-empty value other than 0).
    """

    def __init__(self, graph, phases, training=False, name=None, profile=None):
        self.graph = graph
        self.training = training
        self.phases = [list(p) for p in phases]
        order = [n for phase in self.phases for n in phase]
        self.plan = planner.plan(graph, order=order)
        planner.validate(graph, self.plan)
        self.where = {}               # node -> "c" | "numpy"
        self.geometry = {}            # node -> the geometry its C kernel was specialised for
        self.kernels = []
        self.aux_specs = {}           # aux key -> (shape, kind)
        self._param_names = []        # parameters C kernels read, in pointer-array order
        self._param_index = {}
        self._scratch_layouts = []
        self._functions = {}          # kernel body -> {"fname", "body", "nodes", ...}
        self._decide_and_render(order)
        self._segments = self._segment()
        functions = list(self._functions.values())
        parts = split_parts(functions, len(self.kernels))
        self.source = render("c/program.c.j2", graph_name=graph.name,
                             nodes=[k["node"] for k in self.kernels], arena_bytes=self.plan.arena_bytes,
                             kernels=self.kernels, segments=self._segments, functions=functions, parts=parts)
        self._lib = None
        if self.kernels:
            self._lib = _load(compiler.build_shared_library(self.source, c_identifier(name or graph.name, limit=48),
                                                            parts=parts))
        self.nthreads = 1
        if self._lib is not None:
            self.nthreads = team_size() if self._lib.n2d2_openmp() else 1
            self._lib.n2d2_set_threads(self.nthreads)
        fixed = os.environ.get("N2D2_THREADS", "")
        parallel = "#pragma omp parallel" in self.source
        self._tuner = _ThreadTuner(self._lib, self.nthreads, int(fixed) if fixed.isdigit() else None) \
            if parallel else None
        slack = 4 * max([_SLACK_FLOATS] + [k.get("read_past", 0) for k in self.kernels])
        self._arena = _aligned_zeros(self.plan.arena_bytes + slack)
        scratch_floats = max([_Scratch.floats(s, self.nthreads) for s in self._scratch_layouts] + [16])
        self._scratch = _aligned_zeros(4 * scratch_floats + slack)
        self._aux = {key: np.zeros(shape, dtype=np.float32) for key, (shape, _) in self.aux_specs.items()}
        self._aux_keys = list(self.aux_specs)
        self._aux_ptrs = (ctypes.c_void_p * max(1, len(self._aux_keys)))(
            *[self._aux[k].ctypes.data for k in self._aux_keys])
        self._dropout = [(key, shape, self.graph.attrs(key[: -len(".mask")])["dropout"])
                         for key, (shape, kind) in self.aux_specs.items() if kind == "dropout"]
        self._views = {}
        for t, off in self.plan.offsets.items():
            tt = graph.output_types(t[0])[t[1]]
            self._views[t] = np.ndarray(tt.shape, dtype=tt.dtype, buffer=self._arena, offset=off)
        self._param_objs = [graph.params[p] for p in self._param_names]
        self._param_arrays = None
        self._param_ptrs = None
        self._seg_funcs = {}
        for seg in self._segments:
            f = getattr(self._lib, f"n2d2_segment_{seg['index']}")
            f.argtypes = [ctypes.c_void_p] * 4
            f.restype = None
            self._seg_funcs[seg["index"]] = f
        self._phase_items = self._phase_plan()
        self._py_nodes = {}
        self.saved = {}
        from_env = profile is None
        if from_env:
            profile = os.environ.get("N2D2_PROFILE", "")
            profile = {"": 0, "0": 0, "cpu": 2}.get(profile, 1)
        self._profiling = int(profile)
        self._py_time = {}
        if self._lib is not None:
            self._lib.n2d2_set_profiling(self._profiling)
            self._lib.n2d2_profile_ns.restype = ctypes.POINTER(ctypes.c_double)
            self._lib.n2d2_profile_calls.restype = ctypes.POINTER(ctypes.c_long)
        if self._profiling and from_env:
            atexit.register(self.print_profile)

    # -- building ---------------------------------------------------------------------------------
    # `bind` (a _Binder) names the pointers b[i]; without it (n2d2.export builds contexts with
    # these methods) they are the direct expressions arena + offset, params[i], aux[i].
    def _buf(self, tensor, bind=None):
        tt = self.graph.output_types(tensor[0])[tensor[1]]
        off = self.plan.offsets[tensor]
        expr = f"(float *)(arena + {off})"
        return Buf(off, tt.shape, bind(expr) if bind is not None else f"({expr})")

    def _param(self, pname, bind=None):
        if pname not in self._param_index:
            self._param_index[pname] = len(self._param_names)
            self._param_names.append(pname)
        expr = f"params[{self._param_index[pname]}]"
        return bind(expr) if bind is not None else expr

    def _aux_slot(self, key, shape, kind, bind=None):
        if key not in self.aux_specs:
            self.aux_specs[key] = (tuple(shape), kind)
        expr = f"aux[{list(self.aux_specs).index(key)}]"
        return bind(expr) if bind is not None else expr

    def _forward_context(self, node, g, bind=None):
        b = () if bind is None else (bind,)
        return forward_context(self.graph, node, g, self.training, self.plan, lambda t: self._buf(t, *b),
                               lambda p: self._param(p, *b), lambda *a: self._aux_slot(*a, *b), "scratch")

    def _decide_and_render(self, order):
        env = environment()
        gr = self.graph
        for index, node in enumerate(order):
            op = gr.op(node)
            if op in ("Input", "Update"):
                continue
            bind = _Binder()
            if op == "Grad":
                fwd = gr.attrs(node)["of"]
                if self.where.get(fwd) != "c" or not _has_macro(gr.op(fwd), "backward"):
                    self.where[node] = "numpy"
                    continue
                attrs = gr.attrs(node)
                fwd_inputs = gr.inputs_of(fwd)
                if len(fwd_inputs) != len(attrs["input_needs"]):
                    self.where[node] = "numpy"
                    continue
                fctx = self._forward_context(fwd, self.geometry[fwd], bind)
                dy = self._buf(gr.inputs_of(node)[0], bind)
                outs = [self._buf((node, k), bind) for k in range(len(gr.output_types(node)))]
                dx, k = [], 0
                for need in attrs["input_needs"]:
                    dx.append(outs[k] if need else None)
                    k += need
                dp = _Context({r: outs[k + i] for i, r in enumerate(attrs["roles"])})
                ctx = _Context(fwd=fctx, dy=dy, dx=dx, dp=dp, need_dx=any(d is not None for d in dx))
                body = env.from_string('{% import "c/ops/' + gr.op(fwd) + '.c.j2" as op %}{{ op.backward(n) }}')
                self._add_kernel(index, node, "Grad", body.render(n=ctx), bind)
                self._scratch_layouts.append(self.geometry[fwd].get("sb"))
                continue
            g = _geometry(gr, node, self.training) if template_exists(f"c/ops/{op}.c.j2") else None
            if g is None:
                self.where[node] = "numpy"
                continue
            self.geometry[node] = g
            ctx = self._forward_context(node, g, bind)
            body = env.from_string('{% import "c/ops/' + op + '.c.j2" as op %}{{ op.forward(n) }}')
            self._add_kernel(index, node, op, body.render(n=ctx), bind)
            self.kernels[-1]["read_past"] = g.get("READ_PAST", 0)
            self._scratch_layouts.append(g.get("sf"))

    def _add_kernel(self, index, node, op, body, bind):
        """A node's kernel: its function (shared with the nodes whose body is the same) and the
        pointers it is called with."""
        gr = self.graph
        sig = ", ".join(str(t) for t in gr.input_types(node)) + " -> " + \
            ", ".join(str(t) for t in gr.output_types(node))
        self.where[node] = "c"
        body = body.rstrip("\n")
        function = self._functions.get(body)
        if function is None:
            function = self._functions[body] = {"fname": f"f{len(self._functions)}", "body": body, "nodes": [],
                                                "op": op if op != "Grad" else "Grad of " + gr.op(gr.attrs(node)["of"]),
                                                "signature": sig}
        function["nodes"].append(node)
        self.kernels.append({"index": index, "id": len(self.kernels), "node": node,
                             "op": op, "fname": function["fname"], "signature": sig, "binds": list(bind.exprs)})

    def _segment(self):
        kernel_of = {k["node"]: k for k in self.kernels}
        segments = []
        for phase in self.phases:
            current = []
            for node in phase:
                if self.where.get(node) == "c":
                    current.append(node)
                elif self.graph.op(node) != "Input" and current:
                    segments.append(current)
                    current = []
            if current:
                segments.append(current)
        return [{"index": i, "nodes": s,
                 "kernels": [kernel_of[n] for n in s]} for i, s in enumerate(segments)]

    def _phase_plan(self):
        """Per phase: the list of items to run: ('c', segment function) or ('py', node)."""
        seg_of = {s["nodes"][0]: s["index"] for s in self._segments}
        in_seg = {n for s in self._segments for n in s["nodes"]}
        plans = []
        for phase in self.phases:
            items = []
            for node in phase:
                if node in seg_of:
                    items.append(("c", self._seg_funcs[seg_of[node]]))
                elif node in in_seg or self.graph.op(node) == "Input":
                    continue
                else:
                    items.append(("py", node))
            plans.append(items)
        return plans

    # -- running ----------------------------------------------------------------------------------
    def view(self, tensor):
        return self._views[tensor]

    def feed(self, feeds):
        from n2d2.codegen.numpy_exec import check_feed

        for name, value in feeds.items():
            check_feed(self.graph, name, value)
            self._views[(name, 0)][...] = value

    def _call_args(self):
        """(arena, params, aux, scratch) pointers; the parameter array is rebuilt only when a
        parameter array was replaced (solvers and weight setters update arrays in place)."""
        arrays = [p.array for p in self._param_objs]
        cached = self._param_arrays
        if cached is None or any(a is not b for a, b in zip(arrays, cached)):
            for name, a in zip(self._param_names, arrays):
                if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous):
                    raise GraphError(f"parameter '{name}' must be a contiguous float32 numpy array for the C "
                                     f"backend (got {type(a).__name__} {getattr(a, 'dtype', '')})")
            self._param_ptrs = (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])
            self._param_arrays = arrays
            self._args = (self._arena.ctypes.data, self._param_ptrs, self._aux_ptrs, self._scratch.ctypes.data)
        return self._args

    def run_phase(self, index, batch_size=1):
        args = self._call_args()
        if index == 0 and self._dropout:
            from n2d2.ops.dropout import dropout_mask
            from n2d2.settings import global_variables

            for key, shape, rate in self._dropout:
                self._aux[key][...] = dropout_mask(global_variables.rng, shape, rate)
        tuner = self._tuner
        if index == 0 and tuner is not None:
            tuner.start_cycle()
        for kind, item in self._phase_items[index]:
            if kind == "c":
                item(*args)
            elif self._profiling:
                t = time.perf_counter()
                self._run_numpy(item, batch_size)
                calls, total = self._py_time.get(item, (0, 0.0))
                self._py_time[item] = (calls + 1, total + time.perf_counter() - t)
            else:
                self._run_numpy(item, batch_size)
        if tuner is not None and index == len(self.phases) - 1:
            tuner.end_cycle()

    def _run_numpy(self, node, batch_size):
        gr = self.graph
        cached = self._py_nodes.get(node)
        if cached is None:   # node data, op definition and input views, looked up once
            d = gr.node(node)
            cached = self._py_nodes[node] = (d, op_registry.get(d.op, node=node),
                                             [self._views[t] for t in gr.inputs_of(node)])
        d, opdef, xs = cached
        if d.op == "Update":
            param = gr.params[d.attrs["param"]]
            if self._lib is None or not _sgd_in_c(self._lib, param.solver, param.array, xs[0], batch_size):
                opdef.run_update(gr, node, xs[0], batch_size)
            return
        run_reference(gr, node, opdef, xs, self._views, self.saved, self.training)

    # -- profiling --------------------------------------------------------------------------------
    def profile(self) -> dict:
        """{node: (calls, total microseconds, where)} since the program was built (profiling on)."""
        out = {}
        if self._lib is not None and self.kernels:
            ns = self._lib.n2d2_profile_ns()
            calls = self._lib.n2d2_profile_calls()
            for k in self.kernels:
                out[k["node"]] = (int(calls[k["id"]]), ns[k["id"]] / 1e3, "c")
        for node, (calls, total) in self._py_time.items():
            out[node] = (calls, total * 1e6, "numpy")
        return out

    def print_profile(self, file=None):
        """Per-node time table, slowest first (needs profiling on)."""
        prof = self.profile()
        total = sum(t for _, t, _ in prof.values()) or 1.0
        lines = [f"n2d2 C profile of '{self.graph.name}' ({self.nthreads} threads): node, op, where, calls, "
                 "us/call, share"]
        for node, (calls, t, where) in sorted(prof.items(), key=lambda kv: -kv[1][1]):
            if calls:
                lines.append(f"  {node:40s} {self.graph.op(node):10s} {where:6s} {calls:7d} {t / calls:10.1f} "
                             f"{100 * t / total:5.1f}%")
        print("\n".join(lines), file=file)


def _sgd_in_c(lib, solver, p, grad, batch_size) -> bool:
    """Apply an `n2d2.solver.SGD` update with the compiled fused kernel (n2d2_sgd); False (and
    nothing done) when the solver or the arrays are not of the supported kind.

    The solver's state (iteration count, momentum buffer) is the solver's own, read and updated
    here exactly as `SGD._apply` does (learning-rate policy, its log line), so that the solver
    keeps one state whichever backend steps it; the backend tests compare both paths."""
    from n2d2.solver import SGD, parse_clamping

    if type(solver) is not SGD or not isinstance(p, np.ndarray) or p.dtype != np.float32 \
            or not p.flags.c_contiguous or grad.dtype != np.float32 or grad.shape != p.shape \
            or not grad.flags.c_contiguous:
        return False
    c = solver._config
    if c["iteration_size"] != 1 or not c["polyak_momentum"]:
        return False
    state = solver._state(p)
    lr = solver.advance(state, batch_size)
    momentum, decay = c["momentum"], c["decay"]
    m = None
    if momentum != 0.0 or decay != 0.0:
        m = state.buffers.get("momentum")
        if m is None:
            m = state.buffers["momentum"] = np.zeros_like(p)
        if not (isinstance(m, np.ndarray) and m.dtype == np.float32 and m.flags.c_contiguous):
            return False
    low, high = parse_clamping(c["clamping"])
    f = lib.n2d2_sgd
    if f.argtypes is None:
        f.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                      ctypes.c_float, ctypes.c_float, ctypes.c_int, ctypes.c_int, ctypes.c_float, ctypes.c_int,
                      ctypes.c_float]
        f.restype = None
    f(p.size, p.ctypes.data, grad.ctypes.data, None if m is None else m.ctypes.data,
      float(np.float32(lr / batch_size)), float(np.float32(momentum)), float(np.float32(decay * lr)),
      1 if decay else 0, low is not None, low or 0.0, high is not None, high or 0.0)
    return True


# kernel source (characters) worth one more translation unit: gcc spends ~0.15 s on the
# runtime helpers of each unit, a unit of this size takes ~0.5 s at -O3
_PART_CHARS = 16000


def split_parts(functions, nb_kernels) -> int:
    """Give each kernel function a translation unit (`f["part"]`, balanced by source size; part
    0 also holds the call sites) and return how many: gcc -O3 on one large unit is most of a cold
    compile, and the parts build in parallel (`compiler.build_jobs`). Small programs stay whole."""
    sizes = [len(f["body"]) for f in functions]
    parts = max(1, min(compiler.build_jobs(), len(functions), 1 + sum(sizes) // _PART_CHARS))
    load = [0] * parts
    load[0] = 200 * nb_kernels  # the wrappers and segments
    for k in sorted(range(len(functions)), key=lambda k: -sizes[k]):
        part = load.index(min(load))
        functions[k]["part"] = part
        load[part] += sizes[k]
    return parts


def team_size() -> int:
    """Threads of a program's team: the first value of `$OMP_NUM_THREADS` when set, else the
    CPUs this process may run on. Not omp_get_max_threads(): torch ships a libgomp.so.1 that
    the generated libraries bind to once torch is imported, and `torch.set_num_threads(1)`
    sets that shared setting to 1 (programs built afterwards would run on one thread)."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class _ThreadTuner:
    """The thread count (the whole team or one thread) that runs the program faster, from
    measured wall times of whole cycles (from the start of phase 0 to the end of the last
    phase: a training step with the Python work between its phases, or one inference call).

    On a machine shared with other jobs a team of busy-waiting OpenMP threads can be many times
    slower than one thread (a preempted member holds every barrier, and an idle member spinning
    after a phase takes the core from the Python code in between); on an idle machine the team
    is faster. The tuner runs three timed cycles with the team, then three with one thread,
    keeps the faster (mean of the last eight cycles of each: with a busy-waiting team the cost
    is in rare long stalls, which a median would hide), and re-times the other count now
    and then (every 32 cycles, times how much slower it was, up to 1024), so it follows the
    machine's load at a small cost. `N2D2_THREADS=<n>` fixes the count.
    """

    EXPLORE_EVERY = 32

    def __init__(self, lib, nmax, fixed=None):
        from collections import deque

        self.lib = lib
        self.fixed = fixed
        self.options = (nmax, 1) if nmax > 1 else (1,)
        self.samples = {n: deque(maxlen=8) for n in self.options}
        self.cycles = 0
        self.choice = nmax
        self.next_explore = self.EXPLORE_EVERY
        self.current = nmax
        self.started = None      # (threads, start time) of the cycle in progress
        if fixed is not None:
            self._set(max(1, min(fixed, nmax)))

    def _set(self, n):
        if n != self.current:
            self.lib.n2d2_set_threads(n)
            self.current = n

    def end_cycle(self):
        """Called when the last phase ends: records the cycle's time."""
        if self.started is None:
            return
        n, t0 = self.started
        self.started = None
        if self.cycles > 1:   # cycle 0 (first call: page faults, cold caches) is not timed
            self.samples[n].append(time.perf_counter() - t0)
            if all(self.samples[k] for k in self.options):
                med = self._means()
                self.choice = min(self.options, key=lambda k: med[k])

    def start_cycle(self):
        """Called when phase 0 starts: picks this cycle's thread count."""
        if self.fixed is not None or len(self.options) == 1:
            return
        now = time.perf_counter()
        cycle = self.cycles
        self.cycles += 1
        team, one = self.options
        if cycle < 4:
            n = team                       # cycle 0: warm-up, 1-3: timed with the team
        elif cycle < 7:
            n = one
        elif cycle >= self.next_explore:
            n = one if self.choice == team else team
            self.next_explore = cycle + self._interval()
        else:
            n = self.choice
        self._set(n)
        self.started = (n, now)

    def _means(self):
        """Mean cycle time of each count."""
        return {k: sum(v) / len(v) for k, v in self.samples.items() if v}

    def _interval(self):
        """Cycles until the next re-timing: longer when the other count was much slower."""
        med = self._means()
        if len(med) < 2:
            return self.EXPLORE_EVERY
        other = [k for k in med if k != self.choice][0]
        ratio = med[other] / max(med[self.choice], 1e-9)
        return int(min(1024, max(self.EXPLORE_EVERY, self.EXPLORE_EVERY * ratio)))


# libgomp's idle threads busy-wait ~300,000 pause loops (milliseconds on recent x86) after each
# parallel region by default; on a machine shared with other jobs that spinning takes cores from
# the Python code between phases. Unless the user chose a policy, the library's OpenMP runtime
# starts with a shorter spin (kernels inside a phase follow each other within microseconds, so
# the team stays awake there). Set only while the first program loads libgomp, then restored,
# so that other OpenMP runtimes in the process (PyTorch's) are not affected.
DEFAULT_GOMP_SPINCOUNT = "10000"


def _load(path):
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return compiler.load_library(path)
    os.environ["GOMP_SPINCOUNT"] = DEFAULT_GOMP_SPINCOUNT
    try:
        return compiler.load_library(path)
    finally:
        del os.environ["GOMP_SPINCOUNT"]


def _has_macro(op, macro):
    if not template_exists(f"c/ops/{op}.c.j2"):
        return False
    return hasattr(environment().get_template(f"c/ops/{op}.c.j2").module, macro)


def _aligned_zeros(nbytes, alignment=64):
    raw = np.zeros(nbytes + alignment, dtype=np.uint8)
    start = (-raw.ctypes.data) % alignment
    return raw[start:start + nbytes]


def available() -> bool:
    return compiler.find_compiler() is not None


__all__ = ["CProgram", "available", "array_module", "PARALLEL_MIN_MACS"]
