"""Runnable programs of a graph, one interface for every backend.

An inference program maps input arrays to output arrays; a training program runs its three
phases separately (`forward`, `backward`, `update`) because the loss seed comes from the
target in between. Both ask the backend registry (`n2d2.codegen.backends`) for a program
(lowered, then loaded) and drive it through the backends' common interface. `select_backend()`
picks the backend: an explicit name, else from `n2d2.global_variables.default_model` ("Frame": C
when a compiler is found, else numpy; "Frame_CUDA": the CUDA backend, which needs CuPy and a
device).
"""
import numpy as np

from n2d2.backend import array_module, to_host
from n2d2.codegen import backends

BACKENDS = backends.NAMES


def select_backend(name: str = None) -> str:
    """The backend to run (see `n2d2.codegen.backends.select`)."""
    return backends.select(name)


def program_source(program):
    """The generated source (C or CUDA) behind an Inference/TrainingProgram, None on numpy."""
    return getattr(program._c, "source", None)


class InferenceProgram:
    """`run(feeds) -> list of output arrays` for a graph."""

    def __init__(self, graph, backend: str):
        self.graph = graph
        self.backend = backend
        self._c = backends.get(backend).program(graph, [graph.topological_order()], training=False)

    def run(self, feeds: dict) -> list:
        self._c.feed(feeds)
        self._c.run_phase(0)
        return [self._c.fetch(t) for t in self.graph.outputs]


class TrainingProgram:
    """The three phases of a training graph (`n2d2.ir.autodiff.TrainingGraph`)."""

    def __init__(self, training_graph, backend: str):
        self.tg = training_graph
        self.backend = backend
        self.batch_size = 1
        seeds = list(training_graph.grad_inputs.values())
        phases = [training_graph.forward_nodes, seeds + training_graph.backward_nodes, training_graph.update_nodes]
        self._c = backends.get(backend).program(training_graph.graph, phases, training=True)

    def forward(self, feeds: dict) -> list:
        self.batch_size = int(next(iter(feeds.values())).shape[0])
        self._c.feed(feeds)
        self._c.run_phase(0, self.batch_size)
        return [self._c.fetch(t) for t in self.tg.graph.outputs]

    def backward(self, seeds: dict):
        """`seeds` maps each graph output (node, index) to d(loss)/d(output); outputs that need no
        gradient are skipped, names that are no output are an error (not a silent no-op)."""
        unknown = [k for k in seeds if k not in self.tg.graph.outputs]
        if unknown:
            raise KeyError(f"training program of '{self.tg.graph.name}': {unknown} are not outputs of the graph "
                           f"(outputs: {self.tg.graph.outputs})")
        feeds = {self.tg.grad_inputs[k]: v for k, v in seeds.items() if k in self.tg.grad_inputs}
        self._c.feed(feeds)
        self._c.run_phase(1, self.batch_size)

    def update(self, world=None):
        """Apply the solvers. With a data-parallel `world` (`n2d2.distributed`), the gradients
        are first summed over its ranks (one all-reduce of a flat buffer) and the solvers step
        with the global batch, so every rank applies the same update."""
        batch_size = self.batch_size
        if world is not None and world.size > 1:
            self._allreduce_gradients(world)
            batch_size *= world.size
        self._c.run_phase(2, batch_size)

    def _gradient_slots(self):
        """(getter, setter) of each Update node's gradient, in update order."""
        g = self.tg.graph
        program = self._c
        slots = []
        for node in self.tg.update_nodes:
            if g.op(node) != "Update":
                continue
            t = g.inputs_of(node)[0]
            slots.append((lambda t=t: program.view(t), lambda a, t=t: program.assign(t, a)))
        return slots

    def _allreduce_gradients(self, world):
        slots = self._gradient_slots()
        grads = [get() for get, _ in slots]
        if not grads:
            return
        flat = np.concatenate([to_host(a).reshape(-1).astype(np.float32, copy=False) for a in grads])
        world.allreduce_sum(flat, what=f"gradient all-reduce of '{self.tg.graph.name}'")
        offset = 0
        for (_, put), a in zip(slots, grads):
            n = a.size
            put(array_module(a).asarray(flat[offset:offset + n].reshape(a.shape)).astype(a.dtype, copy=False))
            offset += n
