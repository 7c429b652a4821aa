"""Batch chunking of an inference graph: run its activation-heavy front on slices of the batch.

At a large batch the first layers of an image network stream tensors of tens of MB through
DRAM between consecutive nodes (MobileNet V2 b16: 16x96x112x112 floats = 77 MB between an
expand 1x1, a depthwise 3x3 and a project 1x1), while their weights are small. Running that
front on a few images at a time keeps a chunk's tensors in the caches; the rest of the graph,
where weights outweigh activations, still runs on the whole batch. The answers are the same
because the front's ops are `per_sample` (image i of an output depends only on image i of the
inputs): the chunks compute disjoint slices of the same tensors.

`plan(graph)` decides, from tensor and parameter sizes only, whether and where to cut: the
prefix ends after the last step whose live tensors at the full batch exceed `LIVE_BYTES_BUDGET`;
every node up to there must be per sample (else no chunking: the traffic past a node that
mixes the images would stay) and the prefix memory-bound (`MEMORY_BOUND_MACS`); it runs in
chunks of the most images whose live tensors stay within `CHUNK_BYTES_BUDGET` (at least 1). `split` returns
the prefix as a graph at the chunk's batch and the rest (the suffix) as a graph at the full
batch whose inputs are the tensors crossing the cut (and the graph inputs it reads itself).
Inference only: a training graph's BatchNorm and gradients mix the images of a batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph
from n2d2.ir.schedule import liveness

__all__ = ["ChunkPlan", "plan", "split", "LIVE_BYTES_BUDGET", "CHUNK_BYTES_BUDGET"]

#: a step whose live tensors at the full batch take more bytes than this goes to the prefix
#: (their traffic leaves the caches); measured on MobileNet V2 / ResNet-18 b16, AMD EPYC
#: (bench/RESULTS.md, mbv2 section). `N2D2_CHUNK_LIVE_BYTES` overrides it, 0 turns chunking off.
LIVE_BYTES_BUDGET = 8 << 20
#: a front with more multiply-adds per output value than this is compute-bound: its tensors'
#: traffic hides under the arithmetic and smaller GEMMs would only lose (ResNet-18's front: 147 and
#: more, 1.06x slower in chunks; MobileNet V2's: see bench/RESULTS.md, mbv2 section)
MEMORY_BOUND_MACS = 100
#: a chunk takes as many images as keep the prefix's live tensors within this (at least one)
#: `N2D2_CHUNK_BYTES` overrides it.
CHUNK_BYTES_BUDGET = 8 << 20


@dataclass
class ChunkPlan:
    """Where an inference graph is cut and how its prefix is chunked.

    Attributes
    ----------
    prefix : list of node names, in order (graph inputs included), run `chunk` images at a time.
    chunk : int, images per chunk (the last chunk takes the rest).
    batch : int, the graph's batch.
    cut : list of tensors (node, out) of the prefix read by the suffix or by the graph outputs.
    """

    prefix: list
    chunk: int
    batch: int
    cut: list


def _env_bytes(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _per_sample_batch(graph, name, batch) -> bool:
    """The node is per sample and every tensor it reads and writes has `batch` images."""
    if graph.op(name) == "Input":
        return all(t.shape and t.shape[0] == batch for t in graph.output_types(name))
    if not op_registry.get(graph.op(name), node=name).per_sample:
        return False
    types = list(graph.input_types(name)) + list(graph.output_types(name))
    return bool(types) and all(len(t.shape) >= 1 and t.shape[0] == batch for t in types)


def _live_bytes(graph, order) -> list:
    """Bytes of the tensors live at each step of `order`."""
    intervals = liveness(graph, order)
    delta = [0] * (len(order) + 1)
    for (node, out), (start, end) in intervals.items():
        nbytes = graph.output_types(node)[out].nbytes
        delta[start] += nbytes
        delta[end + 1] -= nbytes
    live, total = [], 0
    for d in delta[:-1]:
        total += d
        live.append(total)
    return live


def _macs_per_output(graph, nodes) -> float:
    """Multiply-adds per output value over `nodes` (the ops' `macs_per_output`, weighted by
    their output sizes)."""
    macs = values = 0
    for name in nodes:
        if graph.op(name) == "Input":
            continue
        count = sum(t.size for t in graph.output_types(name))
        macs += count * op_registry.get(graph.op(name), node=name).macs_per_output(graph, name)
        values += count
    return macs / values if values else 0.0


def _cut_tensors(graph, prefix) -> list:
    """Tensors produced in `prefix` and read after it (or graph outputs); graph inputs are read
    by the suffix directly."""
    inside = set(prefix)
    cut = []
    for name in prefix:
        if graph.op(name) == "Input":
            continue
        for out in range(len(graph.output_types(name))):
            t = (name, out)
            if t in graph.outputs or any(dst not in inside for dst, _, _ in graph.consumers(name, out)):
                cut.append(t)
    return cut


def plan(graph, order=None, live_budget: int = None, chunk_budget: int = None):
    """The `ChunkPlan` of an inference graph, or None when it runs whole: a batch of 1, live
    tensors within budget, a step over budget past a node that is not per sample, a compute-bound
    front, or one chunk that would hold the whole batch."""
    live_budget = _env_bytes("N2D2_CHUNK_LIVE_BYTES", LIVE_BYTES_BUDGET) if live_budget is None else live_budget
    chunk_budget = _env_bytes("N2D2_CHUNK_BYTES", CHUNK_BYTES_BUDGET) if chunk_budget is None else chunk_budget
    if live_budget <= 0 or not graph.inputs:
        return None
    batch = graph.output_types(graph.inputs[0])[0].shape[0] if graph.output_types(graph.inputs[0])[0].shape else 0
    if batch <= 1:
        return None
    order = list(order or graph.topological_order())
    # graph inputs first: the prefix is a run of the order that starts with them
    order = [n for n in order if graph.op(n) == "Input"] + [n for n in order if graph.op(n) != "Input"]
    eligible = 0
    while eligible < len(order) and _per_sample_batch(graph, order[eligible], batch):
        eligible += 1
    live = _live_bytes(graph, order)
    heavy = [k for k in range(len(order)) if live[k] > live_budget]
    if not heavy or heavy[-1] < len(graph.inputs) or heavy[-1] >= eligible:
        return None   # nothing over budget, or some of it past an op that mixes the images
    prefix = order[:heavy[-1] + 1]
    if _macs_per_output(graph, prefix) > MEMORY_BOUND_MACS:
        return None
    per_image = max(live[:len(prefix)]) / batch
    chunk = max(1, min(batch, int(chunk_budget // per_image)))
    if chunk >= batch:
        return None
    return ChunkPlan(prefix=prefix, chunk=chunk, batch=batch, cut=_cut_tensors(graph, prefix))


def _subgraph(graph, nodes, name, extra_inputs=()) -> Graph:
    """A graph of `nodes` (edges among them kept), plus an Input node for each tensor of
    `extra_inputs` = [(tensor, input name)]: their consumers in `nodes` read that input."""
    g = Graph(name)
    renamed = dict(extra_inputs)
    for t, input_name in extra_inputs:
        g.add_input(input_name, graph.output_types(t[0])[t[1]].shape, graph.output_types(t[0])[t[1]].dtype)
    keep = set(nodes)
    for n in nodes:
        d = graph.nx.nodes[n]
        g.nx.add_node(n, op=d["op"], attrs=dict(d["attrs"]), params=dict(d["params"]), outputs=list(d["outputs"]))
        if d["op"] == "Input":
            g.inputs.append(n)
    for src, dst, d in graph.nx.edges(data=True):
        if dst not in keep:
            continue
        if src in keep:
            g.nx.add_edge(src, dst, **d)
        else:
            g.nx.add_edge(renamed[(src, d["out"])], dst, out=0, slot=d["slot"])
    g.params = {p: graph.params[p] for n in nodes for p in graph.nx.nodes[n]["params"].values()}
    return g


def split(graph, chunk_plan: ChunkPlan):
    """(prefix graph, suffix graph or None, {cut tensor: suffix input name}), both at the graph's
    batch (the caller rebatches the prefix to its chunks). The prefix's outputs are the cut
    tensors; the suffix reads the cut tensors it needs and the graph inputs it uses directly, and
    outputs the graph outputs it computes (the others are cut tensors)."""
    prefix_set = set(chunk_plan.prefix)
    rest = [n for n in graph.topological_order() if n not in prefix_set]
    prefix = _subgraph(graph, chunk_plan.prefix, f"{graph.name}/prefix")
    prefix.outputs = list(chunk_plan.cut)
    if not rest:
        return prefix, None, {}
    rest_set = set(rest)
    read = [t for t in chunk_plan.cut if any(dst in rest_set for dst, _, _ in graph.consumers(*t))]
    names = {t: f"{t[0]}:{t[1]}/chunked" for t in read}
    direct = [n for n in graph.inputs if any(dst in rest_set for dst, _, _ in graph.consumers(n))]
    suffix = _subgraph(graph, direct + rest, f"{graph.name}/suffix", [(t, names[t]) for t in read])
    suffix.outputs = [t for t in graph.outputs if t[0] not in prefix_set]
    return prefix, suffix, names
