"""Cells from an IR graph: one cell per node, called in order on a tensor, so that the trace of the
calls gives the graph back (the last step of `DeepNetCell.load_from_ONNX`: ONNX ->
`n2d2.onnx_backend`'s `Onnx*` IR -> `legalize_onnx` -> `fold_constant_operands` ->
`fuse_activation` -> these cells).

A node of an N2D2 op becomes the cell that traces to it, named after the node (the ONNX output
name): Conv (ConvDepthWise when one channel per group, a group Mapping otherwise), Deconv, Pool
(GlobalPool2d when the window is the whole input), Fc, BatchNorm2d, Activation, ElemWise,
Softmax, Padding, LRN, Transpose, Resize, Scaling (floating-point), Reshape; parameters are copied from
the graph (not drawn by fillers when the caller runs in `weights_from_file`). Cells hold tensors
in N2D2's 4-D layout: a node whose output is a view of its input in the same memory order (an
`OnnxReshape` [N, O, 1, 1] -> [N, O]) makes no cell, and a channel `Concat` hands an Interface
of its inputs to its consumers (an Activation cell when an output or an op without Interface
input reads it). Any other node (an `Onnx*` op no N2D2 op computes) is an `OnnxNode` cell
running that op, its constant operands its parameters. `SUPPORTED` lists the ops that make N2D2
cells.
"""
import networkx as nx
import numpy as np

import n2d2.activation as activations
from n2d2.cells.nn import (
    LRN,
    Activation,
    BatchNorm2d,
    Conv,
    ConvDepthWise,
    Deconv,
    ElemWise,
    Fc,
    GlobalPool2d,
    Padding,
    Pool,
    Reshape,
    Resize,
    Scaling,
    Softmax,
    Transpose,
)
from n2d2.cells.nn.onnx_node import OnnxNode
from n2d2.frontends.onnx_errors import ONNXFormatError
from n2d2.ir.passes._common import is_graph_output
from n2d2.ir.passes.legalize_onnx import is_view
from n2d2.ir.tensor_ops import MAX_PARAM_SLOTS
from n2d2.mapping import Mapping
from n2d2.scaling import FloatingPointScaling
from n2d2.tensor import Interface, Tensor

#: ops that become N2D2 cells (the others are OnnxNode cells, or no cell: Input, views, Concat)
SUPPORTED = ("Conv", "Deconv", "Pool", "Fc", "BatchNorm", "Activation", "ElemWise", "Softmax", "Padding", "LRN",
             "Transpose", "Resize", "Scaling", "Reshape")
_INTERFACE_OPS = ("Conv", "Deconv", "Pool", "Fc", "BatchNorm", "Activation", "Padding", "LRN", "Softmax")


class Parts(list):
    """The tensors a channel Concat node `name` hands on (an Interface, or an Activation cell
    named after it when a consumer needs one tensor)."""

    def __init__(self, tensors, name):
        super().__init__(tensors)
        self.name = name


def is_alias(graph, node) -> bool:
    """True when `node` makes no cell: a view in the same memory order (`legalize_onnx.is_view`),
    or a flattening `OnnxReshape` ([N, C, H, W] -> [N, C*H*W]) read only by Fc nodes, which
    flatten the same way."""
    if graph.op(node) != "OnnxReshape":
        return False
    shape = graph.output_types(node)[0].shape
    readers = {graph.op(dst) for dst, _, _ in graph.consumers(node)}
    return is_view(graph, node) or (len(shape) == 2 and readers == {"Fc"} and
                                    not is_graph_output(graph, node))


def activation(spec):
    """The `n2d2.activation` object of an IR activation spec `(name, params)` (None stays None)."""
    return None if spec is None else getattr(activations, spec[0])(**dict(spec[1]))


def _wh(pair):
    return [int(pair[1]), int(pair[0])]


class CellBuilder:
    """Builds the cells of `graph` (see the module docstring). `with_loss`: Softmax nodes whose
    output is a graph output get `with_loss=True` (the ONNX importer's rule); `order`: node names
    in the order the cells are called when ready (the ONNX file's order: a pass may have moved
    the nodes it rewrote to the end of the graph's insertion order; a node not listed, as a
    `<node>_padding` a rule added, comes just before its first consumer; default: the graph's
    insertion order);
    `load_weights=False`: the cells keep their fillers' values."""

    def __init__(self, graph, with_loss=True, order=None, load_weights=True, label="ONNX model"):
        self.graph = graph
        self.label = label   # the file, in error messages
        self.load_weights = load_weights
        self.with_loss = with_loss
        self.order = order
        self.cells = []
        self.values = {}   # (node, out) -> Tensor, or a list of Tensors (a Concat's parts)

    # -- values --------------------------------------------------------------------------------
    def _value(self, ref, interface_ok):
        v = self.values[ref]
        if not isinstance(v, Parts):
            return v
        if interface_ok:
            return Interface(v)
        t = self._call(Activation(None, name=v.name), Interface(v))   # the Concat materialized
        for key, value in self.values.items():   # and its views
            if value is v:
                self.values[key] = t
        return t

    def _parts(self, ref):
        v = self.values[ref]
        return v if isinstance(v, Parts) else [v]

    def _call(self, cell, inputs):
        cell.test()
        y = cell(inputs)
        self.cells.append(cell)
        return y

    def _ordered(self):
        g = self.graph
        if self.order is None:
            return g.topological_order()
        rank = {n: k for k, n in enumerate(self.order)}

        def key(n):
            if n in rank:
                return rank[n]
            return min((rank.get(d, len(rank)) for d, _, _ in g.consumers(n)), default=len(rank)) - 0.5
        return list(nx.lexicographical_topological_sort(g.nx, key=key))

    def _outputs_of_softmax(self):
        """Softmax nodes whose output (through views) is a graph output."""
        g, found = self.graph, set()
        for n, _ in g.outputs:
            while is_alias(g, n):
                n = g.inputs_of(n)[0][0]
            if g.op(n) == "Softmax":
                found.add(n)
        return found

    # -- building ------------------------------------------------------------------------------
    def build(self, x):
        """Call one cell per node on `x` (the graph's one Input); returns the output tensors."""
        g = self.graph
        (name,) = g.inputs
        self.values[(name, 0)] = x
        self.losses = self._outputs_of_softmax() if self.with_loss else set()
        for node in self._ordered():
            op = g.op(node)
            if op in ("Input", "OnnxConstant"):
                continue
            ins = [r for r in g.inputs_of(node) if g.op(r[0]) != "OnnxConstant"]
            if op == "Concat":
                parts = Parts([], node)
                for r in ins:
                    v = self.values[r]
                    parts += v if isinstance(v, Parts) else [v]
                self.values[(node, 0)] = parts
            elif is_alias(g, node):
                self.values[(node, 0)] = self.values[ins[0]]
            elif op in SUPPORTED:
                cell = getattr(self, f"_cell_{op}")(node, g.attrs(node))
                self._set_params(cell, node)
                # an Fc flattens each part of an Interface: concatenate first unless they are [N, C, 1, 1]
                ok = op in _INTERFACE_OPS and (op != "Fc" or all(int(np.prod(t.shape()[2:])) == 1
                                                                 for t in self._parts(ins[0])))
                inputs = self._value(ins[0], ok) if len(ins) == 1 else Interface([self._value(r, False) for r in ins])
                self.values[(node, 0)] = self._call(cell, inputs)
            else:
                self.values[(node, 0)] = self._onnx_node(node, ins)
        return [self._value(ref, False) for ref in g.outputs]

    def _set_params(self, cell, node):
        g = self.graph
        if not self.load_weights:
            return
        for role, p in g.node(node).params.items():
            target = getattr(cell, f"_{role}")
            values = np.asarray(g.params[p].array, dtype=np.float32)
            if values.size != target.size:
                raise ONNXFormatError(f"{self.label}: node '{node}': {role} of shape {list(values.shape)} for a "
                                      f"{type(cell).__name__} cell expecting {list(target.shape)}")
            target[...] = cell._to_model_device(values.reshape(target.shape))
        if isinstance(cell, Conv):
            cell._mask_weights()

    def _onnx_node(self, node, ins):
        """`node` (an Onnx* op) as an OnnxNode cell: constants become its parameters."""
        g = self.graph
        tensors, shapes, slots, constants = [], [], [], {}
        for slot, ref in enumerate(g.inputs_of(node)):
            if g.op(ref[0]) == "OnnxConstant":
                if slot >= MAX_PARAM_SLOTS:
                    raise ValueError(f"node '{node}': constant operand {slot}; an OnnxNode cell takes constants in "
                                     f"its first {MAX_PARAM_SLOTS} inputs")
                constants[f"in{slot}"] = np.asarray(g.params[g.node(ref[0]).params["value"]].array)
                slots.append(("p", f"in{slot}"))
                continue
            tensor = self._value(ref, False)
            key = next((k for k, t in enumerate(tensors) if t is tensor), None)
            if key is None:
                key = len(tensors)
                tensors.append(tensor)
                shapes.append(tuple(g.output_types(ref[0])[ref[1]].shape[1:]))
            slots.append(("x", key))
        attrs = g.attrs(node)
        batch = g.output_types(node)[0].shape[0]
        batch_keys = tuple(k for k in ("shape",) if k in attrs and len(attrs[k]) and attrs[k][0] == batch)
        cell = OnnxNode(g.op(node)[len("Onnx"):], g.op(node), attrs, slots, shapes, constants, batch_keys, name=node)
        return self._call(cell, tensors)

    # -- one method per N2D2 op ----------------------------------------------------------------------
    def _cell_Conv(self, node, a):
        g = self.graph
        o, cg, kh, kw = g.params[g.node(node).params["weights"]].shape
        c, groups = cg * a["groups"], a["groups"]
        geometry = dict(stride_dims=_wh(a["stride"]), padding_dims=_wh(a["padding"]), dilation_dims=_wh(a["dilation"]),
                        no_bias="biases" not in g.node(node).params, activation=activation(a["activation"]), name=node)
        if groups == 1:
            return Conv(c, o, [kw, kh], **geometry)
        if groups == c == o:
            return ConvDepthWise(c, [kw, kh], **geometry)
        return Conv(c, o, [kw, kh], mapping=Mapping(nb_groups=groups).create_mapping(c, o), **geometry)

    def _cell_Deconv(self, node, a):
        g = self.graph
        c, og, kh, kw = g.params[g.node(node).params["weights"]].shape
        groups = a["groups"]
        o = og * groups
        return Deconv(c, o, [kw, kh], stride_dims=_wh(a["stride"]), padding_dims=_wh(a["padding"]),
                      dilation_dims=_wh(a["dilation"]), no_bias="biases" not in self.graph.node(node).params,
                      mapping=None if groups == 1 else Mapping(nb_groups=groups).create_mapping(c, o),
                      activation=activation(a["activation"]), name=node)

    def _cell_Pool(self, node, a):
        (_, c, h, w), act = self.graph.input_types(node)[0].shape, activation(a["activation"])
        if tuple(a["pool"]) == (h, w) and tuple(a["stride"]) == (1, 1) and tuple(a["padding"]) == (0, 0):
            return GlobalPool2d(pooling=a["pooling"], activation=act, name=node)
        return Pool(_wh(a["pool"]), stride_dims=_wh(a["stride"]), padding_dims=_wh(a["padding"]),
                    pooling=a["pooling"], mapping=Tensor.from_numpy(np.eye(c, dtype=bool)), activation=act, name=node)

    def _cell_Fc(self, node, a):
        g = self.graph
        o, i = g.params[g.node(node).params["weights"]].shape
        return Fc(i, o, no_bias="biases" not in g.node(node).params, activation=activation(a["activation"]),
                  name=node)

    def _cell_BatchNorm(self, node, a):
        c = self.graph.input_types(node)[0].shape[1]
        return BatchNorm2d(c, epsilon=a["epsilon"], moving_average_momentum=a["momentum"],
                           activation=activation(a["activation"]), name=node)

    def _cell_Activation(self, node, a):
        return Activation(activation(a["activation"]), name=node)

    def _cell_ElemWise(self, node, a):
        n = len(self.graph.inputs_of(node))
        if any(isinstance(v, (list, tuple)) for v in list(a["weights"]) + list(a["shifts"])):   # per channel
            flat = {k: [float(v) for c in a[k] for v in c] for k in ("weights", "shifts")}
            kwargs = dict(mode="PerChannel", **flat)
        elif list(a["weights"]) == [1.0] * n and not any(a["shifts"]):
            kwargs = {}
        else:
            kwargs = dict(mode="PerInput", weights=list(a["weights"]), shifts=list(a["shifts"]))
        return ElemWise(a["operation"], activation=activation(a["activation"]), name=node, **kwargs)

    def _cell_Softmax(self, node, a):
        return Softmax(with_loss=a["with_loss"] or node in self.losses, group_size=a["group_size"],
                       activation=activation(a["activation"]), name=node)

    def _cell_Padding(self, node, a):
        return Padding(int(a["top"]), int(a["bot"]), int(a["left"]), int(a["right"]),
                       activation=activation(a["activation"]), name=node)

    def _cell_Scaling(self, node, a):
        kind, scales, clipping = a["scaling"][:3]
        if kind != "FloatingPoint" or clipping is not None:
            raise ValueError(f"node '{node}': a {kind} scaling (clipping {clipping}); the builder makes "
                             "unclipped floating-point Scaling cells")
        return Scaling(FloatingPointScaling([float(v) for v in scales]), name=node)

    def _cell_Transpose(self, node, a):
        return Transpose(list(a["perm"]), activation=activation(a["activation"]), name=node)

    def _cell_Resize(self, node, a):
        return Resize(int(a["width"]), int(a["height"]), a["mode"], align_corners=a["align_corners"],
                      activation=activation(a["activation"]), name=node)

    def _cell_LRN(self, node, a):
        return LRN(size=int(a["size"]), alpha=float(a["alpha"]), beta=float(a["beta"]), k=float(a["bias"]), name=node)

    def _cell_Reshape(self, node, a):
        c, h, w = a["shape"]
        return Reshape([int(w), int(h), int(c)], activation=activation(a["activation"]), name=node)
