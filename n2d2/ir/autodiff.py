"""Autodiff: the training graph of a forward graph.

`build_training_graph(forward)` returns a graph holding, in this order of phases:

1. the forward nodes (run in training mode);
2. for every graph output, an Input `seed:<node>` receiving d(loss)/d(output);
3. one `Grad` node per forward node that needs it (reverse order): its inputs are the upstream
   gradient, then the forward node's inputs and outputs (so that liveness keeps them as long as
   the backward needs them); its outputs are the gradients of the forward inputs that need one,
   then of its trainable parameters. Contributions to the same tensor are summed by `AddN`;
4. one `Update` node per trainable parameter (the parameter's solver applied in place).

A node whose attrs hold `back_propagate=False` (a cell with back_propagate off) sends no
gradient to its inputs; its own parameters are still trained.

A `Grad` node calls its forward op's `backward` with the context saved by that forward node in
the same run; executors pass it through (see `n2d2.codegen.numpy_exec`).
"""
from n2d2.ir import ops as op_registry
from n2d2.ir.graph import Graph, GraphError
from n2d2.ir.types import TensorType


class TrainingGraph:
    """The training graph plus the phase of every node and where each gradient lives."""

    def __init__(self, graph, forward_nodes, grad_inputs, backward_nodes, update_nodes, param_grads):
        self.graph = graph
        self.forward_nodes = forward_nodes      # forward node names, execution order
        self.grad_inputs = grad_inputs          # {(output node, idx): Input node of its gradient}
        self.backward_nodes = backward_nodes    # Grad / AddN nodes, execution order
        self.update_nodes = update_nodes        # Update nodes
        self.param_grads = param_grads          # {param name: (node, out index)}


def _needs_grad(graph, order):
    """Nodes whose output depends on a trainable parameter or on nothing but... (forward dataflow)."""
    needs = {}
    for name in order:
        node = graph.node(name)
        own = any(graph.params[p].trainable for r, p in node.params.items()
                  if r in op_registry.get(node.op).trainable)
        needs[name] = own or any(needs[src] for src, _ in graph.inputs_of(name))
    return needs


def build_training_graph(forward: Graph, name=None) -> TrainingGraph:
    """Forward + backward + update graph of `forward` (see the module docstring)."""
    g = forward.copy()
    g.name = name or f"{forward.name}.train"
    fwd_order = forward.topological_order()
    needs = _needs_grad(forward, fwd_order)

    # Gradient contributions per forward tensor (node, out): list of (grad node, out index).
    contributions = {}
    grad_inputs = {}
    for out_node, idx in forward.outputs:
        if not needs[out_node]:
            continue
        gname = g.add_input(g.unique_name(f"seed:{out_node}"), forward.output_types(out_node)[idx].shape,
                            forward.output_types(out_node)[idx].dtype)
        grad_inputs[(out_node, idx)] = gname
        contributions.setdefault((out_node, idx), []).append((gname, 0))

    backward_nodes, param_grads = [], {}

    def gradient_of(tensor):
        parts = contributions.get(tensor)
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        total = g.add_op(g.unique_name(f"addn:{tensor[0]}"), "AddN", parts)
        backward_nodes.append(total)
        contributions[tensor] = [(total, 0)]
        return (total, 0)

    for name in reversed(fwd_order):
        node = forward.node(name)
        if node.op == "Input" or not needs[name]:
            continue
        dy = gradient_of((name, 0))
        if dy is None:
            continue
        opdef = op_registry.get(node.op, node=name)
        sources = forward.inputs_of(name)
        propagate = node.attrs.get("back_propagate", True)  # False: the cell sends no gradient back
        input_needs = tuple(propagate and needs[src] and forward.op(src) != "Input" for src, _ in sources)
        roles = tuple(r for r in opdef.trainable if r in node.params and forward.params[node.params[r]].trainable)
        if not any(input_needs) and not roles:
            continue
        outputs = [forward.output_types(src)[out] for (src, out), n in zip(sources, input_needs) if n]
        outputs += [TensorType(forward.params[node.params[r]].shape, "float32") for r in roles]
        gname = g.unique_name(f"grad:{name}")
        g.add_node(gname, "Grad", [dy] + list(sources) + [(name, 0)],
                   attrs={"of": name, "input_needs": input_needs, "roles": roles}, outputs=outputs)
        backward_nodes.append(gname)
        k = 0
        for (src, out), n in zip(sources, input_needs):
            if n:
                contributions.setdefault((src, out), []).append((gname, k))
                k += 1
        for r in roles:
            param_grads.setdefault(node.params[r], []).append((gname, k))
            k += 1

    # A parameter used by several nodes (a cell called twice) gets the sum of its gradients.
    for pname, parts in list(param_grads.items()):
        if len(parts) == 1:
            param_grads[pname] = parts[0]
        else:
            total = g.add_op(g.unique_name(f"addn:{pname}"), "AddN", parts)
            backward_nodes.append(total)
            param_grads[pname] = (total, 0)

    update_nodes = []
    for pname, (gnode, k) in param_grads.items():
        param = g.params[pname]
        if param.solver is None:
            raise GraphError(f"parameter '{pname}' is trainable but has no solver")
        uname = g.add_node(g.unique_name(f"update:{pname}"), "Update", [(gnode, k)],
                           attrs={"param": pname}, params={"param": pname}, outputs=[])
        update_nodes.append(uname)
    return TrainingGraph(g, [n for n in fwd_order], grad_inputs, backward_nodes, update_nodes, param_grads)
