"""The numpy executor: runs an IR graph node by node with the reference op definitions.

It is the fallback backend and the oracle the passes are tested against: the interpreter
(`n2d2.codegen.interpreter`) over a dict store. `run(graph, feeds)` evaluates every node in
topological order; `Session` keeps the values and saved contexts between calls so that a
training graph can run its phases (forward, backward, update) separately. Arrays may be numpy
or cupy (the op definitions are array-module generic).
"""
from n2d2.codegen.backends import Backend
from n2d2.codegen.interpreter import DictStore, Interpreter, check_feed

__all__ = ["BACKEND", "NumpyBackend", "NumpyProgram", "Session", "check_feed", "run"]


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


# -- the "numpy" backend ---------------------------------------------------------------------------
class NumpyModule:
    """The numpy backend's lowering: nothing to compile; every node runs on the interpreter."""

    source = None
    kernels = ()

    def __init__(self, graph, phases, training):
        self.graph = graph
        self.phases = [list(p) for p in phases]
        self.training = training
        self.where = {n: "numpy" for phase in self.phases for n in phase if graph.op(n) != "Input"}


class NumpyProgram(Session):
    """A graph run phase by phase on the interpreter over a dict store.

    Phase 0 starts afresh: the values of an earlier run are dropped, except the inputs fed since
    (a missing input is an error, as in `run`). Inputs of later phases (gradient seeds) are read
    when a node uses them."""

    def __init__(self, module):
        super().__init__(module.graph, training=module.training,
                         order=[n for phase in module.phases for n in phase])
        self.module = module
        self.phases = module.phases
        self.where = module.where
        self.source = None
        self._fed = set()

    def feed(self, feeds: dict):
        super().feed(feeds)
        self._fed.update(feeds)

    def run_phase(self, index: int, batch_size: int = None):
        if batch_size is not None:
            self.batch_size = batch_size
        nodes = self.phases[index]
        if index == 0:
            self.store.forget(keep=self._fed)
            self.saved.clear()
            self._fed = set()
        else:
            nodes = [n for n in nodes if self.graph.op(n) != "Input"]
        self.run_nodes(nodes)

    def view(self, tensor):
        return self.store.read(tensor)

    def fetch(self, tensor):
        """The tensor's value (a fresh array of this run: safe to keep)."""
        return self.store.read(tensor)

    def assign(self, tensor, value):
        self.store.assign(tensor, value)

    def profile(self) -> dict:
        return {}


class NumpyBackend(Backend):
    """The reference: every node on its op definition (numpy or cupy arrays); always available."""

    name = "numpy"
    default_models = ("Frame",)
    preference = 0
    requirement = "numpy"

    def available(self) -> bool:
        return True

    def lower(self, graph, phases, training: bool = False, **options) -> NumpyModule:
        return NumpyModule(graph, phases, training)

    def load(self, module, **options) -> NumpyProgram:
        return NumpyProgram(module)


BACKEND = NumpyBackend()
