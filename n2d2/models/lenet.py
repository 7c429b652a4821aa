"""LeNet-5 variants for 32x32x1 inputs (MNIST rescaled to 32x32).

- `LeNet`: the Python API's model as the reference describes it (convolutions with a `Linear`
  activation, Xavier FanOut fillers, no biases). Its only non-linearities are the max pools and
  the ReLU of `fc1`, which limits its accuracy (about 98.4 % after 10 epochs).
- `LeNetBN`: `LeNet` with `BatchNorm2d(..., activation=Rectifier())` after each convolution.
- `LeNetINI`: the network of N2D2's `models/LeNet.ini` (ReLU convolutions, He fillers, the
  classic 6x16 connection table of conv2, dropout, SGD lr 0.05 momentum 0.9 decay 5e-4 with a
  0.993 step decay per epoch and weights clamped to [-1, 1], each cell with its own solvers).

Which one trains MNIST to 99 % in 10 epochs: `LeNetBN` with `train_lenet.py`'s
`model.set_solver(SGD(learning_rate=0.01, momentum=0.9))`, batch 64. Measured on 54000
learning images (10 % validation), test set after 10 epochs: a PyTorch emulation of n2d2's
semantics (unscaled dropout, summed-gradient SGD) gave 99.20 % and 99.26 % (two seeds, >= 99 %
from epoch 5 on), n2d2 itself 99.07 % (99.02-99.15 % over epochs 8-10, the input bilinearly
rescaled to 32x32 in [0, 1]);
`LeNetINI` with its own solvers stayed at 98.6-99.0 % (batch 64 or 128) and `LeNet` at 98.4 %.

None of them contains the final `Softmax`: add `Softmax(with_loss=True)` after the model.
"""
import numpy as np

from n2d2.activation import Linear, Rectifier
from n2d2.cells.cell import Sequence
from n2d2.cells.nn import BatchNorm2d, Conv, Dropout, Fc, Pool2d
from n2d2.config_section import ConfigSection
from n2d2.error_handler import WrongInputType, WrongValue
from n2d2.filler import He, Normal, Xavier
from n2d2.solver import SGD
from n2d2.tensor import Tensor

__all__ = ["LeNet", "LeNetBN", "LeNetINI", "CONV2_TABLE", "conv2_mapping"]

# LeNet.ini `Mapping(pool1)` of conv2: 6 rows (input channels) x 16 columns (outputs), 60 links.
CONV2_TABLE = (
    (1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1),
    (1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1),
    (1, 1, 1, 0, 0, 0, 1, 1, 1, 0, 0, 1, 0, 1, 1, 1),
    (0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 0, 1, 1),
    (0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1),
    (0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 1),
)


def conv2_mapping() -> Tensor:
    """LeNet.ini's conv2 connection table as a bool Tensor of numpy shape [6, 16]."""
    return Tensor.from_numpy(np.array(CONV2_TABLE, dtype=bool))


def _check_nb_outputs(nb_outputs):
    if not isinstance(nb_outputs, int) or isinstance(nb_outputs, bool):
        raise WrongInputType("nb_outputs", type(nb_outputs), ["int"])
    if nb_outputs < 1:
        raise WrongValue("nb_outputs", nb_outputs, ["a positive int"])


# -- the Python API model (reference section 19) ---------------------------------------------
def _conv_def() -> ConfigSection:
    # Built per call: every cell gets its own filler and activation objects.
    return ConfigSection(activation=Linear(), no_bias=True,
                         weights_filler=Xavier(variance_norm="FanOut", scaling=1.0))


def _fc_def() -> ConfigSection:
    return ConfigSection(no_bias=True, weights_filler=Normal(mean=0.0, std_dev=0.01))


class LeNet(Sequence):
    """LeNet-5 as N2D2's Python model zoo describes it; input [N, 1, 32, 32].

    Parameters
    ----------
    nb_outputs : int
        Number of classes (outputs of the last Fc).
    """

    def __init__(self, nb_outputs: int = 10, name: str = None):
        _check_nb_outputs(nb_outputs)
        super().__init__([
            Conv(1, 6, kernel_dims=[5, 5], **_conv_def()),
            Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max"),
            Conv(6, 16, kernel_dims=[5, 5], **_conv_def()),
            Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max"),
            Conv(16, 120, kernel_dims=[5, 5], **_conv_def()),
            Fc(120, 84, activation=Rectifier(), **_fc_def()),
            Dropout(dropout=0.5),
            Fc(84, nb_outputs, activation=Linear(), **_fc_def()),
        ], name=name)


class LeNetBN(Sequence):
    """`LeNet` with a `BatchNorm2d(activation=Rectifier())` after each convolution."""

    def __init__(self, nb_outputs: int = 10, name: str = None):
        _check_nb_outputs(nb_outputs)
        super().__init__([
            Conv(1, 6, kernel_dims=[5, 5], **_conv_def()),
            BatchNorm2d(6, activation=Rectifier()),
            Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max"),
            Conv(6, 16, kernel_dims=[5, 5], **_conv_def()),
            BatchNorm2d(16, activation=Rectifier()),
            Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max"),
            Conv(16, 120, kernel_dims=[5, 5], **_conv_def()),
            BatchNorm2d(120, activation=Rectifier()),
            Fc(120, 84, activation=Rectifier(), **_fc_def()),
            Dropout(dropout=0.5),
            Fc(84, nb_outputs, activation=Linear(), **_fc_def()),
        ], name=name)


# -- models/LeNet.ini --------------------------------------------------------------------------
INI_EPOCH_SIZE = 48000  # LeNet.ini: MNIST with Validation=0.2 -> 48000 learning stimuli


def ini_solvers(epoch_size: int = INI_EPOCH_SIZE):
    """(weights_solver, bias_solver) of LeNet.ini's `[common.config]`.

    `WeightsSolver.*` (lr 0.05, momentum 0.9, decay 5e-4) set the weights solver only;
    `Solvers.*` (StepDecay x0.993 every `epoch_size` stimuli, clamping -1:1) set both. The bias
    solver keeps the SGD defaults otherwise (unused: the INI sets NoBias=1).
    """
    common = dict(learning_rate_policy="StepDecay", learning_rate_step_size=epoch_size,
                  learning_rate_decay=0.993, clamping="-1.0:1.0")
    weights = SGD(learning_rate=0.05, momentum=0.9, decay=0.0005, **common)
    bias = SGD(**common)
    return weights, bias


def _ini_def(epoch_size, activation, weights_filler) -> ConfigSection:
    weights_solver, bias_solver = ini_solvers(epoch_size)
    config = ConfigSection(no_bias=True, weights_solver=weights_solver, bias_solver=bias_solver,
                           activation=activation)
    if weights_filler is not None:
        config["weights_filler"] = weights_filler
    return config


class LeNetINI(Sequence):
    """The network of N2D2's `models/LeNet.ini`, cell by cell; input [N, 1, 32, 32].

    Cells are named after the INI sections (`conv1`, `pool1`, `conv2`, `pool2`, `conv3`, `fc1`,
    `fc1.drop`, `fc2`) so that parameters exported by N2D2 for that INI load by name.

    Parameters
    ----------
    nb_outputs : int
        Number of classes (LeNet.ini: 10).
    mapping : bool
        True: conv2 uses the INI's 6x16 connection table (60 of the 96 channel pairs);
        False: conv2 is fully connected.
    epoch_size : int
        Learning stimuli per epoch, the step of the INI's learning-rate decay
        (`[sp]_EpochSize`; 48000 for LeNet.ini's 20 % validation split, 54000 for 10 %).
    name : str, optional
    """

    def __init__(self, nb_outputs: int = 10, mapping: bool = True, epoch_size: int = INI_EPOCH_SIZE,
                 name: str = None):
        _check_nb_outputs(nb_outputs)
        if not isinstance(mapping, bool):
            raise WrongInputType("mapping", type(mapping), ["bool"])
        if not isinstance(epoch_size, int) or isinstance(epoch_size, bool) or epoch_size < 1:
            raise WrongInputType("epoch_size", type(epoch_size), ["positive int"])
        conv2_extra = {"mapping": conv2_mapping()} if mapping else {}
        super().__init__([
            Conv(1, 6, kernel_dims=[5, 5], name="conv1", **_ini_def(epoch_size, Rectifier(), He())),
            Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max", name="pool1"),
            Conv(6, 16, kernel_dims=[5, 5], name="conv2", **conv2_extra,
                 **_ini_def(epoch_size, Rectifier(), He())),
            Pool2d(pool_dims=[2, 2], stride_dims=[2, 2], pooling="Max", name="pool2"),
            Conv(16, 120, kernel_dims=[5, 5], name="conv3", **_ini_def(epoch_size, Rectifier(), He())),
            Fc(120, 84, name="fc1", **_ini_def(epoch_size, Rectifier(), He())),
            Dropout(dropout=0.5, name="fc1.drop"),
            # No WeightsFiller in the INI: N2D2's default Normal(0.0, 0.05).
            Fc(84, nb_outputs, name="fc2", **_ini_def(epoch_size, Linear(), None)),
        ], name=name)
