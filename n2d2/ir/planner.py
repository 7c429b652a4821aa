"""Buffer planning: every tensor of a graph gets a byte offset in one arena.

A tensor is one node output `(node, index)`; nodes may have several outputs or none. Given an
execution order (`n2d2.ir.schedule`), a tensor is live over the closed step interval from the
step of its producer to the step of its last consumer (graph inputs from step 0, graph outputs
to the last step). Two tensors whose intervals intersect must not share bytes, except for the
aliases the plan declares:

- in place: an elementwise op (`OpDef.elementwise`, one output of the same byte size as input
  0) whose input 0 dies at that op (not a graph input or output) writes its output over that
  input. The pair shares one range; the input's interval ends where the output's begins.
- concatenation without copies: the producers of a `Concat`'s inputs write directly into their
  channel slices of the concat's buffer, and the concat itself does nothing. A channel slice
  of an NCHW tensor is one contiguous byte range only when the batch is 1, so that is the only
  case aliased; with a larger batch the concat copies. An input is aliased only when the Concat
  is its only use (once), and it is not a graph input or output. Ops that concatenate their
  inputs internally (Activation, Dropout, Conv, ...) are left alone.

Aliased tensors form one buffer (in-place chains, a concat with its slices, nested concats);
buffers are placed greedily by size: largest first, each at the lowest aligned offset that
does not overlap an already placed buffer whose live interval intersects its own. `validate`
re-derives everything from the graph and proves the plan sound; `memory_report` compares the
arena with one buffer per tensor (naive) and with the lower bound (the most bytes live at any
one step, aliased tensors counted once).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from n2d2.ir import ops as op_registry
from n2d2.ir.schedule import PlanError, _tensors, liveness, schedule  # noqa: F401 (public here too)

__all__ = ["Plan", "PlanError", "liveness", "plan", "validate", "memory_report", "format_memory_report"]


def _tname(t) -> str:
    return f"{t[0]}:{t[1]}"


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


@dataclass
class Plan:
    """Offsets of every tensor in one arena, for one execution order.

    Attributes
    ----------
    order : list of node names, the execution order the plan is for.
    intervals : {(node, out): (first step, last step)}.
    sizes : {(node, out): bytes}.
    offsets : {(node, out): byte offset in the arena}.
    arena_bytes : int, arena size (a multiple of `alignment`).
    alignment : int, every buffer starts at a multiple of it (concat slices start inside
        their concat's buffer, at their natural offset: a multiple of the element size).
    inplace : {output tensor: input tensor} it overwrites.
    concat_slices : {producer tensor: (concat output tensor, byte offset in it)}.
    concat_aliased : {concat node: [bool per input slot]}; all True means the concat is a no-op.
    buffers : {root tensor: [member tensors]}, the alias groups that were placed as one block.
    """

    order: list
    intervals: dict
    sizes: dict
    offsets: dict = field(default_factory=dict)
    arena_bytes: int = 0
    alignment: int = 64
    inplace: dict = field(default_factory=dict)
    concat_slices: dict = field(default_factory=dict)
    concat_aliased: dict = field(default_factory=dict)
    buffers: dict = field(default_factory=dict)

    def alias_pairs(self) -> set:
        """Pairs of tensors allowed to share bytes while both are live (as frozensets)."""
        pairs = {frozenset((o, i)) for o, i in self.inplace.items()}
        pairs |= {frozenset((p, c)) for p, (c, _) in self.concat_slices.items()}
        return pairs

    def root_of(self) -> dict:
        """{tensor: root tensor of its buffer}."""
        return {m: r for r, members in self.buffers.items() for m in members}


class _Buffers:
    """Union of tensors into buffers, each member at a byte offset relative to its root."""

    def __init__(self, sizes):
        self.root = {t: t for t in sizes}
        self.rel = {t: 0 for t in sizes}
        self.members = {t: [t] for t in sizes}
        self.size = dict(sizes)

    def merge(self, child, parent, offset) -> bool:
        """Put `child`'s buffer inside `parent`'s so that child starts at parent + offset."""
        rc, rp = self.root[child], self.root[parent]
        if rc == rp:
            return False
        d = self.rel[parent] + offset - self.rel[child]
        if d < 0 or d + self.size[rc] > self.size[rp]:
            return False
        for m in self.members.pop(rc):
            self.root[m] = rp
            self.rel[m] += d
            self.members[rp].append(m)
        del self.size[rc]
        return True


def _concat_slice_offsets(graph, node) -> list:
    """Byte offset of each input's channel slice in a batch-1 Concat output."""
    offsets, acc = [], 0
    for t in graph.input_types(node):
        offsets.append(acc)
        acc += t.nbytes
    return offsets


def _inplace_candidates(graph, order, intervals, step) -> dict:
    """{output tensor: input tensor} for elementwise ops that may overwrite their input 0."""
    graph_ins = {(n, i) for n in graph.inputs for i in range(len(graph.output_types(n)))}
    graph_outs = set(graph.outputs)
    found = {}
    for name in order:
        op = graph.op(name)
        if op == "Input" or not op_registry.get(op, node=name).elementwise:
            continue
        outs, ins = graph.output_types(name), graph.inputs_of(name)
        if len(outs) != 1 or not ins:
            continue
        src = ins[0]
        if src in graph_ins or src in graph_outs or graph.op(src[0]) == "Input":
            continue
        if graph.output_types(src[0])[src[1]].nbytes != outs[0].nbytes:
            continue
        if intervals[src][1] != step[name]:
            continue
        found[(name, 0)] = src
    return found


def _concat_candidates(graph, order) -> list:
    """[(concat node, [(slot, producer tensor, byte offset) aliasable])] for batch-1 Concats."""
    graph_outs = set(graph.outputs)
    found = []
    for name in order:
        if not op_registry.get(graph.op(name), node=name).aliases_inputs:
            continue
        in_types = graph.input_types(name)
        if not in_types or any(len(t.shape) < 2 or t.shape[0] != 1 for t in in_types):
            continue    # batch > 1: channel slices are strided, the concat copies
        ins = graph.inputs_of(name)
        offsets = _concat_slice_offsets(graph, name)
        slots = []
        for slot, (src, off) in enumerate(zip(ins, offsets)):
            uses = [u for u in graph.consumers(src[0], src[1])]
            if len(uses) != 1 or src in graph_outs or graph.op(src[0]) == "Input":
                continue
            if in_types[slot].dtype != graph.output_types(name)[0].dtype:
                continue
            slots.append((slot, src, off))
        found.append((name, slots))
    return found


def _place(blocks, alignment) -> tuple:
    """Greedy by size: {root: offset} and the arena size. blocks = [(root, size, start, end, rank)]."""
    placed = []   # (offset, end_byte, start_step, end_step)
    offsets = {}
    for root, size, start, end, _ in sorted(blocks, key=lambda b: (-b[1], b[2], b[4])):
        if size == 0:
            offsets[root] = 0
            continue
        busy = sorted((o, e) for o, e, s, f in placed if s <= end and start <= f)
        candidate = 0
        for o, e in busy:
            if candidate + size <= o:
                break
            candidate = max(candidate, _align_up(e, alignment))
        offsets[root] = candidate
        placed.append((candidate, candidate + size, start, end))
    top = max((offsets[root] + size for root, size, *_ in blocks), default=0)
    return offsets, _align_up(top, alignment)


def plan(graph, order=None, inplace: bool = True, concat: bool = True, alignment: int = 64) -> Plan:
    """Plan every tensor of `graph` into one arena for `order` (default: `schedule(graph)`)."""
    if not isinstance(alignment, int) or alignment < 1:
        raise ValueError(f"alignment must be a positive int, got {alignment!r}")
    if order is None:
        order = schedule(graph)
    order = list(order)
    intervals = liveness(graph, order)
    step = {n: i for i, n in enumerate(order)}
    sizes = {t: tt.nbytes for t, tt in _tensors(graph)}
    result = Plan(order=order, intervals=intervals, sizes=sizes, alignment=alignment)
    bufs = _Buffers(sizes)

    if inplace:
        for out, src in _inplace_candidates(graph, order, intervals, step).items():
            if bufs.merge(out, src, 0):
                result.inplace[out] = src
    if concat:
        for name, slots in _concat_candidates(graph, order):
            flags = [False] * len(graph.inputs_of(name))
            for slot, src, off in slots:
                if bufs.merge(src, (name, 0), off):
                    result.concat_slices[src] = ((name, 0), off)
                    flags[slot] = True
            result.concat_aliased[name] = flags

    rank = {t: i for i, t in enumerate(sizes)}
    blocks = []
    for root, members in bufs.members.items():
        start = min(intervals[m][0] for m in members)
        end = max(intervals[m][1] for m in members)
        blocks.append((root, bufs.size[root], start, end, rank[root]))
    root_offsets, result.arena_bytes = _place(blocks, alignment)
    result.offsets = {t: root_offsets[bufs.root[t]] + bufs.rel[t] for t in sizes}
    result.buffers = {r: list(m) for r, m in bufs.members.items()}
    return result


# -- checking ----------------------------------------------------------------------------------
def _inside_concat_slices(plan: Plan) -> set:
    """Tensors that sit inside a concat slice (directly or through in-place chains): only
    their element size is guaranteed as alignment."""
    inside = set(plan.concat_slices)
    changed = True
    while changed:
        changed = False
        for out, src in plan.inplace.items():
            if (out in inside) != (src in inside):
                inside |= {out, src}
                changed = True
        for p, (c, _) in plan.concat_slices.items():
            if c in inside and p not in inside:
                inside.add(p)
                changed = True
    return inside


def validate(graph, plan: Plan) -> bool:
    """Prove `plan` sound for `graph`; raise `PlanError` naming the tensors otherwise.

    Checks: the order is a topological order of every node; the plan's intervals are the
    liveness of that order; every tensor has an offset, fits in the arena and is aligned
    (buffer starts to `plan.alignment`, concat slices to their element size); every declared
    alias is what the graph allows; and no two tensors live at a common step share a byte
    unless they are a declared alias pair.
    """
    order = plan.order
    step = {n: i for i, n in enumerate(order)}
    intervals = liveness(graph, order)
    for name in order:
        for src, _ in graph.inputs_of(name):
            if step[src] >= step[name]:
                raise PlanError(f"order runs '{name}' at step {step[name]} before its input '{src}' "
                                f"(step {step[src]})")
    if intervals != plan.intervals:
        bad = next(t for t in intervals if plan.intervals.get(t) != intervals[t])
        raise PlanError(f"plan is stale: tensor {_tname(bad)} is live over {list(intervals[bad])} "
                        f"but the plan says {plan.intervals.get(bad)}")
    types = dict(_tensors(graph))
    in_slice = _inside_concat_slices(plan)
    for t, tt in types.items():
        if t not in plan.offsets:
            raise PlanError(f"tensor {_tname(t)} ({tt}) has no offset in the plan")
        off = plan.offsets[t]
        if off < 0 or off + tt.nbytes > plan.arena_bytes:
            raise PlanError(f"tensor {_tname(t)} ({tt}) at bytes [{off}, {off + tt.nbytes}) does not fit "
                            f"in the {plan.arena_bytes}-byte arena")
        if off % np.dtype(tt.dtype).itemsize:
            raise PlanError(f"tensor {_tname(t)} ({tt}) at offset {off} is not aligned to its element size")
        if t not in in_slice and tt.nbytes and off % plan.alignment:
            raise PlanError(f"tensor {_tname(t)} ({tt}) at offset {off} is not aligned to {plan.alignment} bytes")

    for out, src in plan.inplace.items():
        name = out[0]
        opdef = op_registry.get(graph.op(name), node=name)
        ins = graph.inputs_of(name)
        if not opdef.elementwise or out[1] != 0 or len(graph.output_types(name)) != 1 or not ins or ins[0] != src:
            raise PlanError(f"in-place pair {_tname(out)} over {_tname(src)}: '{name}' ({graph.op(name)}) is not "
                            f"a one-output elementwise op reading {_tname(src)} in slot 0")
        if src in set(graph.outputs) or src[0] in graph.inputs:
            raise PlanError(f"in-place pair {_tname(out)} over {_tname(src)}: the input is a graph input or output")
        if plan.offsets[out] != plan.offsets[src] or types[out].nbytes != types[src].nbytes:
            raise PlanError(f"in-place pair {_tname(out)} over {_tname(src)}: ranges differ "
                            f"([{plan.offsets[out]}, +{types[out].nbytes}) vs [{plan.offsets[src]}, "
                            f"+{types[src].nbytes}))")
        if intervals[src][1] != step[name]:
            raise PlanError(f"in-place pair {_tname(out)} over {_tname(src)}: the input is still used after "
                            f"'{name}' (live to step {intervals[src][1]}, '{name}' runs at {step[name]})")
    for src, (cat, off) in plan.concat_slices.items():
        name = cat[0]
        ins = graph.inputs_of(name)
        if not op_registry.get(graph.op(name), node=name).aliases_inputs or src not in ins:
            raise PlanError(f"concat slice {_tname(src)} in {_tname(cat)}: '{name}' is not a Concat reading it")
        slot = ins.index(src)
        in_types = graph.input_types(name)
        if any(t.shape[0] != 1 for t in in_types):
            raise PlanError(f"concat slice {_tname(src)} in {_tname(cat)}: batch > 1, the slice is not contiguous")
        if len(graph.consumers(src[0], src[1])) != 1 or src in set(graph.outputs):
            raise PlanError(f"concat slice {_tname(src)} in {_tname(cat)}: the tensor has other uses")
        if off != _concat_slice_offsets(graph, name)[slot] or plan.offsets[src] != plan.offsets[cat] + off:
            raise PlanError(f"concat slice {_tname(src)} in {_tname(cat)}: at offset {plan.offsets[src]}, "
                            f"expected {plan.offsets[cat] + _concat_slice_offsets(graph, name)[slot]}")

    allowed = plan.alias_pairs()
    spans = sorted((plan.offsets[t], plan.offsets[t] + tt.nbytes, t) for t, tt in types.items() if tt.nbytes)
    for i, (a0, a1, ta) in enumerate(spans):
        sa, ea = intervals[ta]
        for b0, b1, tb in spans[i + 1:]:
            if b0 >= a1:
                break
            sb, eb = intervals[tb]
            if sa <= eb and sb <= ea and frozenset((ta, tb)) not in allowed:
                raise PlanError(
                    f"tensors {_tname(ta)} ({types[ta]}, bytes [{a0}, {a1}), steps {sa}..{ea}) and "
                    f"{_tname(tb)} ({types[tb]}, bytes [{b0}, {b1}), steps {sb}..{eb}) overlap in the arena "
                    f"while both are live")
    return True


# -- reporting ---------------------------------------------------------------------------------
def _live_bytes_per_step(graph, plan: Plan) -> list:
    """Bytes occupied at each step, counting aliased tensors' shared bytes once."""
    root_of = plan.root_of()
    per_step = [dict() for _ in plan.order]   # step -> {root: [(start, end) byte ranges]}
    for t, (start, end) in plan.intervals.items():
        size = plan.sizes[t]
        if not size:
            continue
        r = root_of.get(t, t)
        rng = (plan.offsets[t], plan.offsets[t] + size)
        for s in range(start, end + 1):
            per_step[s].setdefault(r, []).append(rng)
    totals = []
    for groups in per_step:
        total = 0
        for ranges in groups.values():
            ranges.sort()
            cur0, cur1 = ranges[0]
            for r0, r1 in ranges[1:]:
                if r0 > cur1:
                    total += cur1 - cur0
                    cur0, cur1 = r0, r1
                else:
                    cur1 = max(cur1, r1)
            total += cur1 - cur0
        totals.append(total)
    return totals


def memory_report(graph, plan: Plan) -> dict:
    """Arena size against one buffer per tensor and against the live-bytes lower bound.

    Keys: planned (arena bytes), naive (sum of every tensor's bytes), lower_bound (the most
    bytes live at one step, aliased tensors counted once: no placement of this schedule with
    these aliases can use less), peak_step and peak_node (where it is reached), tensors,
    inplace and concat_slices (alias counts), naive_over_planned, planned_over_lower_bound.
    """
    per_step = _live_bytes_per_step(graph, plan)
    lower = max(per_step, default=0)
    peak_step = per_step.index(lower) if per_step else -1
    naive = sum(plan.sizes.values())
    planned = plan.arena_bytes
    return {
        "graph": graph.name,
        "planned": planned,
        "naive": naive,
        "lower_bound": lower,
        "peak_step": peak_step,
        "peak_node": plan.order[peak_step] if peak_step >= 0 else None,
        "steps": len(plan.order),
        "tensors": len(plan.sizes),
        "inplace": len(plan.inplace),
        "concat_slices": len(plan.concat_slices),
        "naive_over_planned": naive / planned if planned else float("nan"),
        "planned_over_lower_bound": planned / lower if lower else float("nan"),
    }


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:10.3f} MiB"


def format_memory_report(report: dict) -> str:
    """A small text table of `memory_report`'s numbers."""
    rows = [
        ("planned (arena)", f"{report['planned']:>14,d} B", _mib(report["planned"])),
        ("naive (1 buffer/tensor)", f"{report['naive']:>14,d} B", _mib(report["naive"])),
        ("lower bound (peak live)", f"{report['lower_bound']:>14,d} B", _mib(report["lower_bound"])),
    ]
    lines = [f"memory plan of '{report['graph']}': {report['tensors']} tensors, {report['steps']} steps, "
             f"{report['inplace']} in place, {report['concat_slices']} concat slices"]
    lines += [f"  {a:<24} {b}  {c}" for a, b, c in rows]
    lines.append(f"  {'naive / planned':<24} {report['naive_over_planned']:>14.2f}x")
    lines.append(f"  {'planned / lower bound':<24} {report['planned_over_lower_bound']:>14.4f}")
    lines.append(f"  peak at step {report['peak_step']} ({report['peak_node']})")
    return "\n".join(lines)
