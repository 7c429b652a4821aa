"""Data-parallel fit under `mpirun -np 2` (one thread per rank): 2 ranks x batch 64 train as one
process x batch 128, the ranks stay identical, validation is reduced; a lost rank stops the
others with its name; one process never imports mpi4py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from n2d2 import checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tests", "distributed_fit.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", TQDM_DISABLE="1",
           OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
for _var in ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK"):
    ENV.pop(_var, None)
# the Open MPI wheel installs mpirun next to the interpreter (a virtualenv's bin/, maybe not on PATH)
MPIRUN = next((m for m in (os.path.join(os.path.dirname(sys.executable), "mpirun"), shutil.which("mpirun"))
               if m and os.access(m, os.X_OK)), None)

needs_mpi = pytest.mark.skipif(MPIRUN is None or subprocess.run([sys.executable, "-c", "import mpi4py"]).returncode,
                               reason="the mpi extra (mpi4py + an MPI with mpirun) is not installed")


def _cmd(np_, out, *args):
    run = [sys.executable, SCRIPT, str(out), *map(str, args)]
    return ([MPIRUN, "--oversubscribe", "-np", str(np_)] + run) if np_ else run


def _train(tmp_path, name, np_, *args, timeout=300, env=None):
    out = tmp_path / name
    out.mkdir()
    proc = subprocess.run(_cmd(np_, out, *args), cwd=out, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc


def _result(out, rank=0):
    weights = dict(np.load(out / f"weights_rank{rank}.npz"))
    return weights, json.loads((out / f"result_rank{rank}.json").read_text())


def test_one_process_does_not_import_mpi4py(tmp_path):
    out, _ = _train(tmp_path, "one", 0, "numpy", 128, 1)
    assert _result(out)[1] == {**_result(out)[1], "size": 1, "mpi4py": False}


BN = ("--batchnorm", "--sync-batchnorm")


@needs_mpi
@pytest.mark.parametrize("backend,ranks,extra", [("numpy", 2, ()), ("c", 2, ()), ("c", 3, ()), ("numpy", 2, BN),
                                                 ("c", 2, BN + ("--bucket-bytes", 600))])
def test_ranks_train_as_one_process_with_the_global_batch(tmp_path, backend, ranks, extra):
    """ranks x batch 64 = 1 process x batch 64*ranks (with 3 ranks the last global batch of the
    1024 learn images leaves rank 2 an empty slot: a batch of invalid slots); with BatchNorm when
    it is synchronised (its running statistics included), and with several gradient buckets."""
    one, _ = _train(tmp_path, "one", 0, backend, 64 * ranks, 4, *extra)
    many, _ = _train(tmp_path, "many", ranks, backend, 64, 4, *extra)
    _train(tmp_path, "init", 0, backend, 64 * ranks, 0, *extra)
    w0 = _result(tmp_path / "init")[0]
    r1 = _result(one)[1]
    results = [_result(many, r)[1] for r in range(ranks)]
    assert all(r["size"] == ranks and r["mpi4py"] for r in results)
    for kind in ("last", "weights"):      # after the 4 epochs; the best epoch's (restored by fit)
        w1 = dict(np.load(one / f"{kind}_rank0.npz"))
        wr = [dict(np.load(many / f"{kind}_rank{r}.npz")) for r in range(ranks)]
        assert len(w1) == (9 if extra else 6)
        for name in w1:
            assert all(np.array_equal(wr[0][name], w[name]) for w in wr[1:]), name   # identical on every rank
            moved = np.abs(w1[name] - w0[name]).max()
            assert moved > 1e-3, name                                             # training did something
            assert np.abs(wr[0][name] - w1[name]).max() < 1e-4 * moved, (kind, name)  # summation order only
    # validation sharded and reduced: every one of the 100 images counted once, on every rank
    assert all(r["validation_confusion"] == r1["validation_confusion"] for r in results)
    assert np.sum(r1["validation_confusion"]) == 100 and results[0]["score"] == r1["score"] > 0.9
    assert sorted(os.listdir(many)) == sorted(os.listdir(one) + [f"{kind}_rank{r}.{ext}" for r in range(1, ranks)
                                                                 for kind, ext in (("weights", "npz"),
                                                                                   ("last", "npz"),
                                                                                   ("result", "json"))])


@needs_mpi
def test_per_rank_batchnorm_differs_and_buckets_equal_one_flat_all_reduce(tmp_path):
    """Without synchronisation, 2 x 64 with BatchNorm is not 1 x 128 (what the test above would
    catch); bucketed all-reduces (several buckets, started during the backward) give bit for
    bit the weights of one flat all-reduce after the backward."""
    one, _ = _train(tmp_path, "one", 0, "numpy", 128, 1, "--batchnorm")
    local, _ = _train(tmp_path, "local", 2, "numpy", 64, 1, "--batchnorm")
    w1, wl = _result(one)[0], _result(local)[0]
    assert max(np.abs(w1[k] - wl[k]).max() for k in w1) > 1e-3     # the synchronised runs agree to ~1e-7
    flat, _ = _train(tmp_path, "flat", 2, "numpy", 64, 1, "--bucket-bytes", 0)
    buckets, _ = _train(tmp_path, "buckets", 2, "numpy", 64, 1, "--bucket-bytes", 100)
    wf, wb = _result(flat)[0], _result(buckets)[0]
    assert all(np.array_equal(wf[k], wb[k]) for k in wf)


@needs_mpi
def test_ban_multi_device_trains_in_each_process_alone(tmp_path):
    out, proc = _train(tmp_path, "ban", 2, "numpy", 128, 1, "--ban")
    assert "ban_multi_device=True" in proc.stderr
    one, _ = _train(tmp_path, "one", 0, "numpy", 128, 1)
    w, r = _result(out)
    assert r["size"] == 1 and all(np.array_equal(w[k], v) for k, v in _result(one)[0].items())


def _start_stalling(tmp_path, env):
    out = tmp_path / "run"
    out.mkdir()
    proc = subprocess.Popen(_cmd(2, out, "numpy", 64, 3, "--checkpoint", out / "ck.npz", "--stall-rank", 1,
                                 "--stall-after", 10), cwd=out, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 200
    while not (out / "stalled").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (out / "stalled").exists(), proc.communicate()[0]
    return out, proc


@needs_mpi
def test_a_killed_rank_stops_the_others_and_a_different_rank_count_resumes(tmp_path):
    out, proc = _start_stalling(tmp_path, ENV)     # rank 1 stalls at its 10th step (epoch 2 of 3)
    os.kill(int((out / "stalled").read_text()), signal.SIGKILL)
    start = time.monotonic()
    text, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.monotonic() - start < 60
    assert "rank 1" in text, text
    meta, _ = checkpoint.load(str(out / "ck.npz"))   # intact, from the last finished epoch
    assert meta["epoch"] == 1
    # resume with one process (batch 128: the same global batch) to the uninterrupted result
    resumed, _ = _train(tmp_path, "resumed", 0, "numpy", 128, 3, "--resume", out / "ck.npz")
    straight, _ = _train(tmp_path, "straight", 0, "numpy", 128, 3)
    w, s = _result(resumed)[0], _result(straight)[0]
    assert all(np.abs(w[k] - s[k]).max() < 1e-6 for k in s)


@needs_mpi
def test_a_hung_rank_is_named_by_rank_0_within_the_timeout(tmp_path):
    out, proc = _start_stalling(tmp_path, dict(ENV, N2D2_MPI_TIMEOUT="5"))
    start = time.monotonic()
    text, _ = proc.communicate(timeout=90)
    assert proc.returncode != 0 and time.monotonic() - start < 30
    assert "n2d2 rank 0/2: gradient all-reduce" in text and "lost rank(s) 1" in text, text


@needs_mpi
def test_n2d2_train_under_mpirun_rank_0_alone_prints_and_writes(tmp_path):
    proc = subprocess.run([MPIRUN, "--oversubscribe", "-np", "2", sys.executable, "-m", "n2d2", "train",
                           "--epochs", "2", "--limit-train", "640", "--limit-test", "128", "--batch-size", "32",
                           "--backend", "numpy", "--no-progress", "--output", str(tmp_path / "run")],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "2 MPI ranks (global batch 64)" in out
    assert out.count("Test accuracy:") == 1 and out.count("Epoch 1/2:") == 1
    assert out.count("Learning rate after 9(576) iteration(s)") == 1    # 576 learn images, global batch 64
    assert "Test: 128 stimuli" in out and "(576 img" not in out
    assert os.listdir(tmp_path) == ["run"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_images"] == 128 and summary["epochs"][0]["learn_images"] == 576


@needs_mpi
def test_n2d2_train_with_sync_batchnorm_under_mpirun(tmp_path):
    """`n2d2 train --sync-batchnorm` (LeNet with 3 BatchNorms, dropout) on the C backend trains
    and tests on 2 ranks; the option is reported and saved with the run's options (--resume)."""
    proc = subprocess.run([MPIRUN, "--oversubscribe", "-np", "2", sys.executable, "-m", "n2d2", "train",
                           "--epochs", "1", "--limit-train", "320", "--limit-test", "64", "--batch-size", "32",
                           "--backend", "c", "--no-progress", "--sync-batchnorm", "--output", str(tmp_path / "run")],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 MPI ranks (global batch 64, synchronised BatchNorm)" in proc.stdout
    assert json.loads((tmp_path / "run" / "arguments.json").read_text())["sync_batchnorm"] is True
    assert proc.stdout.count("Test accuracy:") == 1


@pytest.mark.parametrize("size,n,batch", [(2, 512, 64), (3, 100, 16), (4, 10, 4)])
def test_shards_are_disjoint_cover_the_epoch_and_have_equal_step_counts(size, n, batch):
    import n2d2

    rng = np.random.default_rng(0)
    db = n2d2.database.Numpy()
    db.load([rng.random((1, 2, 2)).astype(np.float32) for _ in range(n)], list(range(n)), partition="Learn")
    seen, steps = [], []
    for rank in range(size):
        n2d2.global_variables.seed = 7           # every rank draws the same order
        provider = n2d2.provider.DataProvider(db, [2, 2, 1], batch_size=batch)
        provider.set_partition("Learn")
        labels = []
        for _ in provider.prefetch_batches(shuffle=True, shard=(rank, size)):
            got = provider.get_labels().to_numpy().reshape(-1)
            labels.append(got[got >= 0])
        steps.append(len(labels))
        seen.append(np.concatenate(labels))
    everything = np.concatenate(seen)
    assert sorted(everything.tolist()) == list(range(n))        # disjoint, and the whole epoch
    assert len(set(steps)) == 1 and steps[0] == -(-n // (size * batch))
    n2d2.global_variables.seed = 7
    provider = n2d2.provider.DataProvider(db, [2, 2, 1], batch_size=batch * size)
    provider.set_partition("Learn")
    batches = provider.prefetch_batches(shuffle=True)
    next(batches)                                               # the first global batch of one process
    whole = provider.get_labels().to_numpy().reshape(-1)
    batches.close()
    assert sorted(whole[whole >= 0].tolist()) == sorted(np.concatenate([s[:batch] for s in seen]).tolist())


def test_open_mpi_yields_only_when_the_ranks_fill_the_cores(monkeypatch):
    from n2d2 import distributed

    monkeypatch.delenv("OMPI_MCA_mpi_yield_when_idle", raising=False)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", str(os.cpu_count() + 1))
    distributed._yield_when_cores_are_shared()
    assert os.environ["OMPI_MCA_mpi_yield_when_idle"] == "1"
    monkeypatch.setenv("OMPI_MCA_mpi_yield_when_idle", "0")        # the user's choice stays
    distributed._yield_when_cores_are_shared()
    assert os.environ["OMPI_MCA_mpi_yield_when_idle"] == "0"
    monkeypatch.delenv("OMPI_MCA_mpi_yield_when_idle")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "1")
    if os.cpu_count() > 1:
        distributed._yield_when_cores_are_shared()
        assert "OMPI_MCA_mpi_yield_when_idle" not in os.environ


@needs_mpi
def test_n2d2_run_ini_under_mpirun_shards_and_reduces(tmp_path):
    from tests.test_ini_runner import tiny_model

    model = tiny_model(tmp_path)
    before = sorted(os.listdir(tmp_path))
    proc = subprocess.run([MPIRUN, "--oversubscribe", "-np", "2", sys.executable, "-m", "n2d2", "run", model,
                           "-learn", "144", "-log", "72", "-test", "-seed", "3", "-backend", "numpy",
                           "-o", str(tmp_path / "out")],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count("Output folder:") == 1 and out.count("Validation Sensitivity:") == 2
    assert out.count("Learn: 72 stimuli") == 1 and "Learn: 144 stimuli" in out
    assert out.count("Test success rate:") == 1 and "(12 stimuli)" in out      # both shards counted
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["out"])
    assert (tmp_path / "out" / "weights_validation" / "fc_weights.syntxt").is_file()


@needs_mpi
def test_ranks_with_different_batch_sizes_fail_at_once_naming_the_difference(tmp_path):
    run = [sys.executable, SCRIPT, str(tmp_path), "numpy"]
    proc = subprocess.run([MPIRUN, "--oversubscribe", "-np", "1", *run, "64", "1", ":", "-np", "1", *run, "32", "1"],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "the ranks disagree on batch size (rank 0: 64; rank 1: 32)" in proc.stderr, proc.stderr


# -- in one process: ranks as threads ---------------------------------------------------------------------
class ThreadWorld:
    """Rank `rank` of `size` ranks run as threads of this process, with the collectives the
    training program and the synchronised BatchNorm use (sums in rank order, as MPI for 2 ranks)."""

    def __init__(self, rank, shared):
        self.rank, self.size, self.is_root = rank, len(shared["slots"]), rank == 0
        self._shared, self._pending, self.started = shared, [], []

    def allreduce_sum(self, array, what=""):
        shared = self._shared
        shared["slots"][self.rank] = np.array(array, copy=True)
        shared["barrier"].wait()
        total = shared["slots"][0].copy()
        for value in shared["slots"][1:]:
            total += value
        shared["barrier"].wait()
        array[...] = total
        return array

    def iallreduce_sum(self, array, what=""):
        self._pending.append(array)
        self.started.append(array.size)

    def progress(self):
        pass

    def wait_all(self, what=""):
        pending, self._pending = self._pending, []
        for array in pending:
            self.allreduce_sum(array, what)


def on_ranks(size, fn):
    """[fn(world) for each rank], the ranks running at once as threads."""
    import threading

    shared = {"slots": [None] * size, "barrier": threading.Barrier(size, timeout=60)}
    results, errors = [None] * size, []

    def run(rank):
        try:
            results[rank] = fn(ThreadWorld(rank, shared))
        except BaseException as e:   # noqa: BLE001 (re-raised in the test's thread)
            errors.append(e)
            shared["barrier"].abort()
    threads = [threading.Thread(target=run, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_synchronised_batchnorm_is_the_batchnorm_of_the_global_batch():
    """2 ranks x 3 images through the synchronised op = 1 x 6 through the plain one (outputs,
    input and parameter gradients summed, running statistics), in float64; its input gradient
    matches central differences of the 2-rank forward."""
    from n2d2 import distributed
    from n2d2.ir import ops as op_registry
    from tests.conftest import numeric_grad

    bn = op_registry.get("BatchNorm")
    rng = np.random.default_rng(5)
    x = rng.normal(1.0, 2.0, (6, 3, 2, 2))
    dy = rng.normal(size=x.shape)
    scales, biases = rng.normal(size=3), rng.normal(size=3)
    attrs = {"epsilon": 1e-5, "momentum": 0.1, "unbiased": True}

    def params():
        return {"scales": scales.copy(), "biases": biases.copy(), "means": np.zeros(3), "variances": np.ones(3)}

    whole = params()
    y, saved = bn.forward(attrs, [x], whole, training=True)
    (dx,), grads = bn.backward(attrs, saved, [dy], [True], whole)

    def rank_pass(world, data=x, backward=True):
        part = slice(3 * world.rank, 3 * world.rank + 3)
        p = params()
        with distributed.synchronising(world):
            ys, ctx = bn.forward(dict(attrs, synchronised=True), [data[part]], p, training=True)
            if not backward:
                return ys[0]
            return ys[0], bn.backward(dict(attrs, synchronised=True), ctx, [dy[part]], [True], p), p
    ranks = on_ranks(2, rank_pass)
    assert np.allclose(np.concatenate([r[0] for r in ranks]), y[0], rtol=0, atol=1e-12)
    assert np.allclose(np.concatenate([r[1][0][0] for r in ranks]), dx, rtol=0, atol=1e-12)
    for role in ("scales", "biases"):
        assert np.allclose(ranks[0][1][1][role] + ranks[1][1][1][role], grads[role], atol=1e-12)
    for role in ("means", "variances"):
        assert all(np.allclose(r[2][role], whole[role], rtol=0, atol=1e-12) for r in ranks)
    plain = on_ranks(2, lambda world: bn.forward(attrs, [x[3 * world.rank:3 * world.rank + 3]], params(), True)[0])
    assert np.abs(np.concatenate([p[0] for p in plain]) - y[0]).max() > 1e-2    # per rank: another result

    def loss():
        return sum(float((yr * dy[3 * r:3 * r + 3]).sum())
                   for r, yr in enumerate(on_ranks(2, lambda w: rank_pass(w, x, backward=False))))
    assert np.allclose(numeric_grad(loss, x), np.concatenate([r[1][0][0] for r in ranks]), rtol=1e-5, atol=1e-7)


def _small_network(batchnorm=True, batch=8):
    import n2d2
    from n2d2.activation import Rectifier
    from n2d2.cells import BatchNorm2d, Conv, Fc, Pool2d, Sequence, Softmax

    n2d2.global_variables.seed = 4
    rng = np.random.default_rng(1)
    db = n2d2.database.Numpy()
    db.load([rng.random((2, 6, 6)).astype(np.float32) for _ in range(16)], [k % 3 for k in range(16)],
            partition="Learn")
    provider = n2d2.provider.DataProvider(db, [6, 6, 2], batch_size=batch)
    cells = [Conv(2, 4, [3, 3], no_bias=True), BatchNorm2d(4, activation=Rectifier())] if batchnorm else \
        [Conv(2, 4, [3, 3], activation=Rectifier())]
    model = Sequence(cells + [Pool2d([2, 2], stride_dims=[2, 2]), Fc(16, 6, activation=Rectifier()), Fc(6, 3),
                              Softmax(with_loss=True)])
    return model.to_deepnet_cell(provider, n2d2.target.Score(provider))


def test_synchronised_batchnorm_runs_on_the_reference_between_c_kernels():
    from n2d2.codegen import backends

    dn = _small_network()
    for synchronised in (False, True):
        tg = dn._graph_for("training", 8, synchronised)
        bn = [n for n in tg.graph.nodes() if tg.graph.op(n) == "BatchNorm"]
        phases = [tg.forward_nodes, list(tg.grad_inputs.values()) + tg.backward_nodes, tg.update_nodes]
        module = backends.get("c").lower(tg.graph, phases, training=True)
        assert len(bn) == 1 and module.where[bn[0]] == ("numpy" if synchronised else "c")
        assert "all-reduced over the ranks" in module.fallback_reasons.get(bn[0], "all-reduced over the ranks")
        assert sum(w == "c" for w in module.where.values()) >= 6


@pytest.mark.parametrize("backend", ["numpy", "c", "cuda"])
def test_a_residual_network_with_synchronised_batchnorm_on_two_ranks_computes_the_global_batch(backend):
    """Conv-BN-ReLU, then a ResNet building block with a projection shortcut (4 BatchNorms, one
    feeding the residual sum), on 2 ranks (threads) x 4 images with small gradient buckets: the
    outputs and the all-reduced gradients are those of 1 x 8 (the C and CUDA programs run
    everything but the BatchNorms compiled; CUDA on the host emulator)."""
    import n2d2
    from n2d2.cells import Fc, Sequence, Softmax
    from n2d2.codegen.programs import TrainingProgram, gradient_tensors
    from n2d2.models.resnet import BuildingBlock, _bn, _conv

    n2d2.global_variables.seed = 4
    rng = np.random.default_rng(1)
    db = n2d2.database.Numpy()
    db.load([rng.random((2, 6, 6)).astype(np.float32) for _ in range(8)], [k % 3 for k in range(8)],
            partition="Learn")
    provider = n2d2.provider.DataProvider(db, [6, 6, 2], batch_size=8)
    model = Sequence([_conv(2, 4, 3, 1), _bn(4, True), BuildingBlock(4, 8, 2), Fc(8 * 3 * 3, 3),
                      Softmax(with_loss=True)])
    dn = model.to_deepnet_cell(provider, n2d2.target.Score(provider))
    x = rng.random((8, 2, 6, 6)).astype(np.float32)
    seed = rng.normal(size=(8, 3)).astype(np.float32)
    tg = dn._graph_for("training", 8)
    options = {}
    if backend == "cuda":
        import threading

        from n2d2.codegen.cuda_backend import HostEmulator

        class OneLaunchAtATime(HostEmulator):
            """The emulator's kernels keep their state in the library's globals: the two ranks
            (threads of one process) launch in turn (a launch never waits for the other rank)."""
            lock = threading.Lock()

            def launch(self, *args, **kwargs):
                with self.lock:
                    return super().launch(*args, **kwargs)
        options = {"device": OneLaunchAtATime()}
    whole = TrainingProgram(tg, "numpy" if backend == "cuda" else backend)
    out = whole.forward({tg.graph.inputs[0]: x})[0]
    whole.backward({tg.graph.outputs[0]: seed.reshape(out.shape)})
    expected = [np.array(whole._c.view(t)) for t in gradient_tensors(tg)]
    synchronised = dn._graph_for("training", 4, True)

    def rank(world):
        part = slice(4 * world.rank, 4 * world.rank + 4)
        world.device_arrays = backend == "cuda"      # buckets packed "on the device", as with NCCL
        program = TrainingProgram(synchronised, backend, world, bucket_bytes=200, **options)
        y = program.forward({synchronised.graph.inputs[0]: x[part]})[0]
        program.backward({synchronised.graph.outputs[0]: seed[part].reshape(y.shape)})
        program._finish_reduction()
        where = {program._c.where[n] for n in synchronised.graph.nodes() if synchronised.graph.op(n) == "BatchNorm"}
        return y, [np.array(program._c.view(t)) for t in gradient_tensors(synchronised)], where
    ranks = on_ranks(2, rank)
    assert np.abs(np.concatenate([r[0] for r in ranks]) - out).max() < 1e-6
    assert all(r[2] == {"numpy"} for r in ranks)
    for k, e in enumerate(expected):
        assert all(np.abs(r[1][k] - e).max() <= 1e-5 * np.abs(e).max() for r in ranks), k


def test_gradient_buckets_follow_the_backward_and_cut_it_where_they_are_final():
    from n2d2 import distributed
    from n2d2.codegen.programs import bucketed_backward, gradient_tensors

    assert distributed.plan_buckets([4, 4, 4, 20, 4], 8) == [[0, 1], [2], [3], [4]]
    assert distributed.plan_buckets([4, 4, 4], 0) == [[0, 1, 2]]
    with pytest.raises(TypeError, match="number of bytes"):
        distributed.plan_buckets([4], 1.5)
    tg = _small_network(batchnorm=False)._graph_for("training", 8)
    backward = list(tg.grad_inputs.values()) + tg.backward_nodes
    every = gradient_tensors(tg)
    for cap, count in ((0, 1), (1, len(every)), (700, None)):
        segments, starts = bucketed_backward(tg, backward, cap)
        assert [n for s in segments for n in s] == backward and all(segments)
        buckets = [b for s in starts for b in s]
        assert sorted(t for b in buckets for t in b) == sorted(every)
        assert count is None or len(buckets) == count
        done = set()
        for segment, started in zip(segments, starts):
            done.update(segment)
            assert all(t[0] in done for b in started for t in b)                # final when started
        first = [segments.index(next(s for s in segments if b[0][0] in s)) for b in buckets]
        assert first == sorted(first)                                           # reverse layer order


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_bucketed_reduction_sums_every_gradient_of_the_ranks(backend):
    """Two ranks (threads) run the training program with small buckets: after the reduction each
    holds, in place of every gradient, the sum of the two ranks' local gradients exactly."""
    from n2d2.codegen.programs import TrainingProgram, gradient_tensors

    dn = _small_network(batchnorm=False, batch=4)
    tg = dn._graph_for("training", 4)
    rng = np.random.default_rng(2)
    xs = [rng.random((4, 2, 6, 6)).astype(np.float32) for _ in range(2)]
    seeds = [rng.normal(size=(4, 3, 1, 1)).astype(np.float32) for _ in range(2)]
    tensors = gradient_tensors(tg)

    def local(rank, world=None):
        program = TrainingProgram(tg, backend, world, bucket_bytes=256)
        out = program.forward({tg.graph.inputs[0]: xs[rank]})[0]
        program.backward({tg.graph.outputs[0]: seeds[rank].reshape(out.shape)})
        if world is not None:
            assert len(world.started) == len(program.buckets) > 2    # started during the backward
            program._finish_reduction()
        return [np.array(program._c.view(t)) for t in tensors], program
    alone = [local(r)[0] for r in range(2)]
    reduced = on_ranks(2, lambda world: local(world.rank, world))
    for k, t in enumerate(tensors):
        expected = alone[0][k] + alone[1][k]
        assert np.abs(expected).max() > 0, t
        assert all(np.array_equal(r[0][k], expected) for r in reduced), t
    assert len(reduced[0][1]._c.phases) == len(reduced[0][1]._backward_phases) + 2 > 4


class _HostWorld:
    """An MPI world as NCCLWorld sees it (rank 1 of 2): records what goes through it."""

    rank, size, is_root = 1, 2, False

    def __init__(self):
        self.calls = []
        self._watchdog = type("Watchdog", (), {"arm": lambda s, what: None, "disarm": lambda s: None})()

    def broadcast_object(self, value, what=""):
        self.calls.append(("broadcast_object", value, what))
        return ("uid of rank 0",)

    def allreduce_sum(self, array, what=""):
        self.calls.append(("allreduce_sum", array.dtype.name))
        return array

    def wait_all(self, what=""):
        self.calls.append(("wait_all", what))


def test_nccl_is_chosen_for_cuda_only_and_without_cupy_falls_back_to_mpi_or_says_why(monkeypatch):
    from n2d2 import distributed

    def missing():
        raise ImportError("No module named 'cupy'")
    monkeypatch.setattr(distributed, "_import_nccl", missing)
    monkeypatch.setattr(distributed, "_nccl_worlds", {})
    monkeypatch.delenv("N2D2_COLLECTIVES", raising=False)
    world = _HostWorld()
    assert distributed.for_backend(world, "c") is world
    assert distributed.for_backend(world, "cuda", "mpi") is world
    local = distributed.LocalWorld()
    assert distributed.for_backend(local, "cuda", "nccl") is local        # one process: nothing to reduce
    with pytest.warns(UserWarning, match="without NCCL .*No module named 'cupy'.* through the host and MPI"):
        assert distributed.for_backend(world, "cuda") is world
    with pytest.raises(RuntimeError, match="N2D2_COLLECTIVES=nccl: cupy.cuda.nccl cannot be imported"):
        distributed.for_backend(world, "cuda", "nccl")
    monkeypatch.setenv("N2D2_COLLECTIVES", "nccl")
    with pytest.raises(RuntimeError, match="the 'c' backend keeps its gradients on the host"):
        distributed.for_backend(world, "c")
    monkeypatch.setenv("N2D2_COLLECTIVES", "gloo")
    with pytest.raises(ValueError, match="'gloo': expected one of auto, mpi, nccl"):
        distributed.for_backend(world, "cuda")


def test_nccl_world_joins_rank_0s_communicator_and_sums_device_arrays_on_the_stream(monkeypatch):
    """With stand-ins for CuPy and its NCCL binding (no GPU here): the device is the local rank's,
    the unique id is rank 0's (broadcast by MPI), device arrays go to ncclAllReduce on the current
    stream (waited for by allreduce_sum and wait_all, not by iallreduce_sum), host arrays to MPI."""
    from types import SimpleNamespace

    from n2d2 import distributed

    log = []
    stream = SimpleNamespace(ptr=77, synchronize=lambda: log.append("synchronize"))
    cupy = SimpleNamespace(cuda=SimpleNamespace(
        runtime=SimpleNamespace(getDeviceCount=lambda: 2), get_current_stream=lambda: stream,
        Device=lambda d: SimpleNamespace(use=lambda: log.append(("device", d)))))

    class Communicator:
        def __init__(self, size, uid, rank):
            log.append(("communicator", size, uid, rank))

        def allReduce(self, *args):
            log.append(("allReduce",) + args)
    nccl = SimpleNamespace(get_unique_id=lambda: pytest.fail("only rank 0 creates the id"),
                           NcclCommunicator=Communicator, NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0)
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "3")
    host = _HostWorld()
    world = distributed.NCCLWorld(host, cupy, nccl)
    assert log == [("device", 1), ("communicator", 2, ("uid of rank 0",), 1)] and world.rank == 1
    assert host.calls == [("broadcast_object", None, "NCCL unique id broadcast")]
    device_array = SimpleNamespace(dtype=np.dtype(np.float32), size=10, data=SimpleNamespace(ptr=1234))
    del log[:]
    assert world.allreduce_sum(device_array) is device_array
    assert log == [("allReduce", 1234, 1234, 10, 7, 0, 77), "synchronize"]
    del log[:]
    world.iallreduce_sum(device_array)
    assert log == [("allReduce", 1234, 1234, 10, 7, 0, 77)]
    world.wait_all("gradients")
    assert log[-1] == "synchronize" and host.calls[-1] == ("wait_all", "gradients")
    world.allreduce_sum(np.zeros(3))
    assert host.calls[-1] == ("allreduce_sum", "float64")
    with pytest.raises(TypeError, match="float32 or float64"):
        world.allreduce_sum(SimpleNamespace(dtype=np.dtype(np.int32), size=1, data=SimpleNamespace(ptr=0)))


@needs_mpi
def test_ranks_that_disagree_on_synchronised_batchnorm_fail_at_once(tmp_path):
    run = [sys.executable, SCRIPT, str(tmp_path), "numpy", "64", "1", "--batchnorm"]
    proc = subprocess.run([MPIRUN, "--oversubscribe", "-np", "1", *run, "--sync-batchnorm", ":", "-np", "1", *run],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "the ranks disagree on synchronised BatchNorm (rank 0: True; rank 1: False)" in proc.stderr, proc.stderr
