"""Execution order of a graph, chosen to keep the peak of live memory low.

A tensor is one node output, named `(node, index)`. It is allocated when its node runs and
freed after its last consumer ran (graph outputs are never freed). `schedule` runs a greedy
list scheduler over that model: among the ready nodes it runs the one whose net allocation
(output bytes minus the bytes its run frees) is smallest, then the one that continues the most
recently produced data (depth first, so branches finish before others start), then the one
that comes first in the graph's own order. It returns that order or the graph's insertion
order, whichever has the lower peak of live bytes, so it never loses to the plain order.

Side effects: ops such as the solver update of a training graph or BatchNorm's moving
statistics write their parameters in place, and that dependency is not an edge. Nodes that
reference the same parameter (a `Grad` node references its forward node's) therefore keep
their relative order of `Graph.topological_order`.
Graph inputs always come first.
"""
from __future__ import annotations

import heapq

from n2d2.ir.types import GraphError

__all__ = ["schedule", "peak_live_bytes", "tensor_consumers", "liveness", "PlanError"]


class PlanError(GraphError):
    """A buffer plan that is unsound for its graph; the message names the tensors involved."""


def _tensors(graph):
    for name in graph.nodes():
        for idx, ttype in enumerate(graph.output_types(name)):
            yield (name, idx), ttype


def liveness(graph, order) -> dict:
    """{(node, out): (first step, last step)} for every node output, steps indexing `order`.

    A tensor is live from the step of its producer to the step of its last consumer; graph
    inputs from step 0 and graph outputs to the last step; an unused tensor only at its
    producer's step (the op still writes it).
    """
    step = {n: i for i, n in enumerate(order)}
    missing = [n for n in graph.nodes() if n not in step]
    if missing or len(step) != len(order) or len(order) != len(graph.nodes()):
        raise PlanError(f"order does not list every node of graph '{graph.name}' exactly once"
                        + (f" (missing: {', '.join(missing[:5])})" if missing else ""))
    last = len(order) - 1
    intervals = {t: [step[t[0]], step[t[0]]] for t, _ in _tensors(graph)}
    for src, dst, d in graph.nx.edges(data=True):
        iv = intervals[(src, d["out"])]
        iv[1] = max(iv[1], step[dst])
    for name in graph.inputs:
        for idx in range(len(graph.output_types(name))):
            intervals[(name, idx)][0] = 0
    for t in graph.outputs:
        if t in intervals:
            intervals[t][1] = last
    return {t: (a, b) for t, (a, b) in intervals.items()}


def _tensor_bytes(graph, name) -> list:
    return [t.nbytes for t in graph.output_types(name)]


def tensor_consumers(graph) -> dict:
    """{(node, out): set of consumer node names} for every node output (empty set if unused)."""
    uses = {}
    for name in graph.nodes():
        for idx in range(len(graph.output_types(name))):
            uses[(name, idx)] = set()
    for src, dst, d in graph.nx.edges(data=True):
        uses[(src, d["out"])].add(dst)
    return uses


def _params_touched(graph, name) -> list:
    """Parameters a node reads or writes: its own, and for a `Grad` node its forward node's."""
    d = graph.nx.nodes[name]
    names = list(d["params"].values())
    of = d["attrs"].get("of") if d["op"] == "Grad" else None
    if of is not None and of in graph.nx:
        names += [p for p in graph.nx.nodes[of]["params"].values() if p not in names]
    return names


def _dependencies(graph, base) -> dict:
    """{node: set of nodes that must run before it}: data edges plus parameter order."""
    deps = {n: {src for src, _ in graph.inputs_of(n)} for n in base}
    last_user = {}
    for n in base:
        for pname in _params_touched(graph, n):
            prev = last_user.get(pname)
            if prev is not None and prev != n:
                deps[n].add(prev)
            last_user[pname] = n
    return deps


def peak_live_bytes(graph, order) -> int:
    """The largest sum of bytes of tensors live at one step of `order` (no aliasing)."""
    intervals = liveness(graph, order)
    sizes = {t: graph.output_types(t[0])[t[1]].nbytes for t in intervals}
    delta = [0] * (len(order) + 1)
    for t, (start, end) in intervals.items():
        delta[start] += sizes[t]
        delta[end + 1] -= sizes[t]
    peak = live = 0
    for d in delta:
        live += d
        peak = max(peak, live)
    return peak


def _greedy(graph, base, deps) -> list:
    rank = {n: i for i, n in enumerate(base)}
    uses = tensor_consumers(graph)
    kept = set(graph.outputs)
    remaining = {t: len(c) for t, c in uses.items()}
    sizes = {n: _tensor_bytes(graph, n) for n in base}
    waiting = {n: len(d) for n, d in deps.items()}
    users = {n: [] for n in base}
    for n, ds in deps.items():
        for d in ds:
            users[d].append(n)

    produced_at = {}   # node -> step at which it ran (for the depth-first tie-break)
    order = []

    def run(n):
        produced_at[n] = len(order)
        order.append(n)
        for t in {(src, out) for src, out in graph.inputs_of(n)}:
            remaining[t] -= 1
        for u in users[n]:
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.add(u)

    def key(n):
        ins = {(src, out) for src, out in graph.inputs_of(n)}
        freed = sum(sizes[src][out] for src, out in ins if remaining[(src, out)] == 1 and (src, out) not in kept)
        recent = max((produced_at[src] for src, _ in ins), default=-1)
        return (sum(sizes[n]) - freed, -recent, rank[n])

    ready = set()
    inputs = [n for n in graph.inputs if n in rank] + \
        [n for n in base if graph.op(n) == "Input" and n not in graph.inputs]
    first = set(inputs)
    ready.update(n for n in base if waiting[n] == 0 and n not in first)
    for n in inputs:
        run(n)
    while ready:
        n = min(ready, key=key)
        ready.remove(n)
        run(n)
    return order


def _insertion(graph, base, deps) -> list:
    """The graph's own order with the inputs moved first (stable otherwise)."""
    inputs = [n for n in graph.inputs if n in deps] + \
        [n for n in base if graph.op(n) == "Input" and n not in graph.inputs]
    first = set(inputs)
    rank = {n: i for i, n in enumerate(base)}
    waiting = {n: len(d) for n, d in deps.items()}
    users = {n: [] for n in base}
    for n, ds in deps.items():
        for d in ds:
            users[d].append(n)
    order, heap = [], []

    def run(n):
        order.append(n)
        for u in users[n]:
            waiting[u] -= 1
            if waiting[u] == 0 and u not in first:
                heapq.heappush(heap, (rank[u], u))

    for n in base:
        if waiting[n] == 0 and n not in first:
            heapq.heappush(heap, (rank[n], n))
    for n in inputs:
        run(n)
    while heap:
        run(heapq.heappop(heap)[1])
    return order


def schedule(graph) -> list:
    """A topological order of `graph`'s node names that keeps peak live memory low.

    Deterministic: it depends only on the graph's contents and insertion order. Raises
    `GraphError` on a cycle (from `Graph.topological_order`).
    """
    base = graph.topological_order()
    deps = _dependencies(graph, base)
    candidates = [_greedy(graph, base, deps), _insertion(graph, base, deps)]
    for order in candidates:
        assert len(order) == len(base), "scheduler lost nodes (parameter dependencies formed a cycle?)"
    return min(candidates, key=lambda o: peak_live_bytes(graph, o))
