"""ONNX QDQ export of an `IntegerNetwork` (the `nb_bits > 0` path of `n2d2.export.export_onnx`).

The integer network of post-training quantization (n2d2.quantization.ptq) written as a standard
ONNX "QDQ" model: every integer tensor of the simulation is an int8 / uint8 (int4 / uint4 at 4
bits, opset 21) tensor of the model, holding the same integers; each compute node reads its
inputs through DequantizeLinear and writes through QuantizeLinear:

- input: QuantizeLinear(x, range / Q) (unsigned when the calibration saw no negative input);
- Conv / Fc: DequantizeLinear of the input, of the int8 weights (one scale per output channel,
  axis 0, where the scales differ) and of the int32 biases (scale = input scale x weight scale,
  zero point 0), Conv / Gemm (transB=1, after a Flatten of the integer input), Relu where the
  simulation applies one, QuantizeLinear to the output grid;
- Pool: DequantizeLinear, MaxPool / AveragePool (count_include_pad=1) or the Global form,
  QuantizeLinear with the same scale (onnxruntime drops the pair around a MaxPool);
- ElemWise Sum: DequantizeLinear of each input, a per-channel Mul where a factor is not 1, Sum,
  Add of the shifts, Relu, QuantizeLinear;
- Activation (Rectifier): DequantizeLinear, Relu, QuantizeLinear with the same scale;
- Concat, Reshape (flatten), Linear activation: on the integer tensors themselves;
- a final Softmax: DequantizeLinear then Softmax over the channels (the model's output);
  otherwise the output is the DequantizeLinear of the last node's integers.

Zero points are 0 (the simulation's grids are symmetric, `x = q T / Q`). Scales: an activation
tensor has one scale, T / Q of its grid; where the simulation's thresholds differ per channel
(shift or fixed-point scaling with per-output weight scales, `act_rescale_per_output`) it is
max(T) / Q, and the per-channel residuals, which the simulation already carries in the next
layer's integer weights, stay there: the weight scale of output channel o is chosen so that
input scale x weight scale / output scale equals the simulation's effective requantization
factor M[o] (FLOAT_MULT: M; FIXED_MULT: m / 2^p; shifts: their powers of two). The model
therefore computes the simulation's integer accumulators and multiplies them by the same
factors; what differs is the rounding of QuantizeLinear (half to even, in float32: the
multiplier is a float32 product of scales) against the simulation's (FLOAT_MULT: half away
from zero in float64; shifts and fixed point: half up by the added 2^(p-1)), and AveragePool's
rounding (half to even against half away from zero). See docs/compatibility.md.

`qdq_model(network, opset=None, integer_outputs=False)` returns the `onnx.ModelProto`
(checked by `onnx.checker`, full check); `integer_outputs=True` also lists every node's integer
tensor (named after the IR node; at 4 bits its int8 widening, `<node>/widened`) as a graph output, to compare
them with `IntegerNetwork.run`.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from n2d2.frontends.onnx_errors import _onnx
from n2d2.frontends.onnx_export import OnnxWriter
from n2d2.quantization.integer import QuantizationError

#: The integer widths a QDQ model can hold exactly (int8 / uint8, and int4 / uint4 from opset 21).
SUPPORTED_BITS = (4, 8)
_MIN_OPSET = {8: 13, 4: 21}       # per-axis QuantizeLinear / DequantizeLinear: 13; 4-bit types: 21
_DEFAULT_OPSET = {8: 17, 4: 21}


@dataclasses.dataclass
class _Value:
    """An integer tensor of the model: its name, rank, scale (one float), signedness."""

    name: str
    rank: int
    scale: float
    signed: bool


def effective_factor(scaling: dict) -> np.ndarray:
    """The per-output factor a weighted node's requantization applies (`approximate`'s effective)."""
    return np.asarray(scaling["effective"], dtype=np.float64).reshape(-1)


class _Builder(OnnxWriter):
    def __init__(self, network, opset):
        onnx = _onnx()
        self.onnx = onnx
        self.net = network
        self.opset = opset
        self.bits = network.nb_bits
        self.nodes, self.inits, self.names = [], [], set()
        self.current = None
        tp = onnx.TensorProto
        self.types = {(True, 8): tp.INT8, (False, 8): tp.UINT8, (True, 4): tp.INT4, (False, 4): tp.UINT4}
        self.zero_points = {}
        self.scale_names = {}     # integer tensor -> its scale initializer (shared by its Q and DQs)
        self.reserved = {qn["name"] for qn in network.nodes} | {network.input["name"]}

    # -- building blocks ----------------------------------------------------------------------
    def error(self, message):
        where = f"node '{self.current}'" if self.current is not None else f"network '{self.net.name}'"
        return QuantizationError(f"export_onnx (QDQ): {where}: {message}")

    def int_const(self, base, values, signed, dims=None):
        """An integer initializer of the activation / weight type (int8, uint8, int4, uint4)."""
        values = np.asarray(values, dtype=np.int64)
        if self.bits == 8:
            return self.const(base, values, np.int8 if signed else np.uint8)
        name = self.unique(base)
        self.inits.append(self.onnx.helper.make_tensor(name, self.types[(signed, self.bits)],
                                                       list(values.shape) if dims is None else dims,
                                                       values.reshape(-1).tolist()))
        return name

    def zero_point(self, signed):
        if signed not in self.zero_points:
            self.zero_points[signed] = self.int_const(f"zero_point_{'int' if signed else 'uint'}{self.bits}", 0,
                                                      signed)
        return self.zero_points[signed]

    def node(self, op, inputs, base, own=False, **attrs):
        out = self.unique(base, own)
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def int_node(self, op, inputs, base, signed, own=False, **attrs):
        """`op` on integer tensors (data movement: Reshape, Flatten, Concat, MaxPool). At 4 bits
        through int8 (Cast there and back): onnxruntime has no 4-bit kernels for them."""
        if self.bits == 8:
            return self.node(op, inputs, base, own=own, **attrs)
        wide = self.onnx.TensorProto.INT8 if signed else self.onnx.TensorProto.UINT8
        inputs = [self.node("Cast", [name], f"{name}/int8", to=wide) if k == 0 or op == "Concat" else name
                  for k, name in enumerate(inputs)]
        y = self.node(op, inputs, f"{base}/int8", **attrs)
        return self.node("Cast", [y], base, own=own, to=self.types[(signed, 4)])

    def relu(self, y):
        """Relu before a QuantizeLinear. At 4 bits a Max with 0: onnxruntime 1.32 drops a Relu that
        feeds an int4 QuantizeLinear even where the int4 range holds negative values."""
        if self.bits == 8:
            return self.node("Relu", [y], f"{self.current}/relu")
        return self.node("Max", [y, self.const(f"{self.current}/zero", np.float32(0.0))], f"{self.current}/relu")

    def scale(self, base, value):
        return self.const(base, np.float32(value))

    def tensor_scale(self, name, value):
        """The scale initializer of integer tensor `name` (made once)."""
        if name not in self.scale_names:
            self.scale_names[name] = self.scale(f"{name}.scale", value)
        return self.scale_names[name]

    def dequantize(self, v: _Value):
        return self.node("DequantizeLinear", [v.name, self.tensor_scale(v.name, v.scale), self.zero_point(v.signed)],
                         f"{v.name}/dq")

    def quantize(self, x, scale, signed, rank, name=None):
        """QuantizeLinear of float `x` into the node's integer tensor (named after the IR node)."""
        base = name if name is not None else self.current
        s = self.scale(f"{base}.scale", scale)
        out = self.node("QuantizeLinear", [x, s, self.zero_point(signed)], base, own=name is None)
        self.scale_names[out] = s
        return _Value(out, rank, float(scale), signed)

    def alias(self, v: _Value, signed=None):
        """The IR node's own name on an integer tensor it leaves unchanged."""
        out = self.int_node("Identity", [v.name], self.current, v.signed, own=True)
        return dataclasses.replace(v, name=out, signed=v.signed if signed is None else signed)

    def four_d(self, v: _Value):
        if v.rank == 4:
            return v
        shape = self.const(f"{v.name}/4d_shape", [0, -1] + [1] * 2, np.int64)
        return dataclasses.replace(v, name=self.int_node("Reshape", [v.name, shape], f"{v.name}/4d", v.signed), rank=4)

    def joined(self, values):
        """One integer tensor from the node's inputs (a channel concatenation of several)."""
        if len(values) == 1:
            return values[0]
        if len({v.signed for v in values}) > 1:
            raise self.error("inputs mix signed and unsigned integers")
        values = [self.four_d(v) for v in values]
        out = self.int_node("Concat", [v.name for v in values], f"{self.current}/concat", values[0].signed, axis=1)
        return _Value(out, 4, max(v.scale for v in values), values[0].signed)

    # -- the graph ------------------------------------------------------------------------------
    def run(self, integer_outputs):
        helper, tp = self.onnx.helper, self.onnx.TensorProto
        net = self.net
        desc = net.input
        q_in = float(desc["Q"])
        in_name = self.unique(desc["name"], own=True)
        inputs = [helper.make_tensor_value_info(in_name, tp.FLOAT, ["N"] + list(desc["shape"]))]
        self.current = None
        values = {desc["name"]: self.quantize(in_name, float(desc["range"]) / q_in, bool(desc["signed"]),
                                              1 + len(desc["shape"]), name=f"{desc['name']}/quantized")}
        final = None
        for qn in net.nodes:
            self.current = qn["name"]
            kernel = qn.get("kernel")
            handler = getattr(self, f"_op_{kernel}", None)
            if handler is None:
                raise self.error(f"integer kernel '{kernel}' (op {qn.get('op')}) has no QDQ form (supported: "
                                 + ", ".join(sorted(k[4:] for k in dir(self) if k.startswith("_op_"))) + ")")
            ins = [values[s] for s in qn["inputs"]]
            out = handler(qn, ins)
            if isinstance(out, tuple):    # a final Softmax: (integers, float output)
                out, final = out
            values[qn["name"]] = out
        self.current = None
        last = values[net.output]
        if final is None:
            final = self.dequantize(last)
        def dims(name, rank):
            shape = [int(d) for d in self._shape_of(name)]
            if rank - 1 < len(shape) and any(d != 1 for d in shape[rank - 1:]):
                shape = [shape[0], int(np.prod(shape[1:]))] if rank == 2 else shape
            return ["N"] + (shape[:rank - 1] + [1] * (rank - 1 - len(shape)))

        outputs = [helper.make_tensor_value_info(final, tp.FLOAT, dims(net.output, last.rank))]
        if integer_outputs:
            for qn in net.nodes:   # 4-bit tensors widened to 8 bits (onnxruntime's Python API returns no int4)
                v = values[qn["name"]]
                name = v.name if self.bits == 8 else \
                    self.node("Cast", [v.name], f"{v.name}/widened", to=self.types[(v.signed, 8)])
                outputs.append(helper.make_tensor_value_info(name, self.types[(v.signed, 8)], dims(qn["name"], v.rank)))
        graph = helper.make_graph(self.nodes, net.name or "n2d2", inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="n2d2",
                                  doc_string=f"n2d2 post-training quantization, {self.bits} bits, "
                                             f"act_scaling_mode {net.act_scaling_mode} (QDQ)")
        model.ir_version = helper.find_min_ir_version_for(opsets)
        return model

    # -- the integer kernels ----------------------------------------------------------------------
    def _output_scale(self, qn):
        return float(np.max(qn["T"])) / float(qn["Q"])

    def _weighted(self, qn, x: _Value, weights, make):
        """DQ(x), DQ(weights) per output channel, DQ(int32 biases), `make(x, w, b)`, Relu, Q."""
        s_y = self._output_scale(qn)
        factor = effective_factor(qn["scaling"])
        if factor.size == 1:
            factor = np.full(weights.shape[0], factor[0])
        w_scale = (factor * s_y / x.scale).astype(np.float32)
        b_scale = (np.float32(x.scale) * w_scale).astype(np.float32)
        if np.any(w_scale <= 0) or not np.all(np.isfinite(w_scale)) or np.any(b_scale <= 0):
            raise self.error(f"a weight scale is not a positive float32 ({w_scale.tolist()[:4]} ...)")
        biases = np.asarray(qn["biases"], dtype=np.int64)
        if biases.size and np.abs(biases).max() >= 2 ** 31:
            raise self.error("a quantized bias does not fit int32 (DequantizeLinear reads int32 biases)")
        if np.abs(weights).max(initial=0) > 2 ** (self.bits - 1) - 1:
            raise self.error(f"weights exceed int{self.bits}")
        per_axis = not np.all(w_scale == w_scale[0])
        cur = self.current
        wq = self.int_const(f"{cur}.weights_quantized", weights, True)
        w_kw, ws_value = ({"axis": 0}, w_scale) if per_axis else ({}, w_scale[0])
        w = self.node("DequantizeLinear", [wq, self.const(f"{cur}.weights_scale", ws_value),
                                           self.zero_point_array(True, weights.shape[0] if per_axis else None)],
                      f"{cur}.weights", **w_kw)
        bq = self.const(f"{cur}.biases_quantized", biases.reshape(-1), np.int32)
        b_kw, bs_value = ({"axis": 0}, b_scale) if per_axis else ({}, b_scale[0])
        bzp = self.const(f"{cur}.biases_zero_point",
                         np.zeros(biases.size if per_axis else (), np.int32), np.int32)
        b = self.node("DequantizeLinear", [bq, self.const(f"{cur}.biases_scale", bs_value), bzp],
                      f"{cur}.biases", **b_kw)
        y, rank = make(self.dequantize(x), w, b)
        if qn["relu"]:
            y = self.relu(y)
        return self.quantize(y, s_y, bool(qn["signed"]), rank)

    def zero_point_array(self, signed, size):
        """The weights' zero point: a scalar, or one per output channel (axis 0)."""
        if size is None:
            return self.zero_point(signed)
        return self.int_const(f"{self.current}.weights_zero_point", np.zeros(size, np.int64), signed)

    def _op_Conv(self, qn, ins):
        a = qn["attrs"]
        if a.get("mapping") is not None:
            raise self.error("a connection table reaches the QDQ export unbaked")
        x = self.four_d(self.joined(ins))
        weights = np.asarray(qn["weights"], dtype=np.int64)
        (ph, pw), (sh, sw), (dh, dw) = a["padding"], a["stride"], a["dilation"]
        groups = int(a.get("groups", 1) or 1)

        def make(xf, w, b):
            return self.node("Conv", [xf, w, b], f"{self.current}/conv", kernel_shape=list(weights.shape[2:]),
                             strides=[int(sh), int(sw)], pads=[int(ph), int(pw), int(ph), int(pw)],
                             dilations=[int(dh), int(dw)], group=groups), 4

        return self._weighted(qn, x, weights, make)

    def _op_Fc(self, qn, ins):
        flat = []
        for v in ins:
            if v.rank != 2:
                v = dataclasses.replace(v, name=self.int_node("Flatten", [v.name], f"{self.current}/flatten", v.signed,
                                                              axis=1),
                                        rank=2)
            flat.append(v)
        if len(flat) > 1:
            if len({v.signed for v in flat}) > 1:
                raise self.error("inputs mix signed and unsigned integers")
            x = _Value(self.int_node("Concat", [v.name for v in flat], f"{self.current}/concat", flat[0].signed,
                                     axis=1), 2,
                       max(v.scale for v in flat), flat[0].signed)
        else:
            x = flat[0]
        weights = np.asarray(qn["weights"], dtype=np.int64)
        weights = weights.reshape(weights.shape[0], -1)

        def make(xf, w, b):
            return self.node("Gemm", [xf, w, b], f"{self.current}/gemm", transB=1), 2

        return self._weighted(qn, x, weights, make)

    def _op_Pool(self, qn, ins):
        a = qn["attrs"]
        x = self.four_d(ins[0])
        (kh, kw), (sh, sw), (ph, pw) = a["pool"], a["stride"], a["padding"]
        in_hw = tuple(int(v) for v in self._shape_of(qn["inputs"][0])[1:])
        kind = "Max" if a["pooling"] == "Max" else "Average"
        if kind == "Max" and self.bits == 4:
            # onnxruntime removes DequantizeLinear / QuantizeLinear around a MaxPool and has no 4-bit
            # MaxPool kernel: the max of the integers, in int8
            out = self.int_node("MaxPool", [x.name], self.current, x.signed, own=True, kernel_shape=[int(kh), int(kw)],
                                strides=[int(sh), int(sw)], pads=[int(ph), int(pw), int(ph), int(pw)])
            return dataclasses.replace(x, name=out)
        xf = self.dequantize(x)
        if (int(kh), int(kw)) == in_hw and (int(ph), int(pw)) == (0, 0):
            y = self.node(f"Global{kind}Pool", [xf], f"{self.current}/pool")
        else:
            kwargs = dict(kernel_shape=[int(kh), int(kw)], strides=[int(sh), int(sw)],
                          pads=[int(ph), int(pw), int(ph), int(pw)])
            if kind == "Average":
                kwargs["count_include_pad"] = 1
            y = self.node(f"{kind}Pool", [xf], f"{self.current}/pool", **kwargs)
        return self.quantize(y, x.scale, x.signed, 4)

    def _shape_of(self, name):
        if name == self.net.input["name"]:
            return tuple(self.net.input["shape"])
        return next(tuple(qn["shape"]) for qn in self.net.nodes if qn["name"] == name)

    def _op_Activation(self, qn, ins):
        x = self.joined(ins)
        if not qn["relu"]:
            return self.alias(x)
        y = self.relu(self.dequantize(x))
        return self.quantize(y, x.scale, x.signed, x.rank)

    def _op_Concat(self, qn, ins):
        return self.alias(self.joined(ins))

    def _op_Reshape(self, qn, ins):
        x = ins[0]
        shape = [0] + [int(s) for s in qn["attrs"]["shape"]]
        out = self.int_node("Reshape", [x.name, self.const(f"{self.current}/shape", shape, np.int64)], self.current,
                            x.signed, own=True)
        return dataclasses.replace(x, name=out, rank=len(shape))

    def _op_ElemWise(self, qn, ins):
        sc = qn["scaling"]
        s_y = self._output_scale(qn)
        if sc["mode"] == "FLOAT_MULT":
            factors, bias = np.asarray(sc["M"], np.float64), np.asarray(sc["bias"], np.float64)
        else:   # one fixed point p for every input
            p = 2.0 ** int(sc["p"])
            factors, bias = np.asarray(sc["m"], np.float64) / p, np.asarray(sc["bias"], np.float64) / p
        rank = max(v.rank for v in ins)
        terms = []
        for k, v in enumerate(ins):
            v = v if v.rank == rank else self.four_d(v)
            x = self.dequantize(v)
            coef = factors[k].reshape(-1) * s_y / v.scale
            if not np.allclose(coef, 1.0, rtol=1e-6, atol=0.0):
                c = coef.astype(np.float32).reshape((1, -1) + (1,) * (rank - 2)) if coef.size > 1 \
                    else np.float32(coef[0])
                x = self.node("Mul", [x, self.const(f"{self.current}/factor{k}", c)], f"{self.current}/mul{k}")
            terms.append(x)
        # two inputs: Add, which onnxruntime fuses with its QDQ pairs into QLinearAdd
        y = terms[0] if len(terms) == 1 else self.node("Add" if len(terms) == 2 else "Sum", terms,
                                                        f"{self.current}/sum")
        shift = bias.reshape(-1) * s_y
        if np.any(shift != 0.0):
            c = shift.astype(np.float32).reshape((1, -1) + (1,) * (rank - 2)) if shift.size > 1 \
                else np.float32(shift[0])
            y = self.node("Add", [y, self.const(f"{self.current}/shift", c)], f"{self.current}/shift")
        if qn["relu"]:
            y = self.relu(y)
        return self.quantize(y, s_y, bool(qn["signed"]), rank)

    def _op_Softmax(self, qn, ins):
        x = self.alias(ins[0])
        probabilities = self.node("Softmax", [self.dequantize(x)], f"{self.current}/softmax", axis=1)
        return x, probabilities


def qdq_model(network, opset=None, integer_outputs=False):
    """The ONNX QDQ model of an `IntegerNetwork` (see the module docstring), checked by
    `onnx.checker` (full check). `opset`: 17 by default at 8 bits, 21 (the first with 4-bit
    types) at 4 bits."""
    onnx = _onnx()
    bits = int(network.nb_bits)
    if bits not in SUPPORTED_BITS:
        raise QuantizationError(f"export_onnx (QDQ): network '{network.name}' is quantized to {bits} bits; a QDQ "
                                f"model holds {' or '.join(str(b) for b in SUPPORTED_BITS)}-bit integers "
                                "(int8/uint8, int4/uint4 from opset 21)")
    if opset is None:
        opset = _DEFAULT_OPSET[bits]
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise TypeError(f"export_onnx: opset must be an int, got {type(opset).__name__}")
    newest = onnx.defs.onnx_opset_version()
    if not _MIN_OPSET[bits] <= int(opset) <= newest:
        raise ValueError(f"export_onnx (QDQ): opset {opset} cannot hold a {bits}-bit QDQ model (from "
                         f"{_MIN_OPSET[bits]} to {newest})")
    model = _Builder(network, int(opset)).run(bool(integer_outputs))
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as e:
        raise RuntimeError(f"export_onnx (QDQ): the model of network '{network.name}' fails the ONNX checker "
                           f"(an exporter bug): {type(e).__name__}: {e}") from e
    return model
