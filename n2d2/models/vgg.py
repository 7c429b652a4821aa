"""VGG 11/13/16/19 (Simonyan and Zisserman, arXiv:1409.1556), input [N, 3, 224, 224].

A `Backbone` of 3x3 convolutions (padding 1, with bias, He FanIn, ReLU) in five groups of
64/128/256/512/512 channels, each closed by a 2x2/2 max pool; a `Head` of
Fc(25088, 4096, ReLU), Dropout(0.5), Fc(4096, 4096, ReLU), Dropout(0.5), Fc(4096, 1000).
`batchnorm=True` puts `BatchNorm2d(ReLU)` after each (then linear) convolution, which keeps its
bias as torchvision's `vgg*_bn` do. Parameter counts are torchvision's (VGG-16: 138,357,544).
"""
from n2d2.activation import Linear, Rectifier
from n2d2.cells.cell import Sequence
from n2d2.cells.nn import BatchNorm2d, Conv, Dropout, Fc, Pool2d
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.filler import Constant, He, Normal

__all__ = ["VGG", "VGG11", "VGG13", "VGG16", "VGG19", "VGGBackbone", "VGGHead", "VGG_CONVS_PER_GROUP"]

VGG_CONVS_PER_GROUP = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
_WIDTHS = (64, 128, 256, 512, 512)


def _he():
    return He(variance_norm="FanIn", mean_norm=0.0, scaling=1.0)


class VGGBackbone(Sequence):
    """The convolutional part, named `Backbone`; output [N, 512, 7, 7] for 224x224 inputs."""

    def __init__(self, size: int = 16, batchnorm: bool = False, name: str = "Backbone"):
        cells = []
        nb_inputs = 3
        for nb_convs, width in zip(VGG_CONVS_PER_GROUP[size], _WIDTHS):
            for _ in range(nb_convs):
                cells.append(Conv(nb_inputs, width, kernel_dims=[3, 3], padding_dims=[1, 1],
                                  activation=Linear() if batchnorm else Rectifier(), no_bias=False,
                                  weights_filler=_he(), bias_filler=Constant(value=0.0)))
                if batchnorm:
                    cells.append(BatchNorm2d(width, activation=Rectifier()))
                nb_inputs = width
            cells.append(Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max"))
        super().__init__(cells, name=name)


class VGGHead(Sequence):
    """The classifier, named `Head`: three Fc (ReLU on the first two) with dropout between."""

    def __init__(self, nb_outputs: int = 1000, name: str = "Head"):
        def fc(nb_inputs, nb_out, relu, filler):
            return Fc(nb_inputs, nb_out, activation=Rectifier() if relu else Linear(), weights_filler=filler,
                      bias_filler=Constant(value=0.0))

        super().__init__([
            fc(7 * 7 * 512, 4096, True, _he()),
            Dropout(dropout=0.5),
            fc(4096, 4096, True, _he()),
            Dropout(dropout=0.5),
            fc(4096, nb_outputs, False, Normal(mean=0.0, std_dev=0.01)),
        ], name=name)


class VGG(Sequence):
    """VGG-`size`, named `VGG<size>` (`VGG<size>_bn` with batchnorm) unless `name` is given.

    Parameters
    ----------
    size : int
        11, 13, 16 or 19.
    batchnorm : bool
        BatchNorm2d(ReLU) after every convolution.
    name : str, optional
    nb_outputs : int
        Classes (1000).
    """

    def __init__(self, size: int = 16, batchnorm: bool = False, name: str = None, nb_outputs: int = 1000):
        if not isinstance(size, int) or isinstance(size, bool):
            raise WrongInputType("size", type(size), ["int"])
        if size not in VGG_CONVS_PER_GROUP:
            raise WrongValue("size", size, sorted(VGG_CONVS_PER_GROUP))
        if not isinstance(batchnorm, bool):
            raise WrongInputType("batchnorm", type(batchnorm), ["bool"])
        self.backbone = VGGBackbone(size, batchnorm)
        self.head = VGGHead(nb_outputs)
        default = f"VGG{size}" + ("_bn" if batchnorm else "")
        super().__init__([self.backbone, self.head], name=name if name is not None else default)


class VGG11(VGG):
    """VGG-11 (132,863,336 parameters; 132,868,840 with batchnorm)."""

    def __init__(self, batchnorm: bool = False, name: str = None, nb_outputs: int = 1000):
        super().__init__(11, batchnorm, name, nb_outputs)


class VGG13(VGG):
    """VGG-13 (133,047,848 parameters)."""

    def __init__(self, batchnorm: bool = False, name: str = None, nb_outputs: int = 1000):
        super().__init__(13, batchnorm, name, nb_outputs)


class VGG16(VGG):
    """VGG-16 (138,357,544 parameters; 138,365,992 with batchnorm)."""

    def __init__(self, batchnorm: bool = False, name: str = None, nb_outputs: int = 1000):
        super().__init__(16, batchnorm, name, nb_outputs)


class VGG19(VGG):
    """VGG-19 (143,667,240 parameters)."""

    def __init__(self, batchnorm: bool = False, name: str = None, nb_outputs: int = 1000):
        super().__init__(19, batchnorm, name, nb_outputs)
