"""Baking of Conv connection tables into their weights (the exports and PTQ)."""
import numpy as np

from n2d2.ir.passes._common import new_param_name


def bake_connection_tables(graph):
    """Bake every Conv connection table into its weights (export).

    Rewrite: a Conv with `mapping` (a [C, O] bool table) and groups 1 becomes the same Conv
    without mapping whose weights are W[o, c] * mapping[c, o] (a new parameter; the original
    array is untouched). Exact: the reference convolution multiplies its weights by the table,
    and the kernels then need no masked copy per call. Precondition: none (other nodes and
    grouped convolutions are left alone).
    """
    g = graph.copy()
    for name in g.topological_order():
        if g.op(name) != "Conv":
            continue
        attrs = g.attrs(name)
        mapping = attrs.get("mapping")
        if mapping is None or int(attrs.get("groups", 1)) != 1:
            continue
        d = g.nx.nodes[name]
        wname = d["params"]["weights"]
        w = np.asarray(g.params[wname].array)
        table = np.asarray(mapping, dtype=bool)
        if table.shape != (w.shape[1], w.shape[0]):
            continue
        baked = (w * table.T[:, :, None, None].astype(w.dtype)).astype(w.dtype)
        params = dict(d["params"])
        p = g.params[wname]
        params["weights"] = g.add_param(new_param_name(g, f"{wname}.mapped"), np.ascontiguousarray(baked),
                                        p.trainable, p.owner, p.role or "weights")
        d["params"] = params
        d["attrs"] = dict(attrs, mapping=None)
    return g
