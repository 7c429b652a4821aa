"""The IR: a networkx multigraph of op nodes, plus the parameter arrays they reference.

A node is plain data: `op` (a name in `n2d2.ir.ops`), `attrs` (dict), `params` (role -> name of
an entry of `Graph.params`), and `outputs` (list of `TensorType`). An edge (src -> dst) carries
`out` (which output of src) and `slot` (which input of dst). Parameters are referenced by name;
`Graph.params[name]` is a `Param` holding the live array (so a cell's weights and the graph's
stay the same memory) and whether it is trained.
"""
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from n2d2.ir import ops as op_registry
from n2d2.ir.types import GraphError, TensorType
from n2d2.plots import save_figure


@dataclass
class Param:
    """A parameter array referenced by nodes; `owner` names the cell it came from."""

    array: object
    trainable: bool = True
    owner: str = ""
    role: str = ""
    solver: object = None

    # how many times any Param's array was rebound: a compiled program re-reads its parameters'
    # pointers only after one (n2d2/codegen/c_backend.py, CProgram._call_args)
    rebinds = 0

    def __setattr__(self, name, value):
        if name == "array":
            Param.rebinds += 1
        object.__setattr__(self, name, value)

    @property
    def shape(self):
        return tuple(self.array.shape)


@dataclass
class Node:
    """A read-only view of one node's data (the graph stores the same fields as node attributes)."""

    name: str
    op: str
    attrs: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)


class Graph:
    """Ops on a networkx MultiDiGraph; inputs and outputs are named explicitly."""

    def __init__(self, name="graph"):
        self.name = name
        self.nx = nx.MultiDiGraph()
        self.params = {}
        self.inputs = []    # node names whose op is "Input"
        self.outputs = []   # (node name, output index)

    # -- building -----------------------------------------------------------------------------
    def add_param(self, name, array, trainable=True, owner="", role="", solver=None) -> str:
        if name in self.params and self.params[name].array is not array:
            raise GraphError(f"parameter '{name}' is already bound to another array")
        self.params[name] = Param(array, trainable, owner, role, solver)
        return name

    def add_input(self, name, shape, dtype="float32") -> str:
        self.add_node(name, "Input", [], outputs=[TensorType(tuple(shape), dtype)])
        self.inputs.append(name)
        return name

    def add_node(self, name, op, inputs, attrs=None, params=None, outputs=None) -> str:
        """Add node `name` fed by `inputs` = [(src, out_index) or src] in slot order."""
        if name in self.nx:
            raise GraphError(f"node '{name}' already exists")
        attrs = dict(attrs or {})
        opdef = op_registry.find(op)
        if opdef is not None:   # IR attributes are plain data (e.g. a scaling object's spec)
            attrs = opdef.plain_attrs(attrs)
        self.nx.add_node(name, op=op, attrs=attrs, params=dict(params or {}),
                         outputs=list(outputs or []))
        for slot, src in enumerate(inputs):
            src, out = (src, 0) if isinstance(src, str) else src
            if src not in self.nx:
                self.nx.remove_node(name)
                raise GraphError(f"node '{name}': input slot {slot} refers to unknown node '{src}'")
            self.nx.add_edge(src, name, out=out, slot=slot)
        return name

    def add_op(self, name, op, inputs, attrs=None, params=None) -> str:
        """Add a node whose output types are inferred from its op's shape rule."""
        self.add_node(name, op, inputs, attrs, params)
        try:
            self.nx.nodes[name]["outputs"] = op_registry.get(op, node=name).infer(self, name)
        except GraphError:
            self.nx.remove_node(name)
            raise
        return name

    def remove_node(self, name):
        self.nx.remove_node(name)
        if name in self.inputs:
            self.inputs.remove(name)
        self.outputs = [o for o in self.outputs if o[0] != name]

    def set_outputs(self, outputs):
        self.outputs = [(o, 0) if isinstance(o, str) else tuple(o) for o in outputs]

    def unique_name(self, base: str) -> str:
        name, k = base, 1
        while name in self.nx:
            name = f"{base}_{k}"
            k += 1
        return name

    # -- reading ------------------------------------------------------------------------------
    def node(self, name) -> Node:
        d = self.nx.nodes[name]
        return Node(name, d["op"], d["attrs"], d["params"], d["outputs"])

    def op(self, name) -> str:
        return self.nx.nodes[name]["op"]

    def attrs(self, name) -> dict:
        return self.nx.nodes[name]["attrs"]

    def output_types(self, name) -> list:
        return self.nx.nodes[name]["outputs"]

    def nodes(self):
        return list(self.nx.nodes)

    def inputs_of(self, name) -> list:
        """[(src, out_index)] ordered by input slot."""
        edges = sorted(self.nx.in_edges(name, data=True), key=lambda e: e[2]["slot"])
        return [(src, d["out"]) for src, _, d in edges]

    def consumers(self, name, out=None) -> list:
        """[(dst, slot, out_index)] of every use of `name`'s outputs (or of output `out`)."""
        uses = [(dst, d["slot"], d["out"]) for _, dst, d in self.nx.out_edges(name, data=True)]
        return [u for u in uses if out is None or u[2] == out]

    def input_types(self, name) -> list:
        return [self.output_types(src)[out] for src, out in self.inputs_of(name)]

    def topological_order(self) -> list:
        try:
            return list(nx.lexicographical_topological_sort(self.nx, key=self._insertion_key()))
        except nx.NetworkXUnfeasible:
            cycle = nx.find_cycle(self.nx)
            raise GraphError(f"graph '{self.name}' has a cycle through node '{cycle[0][0]}': "
                             + " -> ".join(e[0] for e in cycle)) from None

    def _insertion_key(self):
        order = {n: i for i, n in enumerate(self.nx.nodes)}
        return lambda n: order[n]

    def replace_uses(self, old, new, old_out=0, new_out=0):
        """Make every consumer of (old, old_out) read (new, new_out) instead; graph outputs too."""
        for dst, slot, out in self.consumers(old, old_out):
            for key, d in list(self.nx.get_edge_data(old, dst).items()):
                if d["slot"] == slot and d["out"] == out:
                    self.nx.remove_edge(old, dst, key)
            self.nx.add_edge(new, dst, out=new_out, slot=slot)
        self.outputs = [(new, new_out) if o == (old, old_out) else o for o in self.outputs]

    def copy(self):
        g = Graph(self.name)
        g.nx = nx.MultiDiGraph()
        for n, d in self.nx.nodes(data=True):
            g.nx.add_node(n, op=d["op"], attrs=dict(d["attrs"]), params=dict(d["params"]),
                          outputs=list(d["outputs"]))
        for src, dst, d in self.nx.edges(data=True):
            g.nx.add_edge(src, dst, **d)
        g.params = dict(self.params)
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        return g

    # -- checking -----------------------------------------------------------------------------
    def verify(self):
        """Check the IR rules; raise GraphError naming the first offending node."""
        order = self.topological_order()
        for name in order:
            d = self.nx.nodes[name]
            opdef = op_registry.get(d["op"], node=name)
            slots = sorted(e[2]["slot"] for e in self.nx.in_edges(name, data=True))
            if slots != list(range(len(slots))):
                raise GraphError(f"node '{name}' ({d['op']}): input slots {slots} are not 0..{len(slots) - 1}")
            opdef.check_arity(name, len(slots))
            for src, out in self.inputs_of(name):
                if out >= len(self.output_types(src)):
                    raise GraphError(f"node '{name}' reads output {out} of '{src}', which has "
                                     f"{len(self.output_types(src))}")
            for role, pname in d["params"].items():
                if pname not in self.params:
                    raise GraphError(f"node '{name}' ({d['op']}): parameter '{role}' refers to unknown '{pname}'")
            expected = opdef.infer(self, name)
            if [tuple(t.shape) for t in expected] != [tuple(t.shape) for t in d["outputs"]]:
                raise GraphError(f"node '{name}' ({d['op']}): recorded output shapes "
                                 f"{[str(t) for t in d['outputs']]} but inputs give "
                                 f"{[str(t) for t in expected]}")
            for t, e in zip(d["outputs"], expected):
                if t.dtype != e.dtype:
                    raise GraphError(f"node '{name}' ({d['op']}): dtype {t.dtype}, expected {e.dtype}")
        for name, out in self.outputs:
            if name not in self.nx:
                raise GraphError(f"graph output refers to unknown node '{name}'")
        return True

    # -- showing ------------------------------------------------------------------------------
    def dump(self) -> str:
        """One line per node in execution order: `name = Op(inputs) {attrs} [params] -> types`."""
        lines = [f"graph {self.name} (inputs: {', '.join(self.inputs)}; outputs: "
                 f"{', '.join(f'{n}:{o}' for n, o in self.outputs)})"]
        for name in self.topological_order():
            d = self.nx.nodes[name]
            ins = ", ".join(f"{s}:{o}" if o else s for s, o in self.inputs_of(name))
            attrs = ", ".join(f"{k}={_short(v)}" for k, v in d["attrs"].items())
            params = ", ".join(f"{r}={p}{list(self.params[p].shape)}" for r, p in d["params"].items())
            outs = ", ".join(str(t) for t in d["outputs"])
            text = f"  {name} = {d['op']}({ins})"
            if attrs:
                text += " {" + attrs + "}"
            if params:
                text += " [" + params + "]"
            lines.append(text + f" -> {outs}")
        return "\n".join(lines)

    __str__ = dump

    def to_dot(self) -> str:
        """Graphviz DOT text with shapes on the edges."""
        lines = [f'digraph "{self.name}" {{', "  node [shape=box, fontname=Helvetica];"]
        for name in self.nx.nodes:
            lines.append(f'  "{name}" [label="{name}\\n{self.op(name)}"];')
        for src, dst, d in self.nx.edges(data=True):
            lines.append(f'  "{src}" -> "{dst}" [label="{self.output_types(src)[d["out"]]}"];')
        lines.append("}")
        return "\n".join(lines)

    def draw(self, path: str):
        """Draw to a PNG (matplotlib, layered layout) with shapes on the edges."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        order = self.topological_order()
        depth = {}
        for n in order:
            depth[n] = 1 + max((depth[s] for s, _ in self.inputs_of(n)), default=-1)
        rows = {}
        pos = {}
        for n in order:
            col = rows.setdefault(depth[n], 0)
            rows[depth[n]] += 1
            pos[n] = (col * 3.0, -depth[n] * 1.2)
        width = max(rows.values()) * 3.0 + 2
        fig, ax = plt.subplots(figsize=(max(4, width), max(3, 1.2 * len(rows) + 1)))
        for src, dst, d in self.nx.edges(data=True):
            (x0, y0), (x1, y1) = pos[src], pos[dst]
            ax.annotate("", xy=(x1, y1 + 0.25), xytext=(x0, y0 - 0.25), arrowprops=dict(arrowstyle="->"))
            ax.text((x0 + x1) / 2, (y0 + y1) / 2, str(self.output_types(src)[d["out"]]), fontsize=6, color="gray")
        for n, (x, y) in pos.items():
            ax.text(x, y, f"{n}\n{self.op(n)}", ha="center", va="center", fontsize=7,
                    bbox=dict(boxstyle="round", fc="w"))
        ax.set_xlim(-2, width)
        ax.set_ylim(-1.2 * len(rows), 1)
        ax.axis("off")

        fig.set_dpi(100)
        save_figure(fig, path)
        plt.close(fig)


def _short(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"[{len(value)} items]"
    return str(value)
