"""Runnable programs of a graph, one interface for every backend.

An inference program maps input arrays to output arrays; a training program runs its three
phases separately (`forward`, `backward`, `update`) because the loss seed comes from the
target in between. `select_backend()` picks the backend: an explicit name, else from
`n2d2.global_variables.default_model` ("Frame": C when a compiler is found, else numpy;
"Frame_CUDA": the CUDA backend, which needs CuPy and a device).
"""
import numpy as np

from n2d2.codegen.numpy_exec import Session
from n2d2.error_handler import WrongValue

BACKENDS = ("numpy", "c", "cuda")


def _require_cuda(why):
    from n2d2.codegen.cuda_backend import available

    if not available():
        raise RuntimeError(f"{why} needs CuPy and a visible CUDA device; none was found (install n2d2[gpu] on a "
                           "GPU machine, or use default_model = 'Frame' / backend 'c' or 'numpy')")


def select_backend(name: str = None) -> str:
    if name is not None:
        if name not in BACKENDS:
            raise WrongValue("backend", name, BACKENDS)
        if name == "c":
            from n2d2.codegen.c_backend import available

            if not available():
                raise RuntimeError("backend 'c' needs a C compiler (gcc or $CC); none was found")
        if name == "cuda":
            _require_cuda("backend 'cuda'")
        return name
    from n2d2.settings import global_variables

    if global_variables.default_model == "Frame_CUDA":
        _require_cuda("default_model 'Frame_CUDA'")
        return "cuda"
    from n2d2.codegen.c_backend import available

    return "c" if available() else "numpy"


def program_source(program):
    """The generated source (C or CUDA) behind an Inference/TrainingProgram, None on numpy."""
    compiled = getattr(program, "_c", None)
    return None if compiled is None else compiled.source


class InferenceProgram:
    """`run(feeds) -> list of output arrays` for a graph."""

    def __init__(self, graph, backend: str):
        self.graph = graph
        self.backend = backend
        if backend == "c":
            from n2d2.codegen.c_backend import CProgram

            self._c = CProgram(graph, [graph.topological_order()], training=False)
        elif backend == "cuda":
            from n2d2.codegen.cuda_backend import CudaProgram

            self._c = CudaProgram(graph, [graph.topological_order()], training=False)

    def run(self, feeds: dict) -> list:
        if self.backend in ("c", "cuda"):
            self._c.feed(feeds)
            self._c.run_phase(0)
            return [self._c.view(t).copy() for t in self.graph.outputs]
        session = Session(self.graph, training=False)
        session.feed(feeds)
        session.run_nodes(session.order)
        return session.outputs()


class TrainingProgram:
    """The three phases of a training graph (`n2d2.ir.autodiff.TrainingGraph`)."""

    def __init__(self, training_graph, backend: str):
        self.tg = training_graph
        self.backend = backend
        self.batch_size = 1
        self._session = None
        if backend == "c":
            from n2d2.codegen.c_backend import CProgram

            seeds = list(training_graph.grad_inputs.values())
            self._c = CProgram(training_graph.graph, [training_graph.forward_nodes,
                                                      seeds + training_graph.backward_nodes,
                                                      training_graph.update_nodes], training=True)
        elif backend == "cuda":
            from n2d2.codegen.cuda_backend import CudaProgram

            seeds = list(training_graph.grad_inputs.values())
            self._c = CudaProgram(training_graph.graph, [training_graph.forward_nodes,
                                                         seeds + training_graph.backward_nodes,
                                                         training_graph.update_nodes], training=True)

    def forward(self, feeds: dict) -> list:
        self.batch_size = int(next(iter(feeds.values())).shape[0])
        g = self.tg.graph
        if self.backend in ("c", "cuda"):
            self._c.feed(feeds)
            self._c.run_phase(0, self.batch_size)
            return [self._c.view(t).copy() for t in g.outputs]
        self._session = Session(g, training=True, order=self.tg.forward_nodes)
        self._session.feed(feeds)
        self._session.run_nodes(self.tg.forward_nodes)
        return self._session.outputs()

    def backward(self, seeds: dict):
        """`seeds` maps each graph output (node, index) to d(loss)/d(output); outputs that need no
        gradient are skipped, names that are no output are an error (not a silent no-op)."""
        unknown = [k for k in seeds if k not in self.tg.graph.outputs]
        if unknown:
            raise KeyError(f"training program of '{self.tg.graph.name}': {unknown} are not outputs of the graph "
                           f"(outputs: {self.tg.graph.outputs})")
        feeds = {self.tg.grad_inputs[k]: v for k, v in seeds.items() if k in self.tg.grad_inputs}
        if self.backend in ("c", "cuda"):
            self._c.feed(feeds)
            self._c.run_phase(1, self.batch_size)
            return
        self._session.feed(feeds)
        self._session.run_nodes(self.tg.backward_nodes)

    def update(self, world=None):
        """Apply the solvers. With a data-parallel `world` (`n2d2.distributed`), the gradients
        are first summed over its ranks (one all-reduce of a flat buffer) and the solvers step
        with the global batch, so every rank applies the same update."""
        batch_size = self.batch_size
        if world is not None and world.size > 1:
            self._allreduce_gradients(world)
            batch_size *= world.size
        if self.backend in ("c", "cuda"):
            self._c.run_phase(2, batch_size)
            return
        self._session.batch_size = batch_size
        self._session.run_nodes(self.tg.update_nodes)

    def _gradient_slots(self):
        """(getter, setter) of each Update node's gradient, in update order."""
        g = self.tg.graph
        slots = []
        for node in self.tg.update_nodes:
            if g.op(node) != "Update":
                continue
            src, out = g.inputs_of(node)[0]
            if self.backend in ("c", "cuda"):
                view = self._c.view((src, out))
                slots.append((lambda v=view: v, lambda a, v=view: v.__setitem__(Ellipsis, a)))
            else:
                values = self._session.values
                slots.append((lambda s=src, o=out: values[s][o],
                              lambda a, s=src, o=out: values.__setitem__(
                                  s, [a if k == o else v for k, v in enumerate(values[s])])))
        return slots

    def _allreduce_gradients(self, world):
        from n2d2.backend import array_module, to_host

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
