"""`n2d2.ir`: the graph compiler's middle (graph, op definitions, tracing, passes, planning).

The graph needs networkx (a dependency of the package); the op base (`n2d2.ir.ops`) and value
types do not. Every op is found through `n2d2.ir.ops.get`, which loads the op modules listed in
`n2d2.ir.registry` on first need. `ir` never imports
`n2d2.cells`: cells describe themselves to the tracer through `_ir_node()`.
"""
from n2d2.ir.types import GraphError, TensorType

__all__ = ["Graph", "GraphError", "Node", "Param", "TensorType"]


def __getattr__(name):
    if name in ("Graph", "Node", "Param"):
        from n2d2.ir import graph

        return getattr(graph, name)
    raise AttributeError(f"module 'n2d2.ir' has no attribute '{name}'")
