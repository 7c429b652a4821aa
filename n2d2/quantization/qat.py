"""QAT fusion: the integer network of a network trained with SAT / LSQ quantizers, from the
ranges it learned (upstream's `fuse_qat` / `DeepNetQAT`, reference section 3.11; no calibration).

`qat_inference_graph(deepnet_cell)`: the batch-1 inference graph with
* every fake-quantized weight tensor replaced by its quantized value (SAT: the tanh-normalised,
  rounded and scaled weights; LSQ: step x integer), the weight quantizer removed;
* every activation quantizer (FakeQuantize node) replaced by the clip it applies, a
  `Rectifier(clipping=c)` with c = |alpha| (SAT) or R x step (LSQ);
then the PTQ inference passes (dropout removed, BatchNorm folded into the convolutions now that
their weights are plain, the clipping Rectifier fused into them).

`fuse_qat(...)`: that graph quantized by the PTQ machinery (n2d2.quantization.ptq) with the
learned ranges as thresholds: a node carrying a learned clip c gets the grid [0, c] (2^n - 1
steps: the quantizer's R steps are a subset when R divides 2^n - 1, e.g. 15 | 255, so a 4-bit SAT
activation is representable on the 8-bit grid; the integer program rounds on the finer grid); a
weighted node QAT left float (upstream's Linear Fc before the classifier, the classifier) has no
learned range: a max-abs pass over a few stimuli measures it (else the bound sum |W| T_in + |b|,
which never saturates but is 20x too wide on LeNet's classifier); a pool or other node takes the
largest threshold of its inputs. Weights are re-quantized on the integer grid of the layer
(BatchNorm factors folded in), biases on the accumulator's, as PTQ does.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from n2d2.backend import to_host
from n2d2.ir import ops as op_registry
from n2d2.ir.ops import _options, quantize_weights
from n2d2.ir.passes.bake_connection_tables import bake_connection_tables
from n2d2.ir.passes.manager import PIPELINES, PassManager
from n2d2.ir.passes.shape_inference import rebatch
from n2d2.quantization.integer import SCALING_MODES, QuantizationError
from n2d2.quantization.ptq import IntegerNetwork, calibrate, calibration_partition, quantize_network, read_stimuli

ROUND_MODES = ("NONE", "RINTF")
UNLEARNED_STIMULI = 256   # stimuli measuring the ranges QAT did not learn (fuse_qat's `calibration`)


def _learned_clip(graph, node) -> float:
    """The clip level a FakeQuantize node applies: |alpha| (SAT) or R x step (LSQ)."""
    kind, o = _options(graph.attrs(node)["quantizer"])
    p = float(np.asarray(to_host(graph.params[graph.node(node).params["quant_param"]].array)).reshape(-1)[0])
    if not np.isfinite(p):
        what = "alpha" if kind == "SAT" else "step"
        raise QuantizationError(f"node '{node}' (FakeQuantize {kind}): its learned {what} is {p} (LSQ: not "
                                "initialised before the first training forward)")
    if kind == "SAT":
        return abs(p)
    if kind == "LSQ":
        return int(o["range"]) * abs(p)
    raise QuantizationError(f"node '{node}': unknown activation quantizer '{kind}' (expected SAT or LSQ)")


def _absorbs_clip(graph, src, quantizer) -> bool:
    """`src` ((node, output)) carries a plain Rectifier or Linear activation and feeds only `quantizer`: the clip
    [0, c] after it is then the activation itself (clip(relu(x)) = clip(x), c > 0)."""
    name, _ = src
    spec = graph.node(name).attrs.get("activation")
    if (not spec or spec[0] not in ("Rectifier", "Linear") or len(graph.output_types(name)) != 1
            or {dst for dst, _, _ in graph.consumers(name)} != {quantizer} or any(o[0] == name for o in graph.outputs)):
        return False
    options = dict(spec[1])
    return not float(options.get("clipping", 0.0) or 0.0) and not float(options.get("leak_slope", 0.0) or 0.0)


def fuse_quantizers(graph):
    """A copy of `graph` with the weight quantizers applied to the weights and the FakeQuantize
    nodes replaced by their clipping Rectifier (see the module docstring)."""
    g = graph.copy()
    for node in g.topological_order():
        d = g.node(node)
        spec = d.attrs.get("weight_quantizer")
        if spec is not None:
            opdef = op_registry.get(d.op, node)
            params = {r: np.asarray(to_host(g.params[p].array)) for r, p in d.params.items() if p in g.params}
            quantized, _ = quantize_weights(opdef, d.attrs, spec, params, training=False)
            old = d.params["weights"]
            new = f"{old}.qat"
            g.params[new] = dataclasses.replace(g.params[old], array=np.ascontiguousarray(quantized["weights"],
                                                                                          dtype=np.float32))
            g.nx.nodes[node]["params"] = {r: (new if r == "weights" else p) for r, p in d.params.items()
                                          if r != "weight_step"}
            g.nx.nodes[node]["attrs"] = {k: v for k, v in d.attrs.items() if k != "weight_quantizer"}
        if d.op == "FakeQuantize":
            clip = _learned_clip(g, node)
            src = g.inputs_of(node)[0]
            if _absorbs_clip(g, src, node):   # Rectifier(quantizer=SATAct): one clipping Rectifier
                spec = ("Rectifier", (("clipping", clip), ("leak_slope", 0.0)))
                g.nx.nodes[src[0]]["attrs"] = dict(g.node(src[0]).attrs, activation=spec)
                g.replace_uses(node, src[0], new_out=src[1])
                g.remove_node(node)
                continue
            act = g.add_op(g.unique_name(f"{node}_clip"), "Activation", [src],
                           {"activation": ("Rectifier", (("clipping", clip), ("leak_slope", 0.0)))})
            g.replace_uses(node, act)
            g.remove_node(node)
    return g


def qat_inference_graph(deepnet_cell):
    """The fused batch-1 inference graph (module docstring)."""
    graph = fuse_quantizers(rebatch(deepnet_cell.get_graph(), 1))
    pipeline = [p for p in PIPELINES["inference"] if p != "fuse_elementwise_chains"]
    graph = PassManager(pipeline=pipeline, mode="inference").run(graph)
    return bake_connection_tables(graph)


def _unlearned(graph) -> list:
    """The weighted nodes of the fused graph without a learned clip (QAT left their output float)."""
    out = []
    for node in graph.topological_order():
        d = graph.node(node)
        spec = d.attrs.get("activation")
        clip = float(dict(spec[1]).get("clipping", 0.0) or 0.0) if spec and spec[0] == "Rectifier" else 0.0
        if clip <= 0 and d.params.get("weights") in graph.params:
            out.append(node)
    return out


def learned_thresholds(graph, input_range) -> dict:
    """{node: T} of the fused graph from the weights alone: a learned clip where there is one; for
    a weighted node without one the bound sum |W| T_in + |b| of its values (never saturates, but
    coarse: `fuse_qat` replaces it by a measured range when it has stimuli); else the inputs' max."""
    t = {graph.inputs[0]: float(input_range)}
    unlearned = set(_unlearned(graph))
    for node in graph.topological_order():
        if node in t:
            continue
        d = graph.node(node)
        ins = [t[s] for s, _ in graph.inputs_of(node)]
        spec = d.attrs.get("activation")
        if node in unlearned:
            weights = np.abs(np.asarray(to_host(graph.params[d.params["weights"]].array), dtype=np.float64))
            b = d.params.get("biases")
            bias = np.abs(np.asarray(to_host(graph.params[b].array), dtype=np.float64)) if b in graph.params else 0.0
            if d.op == "Deconv":
                weights = np.swapaxes(weights, 0, 1)
            bound = weights.reshape(weights.shape[0], -1).sum(axis=1) * max(ins) + bias
            t[node] = float(np.max(bound)) if np.size(bound) else 1.0
        elif spec and spec[0] == "Rectifier" and float(dict(spec[1]).get("clipping", 0.0) or 0.0) > 0:
            t[node] = float(dict(spec[1])["clipping"])
        else:
            t[node] = max(ins) if ins else 1.0
    return t


def _has_quantizers(graph) -> bool:
    return any(graph.op(n) == "FakeQuantize" or graph.attrs(n).get("weight_quantizer") is not None for n in graph.nx)


def fuse_qat(deepnet_cell, provider=None, act_scaling_mode="FLOAT_MULT", w_mode="NONE", b_mode="NONE",
             c_mode="NONE", nb_bits=8, input_range=1.0, calibration=UNLEARNED_STIMULI) -> IntegerNetwork:
    """The `IntegerNetwork` (`nb_bits` integers, `act_scaling_mode` requantization) of a
    QAT-trained DeepNetCell; attached to the cell, whose `run_test()` then reports the integer
    simulation and `export_c / export_cpp(nb_bits, calibration=0)` export it.

    Ranges: every quantized activation keeps the clip it learned (SAT alpha, LSQ R x step) and
    the weights their quantized values: nothing is calibrated there. The layers QAT left float
    (upstream's Linear Fc before the classifier, the classifier) and the input have no learned
    range: with a `provider`, their max |value| over `calibration` stimuli of its Validation (else
    Test) partition (-1: all; whole batches); without one (or calibration=0) the accumulator
    bound (`learned_thresholds`; never saturates, coarser) and inputs in [0, input_range].
    Upstream's signature otherwise: `"NONE"` as act_scaling_mode is FLOAT_MULT (upstream's NONE
    leaves the float scaling in place); `w_mode` / `b_mode` / `c_mode` ("NONE" or "RINTF") are
    checked and change nothing (the integer program is integer in every mode)."""
    for name, value in (("w_mode", w_mode), ("b_mode", b_mode), ("c_mode", c_mode)):
        if value not in ROUND_MODES:
            raise KeyError(f"fuse_qat: {name}={value!r}: expected one of {', '.join(ROUND_MODES)}")
    mode = "FLOAT_MULT" if act_scaling_mode == "NONE" else act_scaling_mode
    if mode not in SCALING_MODES:
        raise KeyError(f"fuse_qat: act_scaling_mode={act_scaling_mode!r}: expected NONE or one of "
                       f"{', '.join(SCALING_MODES)}")
    if not hasattr(deepnet_cell, "get_graph"):
        raise TypeError(f"fuse_qat: expected a DeepNetCell (Sequence.to_deepnet_cell, load_from_ONNX), got "
                        f"{type(deepnet_cell).__name__}")
    if not _has_quantizers(deepnet_cell.get_graph()):
        raise QuantizationError(f"fuse_qat / qat_sat=True: DeepNetCell '{deepnet_cell.get_name()}' has no QAT "
                                "quantizer (SATCell, SATAct, LSQCell, LSQAct); a float network is quantized by "
                                "post-training quantization (calibration=N, n2d2.quantizer.PTQ)")
    graph = qat_inference_graph(deepnet_cell)
    thresholds = learned_thresholds(graph, input_range)
    input_lo_hi = (0.0, float(input_range))
    unlearned = _unlearned(graph)
    source = "accumulator bound"
    if provider is not None and calibration != 0:
        nb = int(calibration)
        if nb > 0:
            batch = int(provider.get_batch_size())
            nb = -(-nb // batch) * batch
        inputs, _ = read_stimuli(provider, calibration_partition(provider), nb)
        if len(inputs):
            measured = calibrate(graph, inputs, "NONE", nb_bits)
            for node in unlearned:
                thresholds[node] = measured["thresholds"][node]
            input_lo_hi = measured["input"]
            source = f"max |value| over {len(inputs)} stimuli"
    network = quantize_network(deepnet_cell, provider, nb_bits=nb_bits, calibration=0, act_scaling_mode=mode,
                               cross_layer_equalization=False, graph=graph,
                               ranges={"input": input_lo_hi, "thresholds": thresholds})
    network.options.update(qat_sat=True, learned_ranges=len(thresholds) - len(unlearned) - 1,
                           unlearned_ranges={n: source for n in unlearned})
    deepnet_cell._integer_network = network
    return network
