"""`Deconv`: 2-D transposed convolution (N2D2 DeconvCell).

Output size per dimension: `(in - 1) * stride - 2 * pad + dil * (k - 1) + 1`. Weights are
stored [C_in, C_out/G, kH, kW] (PyTorch's conv_transpose2d layout); `get_weight(o, c)` is the
kernel that output o applies to input channel c, as for Conv. The connection table, weight
API and parameter files are Conv's (`ConvolutionCell`).
"""
import numpy as np

from n2d2.backend import array_module, to_device
from n2d2.cells.nn.conv import ConvolutionCell, check_dims, check_int
from n2d2.cells.nn.weighted import solver_and_filler_specs
from n2d2.configurable import Spec
from n2d2.ir import ops as ir_ops
from n2d2.ops import conv as conv_ops
from n2d2.ops import deconv as ops
from n2d2.tensor import Tensor


class Deconv(ConvolutionCell):
    """Transposed convolution.

    Parameters
    ----------
    nb_inputs : int
        Number of input channels (all inputs of an Interface together).
    nb_outputs : int
        Number of output channels.
    kernel_dims : list
        Kernel [X, Y]; `[k]` means `[k, 1]`.
    nb_input_cells : int
        Accepted for compatibility (inputs are concatenated along channels).
    stride_dims, dilation_dims : list, optional
        [X, Y], default [1, 1].
    padding_dims : list, optional
        Symmetric padding [X, Y], default [0, 0] (removed from the output border).
    mapping : Tensor, optional
        Bool/int [nb_inputs, nb_outputs]: [c][o] true when output o reads channel c.
    """

    _outputs_first = False
    _arguments = ("nb_inputs", "nb_outputs", "kernel_dims", "stride_dims", "padding_dims", "dilation_dims")
    _parameters = {
        "back_propagate": Spec(bool, True),
        "no_bias": Spec(bool, False),
        "outputs_remap": Spec(str, ""),
        "weights_export_flip": Spec(bool, False),
        "weights_export_format": Spec(str, "OCHW", choices=("OCHW", "HWCO")),
        **{k: v for k, v in solver_and_filler_specs().items() if k != "quantizer"},
        "mapping": Spec(Tensor, None, allow_none=True),
    }

    def __init__(self, nb_inputs, nb_outputs, kernel_dims, nb_input_cells=1, stride_dims=None, padding_dims=None,
                 dilation_dims=None, mapping=None, **config):
        check_int("nb_inputs", nb_inputs)
        check_int("nb_outputs", nb_outputs)
        check_int("nb_input_cells", nb_input_cells)
        arguments = {
            "nb_inputs": nb_inputs,
            "nb_outputs": nb_outputs,
            "kernel_dims": check_dims("kernel_dims", kernel_dims, 1, 1),
            "stride_dims": check_dims("stride_dims", [1, 1] if stride_dims is None else stride_dims, 1, 1),
            "padding_dims": check_dims("padding_dims", [0, 0] if padding_dims is None else padding_dims, 0, None),
            "dilation_dims": check_dims("dilation_dims", [1, 1] if dilation_dims is None else dilation_dims, 1, 1),
        }
        super().__init__(arguments, mapping=mapping, **config)

    def _geometry(self, in_shape):
        n, c, h, w = in_shape
        kh, kw = self._kernel_hw()
        (sh, sw), (ph, pw), (dh, dw) = self._hw("stride_dims"), self._hw("padding_dims"), self._hw("dilation_dims")
        out = (ops.deconv_output_size(h, kh, sh, ph, dh), ops.deconv_output_size(w, kw, sw, pw, dw))
        if min(out) < 1:
            raise ValueError(f"the output would be empty ({list(out)}, H, W)")
        return conv_ops.ConvGeometry((n, self._args["nb_outputs"]) + out, c, (kh, kw), (sh, sw), (ph, pw), (dh, dw))

    def _ir_node(self):
        """Computed through the IR op "Deconv" (see `DeconvOpDef` below)."""
        return "Deconv", self._attrs(), self._params()


class DeconvOpDef(ir_ops.OpDef):
    """IR op "Deconv": attrs stride, padding, dilation ((h, w) pairs), groups, mapping (bool
    [C_in, C_out] or None); params weights [C_in, C_out/groups, kH, kW], biases [C_out].

    Registered from here until `n2d2.ir.ops` defines it (it belongs there, next to Conv).
    """

    name = "Deconv"
    max_inputs = None
    params = ("weights", "biases")
    trainable = ("weights", "biases")

    def _infer(self, attrs, in_shapes, param_shapes):
        for s in in_shapes[1:]:
            if s[0] != in_shapes[0][0] or tuple(s[2:]) != tuple(in_shapes[0][2:]):
                raise ValueError(f"inputs {list(in_shapes)} differ on batch or H, W")
        n, h, w = in_shapes[0][0], in_shapes[0][2], in_shapes[0][3]
        c_in = sum(s[1] for s in in_shapes)
        ci, og, kh, kw = param_shapes["weights"]
        if ci != c_in:
            raise ValueError(f"weights {list(param_shapes['weights'])} do not match {c_in} input channels")
        (sh, sw), (ph, pw), (dh, dw) = attrs["stride"], attrs["padding"], attrs["dilation"]
        out = (ops.deconv_output_size(h, kh, sh, ph, dh), ops.deconv_output_size(w, kw, sw, pw, dw))
        if min(out) < 1:
            raise ValueError(f"empty output {list(out)}")
        return [(n, og * attrs.get("groups", 1)) + out]

    def _forward(self, attrs, xs, params, training):
        x = xs[0] if len(xs) == 1 else array_module(*xs).concatenate(xs, axis=1)
        mapping = attrs.get("mapping")
        if mapping is not None:
            mapping = to_device(mapping, array_module(x) is not np)
        y, ctx = ops.conv_transpose2d_forward(x, params["weights"], params.get("biases"), attrs["stride"],
                                              attrs["padding"], attrs["dilation"], attrs.get("groups", 1), mapping)
        return y, (ctx, [a.shape[1] for a in xs])

    def _backward(self, attrs, saved, dy, needs, params):
        ctx, channels = saved
        dx, dw, db = ops.conv_transpose2d_backward(dy, ctx, need_dx=any(needs))
        grads = {"weights": dw}
        if db is not None:
            grads["biases"] = db
        if dx is None:
            return [None] * len(needs), grads
        out, offset = [], 0
        for c, need in zip(channels, needs):
            out.append(dx[:, offset:offset + c] if need else None)
            offset += c
        return out, grads


if "Deconv" not in ir_ops.names():
    ir_ops.register(DeconvOpDef)
