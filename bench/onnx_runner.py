"""An ONNX classifier at 224x224 through `DeepNetCell.load_from_ONNX` on C, as the per-model
benchmarks run it (bench_onnx_nodes, bench_model_ab, bench_thread_cost). It imports whichever
n2d2 comes first on `sys.path`: their children put another checkout there and this folder after it."""


def load_runner(path, batch):
    """(the DeepNetCell, a function running one inference call on a fixed random batch)."""
    import numpy as np

    import n2d2
    from n2d2.cells.deepnet_cell import DeepNetCell
    from n2d2.provider import TensorPlaceholder

    provider = n2d2.provider.DataProvider(n2d2.database.Numpy(), [224, 224, 3], batch_size=batch)
    dn = DeepNetCell.load_from_ONNX(provider, path, backend="c", generic_ops=True)
    dn.test()
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)

    def run():
        tensor = n2d2.Tensor.from_numpy(x)
        TensorPlaceholder(tensor)
        return dn(tensor)

    return dn, run


def inference_programs(dn):
    """The compiled inference programs `dn` has run (batch chunks: several per batch size)."""
    return [c for key, p in dn._programs.items() if key[0] == "inference" for c in getattr(p, "programs", [p._c])]
