"""The LeNet training setup the step benchmarks share (bench_training, bench_step_trace): solver
settings, the cached MNIST provider and the n2d2 network. n2d2 is imported inside the functions:
whichever checkout comes first on `sys.path` (a benchmark's peer runs another)."""

LR, MOMENTUM, DECAY = 0.05, 0.9, 5e-4
NB_BATCHES = 8   # batches cycled by the step loops


def mnist_provider(batch=128):
    """MNIST rescaled to 32x32, Learn partition (seed 1, 10 % held out for validation)."""
    import n2d2

    n2d2.global_variables.seed = 1
    db = n2d2.database.MNIST(data_path=n2d2.datasets.mnist_path(download_if_missing=False), validation=0.1)
    provider = n2d2.provider.DataProvider(db, [32, 32, 1], batch_size=batch)
    provider.add_transformation(n2d2.transform.Rescale(width=32, height=32))
    provider.set_partition("Learn")
    return provider


def n2d2_network():
    """LeNet.ini's layers with a dense conv2 (PyTorch's arithmetic), SGD, softmax cross-entropy."""
    from n2d2.cells import Sequence, Softmax
    from n2d2.models import LeNetINI
    from n2d2.solver import SGD

    model = LeNetINI(mapping=False, name="LeNet")
    model.set_solver(SGD(learning_rate=LR, momentum=MOMENTUM, decay=DECAY))
    return Sequence([model, Softmax(with_loss=True)])


def step_contender(name, provider):
    """(network, target) of a step-loop contender in learn mode: "eager" (the cells, the
    upstream loop, compiled by n2d2.eager_compile), "deepnetcell" (its compiled step on C) or
    "fit" (a DeepNetCell on C whose `fit` / `_run_epoch` is timed; its target scores)."""
    import n2d2

    if name == "eager":
        net, target = n2d2_network(), n2d2.target.Score(provider)
    else:
        net = n2d2_network().to_deepnet_cell(provider, n2d2.target.Score(provider) if name == "fit" else None)
        net.set_backend("c")
        target = net.get_target()
    net.learn()
    return net, target
