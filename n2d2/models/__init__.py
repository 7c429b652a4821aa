"""Model zoo (`n2d2.models`): ready-made Sequences of n2d2 cells.

- `lenet`: `LeNet`, `LeNetBN` (the Python API's models; `LeNetBN` is the one that reaches 99 % on
  MNIST in 10 epochs, see the module docstring) and `LeNetINI` (N2D2's LeNet.ini);
- `resnet`: `ResNet18/34/50/101/152`, `ResNet.generate(size)`, CIFAR `ResNetCifar`, `ResNet20`,
  `ResNet56`;
- `mobilenet`: `MobileNetv1`; `mobilenetv2`: `MobileNetV2`;
- `vgg`: `VGG`, `VGG11/13/16/19`;
- `ILSVRC_preprocessing(size, margin)`: ImageNet transformations (needs `n2d2.transform`).

Weights are trained from scratch: upstream's ONNX download helpers are not provided (no
network); `count_parameters` gives a model's trainable parameter count.
"""
from n2d2.models import lenet, mobilenet, mobilenetv2, resnet, vgg
from n2d2.models.ilsvrc import ILSVRC_preprocessing
from n2d2.models.lenet import LeNet, LeNetBN, LeNetINI
from n2d2.models.mobilenet import MobileNetv1
from n2d2.models.mobilenetv2 import MobileNetV2
from n2d2.models.parameters import count_parameters
from n2d2.models.resnet import (
    ResNet,
    ResNet18,
    ResNet20,
    ResNet34,
    ResNet50,
    ResNet56,
    ResNet101,
    ResNet152,
    ResNetCifar,
)
from n2d2.models.vgg import VGG, VGG11, VGG13, VGG16, VGG19

__all__ = ["lenet", "resnet", "mobilenet", "mobilenetv2", "vgg", "ILSVRC_preprocessing", "count_parameters",
           "LeNet", "LeNetBN", "LeNetINI", "MobileNetv1", "MobileNetV2", "ResNet", "ResNet18", "ResNet34",
           "ResNet50", "ResNet101", "ResNet152", "ResNetCifar", "ResNet20", "ResNet56", "VGG", "VGG11", "VGG13",
           "VGG16", "VGG19"]
