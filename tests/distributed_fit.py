"""Run by tests/test_distributed.py under `mpirun -np N` (or alone): trains a small network with
`DeepNetCell.fit` and saves, per rank, its final weights and validation score.

    python tests/distributed_fit.py OUT_DIR BACKEND BATCH EPOCHS [--resume CKPT] [--checkpoint CKPT]
                                    [--stall-rank R --stall-after K] (rank R sleeps after K steps)
                                    [--batchnorm] [--sync-batchnorm] [--bucket-bytes B]
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import n2d2  # noqa: E402
from n2d2.activation import Rectifier  # noqa: E402
from n2d2.cells import BatchNorm2d, Conv, Fc, Pool2d, Sequence, Softmax  # noqa: E402
from n2d2.solver import SGD  # noqa: E402


def database(n_learn=1024, n_valid=100):
    rng = np.random.default_rng(0)
    n = n_learn + n_valid
    ys = [int(y) for y in rng.integers(0, 2, n)]
    xs = [(rng.random((1, 8, 8)) + 0.5 * y * (np.arange(8) < 4)[:, None]).astype(np.float32) for y in ys]
    db = n2d2.database.Numpy()
    db.load(xs[:n_learn], ys[:n_learn], partition="Learn")
    db.load(xs[n_learn:], ys[n_learn:], partition="Validation")
    return db


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("backend")
    p.add_argument("batch", type=int)
    p.add_argument("epochs", type=int)
    p.add_argument("--resume", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--stall-rank", type=int, default=-1)
    p.add_argument("--stall-after", type=int, default=2)
    p.add_argument("--ban", action="store_true")
    p.add_argument("--batchnorm", action="store_true", help="a BatchNorm after the convolution")
    p.add_argument("--sync-batchnorm", action="store_true")
    p.add_argument("--bucket-bytes", type=int, default=None)
    args = p.parse_args()
    n2d2.global_variables.seed = 3
    provider = n2d2.provider.DataProvider(database(), [8, 8, 1], batch_size=args.batch)
    first = [Conv(1, 4, [3, 3], activation=Rectifier())]
    if args.batchnorm:
        first = [Conv(1, 4, [3, 3], no_bias=True), BatchNorm2d(4, activation=Rectifier())]   # BN cancels a bias
    model = Sequence(first + [Pool2d([2, 2], stride_dims=[2, 2]), Fc(36, 8, activation=Rectifier()), Fc(8, 2),
                              Softmax(with_loss=True)])
    model.set_solver(SGD(learning_rate=0.1 if args.batchnorm else 0.3, momentum=0.9, decay=1e-3))
    target = n2d2.target.Score(provider)
    dn = model.to_deepnet_cell(provider, target)
    dn.set_backend(args.backend)
    from n2d2 import distributed

    world = distributed.current(args.ban)
    if world.rank == args.stall_rank:
        steps = [0]
        update = dn.update

        def stalling_update():
            update()
            steps[0] += 1
            if steps[0] == args.stall_after:
                with open(os.path.join(args.out, "stalled"), "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)
        dn.update = stalling_update
    last = {}
    fit_epoch = dn._fit_epoch

    def recording_fit_epoch(*a, **k):   # the weights after the last epoch (fit restores the best)
        stop = fit_epoch(*a, **k)
        last.update(dn._snapshot())
        return stop
    dn._fit_epoch = recording_fit_epoch
    score = dn.fit(args.epochs, resume=args.resume, checkpoint=args.checkpoint, ban_multi_device=args.ban,
                   sync_batchnorm=args.sync_batchnorm, bucket_bytes=args.bucket_bytes)
    weights = {name.replace(".", "__"): p.array for name, p in dn._graph.params.items()}
    np.savez(os.path.join(args.out, f"weights_rank{world.rank}.npz"), **weights)
    np.savez(os.path.join(args.out, f"last_rank{world.rank}.npz"),
             **{name.replace(".", "__"): a for name, a in (last or dn._snapshot()).items()})
    with open(os.path.join(args.out, f"result_rank{world.rank}.json"), "w") as f:
        json.dump({"score": score, "size": world.size, "mpi4py": "mpi4py" in sys.modules,
                   "validation_confusion": target.get_confusion_matrix("Validation").tolist()}, f)


if __name__ == "__main__":
    main()
