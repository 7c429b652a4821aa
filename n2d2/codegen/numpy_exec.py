"""The numpy executor: runs an IR graph node by node with the reference op definitions.

It is the fallback backend and the oracle the passes are tested against: the interpreter
(`n2d2.codegen.interpreter`) over a dict store. `run(graph, feeds)` evaluates every node in
topological order; `Session` keeps the values and saved contexts between calls so that a
training graph can run its phases (forward, backward, update) separately. Arrays may be numpy
or cupy (the op definitions are array-module generic).
"""
from n2d2.codegen.interpreter import DictStore, Interpreter, check_feed

__all__ = ["Session", "check_feed", "run"]


class Session(Interpreter):
    """Values and forward contexts of one run of a graph, phase by phase.

    `values` is `{node: [outputs]}`, `saved` `{forward node: context}` (every forward node's),
    `order` the node order `run(...)` follows (default: topological)."""

    def __init__(self, graph, training=False, order=None):
        super().__init__(graph, DictStore(), training=training, keep_contexts=True)
        self.order = order or graph.topological_order()

    @property
    def values(self) -> dict:
        return self.store.values


def run(graph, feeds: dict, training: bool = False, keep: bool = False):
    """Evaluate `graph` on `feeds` {input name: array}; returns the list of graph outputs.

    With `keep=True`, returns `(outputs, values, saved)`: every node's outputs and saved
    contexts (what a backward pass needs).
    """
    session = Session(graph, training)
    session.feed(feeds)
    session.require_inputs(feeds)
    session.run_nodes(session.order)
    outputs = session.outputs()
    if keep:
        return outputs, session.values, session.saved
    return outputs
