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

from n2d2 import distributed
from n2d2.backend import array_module, to_host
from n2d2.codegen import backends
from n2d2.ir import batch_chunks
from n2d2.ir.passes.shape_inference import rebatch
from n2d2.ir.types import GraphError

BACKENDS = backends.NAMES


def select_backend(name: str = None) -> str:
    """The backend to run (see `n2d2.codegen.backends.select`)."""
    return backends.select(name)


def program_source(program):
    """The generated source (C or CUDA) behind an Inference/TrainingProgram, None on numpy."""
    return getattr(program._c, "source", None)


class InferenceProgram:
    """`run(feeds) -> list of output arrays` for a graph.

    On the C backend, a batch whose front streams more than the caches hold runs that front
    in chunks of a few images (`n2d2.ir.batch_chunks`): one program for the prefix at the
    chunk's batch (and one for a smaller last chunk), one for the rest at the full batch, fed
    the prefix's outputs chunk by chunk. `chunking=False` (or `N2D2_CHUNK_LIVE_BYTES=0`) keeps
    one program. `programs` lists the compiled programs (prefix ones first)."""

    def __init__(self, graph, backend: str, chunking: bool = True):
        self.graph = graph
        self.backend = backend
        self._outputs = list(graph.outputs)
        self.chunks = batch_chunks.plan(graph) if chunking and backend == "c" else None
        if self.chunks is not None:
            prefix, suffix, self._cut_inputs = batch_chunks.split(graph, self.chunks)
            chunk, batch = self.chunks.chunk, self.chunks.batch
            try:
                parts = {size: rebatch(prefix, size) for size in {chunk, batch % chunk} if size}
            except (GraphError, ValueError):   # a shape rule bound to the graph's batch: run it whole
                self.chunks = None
        self._call = None
        if self.chunks is None:
            self._c = self._program(graph)
            self.programs = [self._c]
            # the C backend's prepared call (CProgram.inference_call: batch-1 latency), else None
            prepared = getattr(self._c, "inference_call", None)
            self._call = prepared(self._outputs) if prepared is not None else None
            return
        self._prefix = {size: self._program(part) for size, part in parts.items()}
        self._suffix = self._program(suffix) if suffix is not None else None
        self._c = self._suffix if suffix is not None else self._prefix[chunk]
        self.programs = list(self._prefix.values()) + ([self._suffix] if suffix is not None else [])
        self._prefix_inputs = list(prefix.inputs)
        self._prefix_outputs = [t for t in self._outputs if t[0] in set(self.chunks.prefix)]

    def _program(self, graph):
        return backends.get(self.backend).program(graph, [graph.topological_order()], training=False)

    def run(self, feeds: dict) -> list:
        if self._call is not None:
            return self._call(feeds)
        if self.chunks is None:
            c = self._c
            c.feed(feeds)
            c.run_phase(0)
            return [c.fetch(t) for t in self._outputs]
        return self._run_chunked(feeds)

    def _run_chunked(self, feeds: dict) -> list:
        """The prefix chunk by chunk, its cut tensors gathered into the suffix's inputs, then the
        suffix once."""
        batch, chunk = self.chunks.batch, self.chunks.chunk
        suffix = self._suffix
        types = {t: self.graph.output_types(t[0])[t[1]] for t in set(self._cut_inputs) | set(self._prefix_outputs)}
        gathered = {t: np.empty(tt.shape, tt.dtype) for t, tt in types.items()}   # fresh: outputs are returned
        for start in range(0, batch, chunk):
            stop = min(batch, start + chunk)
            c = self._prefix[stop - start]
            c.feed({name: feeds[name][start:stop] for name in self._prefix_inputs})
            c.run_phase(0)
            for t, value in gathered.items():
                value[start:stop] = c.view(t)
        if suffix is not None:
            suffix.feed({**{name: gathered[t] for t, name in self._cut_inputs.items()},
                         **{name: value for name, value in feeds.items() if name in suffix.graph.inputs}})
            suffix.run_phase(0)
        return [gathered[t] if t in gathered else suffix.fetch(t) for t in self._outputs]


def gradient_tensors(training_graph) -> list:
    """The gradient tensor each `Update` node of a training graph reads, in update order."""
    g = training_graph.graph
    return [g.inputs_of(node)[0] for node in training_graph.update_nodes if g.op(node) == "Update"]


def bucketed_backward(training_graph, backward: list, bucket_bytes: int):
    """Split the backward phase (`backward`, node names in order) where gradient buckets become
    final: returns (segments, starts), `starts[k]` the buckets (lists of gradient tensors) whose
    last gradient the segment `segments[k]` computes. Gradients join buckets in the order they
    become final (the reverse of the layers, as the backward runs), `bucket_bytes` at most each
    (`n2d2.distributed.plan_buckets`)."""
    g = training_graph.graph
    position = {n: k for k, n in enumerate(backward)}
    tensors = gradient_tensors(training_graph)
    ready = [position.get(t[0], 0) + 1 for t in tensors]    # the segment ends after the producer
    order = sorted(range(len(tensors)), key=lambda k: ready[k])
    nbytes = []
    for k in order:
        t = g.output_types(tensors[k][0])[tensors[k][1]]
        nbytes.append(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize)
    groups = distributed.plan_buckets(nbytes, bucket_bytes)
    buckets = [[tensors[order[i]] for i in group] for group in groups]
    ends = [max(ready[order[i]] for i in group) for group in groups]
    segments, starts, begin = [], [], 0
    for end in sorted(set(ends)):
        segments.append(backward[begin:end])
        starts.append([b for b, e in zip(buckets, ends) if e == end])
        begin = end
    if begin < len(backward) or not segments:
        segments.append(backward[begin:])
        starts.append([])
    return segments, starts


class TrainingProgram:
    """The three phases of a training graph (`n2d2.ir.autodiff.TrainingGraph`).

    With a data-parallel `world` of several ranks (`n2d2.distributed`), the program reduces its
    gradients over the ranks: the backward phase runs in segments, cut where a bucket of
    gradients (`bucket_bytes`, default `distributed.DEFAULT_BUCKET_BYTES`) becomes final, and
    each bucket's non-blocking all-reduce starts right after its segment, while the rest of the
    backward runs; `update` waits for them, then the solvers step with the global batch. The
    forward and backward run with `world` as the group of the synchronised BatchNorm nodes.
    `options` go to the backend's `program` (e.g. `device=` of the CUDA backend)."""

    def __init__(self, training_graph, backend: str, world=None, bucket_bytes: int = None, **options):
        self.tg = training_graph
        self.backend = backend
        self.batch_size = 1
        self.world = world if world is not None and world.size > 1 else None
        seeds = list(training_graph.grad_inputs.values())
        backward = seeds + training_graph.backward_nodes
        if self.world is None:
            segments, self._starts = [backward], [[]]
        else:
            cap = distributed.DEFAULT_BUCKET_BYTES if bucket_bytes is None else bucket_bytes
            segments, self._starts = bucketed_backward(training_graph, backward, cap)
        phases = [training_graph.forward_nodes] + segments + [training_graph.update_nodes]
        self._backward_phases = list(range(1, 1 + len(segments)))
        self._update_phase = len(phases) - 1
        self._in_flight = []     # (gradient tensors, flat buffer) of the started reductions
        self._what = f"gradient all-reduce of '{training_graph.graph.name}'"
        self._c = backends.get(backend).program(training_graph.graph, phases, training=True, **options)

    @property
    def buckets(self) -> list:
        """The gradient buckets, in the order their reductions start (lists of tensors)."""
        return [b for starts in self._starts for b in starts]

    def forward(self, feeds: dict) -> list:
        self._finish_reduction()   # a backward without its update: keep the ranks' collectives in step
        self.batch_size = int(next(iter(feeds.values())).shape[0])
        self._c.feed(feeds)
        if self.world is None and distributed.sync_group() is None:   # (no context to set: the usual step)
            self._c.run_phase(0, self.batch_size)
        else:
            with distributed.synchronising(self.world):
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
        if self.world is None and distributed.sync_group() is None:   # (one segment, nothing to reduce)
            for phase in self._backward_phases:
                self._c.run_phase(phase, self.batch_size)
            return
        with distributed.synchronising(self.world):
            for phase, starts in zip(self._backward_phases, self._starts):
                self._c.run_phase(phase, self.batch_size)
                for bucket in starts:
                    self._start_reduction(self.world, bucket)
                if self._in_flight:
                    self.world.progress()

    def update(self, world=None):
        """Apply the solvers. With a data-parallel world (the program's, else `world`), the
        gradients are first summed over its ranks (the program's buckets, started during the
        backward; else one all-reduce of a flat buffer now) and the solvers step with the global
        batch size, so every rank applies the same update."""
        batch_size = self.batch_size
        if self.world is not None:
            self._finish_reduction()
            batch_size *= self.world.size
        elif world is not None and world.size > 1:
            tensors = gradient_tensors(self.tg)
            if tensors:
                self._start_reduction(world, tensors)
                self._finish_reduction(world)
            batch_size *= world.size
        self._c.run_phase(self._update_phase, batch_size)

    def _start_reduction(self, world, tensors):
        """Pack the gradients `tensors` into one float32 buffer and start its all-reduce."""
        grads = [self._c.view(t) for t in tensors]
        if getattr(world, "device_arrays", False):
            xp = array_module(grads[0])
            flat = xp.concatenate([a.reshape(-1).astype(np.float32, copy=False) for a in grads])
        else:
            flat = np.concatenate([to_host(a).reshape(-1).astype(np.float32, copy=False) for a in grads])
        world.iallreduce_sum(flat, what=self._what)
        self._in_flight.append((tensors, flat))

    def _finish_reduction(self, world=None):
        """Wait for the started all-reduces and put the sums back in place of the gradients."""
        if not self._in_flight:
            return
        (world or self.world).wait_all(what=self._what)
        in_flight, self._in_flight = self._in_flight, []
        for tensors, flat in in_flight:
            offset = 0
            for t in tensors:
                a = self._c.view(t)
                n = a.size
                self._c.assign(t, array_module(a).asarray(flat[offset:offset + n].reshape(a.shape))
                               .astype(a.dtype, copy=False))
                offset += n
