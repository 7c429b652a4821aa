"""The CUDA backend: one CUDA source per graph, loaded by CuPy (NVRTC), run over one arena.

Every node whose op has a template (`templates/cuda/ops/<Op>.cu.j2`) and whose attributes the
templates support becomes one or more `extern "C" __global__` kernels with its shapes and
constants baked in; the others run on the numpy reference over CuPy views of the same arena
(the fallback). A `Grad` node runs where its forward node ran. `Update` nodes whose solver is a
plain `SGD` (iteration_size 1) become one fused kernel each; other solvers run in Python on the
arena's gradient views (their state stays in the solver object either way).

Memory: ONE device allocation holds every planned tensor at the planner's offset, then the
auxiliary buffers (dropout masks, saved batch statistics), the solver coefficients and a scratch
region (split-K partial tiles, reduction partials). Parameters are reached through a device
table of pointers, so a replaced parameter array (or a new momentum buffer) only rewrites the
table. Kernels take (arena, table) and nothing else.

Execution: each phase is a list of items, runs of kernel launches (segments) and Python nodes.
A segment runs eagerly the first time (which also loads every kernel), and is then captured once
as a CUDA graph (CuPy stream capture) and replayed: inputs are copied into the arena, the arena,
the table and the parameter arrays stay in place, so the captured pointers stay valid. Graphs
are launched on the current CuPy stream.

Convolutions: CuPy 14 has no cuDNN, so convolutions are implicit GEMMs: a tiled shared-memory
SGEMM kernel of our own (`templates/cuda/gemm.cu.j2`) whose operand loads gather the image
patches directly (no im2col buffer, no cuBLAS: cuBLAS allocates workspace and picks algorithms at
run time, which does not sit well with graph capture; our kernels capture trivially and their
shapes are baked in). Weight gradients use split-K with a deterministic reduction.

Dropout masks are drawn on the host generator (`global_variables.rng`) and uploaded before the
forward phase, so the backend draws exactly the numbers the numpy executor draws.

Without a GPU, `HostEmulator` runs the very same source on the CPU (g++, threads of a block as
fibers, see `templates/cuda/emulator.h`): the tests check every kernel against the numpy
reference that way, and `compile_check` compiles the source with nvcc (no header is included,
so what nvcc accepts NVRTC accepts too).
"""
import ctypes
import hashlib
import os
import re
import shutil
import subprocess

import numpy as np

from n2d2.backend import cuda_available, require_cupy
from n2d2.codegen import artifact_cache
from n2d2.codegen.backends import Backend, CompiledProgram
from n2d2.codegen.compiler import cache_dir
from n2d2.codegen.interpreter import ArenaStore, Interpreter, check_feed
from n2d2.codegen.kernel_data import Buf, forward_context
from n2d2.codegen.kernel_data import Context as _Context
from n2d2.codegen.kernel_data import activation_ok as _activation_ok
from n2d2.codegen.render import environment, render, template_exists, template_source
from n2d2.ir import ops as op_registry
from n2d2.ir import planner
from n2d2.ir.lowering import Unsupported
from n2d2.ir.types import GraphError
from n2d2.names import c_identifier
from n2d2.ops.dropout import dropout_mask
from n2d2.ops.fake_quantize import plan_weight_backward, plan_weight_forward, weight_quantizer_geometry
from n2d2.settings import global_variables
from n2d2.solver import SGD, parse_clamping
from n2d2.utils import atomic_write_text

__all__ = ["BACKEND", "CudaBackend", "CudaLowering", "CudaModule", "CudaProgram", "CupyDevice", "HostEmulator",
           "available", "compile_check", "CudaCompileError", "NVRTC_OPTIONS", "lower"]

THREADS = 256
SMS = 132                 # streaming multiprocessors of an H100 / H200: how many blocks keep it busy
NVRTC_OPTIONS = ("-std=c++17",)
_ALIGN = 256
_HYPER_FLOATS = 12        # solver coefficients per fused update
FORCE_TILES = None        # (BM, BN) for every gemm (tests); None: chosen per problem


class CudaCompileError(RuntimeError):
    """nvcc, NVRTC or the emulator's g++ rejected generated code (the message holds its output)."""


def available() -> bool:
    """CuPy is importable and sees a CUDA device."""
    return cuda_available()


def _ceil(a, b):
    return -(-int(a) // int(b))


def _align(n, a=_ALIGN):
    return _ceil(n, a) * a


# -- geometry: the op's own lowering (OpDef.lower_cuda) -----------------------------------------------
def _lower(graph, node, training, is_param_array):
    """Geometry dict of a forward node for its CUDA templates, or an Unsupported saying why not.
    The checks common to every op come first, then the op is asked."""
    op = graph.op(node)
    opdef = op_registry.get(op, node=node)
    attrs = graph.attrs(node)
    types = list(graph.input_types(node)) + list(graph.output_types(node))
    if not template_exists(f"cuda/ops/{op}.cu.j2"):
        return Unsupported(f"no CUDA kernel for op {op} (n2d2/templates/cuda/ops/{op}.cu.j2)")
    bad = [spec[0] for spec in opdef.activations(attrs) if not _activation_ok(spec, op, training)]
    if bad:
        return Unsupported(f"activation {bad[0]} has no CUDA implementation")
    if any(t.dtype != "float32" for t in types):
        return Unsupported("tensors are not all float32: " + ", ".join(str(t) for t in types))
    wq = weight_quantizer_geometry(graph, node, training)
    if isinstance(wq, Unsupported):
        return wq
    if any(int(np.prod(t.shape)) >= 2 ** 31 for t in types):
        return Unsupported("a tensor of 2^31 elements or more (32-bit indices)")
    for role, pname in graph.node(node).params.items():
        if not is_param_array(graph.params[pname].array):
            return Unsupported(f"parameter '{role}' is not a device float32 array")
    return opdef.lower_cuda(graph, node, training)


def _geometry(graph, node, training, is_param_array):
    """Geometry dict of a forward node for its CUDA templates, or None when it has no kernel."""
    g = _lower(graph, node, training, is_param_array)
    return None if isinstance(g, Unsupported) else g


# -- launch planning --------------------------------------------------------------------------------
def _tile(x):
    t = 16
    while t < x and t < 128:
        t *= 2
    return t


def _kernel(macro, grid, barrier=False, **fields):
    fields.setdefault("scratch", 0)
    return _Context(macro=macro, grid=tuple(int(v) for v in grid), block=(THREADS, 1, 1), threads=THREADS,
                    barrier=barrier, **fields)


def _elementwise(macro, size, **fields):
    return _kernel(macro, (max(1, _ceil(size, THREADS)), 1, 1), SIZE=int(size), **fields)


def _gemm(macro, m, n, k, groups=1, split=False, a_kfast=True, b_kfast=False):
    """Launch spec of a gemm.cu.j2 kernel (tile sizes picked so that the grid fills the GPU), plus
    the spec of its split-K reduction when the K loop is split."""
    bm, bn = _tile(m), _tile(n)

    def blocks(bm_, bn_):
        return _ceil(m, bm_) * _ceil(n, bn_) * groups

    # A small output with a long K (weight gradients): keep big tiles (4-wide thread sub-tiles,
    # float4 reads) and fill the GPU with K splits; otherwise smaller tiles make more blocks.
    long_k = split and k >= 512 and blocks(bm, bn) < 2 * SMS
    while not long_k and blocks(bm, bn) < 2 * SMS and max(bm, bn) > 32:
        if bm >= bn:
            bm //= 2
        else:
            bn //= 2
    if FORCE_TILES is not None:    # tests: every tile shape on small problems
        bm, bn = FORCE_TILES
    bk = 16
    splits = 1
    if long_k:
        splits = max(1, min(_ceil(2 * SMS, blocks(bm, bn)), k // 256))
    kchunk = _ceil(_ceil(k, splits), bk) * bk
    splits = _ceil(k, kchunk)
    spec = _kernel(macro, (_ceil(n, bn), _ceil(m, bm), groups * splits), barrier=True, M=m, N=n, K=k, G=groups,
                   BM=bm, BN=bn, BK=bk, TM=bm // 16, TN=bn // 16, LA=bm * bk // THREADS, LB=bn * bk // THREADS,
                   SPLITS=splits, KCHUNK=kchunk, A_KFAST=a_kfast, B_KFAST=b_kfast,
                   part="((float *)(arena + N2D2_SCRATCH_OFF))")
    if splits == 1:
        return [spec]
    spec.scratch = 4 * groups * splits * m * n
    reduce = _kernel(macro.replace("_gemm", "_reduce"), (_ceil(groups * m * n, THREADS), 1, 1), M=m, N=n, G=groups,
                     SPLITS=splits, part=spec.part)
    return [spec, reduce]


def _reduction_splits(c, m):
    """Slices per channel of a per-channel reduction over m elements (enough blocks for the GPU)."""
    return max(1, min(_ceil(2 * SMS, c), _ceil(m, 4 * THREADS)))


class _Launch:
    """The launch helpers an op's CUDA plan is written with (OpDef.plan_cuda_forward / _backward)."""

    THREADS = THREADS
    ceil = staticmethod(_ceil)
    kernel = staticmethod(_kernel)
    elementwise = staticmethod(_elementwise)
    reduction_splits = staticmethod(_reduction_splits)

    @staticmethod
    def gemm(*args, **kwargs):
        return _gemm(*args, **kwargs)


def _plan_forward(op, n, g):
    """Kernel specs of a forward node (in launch order)."""
    return op_registry.get(op).plan_cuda_forward(n, g, _Launch)


def _plan_backward(op, n, g):
    """Kernel specs of the Grad node of a forward node (`n.fwd` holds the forward context)."""
    return op_registry.get(op).plan_cuda_backward(n, g, _Launch)


# -- devices -----------------------------------------------------------------------------------------
class CupyDevice:
    """A CUDA device through CuPy: arena and table as CuPy arrays, NVRTC modules, CUDA graphs."""

    name = "cuda"

    def __init__(self):
        self.cp = require_cupy()
        self.xp = self.cp
        self._capture_stream = None

    def is_array(self, a) -> bool:
        return isinstance(a, self.cp.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous

    def zeros(self, nbytes):
        return self.cp.zeros(max(int(nbytes), 1), dtype=self.cp.uint8)

    def view(self, arena, offset, shape, dtype):
        return self.cp.ndarray(tuple(shape), dtype=dtype, memptr=arena.data + int(offset))

    def pointer(self, a) -> int:
        return int(a.data.ptr)

    def table(self, pointers):
        return self.cp.asarray(np.asarray(pointers, dtype=np.uint64))

    def set_table(self, table, pointers):
        table.set(np.asarray(pointers, dtype=np.uint64))

    def load(self, source, names):
        """{name: kernel} of the source compiled by NVRTC (CuPy caches the binary on disk, keyed by
        the source, the options and the architecture)."""
        try:
            module = self.cp.RawModule(code=source, options=NVRTC_OPTIONS)
            return {name: module.get_function(name) for name in names}
        except self.cp.cuda.compiler.CompileException as e:
            raise CudaCompileError(f"NVRTC rejected the generated CUDA source:\n{str(e)[-4000:]}") from None

    def launch(self, fn, grid, block, arena, table, barrier=False):
        fn(grid, block, (arena, table))

    def upload(self, view, host):
        view.set(np.ascontiguousarray(host, dtype=view.dtype))

    def copy_in(self, view, value):
        if isinstance(value, self.cp.ndarray):
            view[...] = value
        else:
            self.upload(view, np.asarray(value))

    def capture(self, fn):
        """A CUDA graph of the launches `fn` makes (captured on a private stream, not executed)."""
        if self._capture_stream is None:
            self._capture_stream = self.cp.cuda.Stream(non_blocking=True)
        s = self._capture_stream
        with s:
            s.begin_capture()
            try:
                fn()
            finally:
                graph = s.end_capture()
        return graph

    def replay(self, graph):
        graph.launch(stream=self.cp.cuda.get_current_stream())

    def synchronize(self):
        self.cp.cuda.get_current_stream().synchronize()

    def time_ms(self, fn):
        """Milliseconds that `fn`'s device work takes (CUDA events on the current stream)."""
        start, end = self.cp.cuda.Event(), self.cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return self.cp.cuda.get_elapsed_time(start, end)


class HostEmulator:
    """Runs the generated CUDA source on the CPU (tests without a GPU).

    The source is compiled by g++ after `templates/cuda/emulator.h` (cached on disk by a hash of
    the text and flags); blocks run one after the other, the threads of a block as fibers that
    switch at `__syncthreads()`. `order` ("forward", "reverse", "alternate") is the order in
    which the threads run between two barriers. The arena has guard bands checked after every
    launch (a kernel writing outside it is reported)."""

    name = "emulator"
    xp = np
    _GUARD = 1 << 16
    _ORDERS = {"forward": 0, "reverse": 1, "alternate": 2}

    def __init__(self, order="alternate"):
        self.order = self._ORDERS[order]
        self._libs = []
        self._guards = {}           # arena address -> (raw buffer, start, end)

    def is_array(self, a) -> bool:
        return isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous

    def zeros(self, nbytes):
        nbytes = max(int(nbytes), 1)
        raw = np.full(nbytes + 2 * self._GUARD + 64, 0xA5, dtype=np.uint8)
        start = self._GUARD + (-(raw.ctypes.data + self._GUARD) % 64)
        arena = raw[start:start + nbytes]
        arena[...] = 0
        self._guards[arena.ctypes.data] = (raw, start, start + nbytes)
        return arena

    def _check_guards(self, name, arena):
        raw, start, end = self._guards[arena.ctypes.data]
        if (raw[:start] != 0xA5).any() or (raw[end:] != 0xA5).any():
            raise RuntimeError(f"emulated kernel {name} wrote outside the arena")

    def view(self, arena, offset, shape, dtype):
        return np.ndarray(tuple(shape), dtype=dtype, buffer=arena, offset=int(offset))

    def pointer(self, a) -> int:
        return int(a.ctypes.data)

    def table(self, pointers):
        return np.asarray(pointers, dtype=np.uint64).copy()

    def set_table(self, table, pointers):
        table[...] = np.asarray(pointers, dtype=np.uint64)

    def load(self, source, names):
        lib = _build_emulator(source)
        self._libs.append(lib)
        launcher = lib.n2d2_emu_launch     # each library schedules its own kernels (its own fibers)
        launcher.argtypes = [ctypes.c_void_p] + [ctypes.c_int] * 6 + [ctypes.c_void_p] * 2 + [ctypes.c_int] * 2
        launcher.restype = ctypes.c_int
        return {name: (name, ctypes.cast(getattr(lib, name), ctypes.c_void_p).value, launcher) for name in names}

    def launch(self, fn, grid, block, arena, table, barrier=False):
        name, address, launcher = fn
        status = launcher(address, *grid, *block, arena.ctypes.data, table.ctypes.data, int(bool(barrier)),
                          self.order)
        if status:
            why = {1: "out of memory", 2: "a barrier that some threads of a block did not reach",
                   3: "a barrier in a kernel planned without barriers"}.get(status, str(status))
            raise RuntimeError(f"emulated kernel {name}: {why}")
        self._check_guards(name, arena)

    def upload(self, view, host):
        view[...] = host

    def copy_in(self, view, value):
        view[...] = np.asarray(value)

    def capture(self, fn):
        return fn

    def replay(self, graph):
        graph()

    def synchronize(self):
        pass

    def time_ms(self, fn):
        import time

        t = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t)


def _emulator_prelude() -> str:
    return template_source("cuda/emulator.h")


def _build_emulator(source):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        raise CudaCompileError("the CUDA host emulator needs a C++ compiler (g++ or $CXX)")
    flags = ["-O1", "-std=c++17", "-shared", "-fPIC", "-fno-exceptions", "-w"]
    text = _emulator_prelude() + "\n" + source
    try:
        lib = artifact_cache.cached_library(text, "\0".join([text, " ".join(flags), cxx]), "cuemu", ".cpp",
                                            lambda src, out: [cxx, *flags, src, "-o", out])
    except artifact_cache.BuildFailed as e:
        raise CudaCompileError(f"g++ rejected the emulated CUDA source {e.source}:\n{e.output[-4000:]}") from None
    return ctypes.CDLL(lib)


def find_nvcc():
    """The nvcc to compile-check with (`$NVCC`, else on PATH, else $CUDA_HOME/bin), or None."""
    for candidate in (os.environ.get("NVCC"), "nvcc",
                      os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def compile_check(source: str, arch: str = "sm_90", mode: str = "cubin") -> str:
    """Compile `source` with nvcc as NVRTC would see it (device code only, no host headers
    needed: `-cubin` runs the front end and ptxas; `-ptx` stops before ptxas); raise
    `CudaCompileError` with the compiler's output on failure. Results are cached by hash.
    Returns the path of the cached source."""
    if re.search(r"^\s*#\s*include", source, re.M):
        raise CudaCompileError("generated CUDA source includes a header: NVRTC would not find it")
    nvcc = find_nvcc()
    if nvcc is None:
        raise CudaCompileError("nvcc not found (set $NVCC or put the CUDA toolkit's bin on PATH)")
    flags = [f"-{mode}", "--std=c++17", f"-arch={arch}", "-w", *[o for o in NVRTC_OPTIONS if o != "-std=c++17"]]
    key = hashlib.sha256("\0".join([source, " ".join(flags), nvcc]).encode()).hexdigest()[:24]
    directory = cache_dir()
    src = os.path.join(directory, f"cucheck_{key}.cu")
    ok = src + ".ok"
    if os.path.exists(ok):
        return src
    atomic_write_text(src, source)  # a unique temporary name: other processes may check the same source now
    r = subprocess.run([nvcc, *flags, "-o", os.devnull, src], capture_output=True, text=True)
    if r.returncode != 0:
        raise CudaCompileError(f"nvcc {' '.join(flags)} failed on {src}:\n{(r.stderr + r.stdout)[-6000:]}")
    atomic_write_text(ok, "")
    return src


# -- the program -------------------------------------------------------------------------------------
def _float32_array(a) -> bool:
    """A float32, C-contiguous array (numpy or CuPy): what the kernels can read as a parameter."""
    return getattr(a, "dtype", None) == np.float32 and bool(getattr(getattr(a, "flags", None), "c_contiguous", False))


class CudaModule:
    """A graph lowered for the CUDA backend (`lower`): everything needed to load and run it, and
    no module loaded yet. Plain data.

    Attributes
    ----------
    graph, phases, training, plan
        What was lowered: the graph, its execution order phase by phase, the mode, the arena plan.
    where : {node: "cuda" | "numpy"}
        Where each node runs (a "numpy" node runs on the interpreter over the arena views).
    fallback_reasons : {node: str}
        Why each forward node without a kernel has none (the op's `Unsupported` reason).
    kernels : list
        Launch specs with their rendered bodies, in render order; `node_kernels` per node.
    source : str
        The CUDA source (all kernels).
    aux_specs : {key: (shape, kind, byte offset)}
        Auxiliary buffers after the planned tensors (dropout masks, saved statistics).
    table_names : list
        The parameter table's slots: ("param" | "momentum", parameter name).
    updates : list
        Fused SGD updates: (node, parameter name, hyper slot, momentum slot).
    aux_offset, aux_bytes, hyper_offset, scratch_offset, arena_bytes : int
        The one device allocation: planned tensors, aux buffers, solver coefficients, scratch.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)


class CudaLowering:
    """Lowers a graph to one CUDA source, for a fixed execution order split in phases.

    Pure: it renders templates and neither compiles nor touches a device (`CudaProgram` loads
    the result). `lower()` decides where every node runs and renders the kernels (a
    `CudaModule`).

    Parameters
    ----------
    graph : Graph
    phases : list of list of node names
        Execution order, phase by phase (an inference graph: one phase).
    training : bool
        Forward nodes run in training mode (batch statistics, dropout).
    is_param_array : callable, optional
        Whether a parameter array can be read by the kernels where they will run (the device's
        `is_array`); default: any float32 C-contiguous array.
    """

    def __init__(self, graph, phases, training=False, is_param_array=None):
        self.graph = graph
        self.training = training
        self.phases = [list(p) for p in phases]
        self.order = [n for phase in self.phases for n in phase]
        self.is_param_array = is_param_array or _float32_array
        self.plan = planner.plan(graph, order=self.order, alignment=_ALIGN)
        planner.validate(graph, self.plan)
        self.where = {}               # node -> "cuda" | "numpy"
        self.fallback_reasons = {}    # forward node -> why it runs on the numpy reference
        self.kernels = []             # launch specs with their rendered bodies, in render order
        self._node_kernels = {}       # node -> [kernel spec]
        self.aux_offset = _align(self.plan.arena_bytes)
        self.aux_specs = {}           # key -> (shape, kind, byte offset)
        self._aux_bytes = 0
        self._table_names = []        # table slots: ("param", name) | ("momentum", name)
        self._table_index = {}
        self._updates = []            # (node, param name, hyper slot, momentum slot)
        self._module = None

    def lower(self) -> CudaModule:
        """The lowered program (rendered once; later calls return the same module)."""
        if self._module is not None:
            return self._module
        self._decide_and_render(self.order)
        hyper_offset = _align(self.aux_offset + self._aux_bytes)
        scratch_offset = _align(hyper_offset + 4 * _HYPER_FLOATS * max(1, len(self._updates)))
        scratch = max([k.scratch for k in self.kernels] + [0])
        arena_bytes = _align(scratch_offset + scratch + 64)
        source = render("cuda/program.cu.j2", graph_name=self.graph.name, nodes=sorted(self._node_kernels),
                        kernels=self.kernels, arena_bytes=self.plan.arena_bytes, aux_offset=self.aux_offset,
                        aux_bytes=self._aux_bytes, hyper_offset=hyper_offset, scratch_offset=scratch_offset)
        self._module = CudaModule(
            graph=self.graph, phases=self.phases, training=self.training, plan=self.plan, where=self.where,
            fallback_reasons=self.fallback_reasons, kernels=self.kernels, node_kernels=self._node_kernels,
            source=source, aux_specs=self.aux_specs,
            table_names=self._table_names, updates=self._updates, aux_offset=self.aux_offset,
            aux_bytes=self._aux_bytes, hyper_offset=hyper_offset, scratch_offset=scratch_offset,
            arena_bytes=arena_bytes)
        return self._module

    # -- building ---------------------------------------------------------------------------------
    def _buf(self, tensor):
        tt = self.graph.output_types(tensor[0])[tensor[1]]
        return Buf(self.plan.offsets[tensor], tt.shape)

    def _slot(self, kind, pname):
        key = (kind, pname)
        if key not in self._table_index:
            self._table_index[key] = len(self._table_names)
            self._table_names.append(key)
        return self._table_index[key]

    def _param(self, pname):
        return f"params[{self._slot('param', pname)}]"

    def _aux_slot(self, key, shape, kind):
        if key not in self.aux_specs:
            off = self.aux_offset + self._aux_bytes
            self.aux_specs[key] = (tuple(shape), kind, off)
            self._aux_bytes += _align(4 * int(np.prod(shape)))
        return f"((float *)(arena + {self.aux_specs[key][2]}))"

    def _forward_context(self, node, g):
        ctx = forward_context(self.graph, node, g, self.training, self.plan, self._buf, self._param,
                              self._aux_slot, "stats")
        ctx["name"] = node
        return ctx

    def _decide_and_render(self, order):
        gr = self.graph
        forward_ctx = {}
        for index, node in enumerate(order):
            op = gr.op(node)
            if op == "Input":
                continue
            if op == "Update":
                self._decide_update(index, node)
                continue
            if op == "Grad":
                fwd = gr.attrs(node)["of"]
                fop = gr.op(fwd)
                if self.where.get(fwd) != "cuda":
                    self.where[node] = "numpy"
                    continue
                if not op_registry.get(fop).cuda_backward:
                    raise GraphError(f"node '{node}': the forward node '{fwd}' ({fop}) runs as a CUDA kernel but "
                                     "has no CUDA backward")
                attrs = gr.attrs(node)
                outs = [self._buf((node, k)) for k in range(len(gr.output_types(node)))]
                dx, k = [], 0
                for need in attrs["input_needs"]:
                    dx.append(outs[k] if need else None)
                    k += need
                dp = _Context({r: outs[k + i] for i, r in enumerate(attrs["roles"])})
                fctx = forward_ctx[fwd]
                if op_registry.get(fop).needs_all_param_grads:   # e.g. BatchNorm's dx needs dscale, dbias
                    for role in op_registry.get(fop).trainable:
                        if role not in dp:
                            dp[role] = _Context(ptr=self._aux_slot(f"{node}.d{role}", (fctx.g["C"],), "grad"),
                                                size=fctx.g["C"])
                ctx = _Context(fwd=fctx, dy=self._buf(gr.inputs_of(node)[0]), dx=dx, dp=dp,
                               need_dx=any(d is not None for d in dx), name=node)
                specs = _plan_backward(fop, ctx, fctx.g)
                if "wq" in fctx:   # fake-quantized weights: dL/dw_hat -> dL/dw after the op's kernels
                    specs += plan_weight_backward(fctx.wq, dp, _Launch)
                self._add_kernels(index, node, fop, specs, ctx, of=fwd)
                continue
            g = _lower(gr, node, self.training, self.is_param_array)
            if isinstance(g, Unsupported):
                self.where[node] = "numpy"
                self.fallback_reasons[node] = g.reason
                continue
            ctx = self._forward_context(node, g)
            forward_ctx[node] = ctx
            specs = _plan_forward(op, ctx, g)
            if "wq" in ctx:   # fake-quantized weights: the quantized copy first, which the op's kernels read
                specs = plan_weight_forward(ctx.wq, _Launch) + specs
            self._add_kernels(index, node, op, specs, ctx)

    def _decide_update(self, index, node):
        """A fused SGD kernel for plain SGD solvers (iteration_size 1), else the Python solver."""
        gr = self.graph
        pname = gr.attrs(node)["param"]
        param = gr.params[pname]
        solver = param.solver
        grad_t = gr.inputs_of(node)[0]
        ok = (type(solver) is SGD and solver._config.get("iteration_size", 1) == 1
              and self.is_param_array(param.array) and param.array.dtype == np.float32
              and gr.output_types(grad_t[0])[grad_t[1]].dtype == "float32"
              and int(np.prod(param.shape)) < 2 ** 31)
        if not ok:
            self.where[node] = "numpy"
            return
        slot = len(self._updates)
        pw = self._slot("param", pname)
        pm = self._slot("momentum", pname)
        self._updates.append((node, pname, slot, pm))
        spec = _elementwise("sgd", int(np.prod(param.shape)), slot=slot, pw=pw, pm=pm, grad=self._buf(grad_t))
        self._add_kernels(index, node, "Update", [spec], _Context(name=node))

    def _add_kernels(self, index, node, op, specs, ctx, of=None):
        gr = self.graph
        module = environment().get_template(f"cuda/ops/{op}.cu.j2").module
        sig = ", ".join(str(t) for t in gr.input_types(node)) + " -> " + \
            ", ".join(str(t) for t in gr.output_types(node))
        base = c_identifier(f"k{index}_{node}", limit=44)
        for j, spec in enumerate(specs):
            spec.name = f"{base}_{spec.macro}{j}"
            spec.node, spec.op, spec.of, spec.signature = node, op, of, sig
            own = module if spec.get("template") is None else environment().get_template(spec.template).module
            spec.body = str(getattr(own, spec.macro)(ctx, spec)).strip("\n")
            self.kernels.append(spec)
        self._node_kernels[node] = specs
        self.where[node] = "cuda"


def lower(graph, phases, training=False, is_param_array=None) -> CudaModule:
    """The CUDA lowering of `graph` for `phases` (pure: no compiler, no device; see `CudaLowering`)."""
    return CudaLowering(graph, phases, training, is_param_array).lower()


class CudaProgram(CompiledProgram):
    """A graph compiled for the CUDA backend, for a fixed execution order split in phases.

    Parameters
    ----------
    graph : Graph
    phases : list of list of node names
        Execution order, phase by phase (an inference graph: one phase).
    training : bool
        Forward nodes run in training mode (batch statistics, dropout).
    name : str, optional
    device : CupyDevice, HostEmulator or None
        Where to run (default: the CuPy device; `HostEmulator()` runs the same source on the CPU).
    graphs : bool
        Capture every run of kernels as a CUDA graph after its first (eager) run, then replay it.
    module : CudaModule, optional
        The lowering of (graph, phases, training) when already done (`lower`, with the
        device's `is_array`); it is then loaded as it is.
    """

    def __init__(self, graph, phases, training=False, name=None, device=None, graphs=True, module=None):
        self.device = device if device is not None else CupyDevice()
        self.use_graphs = graphs
        if module is not None:
            graph = module.graph
        if self.device.name == "cuda":
            for pname, param in graph.params.items():
                if isinstance(param.array, np.ndarray):
                    raise GraphError(f"parameter '{pname}' is a numpy array: the CUDA backend needs the model on the "
                                     "GPU (build the cells with default_model = 'Frame_CUDA')")
        if module is None:
            module = lower(graph, phases, training, self.device.is_array)
        self._adopt(module)
        self._node_kernels = module.node_kernels
        self._table_names = module.table_names
        self._updates = module.updates
        self.aux_offset, self.hyper_offset = module.aux_offset, module.hyper_offset
        self.scratch_offset, self.arena_bytes = module.scratch_offset, module.arena_bytes
        dev = self.device
        self._functions = dev.load(self.source, [k.name for k in self.kernels]) if self.kernels else {}
        self._arena = dev.zeros(self.arena_bytes)
        self._views = {}
        for t, off in self.plan.offsets.items():
            tt = graph.output_types(t[0])[t[1]]
            self._views[t] = dev.view(self._arena, off, tt.shape, tt.dtype)
        self._aux = {key: dev.view(self._arena, off, shape, np.float32)
                     for key, (shape, kind, off) in self.aux_specs.items()}
        self._dropout = [(key, shape, self.graph.attrs(key[: -len(".mask")])["dropout"])
                         for key, (shape, kind, _) in self.aux_specs.items() if kind == "dropout"]
        self._hyper = dev.view(self._arena, self.hyper_offset, (max(1, len(self._updates)), _HYPER_FLOATS),
                               np.float32)
        self._table_arrays = None
        self._table = dev.table([0] * max(1, len(self._table_names)))
        self._items = self._phase_items()
        self._fused_updates = [any(self.graph.op(n) == "Update" and self.where.get(n) == "cuda" for n in phase)
                               for phase in self.phases]
        self._graphs = {}
        self._runs = {}
        self._fallback = Interpreter(graph, ArenaStore(self._views), training=self.training, keep_contexts=False)


    def _phase_items(self):
        """Per phase: [("k", [specs...]) | ("py", node)], consecutive kernel nodes in one run."""
        plans = []
        for phase in self.phases:
            items = []
            for node in phase:
                op = self.graph.op(node)
                if op == "Input":
                    continue
                if self.where.get(node) == "cuda":
                    specs = self._node_kernels[node]
                    if not specs:
                        continue
                    if items and items[-1][0] == "k":
                        items[-1][1].extend(specs)
                    else:
                        items.append(("k", list(specs)))
                else:
                    items.append(("py", node))
            plans.append(items)
        return plans

    # -- running ----------------------------------------------------------------------------------
    def feed(self, feeds):
        for name, value in feeds.items():
            check_feed(self.graph, name, value)
            self.device.copy_in(self._views[(name, 0)], value)

    def assign(self, tensor, value):
        """Overwrite one tensor of the arena (e.g. a gradient after an all-reduce)."""
        self.device.copy_in(self._views[tensor], value)

    def _refresh_table(self):
        arrays = []
        for kind, pname in self._table_names:
            param = self.graph.params[pname]
            if kind == "param":
                arrays.append(param.array)
            else:
                state = param.solver._state(param.array) if param.solver is not None else None
                m = state.buffers.get("momentum") if state is not None else None
                arrays.append(param.array if m is None else m)
        cached = self._table_arrays
        if cached is not None and all(a is b for a, b in zip(arrays, cached)):
            return
        for (kind, pname), a in zip(self._table_names, arrays):
            if not (self.device.is_array(a) and a.dtype == np.float32 and a.flags.c_contiguous):
                raise GraphError(f"parameter '{pname}' must be a contiguous float32 "
                                 f"{'CuPy' if self.device.name == 'cuda' else 'numpy'} array for the "
                                 f"{self.device.name} backend (got {type(a).__name__} {getattr(a, 'dtype', '')})")
        self.device.set_table(self._table, [self.device.pointer(a) for a in arrays] or [0])
        self._table_arrays = arrays

    def _prepare_updates(self, batch_size):
        """Solver coefficients of every fused update of this step (advances the solvers' state as
        `SGD._apply` does) uploaded to the hyper table."""
        if not self._updates:
            return
        hyper = np.zeros((len(self._updates), _HYPER_FLOATS), dtype=np.float32)
        for node, pname, slot, _ in self._updates:
            param = self.graph.params[pname]
            hyper[slot] = _sgd_coefficients(param.solver, param.array, batch_size, self.device.xp)
        self._refresh_table()   # a momentum buffer may just have been created
        self.device.upload(self._hyper, hyper)

    def _prepare_phase(self, index, batch_size):
        """Host work before a phase: the parameter table, dropout masks (forward), solver
        coefficients (when the phase has fused updates)."""
        self._refresh_table()
        if index == 0 and self._dropout:
            for key, shape, rate in self._dropout:
                self.device.upload(self._aux[key], dropout_mask(global_variables.rng, shape, rate))
        if self._fused_updates[index]:
            self._prepare_updates(batch_size)

    def run_phase(self, index, batch_size=1, record=None):
        """Run phase `index`. With `record` (a dict), kernels run eagerly node by node and every
        node's outputs are copied into record[node] right after it ran (for tests)."""
        self._prepare_phase(index, batch_size)
        for k, (kind, item) in enumerate(self._items[index]):
            if kind == "py":
                self._run_numpy(item, batch_size)
                if record is not None:
                    self._record(record, item)
            elif record is not None:
                for spec in item:
                    self._launch(spec)
                    if spec is self._node_kernels[spec.node][-1]:
                        self._record(record, spec.node)
            else:
                self._run_kernels(index, k, item)

    def _record(self, record, node):
        outs = self.graph.output_types(node)
        record[node] = [self._views[(node, i)].copy() for i in range(len(outs))]

    def _launch(self, spec):
        self.device.launch(self._functions[spec.name], spec.grid, spec.block, self._arena, self._table, spec.barrier)

    def _run_kernels(self, phase, k, specs):
        key = (phase, k)
        runs = self._runs.get(key, 0)
        self._runs[key] = runs + 1
        if not self.use_graphs or runs == 0:
            for spec in specs:
                self._launch(spec)
            return
        graph = self._graphs.get(key)
        if graph is None:
            def launches():
                for spec in specs:
                    self._launch(spec)
            graph = self._graphs[key] = self.device.capture(launches)
        self.device.replay(graph)

    def synchronize(self):
        self.device.synchronize()

    def profile_phase(self, index, batch_size=1) -> dict:
        """Run phase `index` once with every kernel launched and timed alone (no CUDA graph):
        {node: (milliseconds, kernel launches)}; Python nodes are timed as a whole. The times
        add launch gaps a replayed graph does not have; use them to rank the nodes."""
        self._prepare_phase(index, batch_size)
        times = {}
        for kind, item in self._items[index]:
            if kind == "py":
                times[item] = (self.device.time_ms(lambda: self._run_numpy(item, batch_size)), 0)
                continue
            for spec in item:
                ms, count = times.get(spec.node, (0.0, 0))
                times[spec.node] = (ms + self.device.time_ms(lambda: self._launch(spec)), count + 1)
        return times

    def summary(self) -> str:
        """One line per node: where it runs and its kernels with their launch shapes."""
        lines = [f"CUDA program of '{self.graph.name}': {len(self.kernels)} kernels, arena {self.arena_bytes} bytes"]
        for phase in self.phases:
            for node in phase:
                if self.graph.op(node) == "Input":
                    continue
                where = self.where.get(node, "numpy")
                ks = self._node_kernels.get(node, [])
                lines.append(f"  {node:40s} {self.graph.op(node):10s} {where:6s} " +
                             ", ".join(f"{k.macro}{list(k.grid)}" for k in ks))
        return "\n".join(lines)


class CudaBackend(Backend):
    """The CUDA backend: `lower` (pure) then NVRTC through CuPy, run on the device."""

    name = "cuda"
    default_models = ("Frame_CUDA",)
    preference = 10
    source_extension = ".cu"
    requirement = ("CuPy and a visible CUDA device; none was found (install n2d2[gpu] on a GPU machine, or use "
                   "default_model = 'Frame' / backend 'c' or 'numpy')")

    def available(self) -> bool:
        return available()

    def lower(self, graph, phases, training: bool = False, device=None, **options) -> CudaModule:
        """`device` (a CupyDevice or HostEmulator) decides which parameter arrays the kernels can read."""
        return lower(graph, phases, training, None if device is None else device.is_array)

    def load(self, module, **options) -> CudaProgram:
        return CudaProgram(module.graph, module.phases, module.training, module=module, **options)

    def program(self, graph, phases, training: bool = False, **options) -> CudaProgram:
        # the device first: its array kind decides what the lowering may read
        return CudaProgram(graph, phases, training, **options)


BACKEND = CudaBackend()


def _sgd_coefficients(solver, param, batch_size, xp):
    """The 12 hyper values of one fused SGD update; advances the solver's state for `param` as
    `SGD._apply` does (iteration count, learning-rate log, momentum buffer)."""
    c = solver._config
    state = solver._state(param)
    lr = solver.advance(state, batch_size)
    scale = batch_size * c["iteration_size"]
    momentum, decay = c["momentum"], c["decay"]
    if momentum == 0.0 and decay == 0.0:
        mode = 0
    else:
        mode = 1 if c["polyak_momentum"] else 2
        if state.buffers.get("momentum") is None:
            state.buffers["momentum"] = xp.zeros_like(param)

    low, high = parse_clamping(c["clamping"])
    clamp = low is not None or high is not None
    h = np.zeros(_HYPER_FLOATS, dtype=np.float32)
    h[:10] = [mode, np.float32(lr / scale), np.float32(momentum), np.float32(decay * lr), np.float32(decay),
              np.float32(lr), np.float32(scale), -np.inf if low is None else low, np.inf if high is None else high,
              float(clamp)]
    return h
