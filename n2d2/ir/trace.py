"""Tracing: an eager graph (the call records of a `DeepNet`) captured as an IR `Graph`.

Each call record becomes one node named after its cell (a cell called twice gets `name_1`,
...); raw inputs (provider batches, placeholders) become `Input` nodes; parameters are bound
by reference under `<cell>.<role>` so that the graph and the cells share their arrays.
"""
from n2d2.ir.graph import Graph, GraphError


class TraceResult:
    """A traced graph plus the maps between its nodes and the cells and tensors they came from."""

    def __init__(self, graph, cell_of, node_of_tensor):
        self.graph = graph
        self.cell_of = cell_of                  # node name -> cell
        self.node_of_tensor = node_of_tensor    # id(tensor) -> node name


def trace(deepnet, outputs=None, name=None, input_names=None) -> TraceResult:
    """Capture `deepnet`'s records.

    Parameters
    ----------
    deepnet : n2d2.deepnet.DeepNet
        The eager graph (for example `output_tensor.get_deepnet()`).
    outputs : list of Tensor, optional
        Graph outputs; default: the output of the last record.
    input_names : list of str, optional
        Names for the Input nodes, in order of first use (default `input`, `input_1`...).
    """
    records = deepnet.records()
    if not records:
        raise GraphError(f"{deepnet.get_name()}: nothing to trace (no cell was called on this graph)")
    graph = Graph(name or deepnet.get_name())
    node_of = {}
    cell_of = {}
    input_names = list(input_names or [])
    for record in records:
        cell = record.cell
        sources = []
        for tensor in record.inputs:
            key = id(tensor)
            if key not in node_of:
                if tensor.cell is not None and not _is_provider(tensor.cell) and tensor.cell in cell_of.values():
                    raise GraphError(f"cell '{cell.get_name()}': input produced by "
                                     f"'{tensor.cell.get_name()}' outside this trace")
                base = input_names.pop(0) if input_names else "input"
                node_of[key] = graph.add_input(graph.unique_name(base), tuple(tensor.shape()),
                                               str(tensor._data.dtype))
            sources.append((node_of[key], 0))
        op, attrs, params = cell._ir_node()
        if not cell._config.get("back_propagate", True):
            attrs = dict(attrs, back_propagate=False)
        node = graph.unique_name(cell.get_name())
        bound = {}
        for role, (array, solver) in params.items():
            if array is None:
                continue
            pname = f"{cell.get_name()}.{role}"
            graph.add_param(pname, array, trainable=solver is not None, owner=cell.get_name(), role=role,
                            solver=solver)
            bound[role] = pname
        graph.add_op(node, op, sources, attrs, bound)
        traced = tuple(graph.output_types(node)[0].shape)
        if traced != tuple(record.output.shape()):
            raise GraphError(f"cell '{cell.get_name()}' ({op}): the op gives {list(traced)} but the eager call "
                             f"gave {record.output.shape()}")
        cell_of[node] = cell
        node_of[id(record.output)] = _add_activation_quantizer(graph, cell, node)
    outs = outputs if outputs is not None else [records[-1].output]
    missing = [t for t in outs if id(t) not in node_of]
    if missing:
        raise GraphError(f"{deepnet.get_name()}: an output tensor was not produced in this graph")
    graph.set_outputs([node_of[id(t)] for t in outs])
    return TraceResult(graph, cell_of, node_of)


def _add_activation_quantizer(graph, cell, node):
    """A FakeQuantize node after `node` when the cell's activation has a quantizer (its learned
    scalar bound as `<cell>.activation_quantizer`, trained by the quantizer's solver); the node
    that carries the cell's output."""
    quantizer = getattr(cell, "activation_quantizer", lambda: None)()
    if quantizer is None:
        return node
    scalar, solver = quantizer.learnable()
    pname = f"{cell.get_name()}.activation_quantizer"
    if pname not in graph.params:
        graph.add_param(pname, scalar, trainable=True, owner=cell.get_name(), role="quant_param", solver=solver)
    fq = graph.unique_name(f"{node}_quantizer")
    graph.add_op(fq, "FakeQuantize", [(node, 0)], {"quantizer": quantizer.ir_spec()}, {"quant_param": pname})
    return fq


def _is_provider(obj) -> bool:
    return not hasattr(obj, "_ir_node")
