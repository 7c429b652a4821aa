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
    assert max(np.abs(w1[k] - wl[k]).max() for k in w1) > 1e-2
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
