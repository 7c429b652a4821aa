"""ResNet v1 (He et al., arXiv:1512.03385) for ImageNet and for CIFAR-10.

ImageNet models (`ResNet18` ... `ResNet152`, input [N, 3, 224, 224], 1000 classes): a 7x7/2
convolution, a 3x3/2 max pool, four stages of residual blocks (basic blocks for 18/34,
bottlenecks with expansion 4 for 50/101/152), a global average pool and an Fc with bias.
Convolutions have no bias and He(FanIn) weights, each is followed by `BatchNorm2d` (ReLU inside
the branch, linear before the sum). A block is

    Sequence([Layer([main, shortcut], mapping=[[1, 1]]),
              ElemWise(operation="Sum", mode="PerInput"),
              Activation(activation=Rectifier())])

where the shortcut is an empty `Sequence([])` (identity) or, when the block changes the shape,
a projection: 1x1 convolution with the block's stride + `BatchNorm2d`. In bottlenecks the stride
sits on the 3x3 convolution (as upstream and torchvision; parameter counts are the same either
way). With these choices the parameter counts are torchvision's (ResNet-18: 11,689,512).

CIFAR models (`ResNetCifar(depth)`, `ResNet20`, `ResNet56`, input [N, 3, 32, 32], 10 classes):
a 3x3 convolution to 16 channels, three stages of (depth - 2) / 6 basic blocks with 16/32/64
channels, global average pool, Fc. Shape-changing shortcuts are projections (the paper's
option B), since n2d2 has no channel zero-padding cell.

Not provided (they need the network): upstream's `ResNet.load_from_ONNX` and its download
helpers; load an ONNX file with `DeepNetCell.load_from_ONNX` instead.
"""
from n2d2.activation import Linear, Rectifier
from n2d2.cells.cell import Layer, Sequence
from n2d2.cells.nn import Activation, BatchNorm2d, Conv, ElemWise, Fc, GlobalPool2d, Pool2d
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.filler import Constant, He, Normal
from n2d2.transform import ColorSpace, Composite, PadCrop, RangeAffine, Rescale

__all__ = ["ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNet101", "ResNet152",
           "ResNetCifar", "ResNet20", "ResNet56", "BuildingBlock", "IMAGENET_BLOCKS"]

# size -> (blocks per stage, bottleneck)
IMAGENET_BLOCKS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}


def _conv(nb_inputs, nb_outputs, kernel, stride, name=None):
    """A bias-free convolution with He(FanIn) weights and 'same' padding for odd kernels."""
    return Conv(nb_inputs, nb_outputs, kernel_dims=[kernel, kernel], stride_dims=[stride, stride],
                padding_dims=[kernel // 2, kernel // 2], activation=Linear(), no_bias=True,
                weights_filler=He(variance_norm="FanIn", mean_norm=0.0, scaling=1.0), name=name)


def _bn(nb_channels, relu, name=None):
    return BatchNorm2d(nb_channels, activation=Rectifier() if relu else Linear(), name=name)


class BuildingBlock(Sequence):
    """One residual block: Layer([main, shortcut]) -> ElemWise Sum -> ReLU.

    Parameters
    ----------
    nb_inputs : int
        Input channels.
    width : int
        Channels of the block's 3x3 convolutions.
    stride : int
        Stride of the block (1 or 2).
    bottleneck : bool
        1x1 -> 3x3 -> 1x1 (x4 channels) instead of 3x3 -> 3x3.
    name : str, optional
        Also prefixes the names of the inner containers (`<name>_main`, `<name>_shortcut`,
        `<name>_branches`).
    """

    expansion_bottleneck = 4

    def __init__(self, nb_inputs: int, width: int, stride: int = 1, bottleneck: bool = False,
                 name: str = None):
        nb_outputs = width * self.expansion_bottleneck if bottleneck else width
        if bottleneck:
            main_cells = [
                _conv(nb_inputs, width, 1, 1), _bn(width, True),
                _conv(width, width, 3, stride), _bn(width, True),
                _conv(width, nb_outputs, 1, 1), _bn(nb_outputs, False),
            ]
        else:
            main_cells = [
                _conv(nb_inputs, width, 3, stride), _bn(width, True),
                _conv(width, width, 3, 1), _bn(width, False),
            ]
        prefix = name + "_" if name else None
        main = Sequence(main_cells, name=prefix and prefix + "main")
        shortcut_cells = []
        if stride != 1 or nb_inputs != nb_outputs:
            shortcut_cells = [_conv(nb_inputs, nb_outputs, 1, stride), _bn(nb_outputs, False)]
        shortcut = Sequence(shortcut_cells, name=prefix and prefix + "shortcut")
        self.nb_outputs = nb_outputs
        super().__init__([
            Layer([main, shortcut], mapping=[[1, 1]], name=prefix and prefix + "branches"),
            ElemWise(operation="Sum", mode="PerInput"),
            Activation(activation=Rectifier()),
        ], name=name)

    @property
    def main(self) -> Sequence:
        return self._cells[0][0]

    @property
    def shortcut(self) -> Sequence:
        return self._cells[0][1]


def _stage(nb_inputs, width, nb_blocks, stride, bottleneck, stage_name):
    blocks = []
    for i in range(nb_blocks):
        block = BuildingBlock(nb_inputs, width, stride if i == 0 else 1, bottleneck,
                              name=f"{stage_name}.{i + 1}")
        blocks.append(block)
        nb_inputs = block.nb_outputs
    return Sequence(blocks, name=stage_name), nb_inputs


def _check_version(version):
    if not isinstance(version, int) or isinstance(version, bool):
        raise WrongInputType("version", type(version), ["int"])
    if version != 1:
        raise WrongValue("version", version, [1])


class _ResNetImageNet(Sequence):
    """ResNet-<size> v1 for 224x224x3 inputs and 1000 classes."""

    size = None

    def __init__(self, version: int = 1, name: str = None):
        _check_version(version)
        blocks, bottleneck = IMAGENET_BLOCKS[self.size]
        cells = [
            _conv(3, 64, 7, 2, name=None),
            _bn(64, True),
            Pool2d(pool_dims=[3, 3], stride_dims=[2, 2], padding_dims=[1, 1], pooling="Max"),
        ]
        channels = 64
        for k, (nb_blocks, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stage, channels = _stage(channels, width, nb_blocks, 1 if k == 0 else 2, bottleneck,
                                     f"conv{k + 2}")
            cells.append(stage)
        cells += [
            GlobalPool2d(pooling="Average"),
            Fc(channels, 1000, activation=Linear(), weights_filler=Normal(mean=0.0, std_dev=0.01),
               bias_filler=Constant(value=0.0)),
        ]
        super().__init__(cells, name=name if name is not None else f"ResNetv{version}-{self.size}")


class ResNet18(_ResNetImageNet):
    """ResNet-18 v1 (11,689,512 parameters), named `ResNetv1-18` unless `name` is given."""

    size = 18


class ResNet34(_ResNetImageNet):
    """ResNet-34 v1 (21,797,672 parameters)."""

    size = 34


class ResNet50(_ResNetImageNet):
    """ResNet-50 v1 (25,557,032 parameters)."""

    size = 50


class ResNet101(_ResNetImageNet):
    """ResNet-101 v1 (44,549,160 parameters)."""

    size = 101


class ResNet152(_ResNetImageNet):
    """ResNet-152 v1 (60,192,808 parameters)."""

    size = 152


_BY_SIZE = {18: ResNet18, 34: ResNet34, 50: ResNet50, 101: ResNet101, 152: ResNet152}


class ResNet:
    """Factory of ImageNet ResNets (`ResNet.generate(18)` or `ResNet().generate(18)`)."""

    @staticmethod
    def generate(size: int, version: int = 1, name: str = None) -> Sequence:
        """A ResNet-`size` (18, 34, 50, 101 or 152) of the given version (only 1)."""
        if not isinstance(size, int) or isinstance(size, bool):
            raise WrongInputType("size", type(size), ["int"])
        if size not in _BY_SIZE:
            raise WrongValue("size", size, sorted(_BY_SIZE))
        return _BY_SIZE[size](version=version, name=name)

    @staticmethod
    def ONNX_preprocessing(size: int = 224, margin: int = 32):
        """Composite for the ONNX-zoo ResNets: rescale to size+margin, center crop to size,
        /255, RGB, ImageNet mean/std normalisation."""
        return Composite([
            Rescale(width=size + margin, height=size + margin, keep_aspect_ratio=False, resize_to_fit=False),
            PadCrop(width=size, height=size),
            RangeAffine(first_operator="Divides", first_value=[255.0]),
            ColorSpace(color_space="RGB"),
            RangeAffine(first_operator="Minus", first_value=[0.485, 0.456, 0.406],
                        second_operator="Divides", second_value=[0.229, 0.224, 0.225]),
        ])


class ResNetCifar(Sequence):
    """ResNet-`depth` for CIFAR-10 (depth = 6n + 2: 20, 32, 44, 56, 110...); input [N, 3, 32, 32].

    Parameters
    ----------
    depth : int
        6n + 2 with n >= 1 basic blocks per stage.
    nb_outputs : int
        Classes (10).
    name : str, optional
    """

    def __init__(self, depth: int = 20, nb_outputs: int = 10, name: str = None):
        if not isinstance(depth, int) or isinstance(depth, bool):
            raise WrongInputType("depth", type(depth), ["int"])
        if depth < 8 or (depth - 2) % 6:
            raise WrongValue("depth", depth, ["6n + 2 with n >= 1 (20, 32, 44, 56, 110...)"])
        if not isinstance(nb_outputs, int) or isinstance(nb_outputs, bool):
            raise WrongInputType("nb_outputs", type(nb_outputs), ["int"])
        n = (depth - 2) // 6
        cells = [_conv(3, 16, 3, 1), _bn(16, True)]
        channels = 16
        for k, width in enumerate((16, 32, 64)):
            stage, channels = _stage(channels, width, n, 1 if k == 0 else 2, False, f"stage{k + 1}")
            cells.append(stage)
        cells += [
            GlobalPool2d(pooling="Average"),
            Fc(channels, nb_outputs, activation=Linear(), weights_filler=Normal(mean=0.0, std_dev=0.01),
               bias_filler=Constant(value=0.0)),
        ]
        super().__init__(cells, name=name)
        self.depth = depth


class ResNet20(ResNetCifar):
    """ResNet-20 for CIFAR-10."""

    def __init__(self, nb_outputs: int = 10, name: str = None):
        super().__init__(20, nb_outputs, name)


class ResNet56(ResNetCifar):
    """ResNet-56 for CIFAR-10."""

    def __init__(self, nb_outputs: int = 10, name: str = None):
        super().__init__(56, nb_outputs, name)
