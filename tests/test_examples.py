"""N2D2's Python examples (`mnist_minimal.py`, `train_lenet.py`) run unchanged on n2d2.

The two scripts are reproduced below as functions, statement by statement as upstream writes
them (reference sections 21.1 and 21.2); the only change is an iteration budget per loop
(`max_batches`) so that they run in seconds. The tests check that they print the same lines
and leave the same files.
"""
import math
import os
import re

import numpy as np

import n2d2
from n2d2.utils import reset_name_counters


def _budget(nb_batches: int, max_batches):
    return nb_batches if max_batches is None else min(nb_batches, max_batches)


def mnist_minimal(data_path, epochs=5, batch_size=64, max_batches=None):
    """python/examples/mnist_minimal.py (--epochs=5 --batch_size=64 --data_path)."""
    if not data_path:
        raise RuntimeError("You need to specify the path to the MNIST database with --data_path.")
    n2d2.global_variables.verbosity = n2d2.global_variables.Verbosity.detailed

    database = n2d2.database.MNIST(data_path=data_path)
    provider = n2d2.provider.DataProvider(database, [28, 28, 1], batch_size=batch_size)

    fc1 = n2d2.cells.Fc(28 * 28, 50, activation=n2d2.activation.Rectifier())
    fc2 = n2d2.cells.Fc(50, 10)
    softmax = n2d2.cells.nn.Softmax(with_loss=True)
    target = n2d2.target.Score(provider)

    fc1.solver = n2d2.solver.SGD(learning_rate=0.01)
    fc2.solver = n2d2.solver.SGD(learning_rate=0.01)

    provider.set_partition("Learn")
    for epoch in range(epochs):
        print("\n### Train Epoch: " + str(epoch) + " ###")
        for i in range(_budget(math.ceil(database.get_nb_stimuli("Learn") / batch_size), max_batches)):
            x = provider.read_random_batch()
            x = fc1(x)
            x = fc2(x)
            x = softmax(x)
            x = target(x)
            x.back_propagate()
            x.update()
            print("Example: " + str(i * batch_size) + ", loss: " + "{0:.3f}".format(target.loss()), end="\r")

    print("\n### Test ###")
    provider.set_partition("Test")
    fc1.test()
    fc2.test()
    for i in range(_budget(math.ceil(database.get_nb_stimuli("Test") / batch_size), max_batches)):
        batch_idx = i * batch_size
        x = provider.read_batch(idx=batch_idx)
        x = fc1(x)
        x = fc2(x)
        x = softmax(x)
        x = target(x)
        print("Example: " + str(i * batch_size) + ", test success: "
              + "{0:.2f}".format(100 * target.get_average_success()) + "%", end="\r")
    print("")
    return target


def train_lenet(data_path, epochs=10, batch_size=64, dev=0, max_batches=None):
    """python/examples/train_lenet.py (--epochs=10 --batch_size=64 --dev=0 --data_path).

    Upstream selects the GPU unconditionally; here only when one is available.
    """
    if n2d2.global_variables.cuda_available:
        n2d2.global_variables.cuda_device = dev
        n2d2.global_variables.default_model = "Frame_CUDA"
    n2d2.global_variables.verbosity = n2d2.global_variables.Verbosity.detailed

    print("\n### Create database ###")
    database = n2d2.database.MNIST(data_path=data_path, validation=0.1)
    print(database)

    print("\n### Create Provider ###")
    provider = n2d2.provider.DataProvider(database, [32, 32, 1], batch_size=batch_size)
    provider.add_transformation(n2d2.transform.Rescale(width=32, height=32))
    print(provider)

    print("\n### Loading Model ###")
    model = n2d2.models.lenet.LeNet(10)
    softmax = n2d2.cells.Softmax(with_loss=True)
    target = n2d2.target.Score(provider)
    model.set_solver(n2d2.solver.SGD(learning_rate=0.01, momentum=0.9))
    print(model)

    print("\n### Training ###")
    for epoch in range(epochs):
        provider.set_partition("Learn")
        model.learn()

        print("\n# Train Epoch: " + str(epoch) + " #")
        for i in range(_budget(math.ceil(database.get_nb_stimuli("Learn") / batch_size), max_batches)):
            x = provider.read_random_batch()
            x = model(x)
            x = softmax(x)
            x = target(x)
            x.back_propagate()
            x.update()
            print("Example: " + str(i * batch_size) + ", loss: " + "{0:.3f}".format(x[0]), end="\r")

        print("\n### Validation ###")
        target.clear_success()
        provider.set_partition("Validation")
        model.test()
        for i in range(_budget(math.ceil(database.get_nb_stimuli("Validation") / batch_size), max_batches)):
            batch_idx = i * batch_size
            x = provider.read_batch(batch_idx)
            x = model(x)
            x = softmax(x)
            x = target(x)
            print("Validate example: " + str(i * batch_size) + ", val success: "
                  + "{0:.2f}".format(100 * target.get_average_success()) + "%", end="\r")

    print("\n\n### Testing ###")
    provider.set_partition("Test")
    model.test()
    for i in range(_budget(math.ceil(provider.get_database().get_nb_stimuli("Test") / batch_size), max_batches)):
        batch_idx = i * batch_size
        x = provider.read_batch(batch_idx)
        x = model(x)
        x = softmax(x)
        x = target(x)
        print("Example: " + str(i * batch_size) + ", test success: "
              + "{0:.2f}".format(100 * target.get_average_success()) + "%", end="\r")
    print("\n")

    target.log_confusion_matrix("lenet_confusion_matrix")
    target.log_success("lenet_success")
    return target


# -- tests ---------------------------------------------------------------------------------------
def _mnist_dir() -> str:
    return n2d2.datasets.mnist_path(download_if_missing=False)


def _pieces(out: str) -> list:
    """Printed lines, `\\r`-terminated progress lines split too (what a terminal log shows)."""
    return [p for line in out.split("\n") for p in line.split("\r") if p]


def test_mnist_minimal_prints_upstream_lines(capsys):
    reset_name_counters()   # a fresh process, as when the script runs
    target = mnist_minimal(_mnist_dir(), epochs=2, batch_size=64, max_batches=250)
    out = capsys.readouterr().out
    pieces = _pieces(out)
    assert [p for p in pieces if p.startswith("###")] == ["### Train Epoch: 0 ###", "### Train Epoch: 1 ###",
                                                          "### Test ###"]
    losses = [float(m.group(2)) for p in pieces if (m := re.fullmatch(r"Example: (\d+), loss: (\d+\.\d{3})", p))]
    assert len(losses) == 500
    assert np.mean(losses[-20:]) < 0.9 * np.mean(losses[:20])   # it learns
    tests = [p for p in pieces if "test success" in p]
    assert len(tests) == 157   # the whole Test partition: ceil(10000 / 64) batches
    m = re.fullmatch(r"Example: 9984, test success: (\d+\.\d\d)%", tests[-1])
    assert m, tests[-1]
    assert 60.0 < float(m.group(1)) <= 100.0
    assert os.path.isdir("Score_0") and target.get_name() == "Score_0"


def test_train_lenet_prints_upstream_lines_and_logs(capsys):
    reset_name_counters()
    train_lenet(_mnist_dir(), epochs=1, batch_size=64, max_batches=12)
    out = capsys.readouterr().out
    for header in ("\n### Create database ###\n", "\n### Create Provider ###\n", "\n### Loading Model ###\n",
                   "\n### Training ###\n", "\n# Train Epoch: 0 #\n", "\n### Validation ###\n",
                   "\n\n### Testing ###\n"):
        assert header in out
    assert "'LeNet_0' LeNet(" in out
    pieces = _pieces(out)
    assert sum(bool(re.fullmatch(r"Example: \d+, loss: \d+\.\d{3}", p)) for p in pieces) == 12
    assert sum(bool(re.fullmatch(r"Validate example: \d+, val success: \d+\.\d\d%", p)) for p in pieces) == 12
    tests = [p for p in pieces if re.fullmatch(r"Example: \d+, test success: \d+\.\d\d%", p)]
    assert len(tests) == 12 and tests[-1].startswith("Example: 704,")
    for name in ("ConfusionMatrix_lenet_confusion_matrix.dat", "ConfusionMatrix_lenet_confusion_matrix.png",
                 "ConfusionMatrix_lenet_confusion_matrix_score.dat", "Success_lenet_success.dat",
                 "Success_lenet_success.png"):
        assert os.path.isfile(os.path.join("Score_0", name)), name
    with open(os.path.join("Score_0", "ConfusionMatrix_lenet_confusion_matrix.dat")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "target estimated # %" and len(lines) == 1 + 100
    assert sum(int(line.split()[2]) for line in lines[1:]) == 12 * 64
