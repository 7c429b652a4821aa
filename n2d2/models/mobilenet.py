"""MobileNet v1 (Howard et al., arXiv:1704.04861), input [N, 3, 224, 224].

Structure and cell names follow N2D2's model zoo (and `models/MobileNet_v1.ini`): an
`extractor` of five Sequences `div2` ... `div32` (the output stride reached at their end) made of
a 3x3/2 convolution `conv1` then depthwise 3x3 (`convK_3x3_dw`) / pointwise (`convK_1x1`) pairs,
and a `head` with a global average pool `pool1` and the classifier `fc`. Convolutions have no
bias and Xavier(FanOut, scaling 2.0) weights (upstream's choice, tuned for quantization). With
`with_bn=True` each convolution is linear and followed by `BatchNorm2d(ReLU)` named
`bn<suffix>` (`conv1_3x3_dw` -> `bn1_3x3_dw`); otherwise convolutions carry the ReLU.

Parameters (alpha 1.0, no BN): 3,185,088 in the convolutions + 1,025,000 in `fc` (with bias).
"""
from n2d2.activation import Linear, Rectifier
from n2d2.cells.cell import Sequence
from n2d2.cells.nn import BatchNorm2d, Conv, ConvDepthWise, ConvPointWise, Fc, GlobalPool2d
from n2d2.config_section import ConfigSection
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.filler import Constant, Normal, Xavier

__all__ = ["MobileNetv1", "MobileNetv1Extractor", "MobileNetv1Head"]

# (stage name, [(cell number, stride of the depthwise conv, output multiplier of base width)])
_STAGES = (
    ("div2", (("1", 1, 2),)),
    ("div4", (("2", 2, 4), ("3", 1, 4))),
    ("div8", (("4", 2, 8), ("5", 1, 8))),
    ("div16", (("6", 2, 16), ("7_1", 1, 16), ("7_2", 1, 16), ("7_3", 1, 16), ("7_4", 1, 16),
               ("7_5", 1, 16))),
    ("div32", (("8", 2, 32), ("9", 1, 32))),
)


def _conv_config(with_bn) -> ConfigSection:
    return ConfigSection(activation=Linear() if with_bn else Rectifier(), no_bias=True,
                         weights_filler=Xavier(variance_norm="FanOut", scaling=2.0))


class MobileNetv1Extractor(Sequence):
    """The convolutional part, named `extractor`, output [N, int(32*alpha)*32, 7, 7]."""

    def __init__(self, alpha: float = 1.0, with_bn: bool = False, name: str = "extractor"):
        base = int(32 * alpha)
        stages = []
        channels = base
        for stage_name, convs in _STAGES:
            cells = []
            if stage_name == "div2":
                cells.append(Conv(3, base, kernel_dims=[3, 3], stride_dims=[2, 2], padding_dims=[1, 1],
                                  name="conv1", **_conv_config(with_bn)))
            for number, stride, multiplier in convs:
                cells.append(ConvDepthWise(channels, kernel_dims=[3, 3], stride_dims=[stride, stride],
                                           padding_dims=[1, 1], name=f"conv{number}_3x3_dw",
                                           **_conv_config(with_bn)))
                cells.append(ConvPointWise(channels, multiplier * base, name=f"conv{number}_1x1",
                                           **_conv_config(with_bn)))
                channels = multiplier * base
            if with_bn:
                with_norm = []
                for cell in cells:
                    with_norm.append(cell)
                    with_norm.append(BatchNorm2d(cell.get_nb_outputs(), activation=Rectifier(),
                                                 name="bn" + cell.get_name()[4:]))
                cells = with_norm
            stages.append(Sequence(cells, name=stage_name))
        self.div2, self.div4, self.div8, self.div16, self.div32 = stages
        self.nb_outputs = channels
        super().__init__(stages, name=name)


class MobileNetv1Head(Sequence):
    """Global average pool `pool1` and classifier `fc` (Normal(0, 0.01) weights, zero bias)."""

    def __init__(self, nb_outputs: int, nb_inputs: int, name: str = "head"):
        self.pool = GlobalPool2d(pooling="Average", name="pool1")
        self.fc = Fc(nb_inputs, nb_outputs, activation=Linear(), weights_filler=Normal(mean=0.0, std_dev=0.01),
                     bias_filler=Constant(value=0.0), name="fc")
        super().__init__([self.pool, self.fc], name=name)


class MobileNetv1(Sequence):
    """MobileNet v1, named `mobilenet_v1` unless `name` is given.

    Parameters
    ----------
    nb_outputs : int
        Classes (1000).
    alpha : float
        Width multiplier: base width int(32 * alpha).
    with_bn : bool
        BatchNorm2d(ReLU) after every convolution (`MobileNet_v1_batchnorm.ini`).
    """

    def __init__(self, nb_outputs: int = 1000, alpha: float = 1.0, with_bn: bool = False, name: str = None):
        if not isinstance(nb_outputs, int) or isinstance(nb_outputs, bool):
            raise WrongInputType("nb_outputs", type(nb_outputs), ["int"])
        if not isinstance(alpha, (float, int)) or isinstance(alpha, bool):
            raise WrongInputType("alpha", type(alpha), ["float"])
        if not isinstance(with_bn, bool):
            raise WrongInputType("with_bn", type(with_bn), ["bool"])
        if alpha <= 0.0 or int(32 * alpha) < 1:
            raise WrongValue("alpha", alpha, ["a float with int(32 * alpha) >= 1"])
        self.extractor = MobileNetv1Extractor(alpha, with_bn)
        self.head = MobileNetv1Head(nb_outputs, self.extractor.nb_outputs)
        super().__init__([self.extractor, self.head], name=name if name is not None else "mobilenet_v1")
