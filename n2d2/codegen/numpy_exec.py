"""The numpy executor: runs an IR graph node by node with the reference op definitions.

It is the fallback backend and the oracle the passes are tested against. `run(graph, feeds)`
evaluates every node in topological order; `Session` keeps the values and saved contexts
between calls so that a training graph can run its phases (forward, backward, update)
separately. Arrays may be numpy or cupy (the op definitions are array-module generic).
"""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import GraphError


def check_feed(graph, name, value):
    """A ValueError for a feed with a batch of 0 into an input declared with a batch (the
    reference fails on empty arrays, a compiled kernel would return nothing)."""
    declared = graph.output_types(name)[0].shape if name in graph.inputs else ()
    shape = getattr(value, "shape", ())
    if len(shape) and shape[0] == 0 and len(declared) and declared[0] != 0:
        raise ValueError(f"graph '{graph.name}': input '{name}' fed a batch of 0 (shape {list(shape)}); "
                         "expected at least 1")


class Session:
    """Values and forward contexts of one run of a graph, phase by phase."""

    def __init__(self, graph, training=False, order=None):
        self.graph = graph
        self.training = training
        self.order = order or graph.topological_order()
        self.values = {}
        self.saved = {}
        self.batch_size = 1

    def feed(self, feeds: dict):
        for name, value in feeds.items():
            if name not in self.graph.inputs:
                raise GraphError(f"graph '{self.graph.name}': '{name}' is not an input "
                                 f"(inputs: {', '.join(self.graph.inputs)})")
            check_feed(self.graph, name, value)
            self.values[name] = [value]
            if value.ndim:
                self.batch_size = int(value.shape[0])

    def run_nodes(self, names):
        g = self.graph
        for name in names:
            node = g.node(name)
            if node.op == "Input":
                if name not in self.values:
                    raise GraphError(f"graph '{g.name}': no value fed for input '{name}'")
                continue
            opdef = op_registry.get(node.op, node=name)
            xs = [self.values[src][out] for src, out in g.inputs_of(name)]
            if node.op == "Update":
                opdef.run_update(g, name, xs[0], self.batch_size)
                self.values[name] = []
            elif getattr(opdef, "needs_forward_context", False):
                fwd = node.attrs["of"]
                if fwd not in self.saved:
                    raise GraphError(f"node '{name}': the forward node '{fwd}' has not run in this session")
                self.values[name] = opdef.run(g, name, xs, self.saved[fwd])
            else:
                params = {role: g.params[p].array for role, p in node.params.items()}
                ys, ctx = opdef.forward(node.attrs, xs, params, self.training)
                self.values[name] = ys
                self.saved[name] = ctx

    def outputs(self):
        return [self.values[n][o] for n, o in self.graph.outputs]


def run(graph, feeds: dict, training: bool = False, keep: bool = False):
    """Evaluate `graph` on `feeds` {input name: array}; returns the list of graph outputs.

    With `keep=True`, returns `(outputs, values, saved)`: every node's outputs and saved
    contexts (what a backward pass needs).
    """
    session = Session(graph, training)
    session.feed(feeds)
    for name in graph.inputs:
        if name not in session.values:
            raise GraphError(f"graph '{graph.name}': no value fed for input '{name}'")
    session.run_nodes(session.order)
    outputs = session.outputs()
    if keep:
        return outputs, session.values, session.saved
    return outputs
