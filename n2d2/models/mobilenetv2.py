"""MobileNet v2 (Sandler et al., arXiv:1801.04381), input [N, 3, 224, 224].

The torchvision layout, so that the parameter count is the usual 3,504,872 (alpha 1.0, 1000
classes): a 3x3/2 convolution to 32 channels, 17 inverted-residual blocks, a 1x1 convolution to
1280 channels, global average pool, Dropout(0.2), Fc. Every convolution is bias-free (He FanIn)
and followed by `BatchNorm2d`, with ReLU6 (`Rectifier(clipping=6.0)`) except after the
projection of a block (linear bottleneck). A block expands its input `t` times with a 1x1
convolution (skipped when t = 1), filters it with a depthwise 3x3 convolution carrying the
block's stride, and projects it back with a 1x1 convolution; when the stride is 1 and the
channel count is kept, the input is added back:

    Sequence([Layer([main, Sequence([])], mapping=[[1, 1]]), ElemWise(operation="Sum", mode="PerInput")])

Channel counts are `alpha` times the paper's, rounded to a multiple of 8 (as torchvision).

Not provided (they need the network): upstream's `load_from_ONNX` with download; use
`DeepNetCell.load_from_ONNX` on a local file.
"""
from n2d2.activation import Linear, Rectifier
from n2d2.cells.cell import Layer, Sequence
from n2d2.cells.nn import BatchNorm2d, Conv, ConvDepthWise, ConvPointWise, Dropout, ElemWise, Fc, GlobalPool2d
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.filler import Constant, He, Normal

__all__ = ["MobileNetV2", "InvertedResidual", "ReLU6", "INVERTED_RESIDUAL_SETTING", "make_divisible"]

# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def ReLU6() -> Rectifier:
    """ReLU clipped at 6."""
    return Rectifier(clipping=6.0)


def make_divisible(value: float, divisor: int = 8) -> int:
    """`value` rounded to the nearest multiple of `divisor` (at least `divisor`), never more
    than 10 % below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _he():
    return He(variance_norm="FanIn", mean_norm=0.0, scaling=1.0)


def _bn(nb_channels, relu6, name):
    return BatchNorm2d(nb_channels, activation=ReLU6() if relu6 else Linear(), name=name)


class InvertedResidual(Sequence):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear), plus the input when shapes allow.

    Parameters
    ----------
    nb_inputs, nb_outputs : int
        Channels in and out.
    stride : int
        Stride of the depthwise convolution (1 or 2).
    expansion : int
        Hidden channels = nb_inputs * expansion (no expansion convolution when 1).
    name : str
        Prefix of the cell names (`<name>_expand`, `<name>_dw`, `<name>_project` and their
        `_bn`).
    """

    def __init__(self, nb_inputs: int, nb_outputs: int, stride: int, expansion: int, name: str):
        hidden = nb_inputs * expansion
        cells = []
        if expansion != 1:
            cells += [
                ConvPointWise(nb_inputs, hidden, activation=Linear(), no_bias=True, weights_filler=_he(),
                              name=name + "_expand"),
                _bn(hidden, True, name + "_expand_bn"),
            ]
        cells += [
            ConvDepthWise(hidden, kernel_dims=[3, 3], stride_dims=[stride, stride], padding_dims=[1, 1],
                          activation=Linear(), no_bias=True, weights_filler=_he(), name=name + "_dw"),
            _bn(hidden, True, name + "_dw_bn"),
            ConvPointWise(hidden, nb_outputs, activation=Linear(), no_bias=True, weights_filler=_he(),
                          name=name + "_project"),
            _bn(nb_outputs, False, name + "_project_bn"),
        ]
        self.residual = stride == 1 and nb_inputs == nb_outputs
        if self.residual:
            main = Sequence(cells, name=name + "_main")
            shortcut = Sequence([], name=name + "_shortcut")
            cells = [
                Layer([main, shortcut], mapping=[[1, 1]], name=name + "_branches"),
                ElemWise(operation="Sum", mode="PerInput", name=name + "_sum"),
            ]
        super().__init__(cells, name=name)


class MobileNetV2(Sequence):
    """MobileNet v2, named `mobilenet_v2` unless `name` is given.

    Parameters
    ----------
    nb_outputs : int
        Classes (1000).
    alpha : float
        Width multiplier (channels rounded to multiples of 8; the last convolution keeps at
        least 1280 channels).
    name : str, optional
    """

    def __init__(self, nb_outputs: int = 1000, alpha: float = 1.0, name: str = None):
        if not isinstance(nb_outputs, int) or isinstance(nb_outputs, bool):
            raise WrongInputType("nb_outputs", type(nb_outputs), ["int"])
        if not isinstance(alpha, (float, int)) or isinstance(alpha, bool):
            raise WrongInputType("alpha", type(alpha), ["float"])
        if alpha <= 0.0:
            raise WrongValue("alpha", alpha, ["a positive float"])
        channels = make_divisible(32 * alpha)
        last_channels = make_divisible(1280 * max(1.0, alpha))
        stem = Sequence([
            Conv(3, channels, kernel_dims=[3, 3], stride_dims=[2, 2], padding_dims=[1, 1], activation=Linear(),
                 no_bias=True, weights_filler=_he(), name="conv1"),
            _bn(channels, True, "conv1_bn"),
        ], name="stem")
        blocks = []
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            nb_outputs_block = make_divisible(c * alpha)
            for i in range(n):
                blocks.append(InvertedResidual(channels, nb_outputs_block, s if i == 0 else 1, t,
                                               name=f"block{len(blocks) + 1}"))
                channels = nb_outputs_block
        body = Sequence(blocks, name="body")
        head = Sequence([
            ConvPointWise(channels, last_channels, activation=Linear(), no_bias=True, weights_filler=_he(),
                          name="conv_last"),
            _bn(last_channels, True, "conv_last_bn"),
            GlobalPool2d(pooling="Average", name="pool"),
            Dropout(dropout=0.2, name="dropout"),
            Fc(last_channels, nb_outputs, activation=Linear(), weights_filler=Normal(mean=0.0, std_dev=0.01),
               bias_filler=Constant(value=0.0), name="fc"),
        ], name="head")
        self.stem, self.body, self.head = stem, body, head
        super().__init__([stem, body, head], name=name if name is not None else "mobilenet_v2")
