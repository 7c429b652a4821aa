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
stride 1, direct loops for depthwise) is decided per node from its shapes (`Conv.lower_c`).
Kernels above a work threshold use the OpenMP team (`if` by construction: small ones never wake
it); `_ThreadTuner` picks, from measured step times, the team or one thread (a shared machine).

Memory: the arena holds every planned tensor (`n2d2.ir.planner`); kernels also get a scratch
buffer (im2col matrices, transposed weights, per-thread partial gradients), sized for the
largest kernel, with a private slice per thread. Both end with slack so that the GEMM may read
a ragged last strip of a row past its end.

Profiling: with `N2D2_PROFILE=1` in the environment (or `profile=True`), every kernel's wall
time is accumulated (`N2D2_PROFILE=cpu`: the calling thread's CPU time, steadier on a loaded
machine with one thread; `N2D2_PROFILE=process`: the process's CPU time, every thread's, so that
a kernel's cost on several threads compares with its cost on one: the other threads' time is
accounted at scheduler ticks, so read it as a total over many calls, not call by call);
`CProgram.profile()` returns it per node and `print_profile()` prints a table (also printed at exit).
"""
import atexit
import ctypes
import functools
import os
import re
import time

import numpy as np

from n2d2.backend import array_module
from n2d2.codegen import compiler
from n2d2.codegen.backends import Backend, CompiledProgram
from n2d2.codegen.interpreter import ArenaStore, Interpreter, check_feed
from n2d2.codegen.kernel_data import Buf, forward_context
from n2d2.codegen.kernel_data import Context as _Context
from n2d2.codegen.kernel_data import activation_ok as _activation_ok
from n2d2.codegen.render import environment, render, template_exists, template_source
from n2d2.ir import ops as op_registry
from n2d2.ir import planner
from n2d2.ir.graph import Param
from n2d2.ir.lowering import PARALLEL_MIN_MACS, SLACK_FLOATS, Unsupported
from n2d2.ir.lowering import Scratch as _Scratch
from n2d2.ir.types import GraphError
from n2d2.names import c_identifier
from n2d2.ops.dropout import fill_dropout_mask
from n2d2.ops.fake_quantize import weight_quantizer_geometry
from n2d2.settings import global_variables
from n2d2.solver import SGD, parse_clamping

_SLACK_FLOATS = SLACK_FLOATS   # readable floats after every buffer (ragged GEMM strips)
# an x86 intrinsic or its types in a kernel body: the program then includes <immintrin.h>, which
# costs gcc ~0.2 s per translation unit (runtime.c.j2's own masked moves use GCC's builtins)
_INTRINSIC = re.compile(r"\b(_mm\d*_\w+|__m\d+\w*|__mmask\d+)\b")


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


# -- per-op geometry and support: the op's own lowering (OpDef.lower_c) ------------------------------
def _lower(graph, node, training):
    """Geometry dict of a forward node for its C template, or an Unsupported saying why it has
    no C kernel. The checks common to every op come first, then the op is asked."""
    op = graph.op(node)
    opdef = op_registry.get(op, node=node)
    attrs = graph.attrs(node)
    if not template_exists(f"c/ops/{op}.c.j2"):
        return Unsupported(f"no C kernel for op {op} (n2d2/templates/c/ops/{op}.c.j2)")
    bad = [spec[0] for spec in opdef.activations(attrs) if not _activation_ok(spec, op, training)]
    if bad:
        return Unsupported(f"activation {bad[0]} has no C implementation")
    types = list(graph.input_types(node)) + list(graph.output_types(node))
    if any(t.dtype != "float32" for t in types):
        return Unsupported("tensors are not all float32: " + ", ".join(str(t) for t in types))
    wq = weight_quantizer_geometry(graph, node, training)
    if isinstance(wq, Unsupported):
        return wq
    for role, pname in graph.node(node).params.items():
        a = graph.params[pname].array
        if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous):
            return Unsupported(f"parameter '{role}' is not a C-contiguous float32 numpy array")
    return opdef.lower_c(graph, node, training)


def _geometry(graph, node, training):
    """Geometry dict of a forward node for its C template, or None when it has no C kernel."""
    g = _lower(graph, node, training)
    return None if isinstance(g, Unsupported) else g


class CModule:
    """A graph lowered for the C backend (`lower`): everything needed to build and run it, and no
    library yet. Plain data.

    Attributes
    ----------
    graph, phases, training, plan
        What was lowered: the graph, its execution order phase by phase, the mode, the arena plan.
    where : {node: "c" | "numpy"}
        Where each node runs (a "numpy" node runs on the interpreter over the arena views).
    fallback_reasons : {node: str}
        Why each forward node without a kernel has none (the op's `Unsupported` reason).
    geometry : {node: dict}
        The geometry each forward C kernel was specialised for.
    kernels, functions, segments, parts
        The kernel call sites, the kernel functions (nodes of the same geometry share one), the
        runs of consecutive C kernels of a phase (one exported function each), the translation
        units the source is split into.
    source : str
        The C translation unit.
    aux_specs : {key: (shape, kind)}
        Auxiliary buffers (dropout masks, saved statistics), in pointer-array order.
    param_names : list
        The parameters the kernels read, in pointer-array order.
    scratch_layouts : list
        Each kernel's scratch layout (`_Scratch.layout()`; sized per thread when loaded).
    slack_bytes : int
        Readable bytes the arena and scratch need after their end (ragged GEMM strips).
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)


class CLowering:
    """Lowers a graph to one C translation unit, for a fixed execution order split in phases.

    Pure: it renders templates and calls no compiler (`CProgram` builds and loads the result).
    `lower()` decides where every node runs and renders the program (a `CModule`);
    `forward_context(node, geometry)` is the template data of one forward node, which
    `n2d2.export` renders its kernels from, so that the exported kernels read exactly what the
    in-process kernels read.

    Parameters
    ----------
    graph : Graph
    phases : list of list of node names
        Execution order, phase by phase (an inference graph: one phase).
    training : bool
        Forward nodes run in training mode (batch statistics, dropout).
    plan : n2d2.ir.planner.Plan, optional
        The arena plan of that order (default: planned and validated here).
    """

    def __init__(self, graph, phases, training=False, plan=None):
        self.graph = graph
        self.training = training
        self.phases = [list(p) for p in phases]
        self.order = [n for phase in self.phases for n in phase]
        if plan is None:
            plan = planner.plan(graph, order=self.order)
            planner.validate(graph, plan)
        self.plan = plan
        self.where = {}               # node -> "c" | "numpy"
        self.fallback_reasons = {}    # forward node -> why it runs on the numpy reference
        self.geometry = {}            # node -> the geometry its C kernel was specialised for
        self.kernels = []
        self.aux_specs = {}           # aux key -> (shape, kind)
        self._param_names = []        # parameters C kernels read, in pointer-array order
        self._param_index = {}
        self._scratch_layouts = []
        self._functions = {}          # kernel body -> {"fname", "body", "nodes", ...}
        self._module = None

    @property
    def param_names(self) -> list:
        """The parameters the contexts built so far point to, in pointer-array order."""
        return list(self._param_names)

    def lower(self) -> CModule:
        """The lowered program (rendered once; later calls return the same module)."""
        if self._module is not None:
            return self._module
        self._decide_and_render(self.order)
        segments = self._segment()
        functions = list(self._functions.values())
        parts = split_parts(functions, len(self.kernels))
        source = render("c/program.c.j2", graph_name=self.graph.name,
                        nodes=[k["node"] for k in self.kernels], arena_bytes=self.plan.arena_bytes,
                        kernels=self.kernels, segments=segments, functions=functions, parts=parts,
                        intrinsics=any(_INTRINSIC.search(f["body"]) for f in functions))
        self._module = CModule(
            graph=self.graph, phases=self.phases, training=self.training, plan=self.plan, where=self.where,
            fallback_reasons=self.fallback_reasons, geometry=self.geometry,
            kernels=self.kernels, functions=functions, segments=segments, parts=parts,
            source=source, aux_specs=self.aux_specs, param_names=list(self._param_names),
            scratch_layouts=self._scratch_layouts,
            slack_bytes=4 * max([_SLACK_FLOATS] + [k.get("read_past", 0) for k in self.kernels]))
        return self._module

    # -- building ---------------------------------------------------------------------------------
    # `bind` (a _Binder) names the pointers b[i]; without it (`forward_context` as n2d2.export
    # calls it) they are the direct expressions arena + offset, params[i], aux[i].
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

    def forward_context(self, node, g, bind=None):
        """The template data of forward node `node` with geometry `g` (`kernel_data.forward_context`)."""
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
                fctx = self.forward_context(fwd, self.geometry[fwd], bind)
                dy = self._buf(gr.inputs_of(node)[0], bind)
                outs = [self._buf((node, k), bind) for k in range(len(gr.output_types(node)))]
                dx, k = [], 0
                for need in attrs["input_needs"]:
                    dx.append(outs[k] if need else None)
                    k += need
                dp = _Context({r: outs[k + i] for i, r in enumerate(attrs["roles"])})
                if op_registry.get(gr.op(fwd)).needs_all_param_grads:   # BatchNorm: dx needs dscale, dbias
                    for role in ("scales", "biases"):
                        if role not in dp:
                            c = self.geometry[fwd]["C"]
                            dp[role] = Buf(0, (c,), self._aux_slot(f"{node}.d{role}", (c,), "grad", bind))
                ctx = _Context(fwd=fctx, dy=dy, dx=dx, dp=dp, need_dx=any(d is not None for d in dx))
                body = env.from_string('{% import "c/ops/' + gr.op(fwd) + '.c.j2" as op %}{{ op.backward(n) }}')
                body = body.render(n=ctx)
                if "wq" in fctx:   # fake-quantized weights: dL/dw_hat -> dL/dw after the op's backward
                    body += str(env.get_template("c/ops/FakeQuantize.c.j2").module.weight_backward(fctx.wq, dp))
                self._add_kernel(index, node, "Grad", body, bind)
                self._scratch_layouts.append(self.geometry[fwd].get("sb"))
                continue
            g = _lower(gr, node, self.training)
            if isinstance(g, Unsupported):
                self.where[node] = "numpy"
                self.fallback_reasons[node] = g.reason
                continue
            self.geometry[node] = g
            ctx = self.forward_context(node, g, bind)
            body = env.from_string('{% import "c/ops/' + op + '.c.j2" as op %}{{ op.forward(n) }}')
            body = body.render(n=ctx)
            if "wq" in ctx:   # fake-quantized weights: the quantized copy first, which the op's kernel reads
                body = str(env.get_template("c/ops/FakeQuantize.c.j2").module.weight_forward(ctx.wq)) + body
            self._add_kernel(index, node, op, body, bind)
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


def lower(graph, phases, training=False, plan=None) -> CModule:
    """The C lowering of `graph` for `phases` (pure: no compiler call; see `CLowering`)."""
    return CLowering(graph, phases, training, plan).lower()


class _Fallback(Interpreter):
    """The interpreter over a C program's arena views, for the nodes without a C kernel; an
    `Update` of a plain SGD solver steps through the compiled fused kernel (`_sgd_in_c`)."""

    def __init__(self, program):
        super().__init__(program.graph, ArenaStore(program._views), training=program.training,
                         keep_contexts=False)
        self.lib = program._lib

    def run_update(self, name, opdef, grad):
        param = self.graph.params[self.graph.attrs(name)["param"]]
        if self.lib is None or not _sgd_in_c(self.lib, param.solver, param.array, grad, self.batch_size):
            super().run_update(name, opdef, grad)


class CProgram(CompiledProgram):
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
    module : CModule, optional
        The lowering of (graph, phases, training) when already done (`lower`); it is then built
        and loaded as it is.
    """

    MODULE_FIELDS = CompiledProgram.MODULE_FIELDS + ("geometry",)

    def __init__(self, graph, phases, training=False, name=None, profile=None, module=None):
        if module is None:
            module = lower(graph, phases, training)
        self._adopt(module)
        graph = self.graph
        self._param_names = module.param_names
        self._segments = module.segments
        self._lib = None
        if self.kernels:
            self._lib = _load(compiler.build_shared_library(self.source, c_identifier(name or graph.name, limit=48),
                                                            parts=module.parts))
        self.nthreads = 1
        if self._lib is not None:
            self.nthreads = team_size() if self._lib.n2d2_openmp() else 1
            self._lib.n2d2_set_threads(self.nthreads)
        fixed = os.environ.get("N2D2_THREADS", "")
        parallel = "#pragma omp parallel" in self.source
        self._tuner = _ThreadTuner(self._lib, self.nthreads, int(fixed) if fixed.isdigit() else None) \
            if parallel else None
        slack = module.slack_bytes
        self._arena = _aligned_zeros(self.plan.arena_bytes + slack)
        scratch_floats = max([_Scratch.floats(s, self.nthreads) for s in module.scratch_layouts] + [16])
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
        self._param_rebinds = -1
        self._seg_funcs = {}
        for seg in self._segments:
            f = getattr(self._lib, f"n2d2_segment_{seg['index']}")
            f.argtypes = [ctypes.c_void_p] * 4
            f.restype = None
            self._seg_funcs[seg["index"]] = f
        self._sgd_table = None
        self._sgd_last = {}   # Update node -> its last _SgdParameter (_sgd_update)
        self._phase_items = self._phase_plan()
        self._fallback = _Fallback(self)
        from_env = profile is None
        if from_env:
            profile = os.environ.get("N2D2_PROFILE", "")
            profile = {"": 0, "0": 0, "cpu": 2, "process": 3}.get(profile, 1)
        self._profiling = int(profile)
        self._py_time = {}
        if self._lib is not None:
            self._lib.n2d2_set_profiling(self._profiling)
            self._lib.n2d2_profile_ns.restype = ctypes.POINTER(ctypes.c_double)
            self._lib.n2d2_profile_calls.restype = ctypes.POINTER(ctypes.c_long)
        if self._profiling and from_env:
            atexit.register(self.print_profile)


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
                elif self.graph.op(node) == "Update" and self._lib is not None \
                        and self.graph.inputs_of(node)[0] in self._views:
                    if not items or items[-1][0] != "updates":
                        items.append(("updates", []))
                    param = self.graph.params[self.graph.attrs(node)["param"]]
                    items[-1][1].append((node, param, self._views[self.graph.inputs_of(node)[0]]))
                else:
                    items.append(("py", node))
            plans.append(items)
        return plans

    def _run_updates(self, updates, batch_size):
        """Run consecutive `Update` nodes ((node, parameter, gradient view) in order): the SGD
        ones through one call of the compiled n2d2_sgd_parameters, any other in Python where it
        stands in the order (the SGD updates before it are applied first)."""
        table = self._sgd_table
        if table is None or len(table) < len(updates):
            table = self._sgd_table = (_SgdParameter * len(updates))()
        f = self._lib.n2d2_sgd_parameters
        if f.argtypes is None:
            f.argtypes = [ctypes.c_int, ctypes.POINTER(_SgdParameter)]
            f.restype = None
        count = 0
        last = self._sgd_last
        for node, param, grad in updates:
            q = _sgd_update(param.solver, param.array, grad, batch_size, last.get(node))
            if q is not None:
                table[count] = last[node] = q
                count += 1
                continue
            if count:
                f(count, table)
                count = 0
            self._run_numpy(node, batch_size)
        if count:
            f(count, table)

    # -- running ----------------------------------------------------------------------------------
    def feed(self, feeds):
        views = self._views
        for name, value in feeds.items():
            view = views[name, 0]
            if getattr(value, "shape", None) != view.shape:   # (the planned shape: a valid batch)
                check_feed(self.graph, name, value)
            view[...] = value

    def assign(self, tensor, value):
        """Overwrite one tensor of the arena (e.g. a gradient after an all-reduce)."""
        self._views[tensor][...] = value

    def _call_args(self):
        """(arena, params, aux, scratch) pointers; the parameter array is rebuilt only when a
        parameter array was replaced (solvers and weight setters update arrays in place)."""
        cached = self._param_arrays
        if cached is not None:
            rebinds = Param.rebinds
            if rebinds == self._param_rebinds:
                return self._args   # (per call at batch-1 latency: no array rebound anywhere)
            for p, a in zip(self._param_objs, cached):
                if p.array is not a:
                    break
            else:
                self._param_rebinds = rebinds
                return self._args   # (no list built)
        self._param_rebinds = Param.rebinds
        arrays = [p.array for p in self._param_objs]
        for name, a in zip(self._param_names, arrays):
            if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous):
                raise GraphError(f"parameter '{name}' must be a contiguous float32 numpy array for the C "
                                 f"backend (got {type(a).__name__} {getattr(a, 'dtype', '')})")
        self._param_ptrs = (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])
        self._param_arrays = arrays
        # every argument a plain int (the pointer arrays' addresses; they live on as attributes):
        # ctypes converts an int faster than an array object (0.06 us each per call)
        self._args = (self._arena.ctypes.data, ctypes.addressof(self._param_ptrs), ctypes.addressof(self._aux_ptrs),
                      self._scratch.ctypes.data)
        return self._args

    def inference_call(self, outputs):
        """A function `feeds -> [copies of the outputs tensors]` doing feed, run_phase(0) and
        fetch, its lookups done once here (batch-1 latency: see bench/RESULTS.md, infer1), or None
        unless the program is one compiled segment run in one phase, without dropout masks or
        thread tuner."""
        items = self._phase_items
        if not (len(items) == 1 and len(items[0]) == 1 and items[0][0][0] == "c") or self._dropout \
                or self._tuner is not None:
            return None
        seg, call_args, feed = items[0][0][1], self._call_args, self.feed
        inputs = {name: (self._views[name, 0], self._views[name, 0].shape) for name in self.graph.inputs}
        outs = [self._views[t] for t in outputs]
        out0 = outs[0] if len(outs) == 1 else None

        def run(feeds):
            for name, value in feeds.items():
                view, shape = inputs.get(name, (None, None))
                if view is None or getattr(value, "shape", None) != shape:
                    feed({name: value})   # (its checks and errors)
                else:
                    view[...] = value
            seg(*call_args())
            return [out0.copy()] if out0 is not None else [v.copy() for v in outs]

        return run

    def run_phase(self, index, batch_size=1):
        args = self._call_args()
        if index == 0 and self._dropout:
            for key, _, rate in self._dropout:
                fill_dropout_mask(global_variables.rng, self._aux[key], rate)
        tuner = self._tuner
        if index == 0 and tuner is not None:
            tuner.start_cycle()
        for kind, item in self._phase_items[index]:
            if kind == "c":
                item(*args)
            elif kind == "updates" and not self._profiling:
                self._run_updates(item, batch_size)
            elif kind == "updates":
                self._timed_updates(item, batch_size)
            elif self._profiling:
                t = time.perf_counter()
                self._run_numpy(item, batch_size)
                calls, total = self._py_time.get(item, (0, 0.0))
                self._py_time[item] = (calls + 1, total + time.perf_counter() - t)
            else:
                self._run_numpy(item, batch_size)
        if tuner is not None and index == len(self.phases) - 1:
            tuner.end_cycle()

    # -- profiling --------------------------------------------------------------------------------
    def _timed_updates(self, updates, batch_size):
        """_run_updates with its time shared by its nodes in proportion to their parameter sizes
        (one call updates them all)."""
        t = time.perf_counter()
        self._run_updates(updates, batch_size)
        t = time.perf_counter() - t
        total = sum(param.array.size for _, param, _ in updates) or 1
        for node, param, _ in updates:
            calls, spent = self._py_time.get(node, (0, 0.0))
            self._py_time[node] = (calls + 1, spent + t * param.array.size / total)

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


class _SgdParameter(ctypes.Structure):
    """One parameter's SGD update for n2d2_sgd_parameters (runtime.c.j2's n2d2_sgd_parameter)."""

    _fields_ = [("n", ctypes.c_long), ("p", ctypes.c_void_p), ("g", ctypes.c_void_p), ("m", ctypes.c_void_p),
                ("rate", ctypes.c_float), ("momentum", ctypes.c_float), ("decay_lr", ctypes.c_float),
                ("low", ctypes.c_float), ("high", ctypes.c_float),
                ("use_decay", ctypes.c_int), ("clamp_low", ctypes.c_int), ("clamp_high", ctypes.c_int)]


_clamping = functools.lru_cache(maxsize=256)(parse_clamping)   # (the regex, once per distinct string)


def _sgd_update(solver, p, grad, batch_size, last=None):
    """The arguments of the compiled fused SGD update (n2d2_sgd) of `p`, as an _SgdParameter,
    after advancing the solver's state; None (and the state untouched) when the solver or the
    arrays are not of the supported kind. `last`: this parameter's previous _SgdParameter,
    refilled (its pointers kept) when p, grad and the momentum buffer are the same arrays
    (`ndarray.ctypes.data` costs ~1 us each).

    The solver's state (iteration count, momentum buffer) is the solver's own, read and updated
    here exactly as `SGD._apply` does (learning-rate policy, its log line), so that the solver
    keeps one state whichever backend steps it; the backend tests compare both paths. The
    float arguments are rounded to float32 by the structure's fields, as `SGD._apply` rounds
    them."""
    same = last is not None and last.arrays[0] is p and last.arrays[1] is grad   # (checked when `last` was made)
    if type(solver) is not SGD or not same and (
            not isinstance(p, np.ndarray) or p.dtype != np.float32 or not p.flags.c_contiguous
            or grad.dtype != np.float32 or grad.shape != p.shape or not grad.flags.c_contiguous):
        return None
    c = solver._config
    if c["iteration_size"] != 1 or not c["polyak_momentum"]:
        return None
    low, high = _clamping(c["clamping"])
    momentum, decay = c["momentum"], c["decay"]
    state = solver._state(p)
    m = None
    if momentum != 0.0 or decay != 0.0:
        m = state.buffers.get("momentum")
        if m is None:
            m = state.buffers["momentum"] = np.zeros_like(p)
        if not (same and m is last.arrays[2]) and not (isinstance(m, np.ndarray) and m.dtype == np.float32
                                                       and m.flags.c_contiguous):
            return None
    lr = solver.advance(state, batch_size)
    if same and last.arrays[2] is m:
        q = last
    else:
        q = _SgdParameter(p.size, p.ctypes.data, grad.ctypes.data, None if m is None else m.ctypes.data)
        q.arrays = (p, grad, m)   # (kept alive while q points to them)
    q.rate, q.decay_lr = lr / batch_size, decay * lr
    settings = (momentum, decay, low, high)
    if getattr(q, "settings", None) != settings:   # (ctypes field writes cost ~0.1 us each: only when changed)
        q.settings = settings
        q.momentum, q.low, q.high = momentum, low or 0.0, high or 0.0
        q.use_decay, q.clamp_low, q.clamp_high = 1 if decay else 0, low is not None, high is not None
    return q


def _sgd_in_c(lib, solver, p, grad, batch_size) -> bool:
    """Apply an `n2d2.solver.SGD` update with the compiled fused kernel (n2d2_sgd); False (and
    nothing done) when the solver or the arrays are not of the supported kind (`_sgd_update`)."""
    q = _sgd_update(solver, p, grad, batch_size)
    if q is None:
        return False
    f = lib.n2d2_sgd_parameters
    if f.argtypes is None:
        f.argtypes = [ctypes.c_int, ctypes.POINTER(_SgdParameter)]
        f.restype = None
    f(1, ctypes.byref(q))
    return True


# kernel source (characters) worth one more translation unit: a unit of this size takes ~0.5 s
# of gcc at -O3; each noinline GEMM helper of runtime.c.j2 a unit calls (n2d2_tile, ...: a
# switch of always_inline micro-kernels, which gcc also clones per constant arguments) costs
# it about as much as _HELPER_CHARS of kernel source, once per unit that calls it
_PART_CHARS = 16000
_HELPER_CHARS = 5000
# part 0's cost per kernel for its call sites (program.c.j2 compiles them at -O1: ~1.7 ms of gcc each)
_CALL_SITE_CHARS = 60
_SPLIT_EVALUATIONS = 20000
_CALL = re.compile(r"\b(n2d2_\w+)\s*\(")


@functools.lru_cache(maxsize=None)
def _runtime_calls():
    """({runtime function: the n2d2_ functions it calls}, the noinline ones), from runtime.c.j2."""
    text = template_source("c/runtime.c.j2")
    starts = [(m.start(), m.group(1), "noinline" in m.group(0))
              for m in re.finditer(r"^(?:static|N2D2_LINK|void|int|float|double|long)\b[^\n]*?\b(n2d2_\w+)\(",
                                   text, re.M)]
    calls, noinline = {}, set()
    for k, (at, name, flag) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(text)
        calls.setdefault(name, set()).update(c for c in _CALL.findall(text, at + len(name) + 1, end) if c != name)
        if flag:
            noinline.add(name)
    return calls, frozenset(noinline)


def _helpers_of(body) -> frozenset:
    """The noinline runtime helpers a kernel body compiles into its unit (through inline ones too)."""
    calls, noinline = _runtime_calls()
    seen, todo = set(), [c for c in _CALL.findall(body) if c in calls]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(calls[name])
    return frozenset(seen & noinline)


def split_parts(functions, nb_kernels) -> int:
    """Give each kernel function a translation unit (`f["part"]`) and return how many: gcc -O3 on
    one large unit is most of a cold compile, and the parts build in parallel
    (`compiler.build_jobs`). Parts are balanced by estimated compile cost: source size, plus
    each runtime helper once per part that calls it, so that kernels calling the same helpers
    go together where the balance allows (the largest first, then moves and swaps of
    functions between two parts while one lowers the costlier of the two, or the other at the
    same maximum); part 0 also holds the call sites. Small programs stay whole."""
    sizes = [len(f["body"]) for f in functions]
    helpers = [_helpers_of(f["body"]) for f in functions]
    total = sum(sizes) + _HELPER_CHARS * len(frozenset().union(*helpers))
    parts = max(1, min(compiler.build_jobs(), len(functions), 1 + total // _PART_CHARS))
    members = [[] for _ in range(parts)]
    evaluations = [0]

    def cost(p, ks):
        evaluations[0] += 1
        return (_CALL_SITE_CHARS * nb_kernels if p == 0 else 0) + sum(sizes[k] for k in ks) + \
            _HELPER_CHARS * len(frozenset().union(*(helpers[k] for k in ks)))

    for k in sorted(range(len(functions)), key=lambda k: -(sizes[k] + _HELPER_CHARS * len(helpers[k]))):
        p = min(range(parts), key=lambda p: (cost(p, members[p] + [k]), p))
        members[p].append(k)
    improved = parts > 1
    # each step lowers (max, sum) of two parts, so it ends; the budget bounds its Python time on
    # large programs (LeNet's training program takes ~500 evaluations, ResNet-18's ~2,000)
    while improved and evaluations[0] < _SPLIT_EVALUATIONS:
        improved = False
        for p in range(parts):
            for q in range(parts):
                if q == p:
                    continue
                now = sorted((cost(p, members[p]), cost(q, members[q])), reverse=True)
                for a in [*members[p]]:
                    for b in [None, *members[q]]:   # move a to q, or swap it with b
                        mp = [k for k in members[p] if k != a] + ([] if b is None else [b])
                        mq = [k for k in members[q] if k != b] + [a]
                        if sorted((cost(p, mp), cost(q, mq)), reverse=True) < now:
                            members[p], members[q] = mp, mq
                            improved = True
                            break
                    if improved:
                        break
                if improved:
                    break
            if improved:
                break
    for p, ks in enumerate(members):
        for k in ks:
            functions[k]["part"] = p
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


class CBackend(Backend):
    """The C backend: `lower` (pure) then a library built by gcc and loaded with ctypes."""

    name = "c"
    default_models = ("Frame",)
    preference = 10
    source_extension = ".c"
    requirement = "a C compiler (gcc or $CC); none was found"
    training_passes = ("fuse_batchnorm_epilogue",)   # templates/c/ops/BatchNormEpilogue.c.j2

    def available(self) -> bool:
        return available()

    def lower(self, graph, phases, training: bool = False, **options) -> CModule:
        return lower(graph, phases, training, **options)

    def load(self, module, **options) -> CProgram:
        return CProgram(module.graph, module.phases, module.training, module=module, **options)


BACKEND = CBackend()


__all__ = ["BACKEND", "CBackend", "CLowering", "CModule", "CProgram", "available", "array_module", "lower",
           "PARALLEL_MIN_MACS"]
