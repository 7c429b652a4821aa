"""Standalone exports of a `DeepNetCell` (N2D2's `n2d2.export`); float32 C for now.

`export_c(deepnet_cell)` writes a C project that builds with `make` and runs alone: the
network's optimised inference graph at batch 1 (BatchNorm folded into the convolutions,
dropout removed, activations fused, connection tables baked into dense weights), one kernel
per IR node rendered from the C backend's forward templates (`templates/c/ops/<Op>.c.j2`),
every tensor at a planned offset of one static arena, every parameter an exact float32
constant, the Test stimuli of the provider and a test program. Layout (`export_C_float32/`):

    Makefile  README.md
    include/network.h   dims, NETWORK_ARENA_BYTES, void network_run(const float *, float *)
    include/weights.h   the parameter table network.c reads (internal)
    src/network.c       kernels + static arena + network_run (no malloc)
    src/weights.c       every parameter as a static const float array (hexadecimal literals)
    src/main.c          test program: success rate, time per stimulus, output dumps
    stimuli/inputs.bin  N x C x H x W float32 (little endian, CHW per stimulus)
    stimuli/labels.bin  N int32 (-1: no label)
    stimuli/stimuli.list  "index label database_id" per line

The folder is written under a temporary name next to its destination and renamed when
complete, so a failed export never leaves a half-written project; an existing folder is kept
unless `overwrite=True` (then it is replaced as a whole, only once the new one is complete).
Integer export: `export_c(..., nb_bits=8, calibration=N)` and `export_cpp(...)` quantize the
network (n2d2.quantization: calibration, requantization by `act_scaling_mode`) and write the
integer C project of n2d2/quantization/export.py (folders `export_C_int8`, `export_CPP_int8`).
`export_onnx(..., nb_bits=8, calibration=N)` writes the same integer network as an ONNX QDQ model
(n2d2/quantization/onnx_qdq.py) that onnxruntime runs.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import numpy as np

import n2d2
from n2d2.backend import to_host
from n2d2.cells.deepnet_cell import DeepNetCell, rebatch
from n2d2.codegen import c_backend
from n2d2.codegen.render import environment, render, template_source
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.frontends.onnx_export import export_onnx as float_onnx
from n2d2.ir import ops as op_registry
from n2d2.ir import planner
from n2d2.ir.passes.bake_connection_tables import bake_connection_tables  # noqa: F401  (public here)
from n2d2.ir.passes.manager import PIPELINES, PassManager
from n2d2.ir.schedule import schedule
from n2d2.names import c_comment, c_identifier
from n2d2.provider.data_provider import DataProvider
from n2d2.quantization import export as int_export
from n2d2.quantization.onnx_qdq import qdq_model
from n2d2.quantization.ptq import quantize_network
from n2d2.quantization.qat import UNLEARNED_STIMULI, fuse_qat
from n2d2.utils import current_umask, write_inside

__all__ = ["available_export", "ExportError", "export_c", "export_cpp", "export_cpp_stm32", "export_onnx",
           "export_tensor_rt",
           "list_exportable_cell", "c_export_graph", "unsupported_nodes", "bake_connection_tables"]

#: Export generators of N2D2's Python API; only "C" (float32) is implemented here so far.
available_export = ["C", "CPP", "CPP_TensorRT", "CPP_STM32"]

_CLIPPING_WT = ("NONE", "MSE", "KL_DIVERGENCE")
_CLIPPING_ACT = ("NONE", "MSE", "KL_DIVERGENCE", "Quantile")
_SCALING = ("NONE", "FLOAT_MULT", "FIXED_MULT16", "FIXED_MULT32", "SINGLE_SHIFT", "DOUBLE_SHIFT")
_ROUNDING = ("NONE", "RINTF")

# The reference keywords common to every export (section 20 of the API reference), with their
# defaults. With nb_bits=-32 none of them changes the generated code (they drive calibration
# and integer scaling, or N2D2's run-time logs); they are validated so that a script written
# for N2D2 fails here where it would fail there.
_COMMON_KW = {
    "qat_SAT": False,
    "export_no_unsigned": False,
    "calibration": 0,
    "export_no_cross_layer_equalization": False,
    "wt_clipping_mode": "NONE",
    "act_clipping_mode": "MSE",
    "act_scaling_mode": "FLOAT_MULT",
    "act_quantile_value": 0.9999,
    "act_rescale_per_output": False,
    "calibration_reload": False,
    "report": 100,
    "wt_round_mode": "NONE",
    "b_round_mode": "NONE",
    "c_round_mode": "NONE",
    "find_lr": 0,
    "log_kernels": False,
}
_ALIASES = {"qat_sat": "qat_SAT"}   # the export doc's spelling of the same keyword


class ExportError(RuntimeError):
    """The network cannot be exported as asked (the message names the node, op or file)."""


# -- arguments -------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_options(kw: dict, scaling_default: str, forbidden_scaling=()) -> dict:
    """The common keywords with defaults filled in, every value type- and range-checked."""
    options = dict(_COMMON_KW, act_scaling_mode=scaling_default)
    for key, value in kw.items():
        key = _ALIASES.get(key, key)
        if key not in options:
            raise TypeError(f"export: unexpected keyword argument '{key}' (known: "
                            f"{', '.join(sorted(_COMMON_KW))}, export_folder_name, export_nb_stimuli_max, "
                            "nb_bits, overwrite)")
        options[key] = value
    for key in ("qat_SAT", "export_no_unsigned", "export_no_cross_layer_equalization", "act_rescale_per_output",
                "calibration_reload", "log_kernels"):
        if not isinstance(options[key], bool):
            raise WrongInputType(key, type(options[key]), ["bool"])
    for key, lowest in (("calibration", -1), ("report", 0), ("find_lr", 0)):
        if not _is_int(options[key]):
            raise WrongInputType(key, type(options[key]), ["int"])
        if options[key] < lowest:
            raise WrongValue(key, options[key], [f"an int >= {lowest}"])
    q = options["act_quantile_value"]
    if isinstance(q, bool) or not isinstance(q, (float, int)):
        raise WrongInputType("act_quantile_value", type(q), ["float"])
    if not 0.0 < q <= 1.0:
        raise WrongValue("act_quantile_value", q, ["a float in (0, 1]"])
    for key, allowed in (("wt_clipping_mode", _CLIPPING_WT), ("act_clipping_mode", _CLIPPING_ACT),
                         ("act_scaling_mode", _SCALING), ("wt_round_mode", _ROUNDING),
                         ("b_round_mode", _ROUNDING), ("c_round_mode", _ROUNDING)):
        if not isinstance(options[key], str):
            raise WrongInputType(key, type(options[key]), ["str"])
        if options[key] not in allowed:
            raise WrongValue(key, options[key], allowed)
    if options["act_scaling_mode"] in forbidden_scaling:
        raise WrongValue("act_scaling_mode", options["act_scaling_mode"],
                         [m for m in _SCALING if m not in forbidden_scaling])
    return options


def _check_nb_bits(nb_bits) -> int:
    if not _is_int(nb_bits):
        raise WrongInputType("nb_bits", type(nb_bits), ["int"])
    nb_bits = int(nb_bits)
    if nb_bits == 0 or not -64 <= nb_bits <= 64 or (nb_bits < 0 and nb_bits not in (-16, -32, -64)):
        raise WrongValue("nb_bits", nb_bits, ["1..64 (integer)", "-16, -32 or -64 (float)"])
    if nb_bits != -32:
        kind = "integer export (post-training quantization with calibration)" if nb_bits > 0 \
            else f"float{-nb_bits} export"
        raise NotImplementedError(f"export: nb_bits={nb_bits}: {kind} is a later feature; only nb_bits=-32 "
                                  "(float32) is supported now")
    return nb_bits


def _check_deepnet_cell(deepnet_cell):
    if not isinstance(deepnet_cell, DeepNetCell):
        raise WrongInputType("deepnet_cell", type(deepnet_cell),
                             ["DeepNetCell (a Sequence becomes one with .to_deepnet_cell(provider))"])


def _check_provider(provider):
    if provider is not None and not isinstance(provider, DataProvider):
        raise WrongInputType("provider", type(provider), ["n2d2.provider.DataProvider", "None"])


def _project_folder(export_folder_name, generator, nb_bits, export_nb_stimuli_max, overwrite):
    """The project folder an export writes, after the checks every export shares (stimuli count,
    overwrite flag, an existing folder kept unless `overwrite`)."""
    if not _is_int(export_nb_stimuli_max):
        raise WrongInputType("export_nb_stimuli_max", type(export_nb_stimuli_max), ["int"])
    if export_nb_stimuli_max < -1:
        raise WrongValue("export_nb_stimuli_max", export_nb_stimuli_max, ["-1 (all)", "0 (none)", "a positive int"])
    if not isinstance(overwrite, bool):
        raise WrongInputType("overwrite", type(overwrite), ["bool"])
    folder = _folder_path(export_folder_name, generator, nb_bits)
    if os.path.lexists(folder) and not overwrite:
        raise FileExistsError(f"export: '{folder}' already exists (pass overwrite=True to replace it)")
    return folder


def _folder_path(export_folder_name, generator: str, nb_bits: int) -> str:
    if export_folder_name is None:
        export_folder_name = f"export_{generator}_{'float' if nb_bits < 0 else 'int'}{abs(nb_bits)}"
    if not isinstance(export_folder_name, (str, os.PathLike)):
        raise WrongInputType("export_folder_name", type(export_folder_name), ["str", "None"])
    path = os.fspath(export_folder_name)
    if not path or os.path.basename(os.path.normpath(path)) in ("", ".", ".."):
        raise WrongValue("export_folder_name", path, ["a folder name"])
    return os.path.abspath(path)


# -- the graph ---------------------------------------------------------------------------------------
def _has_forward(op: str) -> bool:
    return c_backend._has_macro(op, "forward")


def c_export_graph(deepnet_cell):
    """The graph `export_c` generates code for: the cell's forward graph at batch 1 through the
    inference pipeline of `n2d2.ir.passes` (dropout removed, BatchNorm folded, padding and
    activations fused; the element-wise chain fusion only once the C backend has an
    `Epilogue` kernel), then `bake_connection_tables`."""
    graph = deepnet_cell.get_graph()
    graph = rebatch(graph, 1)
    pipeline = [p for p in PIPELINES["inference"] if p != "fuse_elementwise_chains" or _has_forward("Epilogue")]
    graph = PassManager(pipeline=pipeline, mode="inference").run(graph)
    return bake_connection_tables(graph)


def _geometry(graph, node):
    """The C backend's geometry of a forward node in inference (None: no kernel for it)."""
    return c_backend._geometry(graph, node, False)


def unsupported_nodes(graph) -> list:
    """[(node, op, reason)] of the nodes the C export has no forward kernel for."""
    out = []
    for node in graph.topological_order():
        op = graph.op(node)
        if op == "Input":
            continue
        if not _has_forward(op):
            out.append((node, op, f"no C forward kernel for op {op} (n2d2/templates/c/ops/{op}.c.j2)"))
            continue
        if op == "FakeQuantize" or graph.attrs(node).get("weight_quantizer") is not None:
            out.append((node, op, "a QAT fake-quantizer: the float export does not carry them; export the "
                        "integer network from the learned ranges (nb_bits=8, qat_sat=True)"))
            continue
        types = list(graph.input_types(node)) + list(graph.output_types(node))
        if any(t.dtype != "float32" for t in types):
            out.append((node, op, "tensors are not all float32: " + ", ".join(str(t) for t in types)))
            continue
        if _geometry(graph, node) is None:
            spec = graph.attrs(node).get("activation")
            detail = f" (activation {spec[0]})" if spec else ""
            out.append((node, op, f"the C kernel of {op} does not support these attributes{detail}: "
                        f"{_short_attrs(graph.attrs(node))}"))
    return out


def _short_attrs(attrs) -> str:
    items = []
    for k, v in attrs.items():
        if isinstance(v, np.ndarray):
            v = f"array{list(v.shape)}"
        items.append(f"{k}={v}")
    return ", ".join(items)


def _check_exportable(graph):
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ExportError(f"export_c: graph '{graph.name}' has {len(graph.inputs)} inputs and "
                          f"{len(graph.outputs)} outputs; the C export handles exactly one of each")
    bad = unsupported_nodes(graph)
    if bad:
        lines = "\n".join(f"  node '{n}' (op {op}): {why}" for n, op, why in bad)
        raise ExportError(f"export_c: {len(bad)} node(s) of graph '{graph.name}' cannot be exported to C "
                          f"(nothing was written):\n{lines}")
    out_node, out_index = graph.outputs[0]
    for t in (graph.output_types(graph.inputs[0])[0], graph.output_types(out_node)[out_index]):
        if t.dtype != "float32":
            raise ExportError(f"export_c: graph '{graph.name}': input/output {t} is not float32")


# -- code generation ---------------------------------------------------------------------------------
def _render_network(graph) -> dict:
    """Template data of the network: kernels, plan figures, parameters, dims."""
    slack = int(getattr(c_backend, "_SLACK_FLOATS", 64))   # floats the GEMM may read past a buffer
    order = schedule(graph)
    plan = planner.plan(graph, order=order)
    planner.validate(graph, plan)
    # the C backend's lowering builds each node's template data (public calls, no compiler): the
    # exported kernels read exactly what the in-process C backend's kernels read
    builder = c_backend.CLowering(graph, [order], training=False, plan=plan)
    env = environment()
    kernel_template = env.get_template("export/kernel.c.j2")
    kernels, shared, private, fnames = [], 0, 0, set()
    for index, node in enumerate(order):
        op = graph.op(node)
        if op == "Input":
            continue
        g = _geometry(graph, node)
        ctx = builder.forward_context(node, g)
        if builder.aux_specs:
            raise ExportError(f"export_c: node '{node}' (op {op}) needs auxiliary buffers in inference "
                              f"({', '.join(builder.aux_specs)}); the C export has none")
        layout = g.get("sf")   # scratch layout: shared floats SH, then T floats per thread
        if layout:
            shared = max(shared, int(layout["SH"]))
            private = max(private, int(layout["T"]))
        sig = ", ".join(str(t) for t in graph.input_types(node)) + " -> " + \
            ", ".join(str(t) for t in graph.output_types(node))
        body = kernel_template.render(op=op, n=ctx).rstrip("\n")
        kernels.append({"node": node, "op": op, "signature": sig, "body": body,
                        "fname": c_identifier(f"k{index}_{node}", fnames, limit=60)})
    in_name = graph.inputs[0]
    in_type = graph.output_types(in_name)[0]
    out_t = graph.outputs[0]
    out_type = graph.output_types(out_t[0])[out_t[1]]
    return {
        "graph": graph, "graph_name": graph.name, "kernels": kernels, "plan": plan,
        "arena_planned": plan.arena_bytes, "arena_bytes": plan.arena_bytes + 4 * slack,
        "scratch_shared": shared, "scratch_private": private, "scratch_slack": slack,
        "scratch_floats_1": shared + private + slack,
        "set_threads": "n2d2_set_threads" in template_source("c/runtime.c.j2"),
        "param_names": builder.param_names,
        "input": {"offset": plan.offsets[(in_name, 0)], "shape": _chw(in_type.shape), "size": in_type.size},
        "output": {"offset": plan.offsets[out_t], "shape": _chw(out_type.shape), "size": out_type.size},
    }


def _chw(shape) -> tuple:
    """(C, H, W) of a batch-1 tensor shape (missing trailing dims are 1)."""
    s = tuple(int(v) for v in shape[1:]) + (1, 1, 1)
    if len(shape) > 4:
        return (int(np.prod(shape[1:-2])),) + tuple(int(v) for v in shape[-2:])
    return s[:3]


def _hex_literal(v: float) -> str:
    """An exact C float literal of a float32 value (hexadecimal)."""
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    h = float(v).hex()                       # '[-]0x1.8000000000000p+1'
    mant, exp = h.split("p")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}p{exp}f"


def _weights_source(graph, param_names, header_note: str) -> str:
    lines = ["/*", f" * Generated by n2d2: the {len(param_names)} parameter arrays read by src/network.c",
             f" * ({c_comment(header_note, limit=600)}).",
             " * Values are the exact float32 values, as hexadecimal literals.", " */", '#include "weights.h"', ""]
    idents, taken = [], set()
    for i, pname in enumerate(param_names):
        a = np.ascontiguousarray(np.asarray(graph.params[pname].array, dtype=np.float32)).reshape(-1)
        ident = c_identifier(f"p{i}_{pname}", taken, limit=60)
        idents.append(ident)
        shape = "x".join(str(s) for s in graph.params[pname].shape) or "scalar"
        lines.append(f"/* {c_comment(pname)} [{shape}] */")
        lines.append(f"static const float {ident}[{max(a.size, 1)}] __attribute__((aligned(64))) = {{")
        values = [_hex_literal(v) for v in a.tolist()] or ["0.0f"]
        for start in range(0, len(values), 8):
            lines.append("    " + ", ".join(values[start:start + 8]) + ",")
        lines.append("};")
        lines.append("")
    lines.append("/* The kernels take non-const pointers (the in-process backend updates parameters in place);")
    lines.append("   the exported network only reads them. */")
    lines.append(f"float *const n2d2_network_params[{max(len(idents), 1)}] = {{")
    for ident in idents or ["0"]:
        lines.append(f"    (float *){ident},")
    lines.append("};")
    return "\n".join(lines) + "\n"


# -- stimuli -----------------------------------------------------------------------------------------
def _collect_stimuli(provider, chw, nb_max: int):
    """(inputs [N, C, H, W] float32, labels [N] int32, database ids [N]) of the provider's Test
    partition, in order, at most `nb_max` (-1: all)."""
    empty = (np.zeros((0,) + tuple(chw), np.float32), np.zeros(0, np.int32), np.zeros(0, np.int64))
    if nb_max == 0 or provider is None:
        return empty
    database = provider.get_database()
    ids = np.asarray(database.get_partition_ids("Test"))
    total = ids.size if nb_max < 0 else min(ids.size, nb_max)
    if total == 0:
        warnings.warn("export: the provider's Test partition is empty: no stimulus exported", stacklevel=3)
        return empty
    shape = tuple(provider.shape()[1:])
    if shape != tuple(chw):
        raise ExportError(f"export: the provider's stimuli are {list(shape)} (C, H, W) but the network's input is "
                          f"{list(chw)}")
    before = provider.get_partition()
    inputs = np.empty((total,) + tuple(chw), np.float32)
    labels = np.empty(total, np.int32)
    pixel_labels = False
    provider.set_partition("Test")
    try:
        batch = provider.get_batch_size()
        for start in range(0, total, batch):
            x = provider.read_batch(start)
            count = min(batch, total - start)
            inputs[start:start + count] = to_host(x._data)[:count]
            lab = to_host(provider.get_labels()._data).reshape(batch, -1)[:count]
            if lab.shape[1] != 1:
                pixel_labels = True
            labels[start:start + count] = lab[:, 0] if lab.shape[1] == 1 else -1
    finally:
        provider.set_partition(before)
    if pixel_labels:
        warnings.warn("export: pixel-wise labels are not exported (labels.bin holds -1)", stacklevel=3)
    return inputs, labels, ids[:total].astype(np.int64)


# -- writing -----------------------------------------------------------------------------------------
def _write_project(folder: str, files: dict, overwrite: bool):
    """Write {relative path: str | bytes} into `folder` atomically (temp folder, then rename)."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
    old = None
    try:
        for rel, content in files.items():
            write_inside(tmp, rel, content)
        os.chmod(tmp, 0o777 & ~current_umask())
        if os.path.lexists(folder):
            if not overwrite:
                raise FileExistsError(f"export: '{folder}' already exists (pass overwrite=True to replace it)")
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old-", dir=parent)
            os.rmdir(old)
            os.rename(folder, old)
            try:
                os.rename(tmp, folder)
            except BaseException:
                os.rename(old, folder)   # put the previous export back
                old = None
                raise
        else:
            os.rename(tmp, folder)
        tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# -- entry points ------------------------------------------------------------------------------------
def export_c(deepnet_cell, provider=None, nb_bits: int = -32, export_folder_name=None,
             export_nb_stimuli_max: int = -1, overwrite: bool = False, **kwargs) -> str:
    """Write a standalone C project of `deepnet_cell` (float32, or integer with nb_bits > 0) and
    return its folder.

    Parameters
    ----------
    deepnet_cell : DeepNetCell
        The network (a `Sequence` becomes one with `to_deepnet_cell(provider)`).
    provider : DataProvider, optional
        Source of the Test stimuli written to `stimuli/` (default: the cell's provider).
    nb_bits : int
        -32 (float32, default). 2..16: post-training quantization (`calibration` stimuli, or the
        cell's earlier `n2d2.quantizer.PTQ` with calibration=0) and the integer C project of
        n2d2/quantization/export.py (folder `export_C_int<N>`, act_scaling_mode default
        SINGLE_SHIFT, FLOAT_MULT refused as upstream). -64 / -16: NotImplementedError.
    export_folder_name : str, optional
        Default `export_C_float32` (N2D2's `export_<GEN>_<int|float><bits>`), relative to the
        working directory.
    export_nb_stimuli_max : int
        Most stimuli written to `stimuli/` (-1: the whole Test partition, 0: none).
    overwrite : bool
        Replace an existing folder (only once the new project is complete). Default False:
        an existing folder raises `FileExistsError` and is left untouched.
    **kwargs
        N2D2's common export keywords (`calibration`, `act_scaling_mode` ["SINGLE_SHIFT"],
        `wt_clipping_mode`, `act_clipping_mode`, `act_quantile_value`, round modes, `qat_SAT`,
        `export_no_unsigned`, `export_no_cross_layer_equalization`, `act_rescale_per_output`,
        `calibration_reload`, `report`, `find_lr`, `log_kernels`). They are validated as N2D2
        does (`act_scaling_mode="FLOAT_MULT"` is refused by the C export) but change nothing
        in a float32 export: they drive calibration and integer scaling, or N2D2's logs.

    Raises
    ------
    ExportError
        A node without a C forward kernel (named with its op), or a graph with several inputs
        or outputs; raised before anything is written.
    FileExistsError
        The folder exists and `overwrite` is False.
    """
    _check_deepnet_cell(deepnet_cell)
    _check_provider(provider)
    if _is_int(nb_bits) and nb_bits > 0:     # integer export: post-training quantization first
        return _export_integer("C", deepnet_cell, provider, int(nb_bits), export_folder_name, export_nb_stimuli_max,
                               overwrite, kwargs, "SINGLE_SHIFT", ("FLOAT_MULT",))
    nb_bits = _check_nb_bits(nb_bits)
    _check_options(kwargs, "SINGLE_SHIFT", forbidden_scaling=("FLOAT_MULT",))
    folder = _project_folder(export_folder_name, "C", nb_bits, export_nb_stimuli_max, overwrite)
    provider = provider if provider is not None else deepnet_cell.get_provider()
    if provider is None and export_nb_stimuli_max != 0:
        raise ExportError(f"export_c: DeepNetCell '{deepnet_cell.get_name()}' has no provider: pass provider= "
                          "(the Test stimuli are exported) or export_nb_stimuli_max=0")
    _check_provider(provider)

    graph = c_export_graph(deepnet_cell)
    _check_exportable(graph)
    files = _generate_files(graph, deepnet_cell.get_name())
    inputs, labels, ids = _collect_stimuli(provider, files.pop("_input_chw"), export_nb_stimuli_max)
    files["stimuli/inputs.bin"] = inputs.astype("<f4").tobytes()
    files["stimuli/labels.bin"] = labels.astype("<i4").tobytes()
    files["stimuli/stimuli.list"] = "".join(f"{i} {int(lab)} {int(sid)}\n"
                                            for i, (lab, sid) in enumerate(zip(labels, ids)))
    _write_project(folder, files, overwrite)
    return folder


def _generate_files(graph, network_name: str) -> dict:
    data = _render_network(graph)
    nb_params = sum(int(np.prod(graph.params[p].shape)) for p in data["param_names"])
    data.update(network_name=network_name, nb_params=nb_params, nb_param_arrays=len(data["param_names"]),
                nodes=[(n, graph.op(n)) for n in graph.topological_order() if graph.op(n) != "Input"],
                version=_version())
    note = f"network '{network_name}', graph '{graph.name}', {nb_params} floats"
    return {
        "_input_chw": data["input"]["shape"],
        "include/network.h": render("export/network.h.j2", **data),
        "include/weights.h": render("export/weights.h.j2", **data),
        "src/network.c": render("export/network.c.j2", **data),
        "src/weights.c": _weights_source(graph, data["param_names"], note),
        "src/main.c": render("export/main.c.j2", **data),
        "Makefile": render("export/Makefile.j2", **data),
        "README.md": render("export/README.md.j2", **data),
    }


def _version() -> str:
    try:
        return n2d2.__version__
    except Exception:  # pragma: no cover
        return "?"


def _not_yet(name):
    def export(deepnet_cell, provider=None, **kwargs):
        raise NotImplementedError(f"n2d2.export.{name}: this export generator is a later feature; "
                                  "export_c (float32) is available")
    export.__name__ = name
    export.__doc__ = f"N2D2's `{name}` (not implemented yet: raises NotImplementedError)."
    return export


def _check_cpp_arguments(function, deepnet_cell, provider, optimize_buffer_memory, nb_bits, float_refusal):
    """The argument checks `export_cpp` and `export_cpp_stm32` share (integer exports only)."""
    _check_deepnet_cell(deepnet_cell)
    _check_provider(provider)
    if not isinstance(optimize_buffer_memory, bool):
        raise WrongInputType("optimize_buffer_memory", type(optimize_buffer_memory), ["bool"])
    if not _is_int(nb_bits):
        raise WrongInputType("nb_bits", type(nb_bits), ["int"])
    if nb_bits <= 0:
        raise NotImplementedError(f"{function}: nb_bits={nb_bits}: {float_refusal}")


def export_cpp(deepnet_cell, provider=None, optimize_buffer_memory: bool = True, nb_bits: int = 8,
               export_folder_name=None, export_nb_stimuli_max: int = -1, overwrite: bool = False, **kwargs) -> str:
    """Upstream's `export_cpp`, integer only: post-training quantization (`calibration` stimuli;
    0 reuses an earlier `n2d2.quantizer.PTQ` of the cell, else RuntimeError as upstream) and the
    integer C project of `export_c(nb_bits > 0)` in `export_CPP_int<nb_bits>/` (our C layout, not
    upstream's C++ one: docs/compatibility.md). `act_scaling_mode` defaults to FLOAT_MULT, as
    upstream. `optimize_buffer_memory` is accepted (the arena is always planned). Float
    (`nb_bits < 0`) CPP export is not implemented: use `export_c`."""
    _check_cpp_arguments("export_cpp", deepnet_cell, provider, optimize_buffer_memory, nb_bits,
                         "the float CPP export is not implemented; export_c(nb_bits=-32) writes the float32 C project")
    return _export_integer("CPP", deepnet_cell, provider, int(nb_bits), export_folder_name, export_nb_stimuli_max,
                           overwrite, kwargs, "FLOAT_MULT", ())


def _check_integer(function, nb_bits, options):
    if nb_bits > 16:
        raise WrongValue("nb_bits", nb_bits, ["1..16 (integer export)", "-32 (float32, export_c)"])


def _integer_network(function, deepnet_cell, provider, nb_bits, options):
    """The IntegerNetwork an integer export writes: with qat_sat=True the QAT-trained network's
    learned ranges (n2d2.quantization.qat.fuse_qat); else PTQ with the export's keywords, or the
    cell's earlier `n2d2.quantizer.PTQ` with calibration=0 (RuntimeError, as upstream, when none)."""
    if options["qat_SAT"]:
        return fuse_qat(deepnet_cell, provider, act_scaling_mode=options["act_scaling_mode"], nb_bits=nb_bits,
                        calibration=options["calibration"] or UNLEARNED_STIMULI)
    if options["calibration"] == 0:
        network = getattr(deepnet_cell, "_integer_network", None)
        if network is None or network.nb_bits != nb_bits:
            raise RuntimeError(f"You need to calibrate the network to export it in {nb_bits} bits integer: pass "
                               "calibration=k (k > 0 stimuli, -1 all) or run n2d2.quantizer.PTQ on it first")
        return network
    if provider is None:
        raise ExportError(f"{function}: DeepNetCell '{deepnet_cell.get_name()}' has no provider: "
                          "pass provider= (calibration needs stimuli)")
    return quantize_network(deepnet_cell, provider, nb_bits=nb_bits, calibration=options["calibration"],
                            no_unsigned=options["export_no_unsigned"],
                            cross_layer_equalization=not options["export_no_cross_layer_equalization"],
                            wt_clipping_mode=options["wt_clipping_mode"],
                            act_clipping_mode=options["act_clipping_mode"],
                            act_scaling_mode=options["act_scaling_mode"],
                            act_rescale_per_output=options["act_rescale_per_output"])


def _export_integer(generator, deepnet_cell, provider, nb_bits, export_folder_name, export_nb_stimuli_max,
                    overwrite, kwargs, scaling_default, forbidden, project="host") -> str:
    """PTQ (or the cell's earlier one with calibration=0), then the integer C project."""

    options = _check_options(kwargs, scaling_default, forbidden_scaling=forbidden)
    _check_integer(f"export_{generator.lower()}", nb_bits, options)
    folder = _project_folder(export_folder_name, generator, nb_bits, export_nb_stimuli_max, overwrite)
    provider = provider if provider is not None else deepnet_cell.get_provider()
    _check_provider(provider)
    network = _integer_network(f"export_{generator.lower()}", deepnet_cell, provider, nb_bits, options)
    files = int_export.generate_files(network, deepnet_cell.get_name(), _version(), f"export_{generator.lower()}",
                                      project=project)
    files.pop("_arena_bytes")
    if provider is None and export_nb_stimuli_max != 0:
        raise ExportError(f"export_{generator.lower()}: DeepNetCell '{deepnet_cell.get_name()}' has no provider: pass "
                          "provider= (the Test stimuli are exported) or export_nb_stimuli_max=0")
    inputs, labels, ids = _collect_stimuli(provider, tuple(network.input["shape"]), export_nb_stimuli_max)
    if project == "stm32":
        files.update(int_export.stm32_stimuli_files(network, inputs, labels, ids))
    else:
        files.update(int_export.stimuli_files(network, inputs, labels, ids))
    _write_project(folder, files, overwrite)
    return folder


def export_cpp_stm32(deepnet_cell, provider=None, optimize_buffer_memory: bool = True, nb_bits: int = 8,
                     export_folder_name=None, export_nb_stimuli_max: int = 10, overwrite: bool = False,
                     **kwargs) -> str:
    """Upstream's `export_cpp_stm32`, integer only: post-training quantization as `export_cpp`
    (`calibration`, `act_scaling_mode` default FLOAT_MULT, the other common keywords), then the
    same integer network code as a bare-metal Cortex-M project in `export_CPP_STM32_int<nb_bits>/`:
    src/network.c + include/weights.h of the integer C export (static arena in .bss, const weights
    in flash, no malloc, no file I/O), include/test_stimulus.h + include/test_labels.h (the first
    `export_nb_stimuli_max` Test stimuli, quantized, as const arrays; default 10, -1 all: they sit
    in flash), src/main.c (runs them, counts successes, printf through newlib), src/startup.c,
    stm32.ld (STM32H7: 2 MiB flash, 512 KiB RAM) and a Makefile: `make` builds
    bin/n2d2_stm32.elf with arm-none-eabi-gcc (Cortex-M7, hard float) and prints its size,
    `make emulator` the same program for the host. Differences with upstream
    (docs/compatibility.md): C kernels instead of C++ SIMD ones, Test stimuli rather than Learn
    ones, one ELF target (`export_h7` is an alias of `all`). `optimize_buffer_memory` is accepted
    (the arena is always planned). Float (`nb_bits < 0`) raises NotImplementedError."""
    _check_cpp_arguments("export_cpp_stm32", deepnet_cell, provider, optimize_buffer_memory, nb_bits,
                         "the float STM32 export is not implemented; pass nb_bits=8 (or 2..16)")
    return _export_integer("CPP_STM32", deepnet_cell, provider, int(nb_bits), export_folder_name,
                           export_nb_stimuli_max, overwrite, kwargs, "FLOAT_MULT", (), project="stm32")

def export_onnx(deepnet_cell, provider=None, nb_bits: int = 8, export_file_name=None, overwrite: bool = False,
                opset=None, **kwargs) -> str:
    """Write `deepnet_cell` as an ONNX model and return the file's path (no upstream Python
    equivalent: N2D2's ONNX export is C++-CLI only; docs/compatibility.md).

    nb_bits 8 (default) or 4: post-training quantization with N2D2's common export keywords
    (`calibration` stimuli, 0: the cell's earlier `n2d2.quantizer.PTQ`; `act_scaling_mode`
    default FLOAT_MULT, `act_clipping_mode`, `wt_clipping_mode`, `export_no_unsigned`,
    `act_rescale_per_output`, ...), then the QDQ model of n2d2/quantization/onnx_qdq.py:
    QuantizeLinear / DequantizeLinear around Conv / Gemm with int8 weights (per output channel
    where the scales differ), int32 biases at the accumulator's scale, int8 / uint8 activations
    (int4 / uint4 and opset 21 at 4 bits), zero points 0; onnxruntime runs it and computes the
    simulation's integers up to QuantizeLinear's half-to-even rounding. nb_bits -32: the float
    model of `DeepNetCell.export_onnx` (the keywords are validated and change nothing).

    `export_file_name`: default `export_ONNX_int8.onnx` (`export_ONNX_float32.onnx`) in the
    working directory; an existing file raises FileExistsError unless `overwrite`. `opset`:
    default 17 (21 at 4 bits). The model passes `onnx.checker` (full check) before it is written.
    """
    _check_deepnet_cell(deepnet_cell)
    _check_provider(provider)
    if not _is_int(nb_bits):
        raise WrongInputType("nb_bits", type(nb_bits), ["int"])
    nb_bits = int(nb_bits)
    if nb_bits not in (-32, 4, 8):
        raise WrongValue("nb_bits", nb_bits, ["8 or 4 (QDQ: int8/uint8, int4/uint4)", "-32 (float32)"])
    options = _check_options(kwargs, "FLOAT_MULT")
    if not isinstance(overwrite, bool):
        raise WrongInputType("overwrite", type(overwrite), ["bool"])
    if export_file_name is None:
        export_file_name = f"export_ONNX_{'float' if nb_bits < 0 else 'int'}{abs(nb_bits)}.onnx"
    if not isinstance(export_file_name, (str, os.PathLike)) or not os.fspath(export_file_name):
        raise WrongInputType("export_file_name", type(export_file_name), ["str (a file name)", "None"])
    path = os.path.abspath(os.fspath(export_file_name))
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"export_onnx: '{path}' already exists (pass overwrite=True to replace it)")
    if nb_bits < 0:
        float_onnx(deepnet_cell, path, opset=17 if opset is None else opset)
        return path
    _check_integer("export_onnx", nb_bits, options)
    provider = provider if provider is not None else deepnet_cell.get_provider()
    network = _integer_network("export_onnx", deepnet_cell, provider, nb_bits, options)
    model = qdq_model(network, opset=opset)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_inside(os.path.dirname(path), os.path.basename(path), model.SerializeToString())
    return path

export_tensor_rt = _not_yet("export_tensor_rt")


def list_exportable_cell(export_name: str):
    """Print which IR ops (one per cell type) the `export_name` generator has kernels for."""
    if not isinstance(export_name, str):
        raise WrongInputType("export_name", type(export_name), ["str"])
    if export_name not in available_export:
        raise WrongValue("export_name", export_name, available_export)
    names = sorted(n for n in op_registry.names() if n not in ("Input", "Grad", "Update", "AddN")
                   and not n.startswith("Onnx"))
    def available(n):
        integer = op_registry.get(n).quantized is not None   # the integer export (C and CPP, nb_bits > 0)
        if export_name == "C":
            return "Yes" if _has_forward(n) else "No"
        return "Yes (integer)" if export_name in ("CPP", "CPP_STM32") and integer else "No"

    rows = [(n, available(n)) for n in names]
    width = max(len("Cell Name"), *(len(n) for n, _ in rows))
    lines = [f"{'Cell Name':{width}} | Available", "-" * (width + 12)]
    lines += [f"{n:{width}} | {a}" for n, a in rows]
    print("\n".join(lines))
