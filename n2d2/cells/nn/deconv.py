"""`Deconv`: 2-D transposed convolution (N2D2 DeconvCell).

Output size per dimension: `(in - 1) * stride - 2 * pad + dil * (k - 1) + 1`. Weights are
stored [C_in, C_out/G, kH, kW] (PyTorch's conv_transpose2d layout); `get_weight(o, c)` is the
kernel that output o applies to input channel c, as for Conv. The connection table, weight
API and parameter files are Conv's (`ConvolutionCell`).
"""

from n2d2.cells.nn.conv import ConvolutionCell, check_conv_arguments, convolution_parameters
from n2d2.ops import conv as conv_ops
from n2d2.ops import deconv as ops
from n2d2.quantizer import CellQuantizer, check_quantizer


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
    _parameters = convolution_parameters(quantizer=False)

    def __init__(self, nb_inputs, nb_outputs, kernel_dims, nb_input_cells=1, stride_dims=None, padding_dims=None,
                 dilation_dims=None, mapping=None, **config):
        arguments = check_conv_arguments(nb_inputs, nb_outputs, nb_input_cells, kernel_dims, stride_dims=stride_dims,
                                         padding_dims=padding_dims, dilation_dims=dilation_dims)
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
        """Computed through the IR op "Deconv" (n2d2.ir.ops), which calls n2d2.ops.deconv."""
        return self._with_quantizer("Deconv", self._attrs(), self._params())

    def set_quantizer(self, quantizer):
        """Attach a weight quantizer (upstream's Python Deconv has no `quantizer`; its C++ cell
        has one). Not printed, so that the cell prints as upstream."""
        self._extra_quantizer = check_quantizer(quantizer, CellQuantizer, "cell")
        if quantizer is not None:
            quantizer._attach(self)

    @property
    def quantizer(self):
        return self._extra_quantizer

    @quantizer.setter
    def quantizer(self, value):
        self.set_quantizer(value)
