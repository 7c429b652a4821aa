"""An executor that runs a graph over ONE preallocated arena, following a buffer plan.

It exists to exercise plans for real, before any compiled backend relies on them: every
tensor is a numpy view into the arena at its planned offset, each op's reference forward
(`n2d2.ir.ops`) reads its input views, and its result is written into its planned output
view (`view[...] = result`), so in-place outputs really overwrite their inputs and concat
producers really write into their concat's slices (a fully aliased Concat does nothing). If
the plan were wrong, a later op would read overwritten data and the outputs would differ
from `numpy_exec.run`'s.

Training graphs (`n2d2.ir.autodiff`) run too: a `Grad` node gets the context its forward
node saved earlier in the same run (as in `numpy_exec.Session`), and an `Update` node applies
its solver to its gradient's view. Those contexts may point into the arena; autodiff makes
every forward input and output an input of the Grad node, so liveness keeps them intact until
the Grad has run (and they can then no longer be overwritten in place). Contexts are dropped
once their Grad has run, and at the end of a run.

numpy only (the arena is host memory).
"""
from __future__ import annotations

import numpy as np

from n2d2.ir import ops as op_registry
from n2d2.ir.types import GraphError

__all__ = ["ArenaProgram"]


class ArenaProgram:
    """A graph bound to one arena and a plan; `run` may be called many times.

    Parameters
    ----------
    graph : n2d2.ir.Graph
    plan : n2d2.ir.planner.Plan, optional
        Defaults to `planner.plan(graph)`. It is validated first (`planner.validate`) unless
        `check=False`, so that a bad plan fails with a message rather than a wrong answer.
    """

    def __init__(self, graph, plan=None, check: bool = True):
        from n2d2.ir import planner

        self.graph = graph
        self.plan = planner.plan(graph) if plan is None else plan
        if check:
            planner.validate(graph, self.plan)
        align = self.plan.alignment
        raw = np.zeros(self.plan.arena_bytes + align, dtype=np.uint8)
        start = (-raw.ctypes.data) % align
        self.arena = raw[start:start + self.plan.arena_bytes]
        self._raw = raw
        self.views = {}
        for name in graph.nodes():
            for idx, tt in enumerate(graph.output_types(name)):
                off = self.plan.offsets[(name, idx)]
                if off < 0 or off + tt.nbytes > self.plan.arena_bytes:
                    raise planner.PlanError(f"tensor {name}:{idx} ({tt}) at offset {off} does not fit in the "
                                            f"{self.plan.arena_bytes}-byte arena")
                flat = self.arena[off:off + tt.nbytes].view(np.dtype(tt.dtype))
                self.views[(name, idx)] = flat.reshape(tt.shape)
        self._grad_of = {graph.attrs(n)["of"] for n in graph.nodes() if graph.op(n) == "Grad"}
        self._steps = [self._compile(name) for name in self.plan.order]

    def _compile(self, name):
        g = self.graph
        node = g.node(name)
        ins = [self.views[t] for t in g.inputs_of(name)]
        outs = [self.views[(name, i)] for i in range(len(node.outputs))]
        if node.op == "Input":
            return ("input", name, outs[0])
        flags = self.plan.concat_aliased.get(name, ())
        if node.op == "Concat" and any(flags) and name not in self._grad_of:
            # Producers wrote their slices already; copy only the inputs that could not alias.
            copies, c0 = [], 0
            for x, aliased in zip(ins, flags):
                c1 = c0 + x.shape[1]
                if not aliased:
                    copies.append((x, outs[0][:, c0:c1]))
                c0 = c1
            return ("copy", name, copies)
        opdef = op_registry.get(node.op, node=name)
        if node.op == "Update":
            return ("update", name, (opdef, ins))
        if getattr(opdef, "needs_forward_context", False):
            return ("grad", name, (opdef, node.attrs["of"], ins, outs))
        return ("op", name, (opdef, node.attrs, node.params, ins, outs))

    def _store(self, name, opdef, ys, outs):
        if len(ys) != len(outs):
            raise GraphError(f"node '{name}' ({opdef.name}): produced {len(ys)} outputs, "
                             f"the graph declares {len(outs)}")
        for i, (y, view) in enumerate(zip(ys, outs)):
            if tuple(y.shape) != view.shape:
                raise GraphError(f"node '{name}' ({opdef.name}): output {i} has shape {list(y.shape)}, "
                                 f"the graph declares {list(view.shape)}")
            view[...] = y

    def run(self, feeds: dict, training: bool = False) -> list:
        """Evaluate the graph on `feeds` {input name: array}; returns copies of the outputs."""
        g = self.graph
        batch_size = 1
        for name, value in feeds.items():
            if name not in g.inputs:
                raise GraphError(f"graph '{g.name}': '{name}' is not an input (inputs: {', '.join(g.inputs)})")
            if np.ndim(value):
                batch_size = int(np.shape(value)[0])
        for name in g.inputs:
            if name not in feeds:
                raise GraphError(f"graph '{g.name}': no value fed for input '{name}'")
        saved = {}
        for kind, name, data in self._steps:
            if kind == "input":
                x = np.asarray(feeds[name])
                if x.shape != data.shape:
                    raise ValueError(f"graph '{g.name}': input '{name}' has shape {list(x.shape)}, "
                                     f"the plan expects {list(data.shape)}")
                data[...] = x
            elif kind == "copy":
                for src, dst in data:
                    dst[...] = src
            elif kind == "update":
                opdef, ins = data
                opdef.run_update(g, name, ins[0], batch_size)
            elif kind == "grad":
                opdef, fwd, ins, outs = data
                if fwd not in saved:
                    raise GraphError(f"node '{name}': the forward node '{fwd}' has not run before it")
                self._store(name, opdef, opdef.run(g, name, ins, saved.pop(fwd)), outs)
            else:
                opdef, attrs, pnames, ins, outs = data
                params = {role: g.params[p].array for role, p in pnames.items()}
                ys, ctx = opdef.forward(attrs, ins, params, training)
                if name in self._grad_of:
                    saved[name] = ctx
                self._store(name, opdef, ys, outs)
        return [self.views[t].copy() for t in g.outputs]
