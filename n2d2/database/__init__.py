"""Databases (`n2d2.database`): stimuli, labels and the Learn / Validation / Test partitions."""
from n2d2.database.cifar import CIFAR10, CIFAR100
from n2d2.database.cityscapes import Cityscapes
from n2d2.database.database import Database
from n2d2.database.dir_db import DIR
from n2d2.database.gtsrb import GTSRB
from n2d2.database.ilsvrc2012 import ILSVRC2012
from n2d2.database.imdbwiki import IMDBWIKI
from n2d2.database.mnist import MNIST
from n2d2.database.numpy_db import Numpy

__all__ = ["Database", "MNIST", "CIFAR10", "CIFAR100", "Numpy", "DIR", "GTSRB", "ILSVRC2012", "Cityscapes",
           "IMDBWIKI"]
