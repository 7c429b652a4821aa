"""What a training run from the command line needs beyond `DeepNetCell.fit`.

- `DATABASES` / `MODELS`: which data sets and zoo models `n2d2 train` knows, the input size
  each model expects, and the solver settings that train it well;
- `load_database`, `limit_partition`, `make_provider`: a data set found, loaded, optionally
  trimmed (small CI budgets) and wrapped in a provider with its preprocessing;
- `EpochReport`: a `Score` target that reports each epoch of `DeepNetCell.fit` (validation
  success, learn loss and throughput) when fit records its validation point.

The training loop itself is `DeepNetCell.fit` (the traced network run as a compiled program):
on LeNet/MNIST it trains 2-3x faster than the eager cell loop for the same numbers (see
`bench/RESULTS.md`), so nothing here re-implements an epoch.
"""
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

import n2d2
from n2d2 import datasets, distributed, transform
from n2d2.models import LeNet, LeNetBN, LeNetINI, MobileNetv1, MobileNetV2, ResNetCifar
from n2d2.solver import SGD
from n2d2.target import Score


class UserError(Exception):
    """A mistake of the user (unknown model, missing files...): reported in one line, no traceback."""


# -- data sets -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatabaseSpec:
    """A data set the command line can train on."""

    name: str
    title: str
    image_size: tuple      # [W, H, C] of its images as stored
    nb_classes: int
    files: tuple           # what --data-path must hold
    help_path: str         # where to get it


MNIST_SPEC = DatabaseSpec("mnist", "MNIST", (28, 28, 1), 10,
                          ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                          "the four IDX files, plain or .gz")
CIFAR10_SPEC = DatabaseSpec("cifar10", "CIFAR-10", (32, 32, 3), 10,
                            tuple(f"data_batch_{k}.bin" for k in range(1, 6)) + ("test_batch.bin", "batches.meta.txt"),
                            "the extracted cifar-10-batches-bin folder of "
                            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz")
DATABASES = {d.name: d for d in (MNIST_SPEC, CIFAR10_SPEC)}

# CIFAR-10 per-channel mean and standard deviation of the [0, 1] training images, in the
# database's channel order (BGR, as N2D2 stores images).
CIFAR10_MEAN = [0.4465, 0.4822, 0.4914]
CIFAR10_STD = [0.2616, 0.2435, 0.2470]


def _missing_files(directory: str, files) -> list:
    return [f for f in files if not (os.path.isfile(os.path.join(directory, f))
                                     or os.path.isfile(os.path.join(directory, f + ".gz")))]


def find_data(spec: DatabaseSpec, data_path: Optional[str]) -> str:
    """The folder holding `spec`'s files (absolute), or UserError naming what is missing where.

    MNIST without `data_path`: `$N2D2_DATA/mnist`, the bundled `data/mnist/`, else a download
    (`n2d2.datasets.mnist_path`). An explicit `data_path` must hold the files.
    """
    if data_path:
        data_path = os.path.abspath(os.path.expanduser(data_path))
        if not os.path.isdir(data_path):
            raise UserError(f"--data-path {data_path}: no such folder")
        missing = _missing_files(data_path, spec.files)
        if missing:
            raise UserError(f"{spec.title} files missing in {data_path}: {', '.join(missing)} "
                            f"(expected {spec.help_path})")
        return data_path
    if spec.name == "mnist":
        try:
            return os.path.abspath(datasets.mnist_path())
        except (OSError, RuntimeError) as e:
            raise UserError(str(e).splitlines()[0]) from None
    env = os.environ.get("N2D2_DATA")
    if env:
        for candidate in (os.path.join(env, spec.name), os.path.join(env, "cifar-10-batches-bin")):
            if not _missing_files(candidate, spec.files):
                return os.path.abspath(candidate)
    raise UserError(f"{spec.title} needs --data-path (a folder with {spec.help_path}); "
                    f"$N2D2_DATA/{spec.name} was not found either")


def load_database(spec: DatabaseSpec, path: str, validation: float):
    """The database of `spec` read from `path`, with a fraction `validation` of Learn moved to Validation."""
    try:
        if spec.name == "mnist":
            return n2d2.database.MNIST(data_path=path, validation=validation)
        db = n2d2.database.CIFAR10(validation=validation)
        db.load(path)
        return db
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read {spec.title} from {path}: {str(e).splitlines()[0]}") from None


def limit_partition(database, partition: str, nb: int):
    """Keep the first `nb` stimuli of `partition` (Learn and Validation are already in a seeded
    random order), moving the others to Unpartitioned, where no provider reads them.

    There is no public `Database` method for this yet: it edits the id sets directly.
    """
    ids = database.get_partition_ids(partition)
    if nb >= ids.size:
        return
    sets = database._sets
    sets["Unpartitioned"] = np.sort(np.concatenate([sets["Unpartitioned"], ids[nb:]]))
    sets[partition] = ids[:nb].copy()


def apply_limits(database, limit_train: Optional[int], limit_test: Optional[int], validation: float):
    """Trim the database to `limit_train` training stimuli (split Learn/Validation as
    `validation`) and `limit_test` test stimuli."""
    if limit_train is not None:
        nb_valid = int(round(limit_train * validation))
        limit_partition(database, "Learn", limit_train - nb_valid)
        limit_partition(database, "Validation", nb_valid)
    if limit_test is not None:
        limit_partition(database, "Test", limit_test)


def make_provider(database, spec: DatabaseSpec, input_size, batch_size: int):
    """A DataProvider delivering `input_size` ([W, H, C]) with the data set's preprocessing:
    MNIST rescaled when the model wants another size; CIFAR-10 normalised per channel and
    randomly flipped (learning only)."""
    provider = n2d2.provider.DataProvider(database, list(input_size), batch_size=batch_size)
    width, height = input_size[0], input_size[1]
    if (width, height) != tuple(spec.image_size[:2]):
        provider.add_transformation(transform.Rescale(width=width, height=height))
    if spec.name == "cifar10":
        provider.add_transformation(transform.RangeAffine(first_operator="Divides", first_value=[255.0]))
        provider.add_transformation(transform.RangeAffine(first_operator="Minus", first_value=list(CIFAR10_MEAN),
                                                          second_operator="Divides",
                                                          second_value=list(CIFAR10_STD)))
        provider.add_on_the_fly_transformation(transform.Flip(random_horizontal_flip=True, apply_to="LearnOnly"))
    return provider


# -- models ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """A zoo model the command line can train.

    `build(nb_outputs, epoch_size)` returns the Sequence (without the final Softmax);
    `input_size` is the [W, H, C] it expects. Solver: SGD with `learning_rate`, `momentum`,
    `decay` (weight decay) and, with `policy="StepDecay"`, the learning rate multiplied after
    every epoch by `lr_decay`, or, when `lr_decay` is None, by the factor that brings it to
    `FINAL_LR_RATIO` of its initial value at the last epoch. `own_solvers`: the model carries
    its own (LeNet.ini's), used unless the user overrides a solver setting.
    """

    name: str
    description: str
    databases: tuple
    input_size: tuple
    build: Callable
    learning_rate: float
    momentum: float
    decay: float
    policy: str = "StepDecay"
    lr_decay: Optional[float] = None
    clamping: str = ""
    own_solvers: bool = False


# The learning rate at the last epoch, relative to the first (StepDecay annealed over the run).
# A per-epoch step keeps N2D2's solver log to one "Learning rate after..." line per parameter and
# epoch (a per-iteration CosineDecay would print one per iteration).
FINAL_LR_RATIO = 0.04


def _lenet_ini(nb_outputs, epoch_size):
    return LeNetINI(nb_outputs=nb_outputs, epoch_size=epoch_size, name="LeNet")


def _lenet_api(nb_outputs, epoch_size):
    return LeNet(nb_outputs)


def _lenet_bn(nb_outputs, epoch_size):
    return LeNetBN(nb_outputs)


def _resnet(depth):
    def build(nb_outputs, epoch_size):
        return ResNetCifar(depth, nb_outputs=nb_outputs, name=f"ResNet{depth}")
    return build


def _mobilenet_v1(nb_outputs, epoch_size):
    return MobileNetv1(nb_outputs=nb_outputs, alpha=1.0, with_bn=True)


def _mobilenet_v2(nb_outputs, epoch_size):
    return MobileNetV2(nb_outputs=nb_outputs)


_ANNEALED = f"learning rate decayed per epoch to {FINAL_LR_RATIO:g}x at the last"
MODELS = {m.name: m for m in (
    ModelSpec("lenet", "models.lenet.LeNetBN: LeNet-5 with BatchNorm + ReLU after each convolution, dropout; "
              f"SGD lr 0.05, momentum 0.9, decay 5e-4, {_ANNEALED} epoch (99.3 % on MNIST in 10 epochs)",
              ("mnist",), (32, 32, 1), _lenet_bn, 0.05, 0.9, 5e-4),
    ModelSpec("lenet-ini", "N2D2's models/LeNet.ini exactly: ReLU, He fillers, conv2 connection table, dropout; "
              "SGD lr 0.05, momentum 0.9, decay 5e-4, x0.993 per epoch (made for ~125 epochs: 98.7 % in 10), "
              "weights clamped to [-1, 1]", ("mnist",), (32, 32, 1), _lenet_ini, 0.05, 0.9, 5e-4, lr_decay=0.993,
              clamping="-1.0:1.0", own_solvers=True),
    ModelSpec("lenet5", "the Python API's models.lenet.LeNet (linear convolutions, Xavier); SGD lr 0.01, "
              f"momentum 0.9 as train_lenet.py, {_ANNEALED} epoch", ("mnist",), (32, 32, 1), _lenet_api,
              0.01, 0.9, 0.0),
    ModelSpec("resnet20", "ResNet-20 for CIFAR-10 (He et al.); SGD lr 0.1, momentum 0.9, decay 1e-4, "
              f"{_ANNEALED} epoch",
              ("cifar10",), (32, 32, 3), _resnet(20), 0.1, 0.9, 1e-4),
    ModelSpec("resnet56", f"ResNet-56 for CIFAR-10; SGD lr 0.1, momentum 0.9, decay 1e-4, {_ANNEALED} epoch",
              ("cifar10",), (32, 32, 3), _resnet(56), 0.1, 0.9, 1e-4),
    ModelSpec("mobilenetv1", "MobileNet v1 with BatchNorm (alpha 1.0, global pooling: any 32x32 input); "
              f"SGD lr 0.05, momentum 0.9, decay 4e-5, {_ANNEALED} epoch",
              ("cifar10",), (32, 32, 3), _mobilenet_v1, 0.05, 0.9, 4e-5),
    ModelSpec("mobilenetv2", "MobileNet v2 (global pooling: any 32x32 input); SGD lr 0.05, momentum 0.9, "
              f"decay 4e-5, {_ANNEALED} epoch", ("cifar10",), (32, 32, 3), _mobilenet_v2, 0.05, 0.9, 4e-5),
)}


def model_names() -> list:
    return sorted(MODELS)


def check_model(model: str, database: str) -> ModelSpec:
    """The spec of `model`, or UserError (unknown model, or one that does not fit `database`)."""
    spec = MODELS.get(model.lower())
    if spec is None:
        raise UserError(f"unknown model '{model}' (known: {', '.join(model_names())})")
    if database not in spec.databases:
        fitting = [m for m in model_names() if database in MODELS[m].databases]
        raise UserError(f"model '{spec.name}' does not fit database '{database}' (it trains on "
                        f"{', '.join(spec.databases)}; models for {database}: {', '.join(fitting)})")
    return spec


def check_database(database: str) -> DatabaseSpec:
    spec = DATABASES.get(database.lower())
    if spec is None:
        raise UserError(f"unknown database '{database}' (known: {', '.join(sorted(DATABASES))})")
    return spec


def epoch_lr_decay(spec: ModelSpec, epochs: int) -> float:
    """The per-epoch learning-rate factor of `spec` for a run of `epochs` epochs."""
    if spec.lr_decay is not None:
        return spec.lr_decay
    return FINAL_LR_RATIO ** (1.0 / (epochs - 1)) if epochs > 1 else 1.0


def make_solver(spec: ModelSpec, epoch_size: int, epochs: int, learning_rate=None, momentum=None, decay=None):
    """The SGD for `spec` with the user's overrides; None when the model keeps its own solvers.

    The StepDecay step is `epoch_size` stimuli (N2D2 counts stimuli): one step per epoch.
    """
    if spec.own_solvers and learning_rate is None and momentum is None and decay is None:
        return None
    lr = spec.learning_rate if learning_rate is None else learning_rate
    config = dict(learning_rate=float(lr), momentum=float(spec.momentum if momentum is None else momentum),
                  decay=float(spec.decay if decay is None else decay))
    if spec.policy == "StepDecay":
        config.update(learning_rate_policy="StepDecay", learning_rate_step_size=max(1, epoch_size),
                      learning_rate_decay=float(epoch_lr_decay(spec, epochs)))
    if spec.clamping:
        config["clamping"] = spec.clamping
    return SGD(**config)


# -- per-epoch report -----------------------------------------------------------------------------
class EpochReport(Score):
    """A `Score` target that prints and records one line per epoch of `DeepNetCell.fit`.

    `fit` calls `new_validation_point` once per epoch, after the validation pass: the report
    then reads the epoch's learn loss (mean of the Learn batches), learn and validation success
    (exact, from the epoch's confusion matrices) and throughput. Without a Validation partition
    the epoch is reported when the next pass (Learn or Test) clears its scores. `epochs` holds
    one dict per epoch.
    """

    def __init__(self, provider, nb_epochs: int, name: str = "Target", out=print, **kwargs):
        super().__init__(provider, name=name, **kwargs)
        self.nb_epochs = nb_epochs
        self.epochs = []
        self._out = out
        self._learn = []            # losses of this epoch's Learn batches (reported: emptied)
        self._learn_images = 0
        self._learn_end = None
        self._epoch_start = time.perf_counter()

    def start(self):
        """Mark the start of the first epoch (call right before `fit`)."""
        self._epoch_start = time.perf_counter()

    def __call__(self, inputs):
        loss = super().__call__(inputs)
        now = time.perf_counter()
        if self.get_provider().get_partition() == "Learn":
            self._learn.append(self.loss())
            self._learn_images += int((self.get_provider().get_labels().to_numpy() >= 0).sum())
            self._learn_end = now
        return loss

    def clear_success(self, partition: str = None):
        """Also forget the confusion matrix: `DeepNetCell.fit` clears only the success rates
        before each pass, which would make the validation metric (read from the confusion
        matrix) an average over every epoch so far instead of the current one."""
        self.clear_score(partition)

    def clear_score(self, partition: str = None):
        partition = partition or self.get_provider().get_partition()
        if partition in ("Learn", "Test") and self._learn:
            self._report(None, None)    # an epoch without validation has just ended
        super().clear_success(partition)
        self._score(partition).confusion = None

    def new_validation_point(self, step: int = None, score: float = None) -> bool:
        best = super().new_validation_point(step, score)
        self._report(score, best)
        return best

    def _accuracy(self, partition: str) -> tuple:
        total = int(self.get_confusion_matrix(partition).sum())
        return (self.get_success_rate(partition) if total else float("nan")), total

    def _reduce_learn(self):
        """Under data parallelism: the Learn losses and images of every rank (collective: every
        rank reports at the same point of `fit`)."""
        world = distributed.current()
        if world.size > 1:
            self._learn = world.sum_objects(list(self._learn), what="epoch report") or []
            self._learn_images = world.sum_objects(self._learn_images, what="epoch report")

    def _report(self, score, best):
        self._reduce_learn()
        now = time.perf_counter()
        seconds = (self._learn_end or now) - self._epoch_start
        valid, nb_valid = self._accuracy("Validation") if score is not None else (float("nan"), 0)
        record = {
            "epoch": len(self.epochs) + 1,
            "learn_loss": float(np.mean(self._learn)) if self._learn else float("nan"),
            "learn_success": self._accuracy("Learn")[0],
            "validation_success": valid,
            "validation_images": nb_valid,
            "validation_metric": float(score) if score is not None else float("nan"),
            "learn_images": self._learn_images,
            "learn_seconds": seconds,
            "images_per_second": self._learn_images / seconds if seconds > 0 else float("nan"),
            "epoch_seconds": now - self._epoch_start,
            "best": bool(best),
        }
        self.epochs.append(record)
        text = (f"Epoch {record['epoch']}/{self.nb_epochs}: learn loss {record['learn_loss']:.4f}, "
                f"learn success {100 * record['learn_success']:.2f} %, ")
        if score is not None:
            text += f"validation success {100 * valid:.2f} % ({nb_valid} images), "
        self._out(text + f"{record['images_per_second']:.0f} img/s, {record['epoch_seconds']:.1f} s")
        self._learn, self._learn_images, self._learn_end = [], 0, None
        self._epoch_start = time.perf_counter()

    def checkpoint_state(self) -> dict:
        """What `DeepNetCell.fit` saves with its checkpoint: the epochs reported so far."""
        return {"epochs": self.epochs}

    def restore_checkpoint_state(self, state: dict):
        """Continue the report of a resumed run after its saved epochs."""
        epochs = state.get("epochs", [])
        if not isinstance(epochs, list) or not all(isinstance(r, dict) for r in epochs):
            raise ValueError("checkpoint: the saved epoch report is not a list of records")
        self.epochs = [dict(r) for r in epochs]

    def epochs_tsv(self) -> str:
        keys = ("epoch", "learn_loss", "learn_success", "validation_success", "validation_metric",
                "images_per_second", "epoch_seconds")
        lines = ["\t".join(keys)]
        for r in self.epochs:
            lines.append("\t".join(str(r[k]) if k == "epoch" else f"{r[k]:.6g}" for k in keys))
        return "\n".join(lines) + "\n"


def partition_accuracy(target, partition: str = "Test") -> tuple:
    """(success, images) over every image of `partition` scored since its last clear, exact from
    the confusion matrix (the mean of per-batch rates would overweight a partial last batch)."""
    return target.get_success_rate(partition), int(target.get_confusion_matrix(partition).sum())
