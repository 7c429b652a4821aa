"""Integer C export of an `IntegerNetwork` (the `nb_bits > 0` path of `n2d2.export.export_c` and
`export_cpp`).

One kernel per node, rendered from `templates/export/int/<kernel>.c.j2` (the kernel named by the
op's `quantized` facet), reading plain-data integer nodes: int8 (int16 above 8 bits) weights,
int32 biases and accumulators (int64 where a sum could overflow int32), the requantization of
the node's scaling mode, saturation. Every activation tensor (int8 / uint8) sits at an offset of
one static arena planned from the tensors' lifetimes; weights are `static const` arrays; no
malloc. The program's outputs equal `IntegerNetwork.run` bit for bit in every scaling mode
(FLOAT_MULT included: one float64 product rounded half away from zero, `-ffp-contract=off`).

Layout (`export_C_int8/`, `export_CPP_int8/`):

    Makefile  README.md
    include/network.h   sizes, network_input_t, void network_run(const network_input_t *, int32_t *)
    include/weights.h   static const integer parameters and requantization tables
    src/network.c       kernels + static arena + network_run
    src/main.c          test program: success rate, time per stimulus, int32 output dumps
    stimuli/inputs.bin  N x C x H x W quantized inputs (network_input_t, little endian)
    stimuli/labels.bin  N int32 (-1: no label)
    stimuli/stimuli.list  "index label database_id"
"""
from __future__ import annotations

import numpy as np

from n2d2.codegen.render import environment, render
from n2d2.names import c_comment, c_identifier
from n2d2.quantization.integer import QuantizationError, saturation

_ALIGN = 16


def act_ctype(signed: bool, nb_bits: int) -> str:
    width = 8 if nb_bits <= 8 else 16
    return f"{'' if signed else 'u'}int{width}_t"


def act_dtype(signed: bool, nb_bits: int) -> str:
    return ("<i" if signed else "<u") + ("1" if nb_bits <= 8 else "2")


def _weight_ctype(nb_bits: int) -> str:
    return "int8_t" if nb_bits <= 8 else "int16_t"


def plan_intervals(items):
    """First-fit offsets (bytes, 16-aligned) of buffers [(name, first step, last step, bytes)]: two
    buffers whose step intervals meet never overlap in memory. Returns ({name: offset}, bytes)."""
    placed, offsets, top = [], {}, 0
    for name, first, last, nbytes in items:
        size = -(-int(nbytes) // _ALIGN) * _ALIGN
        busy = sorted((off, sz) for f, la, off, sz in placed if f <= last and first <= la)
        offset = 0
        for off, sz in busy:
            if offset + size <= off:
                break
            offset = max(offset, off + sz)
        offsets[name] = offset
        placed.append((first, last, offset, size))
        top = max(top, offset + size)
    return offsets, max(top, _ALIGN)


def plan_arena(order, sizes, last_use):
    """`plan_intervals` of tensors produced in `order`, live up to their last consumer (inclusive:
    no kernel's output overlaps its inputs)."""
    return plan_intervals([(name, step, last_use[name], sizes[name]) for step, name in enumerate(order)])


class _Arrays:
    """The `static const` arrays of include/weights.h."""

    def __init__(self):
        self.lines, self.taken, self.values = [], set(), 0

    def add(self, base, ctype, values, comment, slack: int = 0) -> str:
        """One array of `values`; `slack` zero elements after them (declared size only: the kernels'
        vector loads may read that far)."""
        values = np.asarray(values).reshape(-1)
        ident = c_identifier(base, self.taken, limit=60)
        self.values += values.size
        self.lines.append(f"/* {c_comment(comment, limit=300)} */")
        size = max(values.size, 1) + slack
        self.lines.append(f"static const {ctype} {ident}[{size}] __attribute__((aligned(16))) = {{")
        if ctype == "double":
            items = [float(v).hex() for v in values.tolist()]
        else:
            items = [str(int(v)) for v in values.tolist()]
        items = items or ["0"]
        for start in range(0, len(items), 16):
            self.lines.append("    " + ", ".join(items[start:start + 16]) + ",")
        self.lines.append("};")
        self.lines.append("")
        return ident


def _scaling_context(n, arrays, prefix, scaling, node):
    mode = scaling["mode"]
    n["mode"] = mode
    if mode == "FLOAT_MULT":
        n["arr_M"] = arrays.add(f"{prefix}_M", "double", scaling["M"], f"{node}: float64 multipliers")
    elif mode in ("FIXED_MULT16", "FIXED_MULT32"):
        n["arr_m"] = arrays.add(f"{prefix}_m", "int64_t", scaling["m"],
                                f"{node}: fixed-point multipliers, 2^-{scaling['p']}")
        n["p"] = int(scaling["p"])
    elif mode == "SINGLE_SHIFT":
        n["arr_shift"] = arrays.add(f"{prefix}_shift", "int8_t", scaling["shift"], f"{node}: right shifts")
    elif mode == "DOUBLE_SHIFT":
        n["arr_shift1"] = arrays.add(f"{prefix}_s1", "int8_t", scaling["shift1"], f"{node}: b - a")
        n["arr_shift2"] = arrays.add(f"{prefix}_s2", "int8_t", scaling["shift2"], f"{node}: b")
    else:
        raise QuantizationError(f"node '{node}': no C form of scaling mode {mode}")


def _node_context(net, qn, shapes, types, arrays, index):
    """Template data of one integer node."""
    nb = net.nb_bits
    lo, hi = saturation(nb, qn["signed"])
    n = {"in_t": [types[s] for s in qn["inputs"]], "out_t": types[qn["name"]], "lo": lo, "hi": hi,
         "relu": bool(qn.get("relu", False))}
    prefix = f"n{index}_{qn['name']}"
    kernel = qn["kernel"]
    in_shape = shapes[qn["inputs"][0]]
    out_shape = shapes[qn["name"]]
    if kernel in ("Conv", "Fc"):
        n["w_t"] = _weight_ctype(nb)
        n["acc_t"] = "int32_t" if qn.get("acc_bits", 64) == 32 else "int64_t"
        w = qn["weights"]
        layout = weighted_layout(qn, shapes, nb, n["in_t"])
        if layout["fast"]:
            _fast_parameters(n, arrays, prefix, qn, layout, n["in_t"], shapes)
        else:
            n["arr_w"] = arrays.add(f"{prefix}_w", n["w_t"], w, f"{qn['name']}: weights {list(w.shape)}")
            n["arr_b"] = arrays.add(f"{prefix}_b", "int32_t" if nb <= 8 else "int64_t", qn["biases"],
                                    f"{qn['name']}: biases (accumulator scale)")
        _scaling_context(n, arrays, prefix, qn["scaling"], qn["name"])
        n.update(layout)
        n["in_sizes"] = [int(np.prod(shapes[s])) for s in qn["inputs"]]
        n["in_channels"] = [int(shapes[s][0]) for s in qn["inputs"]]
        if kernel == "Conv":
            in_shape = (sum(shapes[s][0] for s in qn["inputs"]),) + tuple(shapes[qn["inputs"][0]][1:])
            a = qn["attrs"]
            o, cg, kh, kw = w.shape
            g = int(a.get("groups", 1) or 1)
            n.update(C=in_shape[0], H=in_shape[1], W=in_shape[2], O=o, HO=out_shape[1], WO=out_shape[2], KH=kh,
                     KW=kw, CG=cg, G=g, OG=o // g, SY=a["stride"][0], SX=a["stride"][1], PY=a["padding"][0],
                     PX=a["padding"][1], DY=a["dilation"][0], DX=a["dilation"][1])
        else:
            n.update(O=w.shape[0], K=w.shape[1])
    elif kernel == "Pool":
        a = qn["attrs"]
        n.update(C=in_shape[0], H=in_shape[1], W=in_shape[2], HO=out_shape[1], WO=out_shape[2], KH=a["pool"][0],
                 KW=a["pool"][1], SY=a["stride"][0], SX=a["stride"][1], PY=a["padding"][0], PX=a["padding"][1],
                 avg=a["pooling"] == "Average")
    elif kernel == "ElemWise":
        sc = qn["scaling"]
        c = out_shape[0]
        hw = int(np.prod(out_shape[1:])) if len(out_shape) > 1 else 1
        n.update(K=len(qn["inputs"]), C=c, HW=hw, float=sc["mode"] == "FLOAT_MULT")
        if n["float"]:
            n["arr_m"] = arrays.add(f"{prefix}_M", "double", sc["M"], f"{qn['name']}: per input and channel")
            n["arr_bias"] = arrays.add(f"{prefix}_bias", "double", sc["bias"], f"{qn['name']}: shifts")
        else:
            n["arr_m"] = arrays.add(f"{prefix}_m", "int64_t", sc["m"], f"{qn['name']}: per input and channel, "
                                    f"2^-{sc['p']}")
            n["arr_bias"] = arrays.add(f"{prefix}_bias", "int64_t", sc["bias"], f"{qn['name']}: shifts")
            n["p"] = int(sc["p"])
    elif kernel in ("Activation", "Softmax", "Reshape"):
        n["size"] = int(np.prod(out_shape))
    elif kernel == "Concat":
        n["in_sizes"] = [int(np.prod(shapes[s])) for s in qn["inputs"]]
    else:
        raise QuantizationError(f"node '{qn['name']}' (op {qn['op']}): no integer C template for kernel {kernel}")
    return n


_SIZE = {"int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2, "int32_t": 4, "int64_t": 8}


def _aligned(nbytes: int) -> int:
    return -(-int(nbytes) // _ALIGN) * _ALIGN


def _conv_dots(qn, nb_bits) -> bool:
    """A Conv computed as dot products over k (K = C/G * kH * kW >= 32, 8-bit, int32 sums), on
    8-bit (or staged int16) columns; else rows of int16 products in 32-position register tiles."""
    _, cg, kh, kw = qn["weights"].shape
    return nb_bits <= 8 and qn.get("acc_bits", 64) == 32 and cg * kh * kw >= 32


def _fast(qn, nb_bits) -> bool:
    """A Conv / Fc on the int8 kernels of templates/export/int/kernels.c.j2: up to 8 bits, int32 sums."""
    return nb_bits <= 8 and qn.get("acc_bits", 64) == 32


def _fast_layout(qn, shapes, nb_bits) -> dict:
    """Scratch of a Conv / Fc on the int8 kernels: [inputs as one unsigned byte image, zero padded
    (Conv) or one vector (Fc; unused for one unsigned input), + 64] [im2col columns (Conv)]
    [int32 accumulators] [4-bit weights unpacked to int8, + 64]."""
    o = qn["weights"].shape[0]
    k = int(np.prod(qn["weights"].shape[1:]))
    ws = k + (k & 1) if nb_bits <= 4 else k
    out = {"fast": True, "packed": nb_bits <= 4, "K": k, "WS": ws}
    if qn["kernel"] == "Fc":
        # one unsigned input is read in place; else the vector is staged (room kept either way)
        direct = len(qn["inputs"]) == 1 and qn.get("_signed_inputs", [True])[0] is False
        x_bytes = _aligned(k + 64)
        acc_off = x_bytes
        wu_off = acc_off + _aligned(4 * o)
        out.update(direct=direct, acc_off=acc_off, wu_off=wu_off,
                   total=wu_off + (_aligned(o * ws + 64) if nb_bits <= 4 else 0))
        return out
    _, cg, kh, kw = qn["weights"].shape
    a = qn["attrs"]
    groups = int(a.get("groups", 1) or 1)
    c = cg * groups
    ho, wo = shapes[qn["name"]][1], shapes[qn["name"]][2]
    (sy, sx), (py, px), (dy, dx) = a["stride"], a["padding"], a["dilation"]
    src = shapes.get(qn["inputs"][0])
    if src is not None and len(src) == 3:
        h, w = src[1], src[2]
    else:   # the smallest input the output implies (sizing only)
        h, w = (ho - 1) * sy + dy * (kh - 1) + 1 - 2 * py, (wo - 1) * sx + dx * (kw - 1) + 1 - 2 * px
    hp, wp = h + 2 * py, w + 2 * px
    p = ho * wo
    lanes = p >= 16
    if lanes:
        pp = -(-p // 16) * 16
        ppc = -(-max(pp, (ho - 1) * wo + -(-wo // 16) * 16) // 16) * 16
        col_bytes = (-(-k // 4)) * ppc * 4
    else:
        pp = ppc = p
        col_bytes = p * k
    col_off = _aligned(c * hp * wp + 64)
    acc_off = col_off + _aligned(col_bytes + 64)
    wu_off = acc_off + _aligned(4 * (o // groups) * pp)
    out.update(lanes=lanes, H=h, W=w, Hp=hp, Wp=wp, PP=pp, PPC=ppc, ACCS=pp, col_off=col_off, acc_off=acc_off,
               wu_off=wu_off, total=wu_off + (_aligned(o * ws + 64) if nb_bits <= 4 else 0))
    return out


def _fast_parameters(n, arrays, prefix, qn, layout, in_types, shapes):
    """Weights ([O][K] int8 with 4 bytes of slack, or two 4-bit values per byte in rows of WS with 16) and int32
    biases of a Conv / Fc on the int8 kernels: -128 x the weights over the signed inputs' taps folded
    into the biases (the kernels read those inputs offset by 128), modulo 2^32."""
    w = np.asarray(qn["weights"], dtype=np.int64)
    o = w.shape[0]
    signed = [t.startswith("int") for t in in_types]
    if qn["kernel"] == "Conv":
        g = int(qn["attrs"].get("groups", 1) or 1)
        cg = w.shape[1]
        chans = np.concatenate([np.full(shapes[s][0], sg) for s, sg in zip(qn["inputs"], signed)])
        # input channel of (o, cg): group(o) * CG + cg
        grp = np.arange(o) // (o // g)
        mask = chans[grp[:, None] * cg + np.arange(cg)[None, :]]
        wsum = (w.sum(axis=(2, 3)) * mask).sum(axis=1)
    else:
        mask = np.concatenate([np.full(int(np.prod(shapes[s])), sg) for s, sg in zip(qn["inputs"], signed)])
        wsum = (w * mask[None, :]).sum(axis=1)
    b = np.asarray(qn["biases"], dtype=np.int64) - 128 * wsum
    b = (b + 2 ** 31) % 2 ** 32 - 2 ** 31
    flat = w.reshape(o, -1)
    what = f"{qn['name']}: weights {list(w.shape)}"
    if layout["packed"]:
        rows = np.zeros((o, layout["WS"]), np.int64)
        rows[:, :flat.shape[1]] = flat
        nib = (rows & 15).reshape(o, -1, 2)
        n["arr_w"] = arrays.add(f"{prefix}_w", "uint8_t", nib[:, :, 0] | (nib[:, :, 1] << 4),
                                f"{what}, 4-bit, two per byte (low nibble first), rows of {layout['WS']}", slack=16)
    else:
        n["arr_w"] = arrays.add(f"{prefix}_w", "int8_t", flat, what, slack=4)
    note = "; -128 x the weights of the signed inputs (kernels read them + 128), mod 2^32" if any(signed) else ""
    n["arr_b"] = arrays.add(f"{prefix}_b", "int32_t", b, f"{qn['name']}: biases (accumulator scale){note}")
    n["xors"] = ["0x80" if sg else "0" for sg in signed]


def weighted_layout(qn, shapes, nb_bits, in_types=None) -> dict:
    """Scratch layout of a Conv / Fc kernel: the int8 kernels' (`_fast_layout`), or [staging of several
    inputs concatenated, as int16 (int32 above 8 bits)] [im2col columns (Conv)] [accumulators];
    element types and offsets."""
    if _fast(qn, nb_bits):
        if in_types is not None:
            qn = dict(qn, _signed_inputs=[t.startswith("int") for t in in_types])
        return _fast_layout(qn, shapes, nb_bits)
    acc_t = "int32_t" if qn.get("acc_bits", 64) == 32 else "int64_t"
    staged = len(qn["inputs"]) > 1
    stage_t = "int16_t" if nb_bits <= 8 else "int32_t"
    src_t = stage_t if staged else (in_types[0] if in_types else ("uint8_t" if nb_bits <= 8 else "uint16_t"))
    stage_bytes = 0
    if staged:
        stage_bytes = sum(int(np.prod(shapes[s])) for s in qn["inputs"]) * _SIZE[stage_t]
    out = {"fast": False, "staged": staged, "stage_t": stage_t, "src_t": src_t, "acc_t": acc_t,
           "stage_bytes": stage_bytes}
    if qn["kernel"] == "Fc":
        out.update(col_off=_aligned(stage_bytes), acc_off=_aligned(stage_bytes), total=_aligned(stage_bytes) + 8)
        return out
    o, cg, kh, kw = qn["weights"].shape
    groups = int(qn["attrs"].get("groups", 1) or 1)
    p = int(np.prod(shapes[qn["name"]][1:]))
    dots = _conv_dots(qn, nb_bits)
    col_t = src_t if dots else ("int16_t" if nb_bits <= 8 else acc_t)
    pp = p if dots else -(-p // 32) * 32
    col_off = _aligned(stage_bytes)
    acc_off = col_off + _aligned(cg * kh * kw * pp * _SIZE[col_t])
    total = acc_off + pp * _SIZE[acc_t] * (o // groups if dots else 1)
    out.update(dots=dots, col_t=col_t, PP=pp, col_off=col_off, acc_off=acc_off, total=total)
    return out


def _scratch_bytes(qn, shapes, nb_bits) -> int:
    """Scratch of a kernel (staged inputs, im2col columns and accumulators of a Conv; staged inputs
    and one accumulator of an Fc); 0 for the others."""
    if qn["kernel"] in ("Conv", "Fc"):
        return weighted_layout(qn, shapes, nb_bits)["total"]
    return 0


# Cortex-M project of export_cpp_stm32 (an STM32H7: 2 MiB flash, 512 KiB AXI SRAM)
STM32_MEMORY = {"flash_origin": "0x08000000", "flash_kib": 2048, "ram_origin": "0x24000000", "ram_kib": 512,
                "heap_kib": 4, "stack_kib": 16}


def generate_files(net, network_name: str, version: str, entry: str, project: str = "host") -> dict:
    """{relative path: text} of the project (stimuli excepted). `project`: "host" (test program
    reading stimuli/, Makefile for cc) or "stm32" (bare-metal main over the embedded stimuli of
    `stm32_stimuli_files`, startup, linker script, Makefile for arm-none-eabi-gcc); the network
    code (include/network.h, include/weights.h, src/network.c) is the same."""
    if project not in ("host", "stm32"):
        raise ValueError(f"integer export: unknown project kind {project!r} (host, stm32)")

    nb = net.nb_bits
    inp = net.input
    shapes = {inp["name"]: tuple(inp["shape"])}
    types = {inp["name"]: act_ctype(inp["signed"], nb)}
    for qn in net.nodes:
        shapes[qn["name"]] = tuple(qn["shape"]) + (1,) * (3 - len(qn["shape"]))
        types[qn["name"]] = act_ctype(qn["signed"], nb)
    order = [qn["name"] for qn in net.nodes]
    last_use = {name: i for i, name in enumerate(order)}
    for i, qn in enumerate(net.nodes):
        for s in qn["inputs"]:
            if s in last_use:
                last_use[s] = max(last_use[s], i)
    last_use[net.output] = len(order)
    sizes = {qn["name"]: int(np.prod(shapes[qn["name"]])) * (1 if nb <= 8 else 2) for qn in net.nodes}
    scratch = {qn["name"]: _scratch_bytes(qn, shapes, nb) for qn in net.nodes}
    items = []
    for step, name in enumerate(order):
        items.append((name, step, last_use[name], sizes[name]))
        if scratch[name]:
            items.append((f"{name}#scratch", step, step, scratch[name]))
    offsets, arena = plan_intervals(items)

    env = environment()
    arrays = _Arrays()
    kernels, fnames = [], set()
    for i, qn in enumerate(net.nodes):
        n = _node_context(net, qn, shapes, types, arrays, i)
        body = env.get_template(f"export/int/{qn['kernel']}.c.j2").render(n=n).strip("\n")
        args = ["input" if s == inp["name"] else f"(const {types[s]} *)(network_arena + {offsets[s]})"
                for s in qn["inputs"]]
        sig = ", ".join(f"{types[s]}[{'x'.join(map(str, shapes[s]))}]" for s in qn["inputs"]) + \
            f" -> {types[qn['name']]}[{'x'.join(map(str, shapes[qn['name']]))}]"
        kernels.append({"node": qn["name"], "op": qn["op"], "n": n, "body": body, "args": args,
                        "offset": offsets[qn["name"]], "signature": sig, "scratch_bytes": scratch[qn["name"]],
                        "scratch_offset": offsets.get(f"{qn['name']}#scratch"),
                        "fname": c_identifier(f"k{i}_{qn['name']}", fnames, limit=60)})
    out_shape = shapes[net.output]
    nb_weights = sum(int(qn["weights"].size) for qn in net.nodes if "weights" in qn)
    nb_biases = sum(int(qn["biases"].size) for qn in net.nodes if "biases" in qn)
    data = dict(version=version, network_name=network_name, nb_bits=nb, mode=net.act_scaling_mode, entry=entry,
                in_q=inp["Q"], in_range_text=repr(float(inp["range"])), in_signed=inp["signed"],
                in_shape=inp["shape"], in_size=int(np.prod(inp["shape"])), in_t=types[inp["name"]],
                out_shape=out_shape, out_size=int(np.prod(out_shape)), out_t=types[net.output],
                out_offset=offsets[net.output], arena_bytes=arena, kernels=kernels,
                calibration=net.options.get("calibration"), partition=net.options.get("partition"),
                act_clipping=net.options.get("act_clipping_mode"), per_output=net.options.get("act_rescale_per_output"),
                nb_weights=nb_weights, weight_bytes=arrays_bytes(net, kernels),
                float_bytes=4 * (nb_weights + nb_biases), fast_kernels=any(k["n"].get("fast") for k in kernels))
    header = ["/*", f" * Generated by n2d2 {version}: the integer parameters of '{c_comment(network_name)}' "
              f"({nb} bits, {net.act_scaling_mode}),", " * read by src/network.c only.", " */",
              "#ifndef N2D2_INT_WEIGHTS_H", "#define N2D2_INT_WEIGHTS_H", "", "#include <stdint.h>", ""]
    files = {
        "include/network.h": render("export/int/network.h.j2", **data),
        "include/weights.h": "\n".join(header + arrays.lines + ["#endif", ""]),
        "src/network.c": render("export/int/network.c.j2", **data),
        "_arena_bytes": arena,
    }
    if project == "host":
        files.update({"src/main.c": render("export/int/main.c.j2", **data),
                      "Makefile": render("export/int/Makefile.j2", **data),
                      "README.md": render("export/int/README.md.j2", **data)})
    else:
        data.update(STM32_MEMORY)
        files.update({"src/main.c": render("export/stm32/main.c.j2", **data),
                      "src/startup.c": render("export/stm32/startup.c.j2", **data),
                      "stm32.ld": render("export/stm32/stm32.ld.j2", **data),
                      "Makefile": render("export/stm32/Makefile.j2", **data),
                      "README.md": render("export/stm32/README.md.j2", **data)})
    return files


def arrays_bytes(net, kernels=()) -> int:
    """Bytes of the exported weights and biases (n-bit weights in int8 up to 8 bits, int32 biases); the
    4-bit weights of the int8 kernels (`kernels`: generate_files' contexts) packed two per byte."""
    size = net.weight_bytes()
    for k in kernels:
        n = k["n"]
        if n.get("packed"):
            size -= n["O"] * n["K"] - n["O"] * n["WS"] // 2
    return size


def stimuli_files(net, inputs, labels, ids) -> dict:
    """stimuli/ of the project: the quantized inputs, labels, list."""
    xq = net.quantize_input(inputs) if len(inputs) else np.zeros((0,) + tuple(net.input["shape"]), np.int64)
    return {
        "stimuli/inputs.bin": xq.astype(act_dtype(net.input["signed"], net.nb_bits)).tobytes(),
        "stimuli/labels.bin": np.asarray(labels, dtype="<i4").tobytes(),
        "stimuli/stimuli.list": "".join(f"{i} {int(lab)} {int(sid)}\n"
                                        for i, (lab, sid) in enumerate(zip(labels, ids))),
    }


def _c_array_rows(values, per_line: int = 32) -> list:
    items = [str(int(v)) for v in np.asarray(values).reshape(-1).tolist()] or ["0"]
    return ["    " + ", ".join(items[i:i + per_line]) + "," for i in range(0, len(items), per_line)]


def stm32_stimuli_files(net, inputs, labels, ids) -> dict:
    """include/test_stimulus.h and include/test_labels.h of the STM32 project: the quantized inputs
    (network_input_t, const: in flash) and the labels (int32, -1: not scored), read by src/main.c."""
    xq = net.quantize_input(inputs) if len(inputs) else np.zeros((0,) + tuple(net.input["shape"]), np.int64)
    n = int(xq.shape[0])
    stim = ["/* Generated by n2d2: the test stimuli of the STM32 export, quantized (network_input_t). */",
            "#ifndef N2D2_TEST_STIMULUS_H", "#define N2D2_TEST_STIMULUS_H", "", '#include "network.h"', "",
            f"#define TEST_NB_STIMULI {n}", "",
            f"static const network_input_t test_stimulus[{max(n, 1)}][NETWORK_INPUT_SIZE] = {{"]
    for i in range(n):
        stim.append(f"    /* stimulus {i}: database id {int(ids[i])} */")
        stim.append("    {")
        stim += ["    " + r for r in _c_array_rows(xq[i])]
        stim.append("    },")
    if n == 0:
        stim.append("    {0},")
    stim += ["};", "", "#endif", ""]
    lab = ["/* Generated by n2d2: the labels of the test stimuli of the STM32 export (-1: not scored). */",
           "#ifndef N2D2_TEST_LABELS_H", "#define N2D2_TEST_LABELS_H", "", "#include <stdint.h>", "",
           f"static const int32_t test_labels[{max(n, 1)}] = {{"]
    lab += _c_array_rows(labels if n else [-1])
    lab += ["};", "", "#endif", ""]
    return {"include/test_stimulus.h": "\n".join(stim), "include/test_labels.h": "\n".join(lab)}
