"""Dead-node elimination: drop what no graph output depends on."""
import networkx as nx

from n2d2.ir.graph import Graph


def dead_node_elimination(graph: Graph) -> Graph:
    """Remove every node from which no graph output is reachable.

    Precondition: none. Input nodes listed in `graph.inputs` are always kept (the caller still
    feeds them). In training mode a removed BatchNorm no longer updates its moving statistics;
    nothing observable through the graph outputs changes.
    """
    g = graph.copy()
    live = set(g.inputs)
    for name, _ in g.outputs:
        if name in g.nx:
            live.add(name)
            live |= nx.ancestors(g.nx, name)
    for name in [n for n in g.nodes() if n not in live]:
        g.remove_node(name)
    return g
