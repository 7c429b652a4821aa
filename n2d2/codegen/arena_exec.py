"""An executor that runs a graph over ONE preallocated arena, following a buffer plan.

It exists to exercise plans for real, before any compiled backend relies on them: it is the
interpreter (`n2d2.codegen.interpreter`) over an arena store, where every tensor is a numpy
view into the arena at its planned offset, each op's reference forward reads its input views,
and its result is written into its planned output view (`view[...] = result`), so in-place
outputs really overwrite their inputs and concat producers really write into their concat's
slices (a fully aliased Concat does nothing). If the plan were wrong, a later op would read
overwritten data and the outputs would differ from `numpy_exec.run`'s.

Training graphs (`n2d2.ir.autodiff`) run too: a `Grad` node gets the context its forward
node saved earlier in the same run, and an `Update` node applies its solver to its gradient's
view. Those contexts may point into the arena; autodiff makes every forward input and output
an input of the Grad node, so liveness keeps them intact until the Grad has run (and they can
then no longer be overwritten in place). Contexts are dropped once their Grad has run, and at
the end of a run.

numpy only (the arena is host memory).
"""
from __future__ import annotations

import numpy as np

from n2d2.codegen.interpreter import ArenaStore, Interpreter
from n2d2.ir import planner

__all__ = ["ArenaProgram"]


class ArenaProgram(Interpreter):
    """A graph bound to one arena and a plan; `run` may be called many times.

    Parameters
    ----------
    graph : n2d2.ir.Graph
    plan : n2d2.ir.planner.Plan, optional
        Defaults to `planner.plan(graph)`. It is validated first (`planner.validate`) unless
        `check=False`, so that a bad plan fails with a message rather than a wrong answer.
    """

    def __init__(self, graph, plan=None, check: bool = True):
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
        super().__init__(graph, ArenaStore(self.views), keep_contexts=False, release_contexts=True)
        # Concats whose producers wrote (some of) their slices already: copy only the others
        self._concat_copies = {}
        for name, flags in self.plan.concat_aliased.items():
            if graph.op(name) != "Concat" or not any(flags) or name in self.grad_of:
                continue
            out, copies, c0 = self.views[(name, 0)], [], 0
            for src, aliased in zip(graph.inputs_of(name), flags):
                x = self.views[src]
                c1 = c0 + x.shape[1]
                if not aliased:
                    copies.append((x, out[:, c0:c1]))
                c0 = c1
            self._concat_copies[name] = copies

    def steps(self) -> list:
        """How each node of the plan's order runs: (kind, node, data) with kind "input",
        "update", "grad", "op", or "copy" for a Concat whose producers wrote their slices (data:
        the (source view, destination slice) pairs still copied; [] when fully aliased)."""
        out = []
        for name in self.plan.order:
            op = self.graph.op(name)
            if op == "Input":
                out.append(("input", name, self.views[(name, 0)]))
            elif name in self._concat_copies:
                out.append(("copy", name, self._concat_copies[name]))
            elif op == "Update":
                out.append(("update", name, None))
            elif op == "Grad":
                out.append(("grad", name, self.graph.attrs(name)["of"]))
            else:
                out.append(("op", name, None))
        return out

    def run_forward(self, name, d, opdef, xs):
        copies = self._concat_copies.get(name)
        if copies is None:
            super().run_forward(name, d, opdef, xs)
            return
        for src, dst in copies:
            dst[...] = src

    def run(self, feeds: dict, training: bool = False) -> list:
        """Evaluate the graph on `feeds` {input name: array}; returns copies of the outputs."""
        self.training = training
        self.batch_size = 1
        self.saved.clear()
        self.store.pending.clear()
        try:
            self.feed(feeds)
            self.require_inputs(feeds)
            self.run_nodes(self.plan.order)
        finally:
            self.saved.clear()
            self.store.pending.clear()
        return [self.views[t].copy() for t in self.graph.outputs]
