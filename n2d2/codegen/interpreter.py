"""The one interpreter of IR graphs: runs nodes on their reference op definitions.

Modelled on PyTorch FX's `Interpreter`: `Interpreter.run_node` dispatches a node by its kind
(`run_input`, `run_forward`, `run_grad`, `run_update`), each an overridable method, and reads
and writes tensors through a swappable value store:

- `DictStore` keeps every node's outputs as `{node: [arrays]}`: the numpy backend and the
  oracle the passes are tested against (`n2d2.codegen.numpy_exec`);
- `ArenaStore` keeps them in views of one planned arena (`{(node, k): view}`): an output is
  written into its planned view (`view[...] = value`), so that in-place outputs really
  overwrite their inputs. It serves the arena checker (`n2d2.codegen.arena_exec`) and the
  per-node fallback of the compiled programs (the C and CUDA nodes without a kernel).

A `Grad` node gets the context its forward node saved earlier (`self.saved`); an `Update`
node applies its parameter's solver to its gradient with the interpreter's `batch_size`.
Arrays may be numpy or cupy (the op definitions are array-module generic).
"""
from __future__ import annotations

import numpy as np

from n2d2.ir import ops as op_registry
from n2d2.ir.types import GraphError

__all__ = ["ArenaStore", "DictStore", "Interpreter", "check_feed"]


def check_feed(graph, name, value):
    """A ValueError for a feed with a batch of 0 into an input declared with a batch (the
    reference fails on empty arrays, a compiled kernel would return nothing)."""
    declared = graph.output_types(name)[0].shape if name in graph.inputs else ()
    shape = getattr(value, "shape", ())
    if len(shape) and shape[0] == 0 and len(declared) and declared[0] != 0:
        raise ValueError(f"graph '{graph.name}': input '{name}' fed a batch of 0 (shape {list(shape)}); "
                         "expected at least 1")


class DictStore:
    """Node outputs as `values = {node: [arrays]}`; a fed input is `[value]`."""

    def __init__(self):
        self.values = {}

    def read(self, tensor):
        node, index = tensor
        return self.values[node][index]

    def feed(self, graph, name, value):
        self.values[name] = [value]

    def load_input(self, graph, name):
        if name not in self.values:
            raise GraphError(f"graph '{graph.name}': no value fed for input '{name}'")

    def write(self, graph, node, opdef, values):
        self.values[node] = list(values)

    def assign(self, tensor, value):
        """Replace one tensor's value (e.g. a gradient after an all-reduce)."""
        node, index = tensor
        self.values[node] = [value if k == index else v for k, v in enumerate(self.values[node])]

    def forget(self, keep=()):
        """Drop every value except those of the nodes in `keep`."""
        self.values = {n: v for n, v in self.values.items() if n in keep}


class ArenaStore:
    """Node outputs in views of one planned arena: `views = {(node, k): array view}`.

    A fed input is held until its `Input` node runs (`load_input`), then copied into its view:
    the plan may give an input that comes late in the order (a gradient seed) memory that
    earlier tensors used. `write` checks the count and shapes of a node's outputs against its
    views (a broadcasting assignment would hide a wrong shape) and copies each output into its
    view unless it is that view already."""

    def __init__(self, views):
        self.views = views
        self.pending = {}

    def read(self, tensor):
        return self.views[tensor]

    def feed(self, graph, name, value):
        view = self.views[(name, 0)]
        shape = tuple(np.shape(value))
        if shape != tuple(view.shape):
            raise ValueError(f"graph '{graph.name}': input '{name}' has shape {list(shape)}, "
                             f"the plan expects {list(view.shape)}")
        self.pending[name] = value

    def load_input(self, graph, name):
        if name not in self.pending:
            raise GraphError(f"graph '{graph.name}': no value fed for input '{name}'")
        self.views[(name, 0)][...] = self.pending.pop(name)

    def write(self, graph, node, opdef, values):
        count = len(graph.node(node).outputs)
        if len(values) != count:
            raise GraphError(f"node '{node}' ({opdef.name}): produced {len(values)} outputs, "
                             f"the graph declares {count}")
        for k, value in enumerate(values):
            view = self.views[(node, k)]
            if value is view:
                continue
            if tuple(value.shape) != tuple(view.shape):
                raise GraphError(f"node '{node}' ({opdef.name}): output {k} has shape {list(value.shape)}, "
                                 f"the graph declares {list(view.shape)}")
            view[...] = value

    def assign(self, tensor, value):
        self.views[tensor][...] = value


class Interpreter:
    """Runs nodes of `graph` on their reference op definitions over a value store.

    Parameters
    ----------
    graph : n2d2.ir.Graph
    store : DictStore or ArenaStore
    training : bool
        Forward nodes run in training mode (batch statistics, dropout).
    keep_contexts : bool
        Keep the context of every forward node (`saved`, e.g. for tests that replay a backward
        by hand); otherwise only those of the nodes some `Grad` node differentiates.
    release_contexts : bool
        Drop a forward node's context once its `Grad` has run (each forward runs once before
        its backward, as in one training step).

    Subclasses override `run_input`, `run_forward`, `run_grad` or `run_update` to change how
    one kind of node runs (the C program applies SGD updates in C, the arena checker copies
    only the unaliased inputs of a Concat).
    """

    def __init__(self, graph, store, training: bool = False, keep_contexts: bool = True,
                 release_contexts: bool = False):
        self.graph = graph
        self.store = store
        self.training = training
        self.saved = {}
        self.batch_size = 1
        self.keep_contexts = keep_contexts
        self.release_contexts = release_contexts
        self.grad_of = {graph.attrs(n)["of"] for n in graph.nodes() if graph.op(n) == "Grad"}
        self._nodes = {}   # node -> (node data, op definition, input tensors), looked up once

    # -- feeding ------------------------------------------------------------------------------------
    def feed(self, feeds: dict):
        """Hand input values to the store ({input name: array}); the batch size is the first
        dimension of the last fed array."""
        g = self.graph
        for name, value in feeds.items():
            if name not in g.inputs:
                raise GraphError(f"graph '{g.name}': '{name}' is not an input (inputs: {', '.join(g.inputs)})")
            check_feed(g, name, value)
            self.store.feed(g, name, value)
            if np.ndim(value):
                self.batch_size = int(np.shape(value)[0])

    def require_inputs(self, feeds: dict):
        """A GraphError naming the first graph input missing from `feeds`."""
        for name in self.graph.inputs:
            if name not in feeds:
                raise GraphError(f"graph '{self.graph.name}': no value fed for input '{name}'")

    # -- running ------------------------------------------------------------------------------------
    def run_nodes(self, names):
        for name in names:
            self.run_node(name)

    def run_node(self, name):
        entry = self._nodes.get(name)
        if entry is None:
            g = self.graph
            d = g.node(name)
            opdef = None if d.op == "Input" else op_registry.get(d.op, node=name)
            entry = self._nodes[name] = (d, opdef, list(g.inputs_of(name)))
        d, opdef, sources = entry
        if opdef is None:
            self.run_input(name)
            return
        read = self.store.read
        xs = [read(t) for t in sources]
        if d.op == "Update":
            self.run_update(name, opdef, xs[0])
        elif getattr(opdef, "needs_forward_context", False):
            self.run_grad(name, d, opdef, xs)
        else:
            self.run_forward(name, d, opdef, xs)

    def run_input(self, name):
        self.store.load_input(self.graph, name)

    def run_forward(self, name, d, opdef, xs):
        params = {role: self.graph.params[p].array for role, p in d.params.items()}
        ys, ctx = opdef.forward(d.attrs, xs, params, self.training)
        if self.keep_contexts or name in self.grad_of:
            self.saved[name] = ctx
        self.store.write(self.graph, name, opdef, ys)

    def run_grad(self, name, d, opdef, xs):
        fwd = d.attrs["of"]
        if fwd not in self.saved:
            raise GraphError(f"node '{name}': the forward node '{fwd}' has not run before it")
        ctx = self.saved.pop(fwd) if self.release_contexts else self.saved[fwd]
        self.store.write(self.graph, name, opdef, opdef.run(self.graph, name, xs, ctx))

    def run_update(self, name, opdef, grad):
        opdef.run_update(self.graph, name, grad, self.batch_size)
        self.store.write(self.graph, name, opdef, [])

    def outputs(self) -> list:
        """The graph outputs as the store holds them (views of an arena store: not copies)."""
        return [self.store.read(t) for t in self.graph.outputs]
