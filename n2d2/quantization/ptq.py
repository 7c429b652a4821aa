"""Post-training quantization of a `DeepNetCell` (N2D2's `PTQ`, `calibNetwork` and
`DeepNetQuantization::quantizeNetwork`, reference sections 3.5 to 3.9).

Pipeline (`quantize_network`):

1. The inference graph at batch 1 through the export pipeline of `n2d2.ir.passes` (dropout
   removed, BatchNorm folded into the convolutions, padding and activations fused; no
   element-wise chain fusion), connection tables baked into the weights.
2. Cross-layer equalization (on by default, as N2D2) and optional weight clipping.
3. Calibration: the float network runs over `calibration` stimuli of a partition (Validation
   when it has stimuli, else Test, as N2D2); per node the range of its output, and with
   `act_clipping_mode` MSE / KL_DIVERGENCE a histogram and a clipping threshold (section 3.6).
4. Each node becomes a plain-data integer node through its op's `quantized` facet (int weights,
   int32 biases, requantization parameters of `act_scaling_mode`, activation), in topological
   order, from the thresholds and its inputs' grids (n2d2.quantization.integer).

The result, an `IntegerNetwork`, runs in pure numpy with int64 arithmetic (`run`, `predict`,
`accuracy`); n2d2.quantization.export generates C that computes the same integers.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np

from n2d2.backend import to_host
from n2d2.error_handler import WrongValue
from n2d2.ir import ops as op_registry
from n2d2.ir.passes.bake_connection_tables import bake_connection_tables
from n2d2.ir.passes.manager import PIPELINES, PassManager
from n2d2.ir.passes.shape_inference import rebatch
from n2d2.quantization.integer import SCALING_MODES, QuantizationError, round_away, saturation, signed_max, unsigned_max

CLIPPING_MODES = ("NONE", "MSE", "KL_DIVERGENCE")


@dataclasses.dataclass
class TensorQ:
    """The integer grid of a tensor: real = q * T[c] / Q."""

    signed: bool
    Q: int
    T: np.ndarray


# -- the graph -----------------------------------------------------------------------------------------
def inference_graph(deepnet_cell):
    """The batch-1 inference graph PTQ quantizes (see the module docstring, step 1)."""

    graph = rebatch(deepnet_cell.get_graph(), 1)
    pipeline = [p for p in PIPELINES["inference"] if p != "fuse_elementwise_chains"]
    graph = PassManager(pipeline=pipeline, mode="inference").run(graph)
    return bake_connection_tables(graph)


def _param(graph, node, role):
    name = graph.node(node).params.get(role)
    if name is None or name not in graph.params:
        return None

    return np.asarray(to_host(graph.params[name].array), dtype=np.float64)


def _set_param(graph, node, role, array):
    name = graph.node(node).params[role]
    p = graph.params[name]
    graph.params[name] = dataclasses.replace(p, array=np.asarray(array, dtype=np.float32))


def float_forward(graph, x, keep=None):
    """{node: float output} of the inference graph on the batch `x` (numpy reference ops);
    `keep` limits what is returned (every node by default)."""

    values = {graph.inputs[0]: np.asarray(x, dtype=np.float32)}
    for node in graph.topological_order():
        if graph.op(node) == "Input":
            continue
        d = graph.node(node)
        params = {r: to_host(graph.params[p].array) for r, p in d.params.items() if p in graph.params}
        xs = [values[src] for src, _ in graph.inputs_of(node)]
        outs, _ = op_registry.get(d.op, node).forward(d.attrs, xs, params, training=False)
        values[node] = np.asarray(outs[0])
    return values if keep is None else {k: v for k, v in values.items() if k in keep}


def read_stimuli(provider, partition: str, nb: int):
    """(inputs [N, C, H, W] float32, labels [N] int32) of the first `nb` stimuli (-1: all) of a
    provider partition, in order."""

    ids = provider.get_database().get_partition_ids(partition)
    total = len(ids) if nb < 0 else min(len(ids), nb)
    before = provider.get_partition()
    provider.set_partition(partition)
    xs, ys = [], []
    try:
        batch = provider.get_batch_size()
        for start in range(0, total, batch):
            count = min(batch, total - start)
            x = to_host(provider.read_batch(start)._data)[:count]
            y = to_host(provider.get_labels()._data).reshape(batch, -1)[:count, 0]
            xs.append(np.array(x, dtype=np.float32))
            ys.append(np.array(y, dtype=np.int32))
    finally:
        provider.set_partition(before)
    if not xs:
        return np.zeros((0,) + tuple(provider.shape()[1:]), np.float32), np.zeros(0, np.int32)
    return np.concatenate(xs), np.concatenate(ys)


def calibration_partition(provider) -> str:
    """Validation when it has stimuli, else Test (N2D2's choice)."""
    return "Validation" if len(provider.get_database().get_partition_ids("Validation")) else "Test"


# -- cross-layer equalization and weight clipping -----------------------------------------------------
def _cle_pairs(graph):
    pairs = []
    for child in graph.topological_order():
        if graph.op(child) not in ("Conv", "Fc") or len(graph.inputs_of(child)) != 1:
            continue
        parent, _ = graph.inputs_of(child)[0]
        if graph.op(parent) not in ("Conv", "Fc") or len(graph.consumers(parent)) != 1:
            continue
        spec = graph.attrs(parent).get("activation")
        ok = spec is None or (spec[0] in ("Linear", "Rectifier") and not float(dict(spec[1]).get("clipping", 0) or 0)
                              and not float(dict(spec[1]).get("leak_slope", 0) or 0))
        groups = [int(graph.attrs(n).get("groups", 1) or 1) for n in (parent, child)]
        if ok and groups == [1, 1] and graph.node(parent).params.get("weights") and \
                graph.node(child).params.get("weights"):
            pairs.append((parent, child))
    return pairs


def cross_layer_equalization(graph, max_passes: int = 20):
    """N2D2's CLE (reference 3.5 a): for a Conv/Fc whose single parent is a Conv/Fc with one
    child and a Linear/ReLU activation, scale the parent's output channel i (weights, bias) by
    sqrt(r1 r2)/r1 and the child's input channel i by sqrt(r1 r2)/r2 (r1 = max|W_parent[i]|,
    r2 = max|W_child[:, i]|), repeated until the ranges agree. Exact in real arithmetic
    (positive factors commute with ReLU). Modifies the graph's parameter table (new arrays)."""
    pairs = _cle_pairs(graph)
    for _ in range(max_passes):
        worst = 0.0
        for parent, child in pairs:
            wp, wc = _param(graph, parent, "weights"), _param(graph, child, "weights")
            c = wp.shape[0]
            wc3 = wc.reshape(wc.shape[0], c, -1) if wc.size % c == 0 and (wc.ndim == 2 or wc.shape[1] == c) else None
            if wc3 is None:
                continue
            r1 = np.abs(wp.reshape(c, -1)).max(axis=1)
            r2 = np.abs(wc3).max(axis=(0, 2))
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(r1 * r2) / np.where(ok, r1, 1), 1.0)
            worst = max(worst, float(np.abs(r1 - r2)[ok].max()) if ok.any() else 0.0)
            _set_param(graph, parent, "weights", wp * s.reshape((-1,) + (1,) * (wp.ndim - 1)))
            bp = _param(graph, parent, "biases")
            if bp is not None:
                _set_param(graph, parent, "biases", bp * s)
            _set_param(graph, child, "weights", (wc3 / s[None, :, None]).reshape(wc.shape))
        if worst <= 1e-6:
            break


def clip_weights(graph, mode: str, nb_bits: int):
    """Weight clipping (reference 3.5 b): per Conv/Fc, histogram of its weights on
    [-max|w|, max|w|], threshold by MSE or KL-divergence, weights clamped to +-threshold."""
    if mode == "NONE":
        return
    for node in graph.topological_order():
        if graph.op(node) not in ("Conv", "Fc"):
            continue
        w = _param(graph, node, "weights")
        if w is None or not np.abs(w).max() > 0:
            continue
        hist = Histogram(nb_bits, signed=True)
        hist.set_range(float(np.abs(w).max()))
        hist.add(w)
        t = hist.threshold(mode, nb_bits)
        _set_param(graph, node, "weights", np.clip(w, -t, t))


# -- histograms and clipping thresholds (reference 3.6) ----------------------------------------------
class Histogram:
    """A histogram on [0, v] (unsigned) or [-v, v] with min(2^n * 64, 65536) bins, N2D2's bin
    index floor((x - lo) / width + 1e-6), last bin inclusive, bin value its centre."""

    def __init__(self, nb_bits: int, signed: bool):
        self.bins = min(2 ** nb_bits * 64, 65536)
        self.signed = signed
        self.counts = np.zeros(self.bins, dtype=np.float64)
        self.lo = self.hi = 0.0

    def set_range(self, v: float):
        v = max(float(v), 0.1)
        self.lo, self.hi = (-v if self.signed else 0.0), v

    @property
    def width(self):
        return (self.hi - self.lo) / self.bins

    def add(self, x):
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        idx = np.floor((x - self.lo) / self.width + 1e-6).astype(np.int64)
        self.counts += np.bincount(np.clip(idx, 0, self.bins - 1), minlength=self.bins)

    def centres(self):
        return self.lo + (np.arange(self.bins) + 0.5) * self.width

    def threshold(self, mode: str, nb_bits: int) -> float:
        m = max(abs(self.lo), abs(self.hi))
        cands = m - np.arange(1000) * m / 1000.0
        nz = self.counts > 0
        c, f = self.centres()[nz], self.counts[nz]
        if mode == "MSE":
            q, lo = (signed_max(nb_bits), -(2 ** (nb_bits - 1))) if self.signed else (unsigned_max(nb_bits), 0)
            costs = []
            for chunk in np.array_split(cands, 10):
                t = chunk[:, None]
                chat = np.clip(round_away(c[None, :] * q / t), lo, q) * t / q
                costs.append(((c[None, :] - chat) ** 2 * f[None, :]).sum(axis=1))
            return float(cands[int(np.argmin(np.concatenate(costs)))])
        if mode == "KL_DIVERGENCE":
            return self._kl_threshold(cands, nb_bits)
        raise QuantizationError(f"unknown clipping mode '{mode}' (expected one of {', '.join(CLIPPING_MODES)})")


    def _kl_threshold(self, cands, nb_bits) -> float:
        """KL-divergence threshold (TensorRT's procedure): for each candidate t, the reference
        distribution P is the |x| histogram up to t with the outliers added to its last bin; Q is
        the histogram up to t (outliers left out) merged into the 2^n (unsigned) or 2^(n-1)
        (signed) levels of the grid and spread back over each level's non-empty bins; keep the t
        of least KL(P || Q) (first on ties). The first bin (the zeros of a ReLU) is left out.
        The reference's one-line description (Q: coarse counts over every fine bin) picked
        degenerate thresholds here (31 % on an 8-bit LeNet): see docs/compatibility.md."""
        half = self.bins // 2 if self.signed else 0
        counts = self.counts[half:] + (self.counts[:half][::-1] if self.signed else 0)
        counts = counts.copy()
        counts[0] = 0.0    # the spike of exact zeros (ReLU) says nothing about the clipping level
        width = self.width
        levels = 2 ** (nb_bits - 1) if self.signed else 2 ** nb_bits
        best, best_t = np.inf, float(cands[0])
        total = counts.sum()
        if total <= 0:
            return best_t
        for t in cands:
            i = int(round(t / width))
            if i < levels:
                continue
            sliced = counts[:i]
            ref = sliced.copy()
            ref[-1] += counts[i:].sum()
            group = (np.arange(i) * levels) // i
            sums = np.bincount(group, weights=sliced, minlength=levels)
            nonzero = np.bincount(group, weights=(sliced > 0).astype(np.float64), minlength=levels)
            qv = np.where(sliced > 0, sums[group] / np.maximum(nonzero[group], 1), 0.0)
            if qv.sum() <= 0:
                continue
            qv = np.where((ref > 0) & (qv == 0), 1e-12, qv)
            pn, qn = ref / ref.sum(), qv / qv.sum()
            m = pn > 0
            cost = float(np.sum(pn[m] * np.log(pn[m] / qn[m])))
            if cost < best:
                best, best_t = cost, float(t)
        return best_t


def _clips(graph, node) -> bool:
    """N2D2 clips the cells with a Rectifier / Linear activation and more than 2 outputs; the
    network's output is not clipped here."""
    if graph.op(node) in ("ElemWise", "Pool", "Softmax", "Input", "Activation"):
        return False
    # the network's output (or the input of a final Softmax) is never clipped: its arg-max needs
    # its largest values (N2D2 clips it like any other cell)
    last = graph.outputs[0][0]
    if node == last or (graph.op(last) == "Softmax" and graph.inputs_of(last)[0][0] == node):
        return False
    spec = graph.attrs(node).get("activation")
    name = spec[0] if spec else "Linear"
    return name in ("Rectifier", "Linear", "Saturation") and int(graph.output_types(node)[0].shape[1]) > 2


def calibrate(graph, inputs, act_clipping_mode="MSE", nb_bits=8, batch=64) -> dict:
    """{"input": (min, max) of the inputs, "thresholds": {node: T}} from a float run of `graph`
    over `inputs` (two passes: ranges, then histograms where a clipping mode needs them)."""
    if len(inputs) == 0:
        raise RuntimeError("cannot calibrate a network without data, use a provider with data.")
    nodes = [n for n in graph.topological_order() if graph.op(n) != "Input"]
    lo = {n: np.inf for n in nodes}
    hi = {n: -np.inf for n in nodes}
    for start in range(0, len(inputs), batch):
        values = float_forward(graph, inputs[start:start + batch])
        for n in nodes:
            lo[n] = min(lo[n], float(values[n].min()))
            hi[n] = max(hi[n], float(values[n].max()))
    thresholds = {n: max(abs(lo[n]), abs(hi[n])) for n in nodes}
    if act_clipping_mode != "NONE":
        # a clipping cell whose only child is a max pool is clipped on the pool's histogram
        source = {}
        for n in nodes:
            if _clips(graph, n):
                cons = graph.consumers(n)
                only = cons[0][0] if len(cons) == 1 else None
                source[n] = only if only and graph.op(only) == "Pool" and \
                    graph.attrs(only).get("pooling") == "Max" else n
        hists = {}
        for s in set(source.values()):
            hists[s] = Histogram(nb_bits, signed=lo[s] < 0)
            hists[s].set_range(thresholds[s])
        for start in range(0, len(inputs), batch):
            values = float_forward(graph, inputs[start:start + batch], keep=hists)
            for s, h in hists.items():
                h.add(values[s])
        for n, s in source.items():
            thresholds[n] = hists[s].threshold(act_clipping_mode, nb_bits)
    return {"input": (float(inputs.min()), float(inputs.max())), "thresholds": thresholds,
            "ranges": {n: (lo[n], hi[n]) for n in nodes}}


# -- the integer network -------------------------------------------------------------------------------
class _Context:
    """What an op's `quantized.quantize(q, node)` reads."""

    def __init__(self, graph, nb_bits, mode, per_output, unsigned_ok, thresholds):
        self.graph, self.nb_bits, self.mode = graph, nb_bits, mode
        self.per_output, self.unsigned_ok = per_output, unsigned_ok
        self._thresholds = thresholds
        self.grids = {}

    def input_q(self, node, k) -> TensorQ:
        src, _ = self.graph.inputs_of(node)[k]
        return self.grids[src]

    def threshold(self, node) -> float:
        t = float(self._thresholds[node])
        return t if t > 0 else 1.0      # a node that is always 0: any grid represents it

    def param(self, node, role):
        return _param(self.graph, node, role)


class IntegerNetwork:
    """A quantized network as plain data, and its integer simulation.

    `input`: {name, shape (C, H, W), signed, Q, range}: a float stimulus x becomes
    round(x Q / range) saturated to n bits (`quantize_input`). `nodes`: one dict per node in
    topological order: name, op, kernel, inputs (node names), shape (C, H, W), signed, Q, T
    (per-channel thresholds), and the op's integer data (weights, biases, scaling, relu, attrs).
    `output`: the last node; its integers' arg-max over channels is the prediction."""

    def __init__(self, name, nb_bits, act_scaling_mode, input_desc, nodes, output, options=None):
        self.name, self.nb_bits, self.act_scaling_mode = name, nb_bits, act_scaling_mode
        self.input, self.nodes, self.output = input_desc, nodes, output
        self.options = dict(options or {})

    def __repr__(self):
        return (f"IntegerNetwork('{self.name}', nb_bits={self.nb_bits}, act_scaling_mode={self.act_scaling_mode}, "
                f"{len(self.nodes)} nodes)")

    def quantize_input(self, x):
        lo, hi = saturation(self.nb_bits, self.input["signed"])
        return np.clip(round_away(np.asarray(x, dtype=np.float64) * self.input["Q"] / self.input["range"]), lo, hi)

    def run(self, xq, keep_all=False):
        """int64 outputs of the last node (or {node: output} with keep_all) on integer inputs."""

        values = {self.input["name"]: np.asarray(xq, dtype=np.int64)}
        for qn in self.nodes:
            op = op_registry.get(qn["op"], qn["name"])
            values[qn["name"]] = op.integer_forward(qn, [values[s] for s in qn["inputs"]], self.nb_bits)
        return values if keep_all else values[self.output]

    def predict(self, x, batch=256):
        """Arg-max class of float stimuli `x` [N, C, H, W] through the integer network."""
        out = [self.run(self.quantize_input(x[s:s + batch])) for s in range(0, len(x), batch)]
        out = np.concatenate(out) if out else np.zeros((0, 1), np.int64)
        return out.reshape(len(out), out.shape[1], -1)[:, :, 0].argmax(axis=1) if out.ndim > 1 else out

    def accuracy(self, x, labels) -> float:
        return float(np.mean(self.predict(x) == np.asarray(labels))) if len(x) else 0.0

    def to_dict(self) -> dict:
        """The whole description as JSON-ready plain data (arrays as nested lists)."""
        def plain(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            if isinstance(v, (np.integer, np.floating, np.bool_)):
                return v.item()
            if isinstance(v, dict):
                return {str(k): plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return plain({"name": self.name, "nb_bits": self.nb_bits, "act_scaling_mode": self.act_scaling_mode,
                      "input": self.input, "output": self.output, "options": self.options, "nodes": self.nodes})

    def weight_bytes(self) -> int:
        """Bytes of the exported weights and biases (int8 weights and int32 biases up to 8 bits, int16 and
        int64 above)."""
        size = 0
        for qn in self.nodes:
            if "weights" in qn:
                size += qn["weights"].size * (1 if self.nb_bits <= 8 else 2) + \
                    qn["biases"].size * (4 if self.nb_bits <= 8 else 8)
        return size


def _check_mode(name, value, allowed):
    if not isinstance(value, str) or value not in allowed:

        raise WrongValue(name, value, list(allowed))


def quantize_network(deepnet_cell, provider=None, nb_bits=8, calibration=-1, partition=None, no_unsigned=False,
                     cross_layer_equalization=True, wt_clipping_mode="NONE", act_clipping_mode="MSE",
                     act_scaling_mode="FLOAT_MULT", act_rescale_per_output=False, graph=None,
                     ranges=None) -> IntegerNetwork:
    """Quantize `deepnet_cell` (its float parameters are not modified) and return the
    `IntegerNetwork`. `calibration`: stimuli of `partition` (default: Validation when it has
    stimuli, else Test) to calibrate on, rounded up to whole batches of the provider as N2D2
    does, -1 all of them; `provider` defaults to the cell's. `ranges` (with `graph`): the
    calibration's result given instead, {"input": (min, max), "thresholds": {node: T}} (QAT
    fusion, n2d2.quantization.qat: no stimuli are read)."""
    if isinstance(nb_bits, bool) or not isinstance(nb_bits, (int, np.integer)) or not 2 <= int(nb_bits) <= 16:

        raise WrongValue("nb_bits", nb_bits, ["an integer width 2..16 (8, 4, ...)"])
    nb_bits = int(nb_bits)
    _check_mode("act_scaling_mode", act_scaling_mode, SCALING_MODES)
    _check_mode("act_clipping_mode", act_clipping_mode, CLIPPING_MODES)
    _check_mode("wt_clipping_mode", wt_clipping_mode, CLIPPING_MODES)
    if ranges is not None:
        return _integer_network(deepnet_cell.get_name(), graph.copy(), ranges, nb_bits, no_unsigned, act_scaling_mode,
                                act_rescale_per_output, dict(calibration=0, ranges="given"))
    provider = provider if provider is not None else deepnet_cell.get_provider()
    if provider is None:
        raise RuntimeError(f"PTQ: DeepNetCell '{deepnet_cell.get_name()}' has no provider: pass provider=")
    if calibration == 0:
        raise ValueError("PTQ: calibration=0: an integer network needs calibration stimuli (-1: all, k > 0: k)")
    partition = partition or calibration_partition(provider)
    nb = int(calibration)
    if nb > 0:   # whole batches, as N2D2 (calibration=1 calibrates on one batch)
        batch = int(provider.get_batch_size())
        nb = -(-nb // batch) * batch
    inputs, _ = read_stimuli(provider, partition, nb)
    if len(inputs) == 0:
        raise RuntimeError("cannot calibrate a network without data, use a provider with data.")
    graph = inference_graph(deepnet_cell) if graph is None else graph.copy()
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise QuantizationError(f"PTQ: graph '{graph.name}' has {len(graph.inputs)} inputs and "
                                f"{len(graph.outputs)} outputs; exactly one of each is supported")
    if cross_layer_equalization:
        cross_layer_equalization_fn(graph)
    clip_weights(graph, wt_clipping_mode, nb_bits)
    t0 = time.perf_counter()
    calib = calibrate(graph, inputs, act_clipping_mode, nb_bits)
    seconds = time.perf_counter() - t0
    options = dict(calibration=len(inputs), partition=partition, no_unsigned=no_unsigned,
                   cross_layer_equalization=cross_layer_equalization, wt_clipping_mode=wt_clipping_mode,
                   act_clipping_mode=act_clipping_mode, act_rescale_per_output=act_rescale_per_output,
                   calibration_seconds=seconds)
    return _integer_network(deepnet_cell.get_name(), graph, calib, nb_bits, no_unsigned, act_scaling_mode,
                            act_rescale_per_output, options)


def _integer_network(name, graph, calib, nb_bits, no_unsigned, act_scaling_mode, act_rescale_per_output,
                     options) -> IntegerNetwork:
    """The IntegerNetwork of an inference `graph` from its ranges `calib` (`calibrate`'s result)."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise QuantizationError(f"PTQ: graph '{graph.name}' has {len(graph.inputs)} inputs and "
                                f"{len(graph.outputs)} outputs; exactly one of each is supported")
    in_name = graph.inputs[0]
    in_lo, in_hi = calib["input"]
    signed_in = not (in_lo >= 0 and not no_unsigned)
    rin = max(abs(in_lo), abs(in_hi)) or 1.0
    q_in = signed_max(nb_bits) if signed_in else unsigned_max(nb_bits)
    in_shape = tuple(int(v) for v in graph.output_types(in_name)[0].shape[1:])
    ctx = _Context(graph, nb_bits, act_scaling_mode, act_rescale_per_output, not no_unsigned, calib["thresholds"])
    ctx.grids[in_name] = TensorQ(signed_in, q_in, np.full(in_shape[0], rin))

    nodes = []
    for node in graph.topological_order():
        op = graph.op(node)
        if op == "Input":
            continue
        opdef = op_registry.get(op, node)
        if opdef.quantized is None:
            raise QuantizationError(f"PTQ: node '{node}' (op {op}) has no integer form (n2d2/ops: OpDef.quantized)")
        qn = opdef.quantize_integer(ctx, node)
        shape = tuple(int(v) for v in graph.output_types(node)[0].shape[1:])
        channels = shape[0] if shape else 1
        t = np.broadcast_to(np.asarray(qn["T"], dtype=np.float64).reshape(-1), (channels,)).copy()
        ctx.grids[node] = TensorQ(bool(qn["signed"]), int(qn["Q"]), t)
        qn.update(name=node, op=op, kernel=opdef.quantized, inputs=[s for s, _ in graph.inputs_of(node)],
                  shape=shape, T=t)
        nodes.append(qn)
    out_node, _ = graph.outputs[0]
    return IntegerNetwork(name, nb_bits, act_scaling_mode,
                          {"name": in_name, "shape": in_shape, "signed": signed_in, "Q": q_in, "range": rin},
                          nodes, out_node, options)


cross_layer_equalization_fn = cross_layer_equalization
