"""`n2d2.ir`: the graph compiler's middle (graph, op definitions, tracing, passes, planning).

Needs networkx (`pip install n2d2[compiler]`). `ir` never imports `n2d2.cells`: cells describe
themselves to the tracer through `_ir_node()`.
"""
from n2d2.ir.graph import Graph, GraphError, Node, Param, TensorType

__all__ = ["Graph", "GraphError", "Node", "Param", "TensorType"]
