"""The C backend: one C translation unit per graph, built by gcc, run over a planned arena.

Each node whose op has a C template (`templates/c/ops/<Op>.c.j2`) and whose attributes the
template supports becomes a kernel function with its shapes baked in; the others run on the
numpy reference over the same arena views (the fallback). A `Grad` node runs where its forward
node ran. Consecutive C nodes of one phase are called through one exported segment function,
so a phase costs one ctypes call per C segment. `Update` nodes run the Python solvers on the
arena's gradient views (the solvers' state stays in one place whichever backend runs).
"""
import ctypes

import numpy as np

from n2d2.backend import array_module
from n2d2.codegen import compiler
from n2d2.codegen.render import cident, environment, render, template_exists
from n2d2.ir import ops as op_registry
from n2d2.ir import planner
from n2d2.ir.types import GraphError

_SUPPORTED_ACTIVATIONS = ("Linear", "Rectifier", "Tanh", "Logistic", "Saturation", "Softplus")


class Buf:
    """A tensor of the arena as the templates see it: a pointer expression, shape, size."""

    def __init__(self, offset, shape):
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in shape)
        self.size = int(np.prod(self.shape)) if self.shape else 1
        self.ptr = f"((float *)(arena + {self.offset}))"


def _activation(spec):
    if spec is None:
        return None
    name, params = spec
    return {"name": name, **dict(params)}


def _activation_ok(attrs):
    spec = attrs.get("activation")
    return spec is None or spec[0] in _SUPPORTED_ACTIVATIONS


def _nchw(shape):
    s = tuple(shape) + (1,) * (4 - len(shape))
    return s[:4]


# -- per-op geometry and support -------------------------------------------------------------------
def _geometry(graph, node):
    """(supported, geometry dict) of a forward node for its C template."""
    op = graph.op(node)
    attrs = graph.attrs(node)
    ins = [t.shape for t in graph.input_types(node)]
    outs = [t.shape for t in graph.output_types(node)]
    if not _activation_ok(attrs) or any(t.dtype != "float32" for t in graph.input_types(node)):
        return False, None
    if op == "Conv":
        if len(ins) != 1 or tuple(attrs.get("sub_sample", (1, 1))) != (1, 1):
            return False, None
        n, c, h, w = ins[0]
        _, o, ho, wo = outs[0]
        wshape = graph.params[graph.node(node).params["weights"]].shape
        groups = attrs.get("groups", 1)
        mapping = attrs.get("mapping")
        (sy, sx), (py, px), (dy, dx) = attrs["stride"], attrs["padding"], attrs["dilation"]
        if py < 0 or px < 0:
            return False, None
        conn = None if mapping is None else np.asarray(mapping, dtype=bool).astype(int).tolist()
        return True, dict(N=n, C=c, H=h, W=w, O=o, HO=ho, WO=wo, KH=wshape[2], KW=wshape[3], SY=sy, SX=sx,
                          PY=py, PX=px, DY=dy, DX=dx, G=groups, CG=c // groups, OG=o // groups, conn=conn)
    if op == "Fc":
        if len(ins) != 1:
            return False, None
        k = int(np.prod(ins[0][1:]))
        return True, dict(N=ins[0][0], K=k, O=outs[0][1])
    if op == "Pool":
        if len(ins) != 1 or attrs.get("mapping") is not None:
            return False, None
        n, c, h, w = ins[0]
        (kh, kw), (sy, sx), (py, px) = attrs["pool"], attrs["stride"], attrs["padding"]
        return True, dict(N=n, C=c, H=h, W=w, HO=outs[0][2], WO=outs[0][3], KH=kh, KW=kw, SY=sy, SX=sx, PY=py,
                          PX=px, MAX=attrs["pooling"] == "Max")
    if op in ("Activation", "Dropout", "Reshape"):
        return len(ins) == 1, {}
    if op == "Softmax":
        if len(ins) != 1:
            return False, None
        n, c, h, w = _nchw(ins[0])
        return True, dict(N=n, C=c, HW=h * w, GS=attrs.get("group_size", 0) or c)
    if op == "BatchNorm":
        if len(ins) != 1 or attrs["momentum"] == 0.0:
            return False, None
        n, c, h, w = _nchw(ins[0])
        return True, dict(N=n, C=c, HW=h * w, M=n * h * w)
    if op == "ElemWise":
        if attrs["operation"] != "Sum":
            return False, None
        n, c, h, w = _nchw(ins[0])
        return True, dict(N=n, C=c, HW=h * w)
    if op == "AddN":
        return True, {}
    return False, None


class _Context(dict):
    """Attribute-style dict for templates."""

    def __getattr__(self, key):
        # AttributeError (not KeyError) so that Jinja's `is defined` sees a missing entry
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


class CProgram:
    """A graph compiled for the C backend, for a fixed execution order split in phases.

    Parameters
    ----------
    graph : Graph
    phases : list of list of node names
        Execution order, phase by phase (an inference graph: one phase).
    training : bool
        Forward nodes run in training mode (batch statistics, dropout).
    """

    def __init__(self, graph, phases, training=False, name=None):
        self.graph = graph
        self.training = training
        self.phases = [list(p) for p in phases]
        order = [n for phase in self.phases for n in phase]
        self.plan = planner.plan(graph, order=order)
        planner.validate(graph, self.plan)
        self.param_names = list(graph.params)
        self.param_index = {p: i for i, p in enumerate(self.param_names)}
        self.aux_specs = {}           # aux key -> (shape, kind)
        self.where = {}               # node -> "c" | "numpy"
        self.kernels = []
        self._decide_and_render(order)
        self._segments = self._segment()
        source = render("c/program.c.j2", graph_name=graph.name, nodes=[k["node"] for k in self.kernels],
                        arena_bytes=self.plan.arena_bytes, kernels=self.kernels, segments=self._segments)
        self.source = source
        self._lib = None
        if self.kernels:
            self._lib = compiler.load_library(compiler.build_shared_library(source, cident(name or graph.name)))
        self._arena = _aligned_zeros(self.plan.arena_bytes)
        self._arena_ptr = self._arena.ctypes.data_as(ctypes.c_void_p)
        self._aux = {key: np.zeros(shape, dtype=np.float32) for key, (shape, _) in self.aux_specs.items()}
        self._aux_keys = list(self.aux_specs)
        self._aux_ptrs = (ctypes.c_void_p * max(1, len(self._aux_keys)))(
            *[a.ctypes.data for a in (self._aux[k] for k in self._aux_keys)])
        self._views = {}
        for t, off in self.plan.offsets.items():
            tt = graph.output_types(t[0])[t[1]]
            self._views[t] = np.ndarray(tt.shape, dtype=tt.dtype, buffer=self._arena, offset=off)
        self._seg_funcs = {}
        for seg in self._segments:
            f = getattr(self._lib, f"n2d2_segment_{seg['index']}")
            f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            f.restype = None
            self._seg_funcs[seg["index"]] = f
        self._phase_items = self._phase_plan()
        self.saved = {}

    # -- building ---------------------------------------------------------------------------------
    def _buf(self, tensor):
        tt = self.graph.output_types(tensor[0])[tensor[1]]
        return Buf(self.plan.offsets[tensor], tt.shape)

    def _forward_context(self, node, g):
        gr = self.graph
        d = gr.node(node)
        ctx = _Context(
            x=[self._buf(t) for t in gr.inputs_of(node)],
            y=self._buf((node, 0)),
            p=_Context({r: f"params[{self.param_index[p]}]" for r, p in d.params.items()}),
            a=_Context(d.attrs), act=_activation(d.attrs.get("activation")), g=_Context(g or {}),
            training=self.training, aux=_Context())
        if d.op == "Dropout" and self.training:
            key = f"{node}.mask"
            self.aux_specs[key] = (gr.output_types(node)[0].shape, "dropout")
            ctx.aux["mask"] = f"aux[{list(self.aux_specs).index(key)}]"
        if d.op == "BatchNorm" and self.training:
            key = f"{node}.stats"
            self.aux_specs[key] = ((2 * g["C"],), "scratch")
            ctx.aux["stats"] = f"aux[{list(self.aux_specs).index(key)}]"
        return ctx

    def _decide_and_render(self, order):
        env = environment()
        gr = self.graph
        forward_ctx = {}
        for index, node in enumerate(order):
            op = gr.op(node)
            if op in ("Input", "Update"):
                continue
            if op == "Grad":
                fwd = gr.attrs(node)["of"]
                if self.where.get(fwd) != "c" or not _has_macro(gr.op(fwd), "backward"):
                    self.where[node] = "numpy"
                    continue
                attrs = gr.attrs(node)
                outs = [self._buf((node, k)) for k in range(len(gr.output_types(node)))]
                fwd_inputs = gr.inputs_of(fwd)
                dx, k = [], 0
                for need in attrs["input_needs"]:
                    dx.append(outs[k] if need else None)
                    k += need
                dp = _Context({r: outs[k + i] for i, r in enumerate(attrs["roles"])})
                ctx = _Context(fwd=forward_ctx[fwd], dy=self._buf(gr.inputs_of(node)[0]), dx=dx, dp=dp)
                if len(fwd_inputs) != len(dx):
                    self.where[node] = "numpy"
                    continue
                body = env.from_string('{% import "c/ops/' + gr.op(fwd) + '.c.j2" as op %}{{ op.backward(n) }}')
                self._add_kernel(index, node, "Grad", body.render(n=ctx))
                continue
            supported, g = _geometry(gr, node)
            if not supported or not template_exists(f"c/ops/{op}.c.j2"):
                self.where[node] = "numpy"
                continue
            ctx = self._forward_context(node, g)
            forward_ctx[node] = ctx
            body = env.from_string('{% import "c/ops/' + op + '.c.j2" as op %}{{ op.forward(n) }}')
            self._add_kernel(index, node, op, body.render(n=ctx))

    def _add_kernel(self, index, node, op, body):
        gr = self.graph
        sig = ", ".join(str(t) for t in gr.input_types(node)) + " -> " + \
            ", ".join(str(t) for t in gr.output_types(node))
        self.where[node] = "c"
        self.kernels.append({"index": index, "node": node, "op": op, "fname": f"k{index}_{cident(node)}"[:60],
                             "signature": sig, "body": body.rstrip("\n")})

    def _segment(self):
        fname = {k["node"]: k["fname"] for k in self.kernels}
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
        return [{"index": i, "nodes": s, "kernels": [fname[n] for n in s]} for i, s in enumerate(segments)]

    def _phase_plan(self):
        """Per phase: the list of items to run: ('c', segment index) or ('py', node)."""
        seg_of = {s["nodes"][0]: s["index"] for s in self._segments}
        in_seg = {n for s in self._segments for n in s["nodes"]}
        plans = []
        for phase in self.phases:
            items = []
            for node in phase:
                if node in seg_of:
                    items.append(("c", seg_of[node]))
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
        for name, value in feeds.items():
            self._views[(name, 0)][...] = value

    def _params_ptrs(self):
        arrays = [self.graph.params[p].array for p in self.param_names]
        for p, a in zip(self.param_names, arrays):
            if not (isinstance(a, np.ndarray) and a.dtype == np.float32 and a.flags.c_contiguous):
                raise GraphError(f"parameter '{p}' must be a contiguous float32 numpy array for the C backend")
        return (ctypes.c_void_p * max(1, len(arrays)))(*[a.ctypes.data for a in arrays])

    def run_phase(self, index, batch_size=1):
        from n2d2.settings import global_variables

        params = self._params_ptrs()
        for key, (shape, kind) in self.aux_specs.items():
            if kind == "dropout" and index == 0:
                node = key[: -len(".mask")]
                rate = self.graph.attrs(node)["dropout"]
                from n2d2.ops.dropout import dropout_mask

                self._aux[key][...] = dropout_mask(global_variables.rng, shape, rate)
        for kind, item in self._phase_items[index]:
            if kind == "c":
                self._seg_funcs[item](self._arena_ptr, params, self._aux_ptrs)
            else:
                self._run_numpy(item, batch_size)

    def _run_numpy(self, node, batch_size):
        gr = self.graph
        d = gr.node(node)
        opdef = op_registry.get(d.op, node=node)
        xs = [self._views[t] for t in gr.inputs_of(node)]
        if d.op == "Update":
            opdef.run_update(gr, node, xs[0], batch_size)
            return
        if getattr(opdef, "needs_forward_context", False):
            outs = opdef.run(gr, node, xs, self.saved[d.attrs["of"]])
        else:
            params = {r: gr.params[p].array for r, p in d.params.items()}
            outs, self.saved[node] = opdef.forward(d.attrs, xs, params, self.training)
        for k, value in enumerate(outs):
            view = self._views[(node, k)]
            if value is not view:
                view[...] = value


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


__all__ = ["CProgram", "available", "array_module"]
