"""Every layer (`n2d2.cells.nn`), re-exported by `n2d2.cells`.

`Transformation` (the cell) is loaded on first use: it refers to `n2d2.transform`.
"""
from n2d2.cells.nn.activation_cell import Activation
from n2d2.cells.nn.base import NeuralNetworkCell
from n2d2.cells.nn.batchnorm import BatchNorm2d
from n2d2.cells.nn.conv import Conv, ConvDepthWise, ConvPointWise
from n2d2.cells.nn.deconv import Deconv
from n2d2.cells.nn.dropout import Dropout
from n2d2.cells.nn.elemwise import ElemWise
from n2d2.cells.nn.fc import Fc
from n2d2.cells.nn.lrn import LRN
from n2d2.cells.nn.normalize import Normalize
from n2d2.cells.nn.padding import Padding
from n2d2.cells.nn.pool import GlobalPool2d, Pool, Pool2d, Pooling
from n2d2.cells.nn.reshape import Reshape
from n2d2.cells.nn.resize import Resize
from n2d2.cells.nn.scaling import Scaling
from n2d2.cells.nn.softmax import Softmax
from n2d2.cells.nn.transpose import Transpose

__all__ = ["NeuralNetworkCell", "Fc"]
__all__ += ["Pool", "Pool2d", "GlobalPool2d", "Pooling", "BatchNorm2d", "Dropout", "Softmax", "Normalize", "ElemWise",
            "Padding", "Activation", "Reshape", "Resize", "Scaling", "Transpose", "LRN"]
__all__ += ["Conv", "ConvDepthWise", "ConvPointWise", "Deconv"]


def __getattr__(name):
    if name == "Transformation":
        from n2d2.cells.nn.transformation import Transformation

        globals()[name] = Transformation
        return Transformation
    raise AttributeError(f"module 'n2d2.cells.nn' has no attribute '{name}'")
