"""Data-parallel training over MPI processes (`mpirun -np N python script.py`).

`current()` is the world the training loop runs in: a one-process `LocalWorld` unless the
environment says this process was started by an MPI launcher with more than one rank (or
`init("mpi")` was called), in which case mpi4py is imported (only then) and an `MPIWorld`
wraps `MPI.COMM_WORLD`.

The rule (see docs/distributed.md): every rank reads a disjoint shard of each global batch of
`N x batch_size` stimuli; the parameter gradients (sums over the local batch) are summed over
the ranks in buckets whose non-blocking all-reduces start during the backward pass
(`n2d2.codegen.programs.TrainingProgram`), and each solver then steps with the global batch
size, so N ranks with batch b train exactly as one process with batch N*b and the same
learning rate. BatchNorm statistics are per rank unless synchronised (`synchronising`,
`n2d2.ops.batchnorm`); with the cuda backend, `for_backend` puts NCCL under the gradients.
A rank that stops answering for `N2D2_MPI_TIMEOUT` seconds (default 60)
makes the waiting ranks exit with an error; a rank that dies is reported by mpirun.
"""
import contextlib
import importlib
import os
import sys
import threading
import time
import warnings

import numpy as np

# Variables that MPI launchers set in every process they start: (size, rank).
LAUNCHER_ENV = (("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),     # Open MPI
                ("PMI_SIZE", "PMI_RANK"),                             # MPICH / Hydra, Intel MPI
                ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"))       # MVAPICH


def launcher_size() -> int:
    """The number of ranks an MPI launcher announced in the environment (1 when none)."""
    for size_var, _ in LAUNCHER_ENV:
        value = os.environ.get(size_var)
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise RuntimeError(f"environment variable {size_var}={value!r}: expected a number of MPI ranks")
    return 1


class LocalWorld:
    """One process: every collective is the identity."""

    rank = 0
    size = 1
    is_root = True

    def allreduce_sum(self, array: np.ndarray, what: str = "") -> np.ndarray:
        return array

    def sum_objects(self, value, what: str = ""):
        return value

    def barrier(self, what: str = ""):
        pass

    def broadcast(self, array: np.ndarray, what: str = "") -> np.ndarray:
        return array

    def check_same(self, facts: dict, what: str = ""):
        pass

    def broadcast_object(self, value, what: str = ""):
        return value

    def iallreduce_sum(self, array: np.ndarray, what: str = ""):
        return None

    def progress(self):
        pass

    def wait_all(self, what: str = ""):
        pass


class _Watchdog:
    """Exits the process when a collective waits longer than `timeout` seconds: the others are
    gone or hung. One daemon thread, armed and disarmed around each collective."""

    def __init__(self, rank: int, size: int, timeout: float, diagnose=None):
        self.rank, self.size, self.timeout = rank, size, timeout
        self._diagnose = diagnose or (lambda: "")
        self._deadline = None
        self._what = ""
        self._lock = threading.Lock()
        threading.Thread(target=self._watch, name="n2d2-mpi-watchdog", daemon=True).start()

    def arm(self, what: str):
        with self._lock:
            self._what, self._deadline = what, time.monotonic() + self.timeout

    def disarm(self):
        with self._lock:
            self._deadline = None

    def _watch(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            with self._lock:
                late = self._deadline is not None and time.monotonic() > self._deadline
                what = self._what
            if late:
                try:
                    detail = self._diagnose()
                except Exception as e:  # the diagnosis must not keep the process alive
                    detail = f" (could not tell which: {e})"
                sys.stderr.write(f"n2d2 rank {self.rank}/{self.size}: {what} got no answer from the other ranks "
                                 f"within {self.timeout:g} s (N2D2_MPI_TIMEOUT){detail}; exiting\n")
                sys.stderr.flush()
                os._exit(3)


def _yield_when_cores_are_shared():
    """Open MPI busy-polls while a rank waits in a collective: right on a dedicated core, but
    when the ranks of a node fill its cores the spinning rank steals the CPU of the rank it is
    waiting for (2 ranks on 2 shared cores ran 2.6x slower, bench/RESULTS.md). Ask it to yield
    then, unless the user chose (`OMPI_MCA_mpi_yield_when_idle`). Read by MPI_Init: call first."""
    local = os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE")
    if local and local.isdigit() and int(local) >= (os.cpu_count() or 1):
        os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")


class MPIWorld:
    """`MPI.COMM_WORLD` through mpi4py, with a watchdog on every collective."""

    def __init__(self):
        _yield_when_cores_are_shared()
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise RuntimeError(f"this process was started by an MPI launcher ({launcher_size()} ranks) but mpi4py "
                               f"cannot be imported ({e}); install n2d2[mpi], or train in one process with "
                               "fit(ban_multi_device=True)") from None
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.is_root = self.rank == 0
        timeout = os.environ.get("N2D2_MPI_TIMEOUT", "60")
        try:
            timeout = float(timeout)
        except ValueError:
            raise RuntimeError(f"N2D2_MPI_TIMEOUT={timeout!r}: expected a number of seconds") from None
        self._sequence = 0
        self._waiting_tag = None    # the tag of the watched collective being waited for
        self._pending_step, self._pending = None, []   # iallreduce_sum's (step, [(request, buffer)])
        self._watchdog = _Watchdog(self.rank, self.size, timeout, self._missing_ranks)

    def _tag(self) -> int:
        return _ARRIVAL_TAG + self._sequence % 30000

    def _missing_ranks(self) -> str:
        """On rank 0: the ranks whose arrival at the current all-reduce was not announced."""
        tag = self._waiting_tag
        if not self.is_root or tag is None:
            return ": a rank died or hangs" + ("" if self.is_root else " (rank 0 names it)")
        missing = [r for r in range(1, self.size) if not self.comm.Iprobe(source=r, tag=tag)]
        if not missing:
            return ": every rank arrived; the all-reduce itself hangs"
        return f": lost rank(s) {', '.join(map(str, missing))} (died or hang)"

    def _announce(self):
        """Start a watched collective step: every rank but 0 announces its arrival to rank 0 (one
        tiny message), so that when the step times out rank 0 names the ranks that never came."""
        self._sequence += 1
        tag = self._tag()
        mark = np.array([self._sequence], dtype=np.int64)
        sent = None if self.is_root else self.comm.Isend(mark, dest=0, tag=tag)
        return tag, mark, sent

    def _collect_arrivals(self, step):
        tag, mark, sent = step
        if self.is_root:
            for r in range(1, self.size):
                self.comm.Recv(mark, source=r, tag=tag)
        else:
            sent.Wait()

    def _watched(self, step, what, wait):
        """Run `wait()` (the blocking part of the collective `step`) under the watchdog."""
        self._waiting_tag = step[0]
        self._watchdog.arm(what)
        try:
            wait()
            self._collect_arrivals(step)
        finally:
            self._watchdog.disarm()
            self._waiting_tag = None

    def allreduce_sum(self, array, what: str = "all-reduce"):
        """Sum `array` (contiguous numpy; a device array goes through the host) over the ranks,
        in place; returns it."""
        if not isinstance(array, np.ndarray):
            host = np.ascontiguousarray(array.get())
            self.allreduce_sum(host, what)
            array.set(host)      # a CuPy array
            return array
        step = self._announce()
        self._watched(step, what, lambda: self.comm.Allreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM))
        return array

    def iallreduce_sum(self, array: np.ndarray, what: str = "all-reduce"):
        """Start summing `array` (contiguous numpy) over the ranks in place, without waiting
        (`MPI_Iallreduce`); `wait_all` ends every one started since the last wait. The ranks must
        start the same reductions in the same order."""
        if self._pending_step is None:
            self._pending_step = self._announce()
        self._pending.append((self.comm.Iallreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM), array))

    def progress(self):
        """Let the started reductions advance (MPI progresses non-blocking collectives inside
        MPI calls: one test between two pieces of computation moves them on)."""
        if self._pending:
            self._MPI.Request.Testall([r for r, _ in self._pending])

    def wait_all(self, what: str = "all-reduce"):
        """Wait for every reduction `iallreduce_sum` started (watched like a blocking one)."""
        if self._pending_step is None:
            return
        requests = [r for r, _ in self._pending]
        step, self._pending_step, self._pending = self._pending_step, None, []
        self._watched(step, what, lambda: self._MPI.Request.Waitall(requests))

    def sum_objects(self, value, what: str = "reduction"):
        """The sum over the ranks of a small Python value (None counts as nothing)."""
        self._watchdog.arm(what)
        try:
            values = [v for v in self.comm.allgather(value) if v is not None]
        finally:
            self._watchdog.disarm()
        if not values:
            return None
        total = values[0]
        for v in values[1:]:
            total = total + v
        return total

    def check_same(self, facts: dict, what: str = "setup"):
        """RuntimeError on every rank when the ranks' `facts` (small JSON-able values) differ:
        ranks that disagree on batch size, data or network would deadlock or train wrongly."""
        self._watchdog.arm(f"{what} check")
        try:
            every = self.comm.allgather(facts)
        finally:
            self._watchdog.disarm()
        for key in facts:
            values = [f.get(key) for f in every]
            if any(v != values[0] for v in values):
                differing = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values) if v != values[0])
                raise RuntimeError(f"data-parallel {what}: the ranks disagree on {key} (rank 0: {values[0]!r}; "
                                   f"{differing}); every rank must run the same network on the same data")

    def barrier(self, what: str = "barrier"):
        self._watchdog.arm(what)
        try:
            self.comm.Barrier()
        finally:
            self._watchdog.disarm()

    def broadcast(self, array: np.ndarray, what: str = "broadcast") -> np.ndarray:
        """Rank 0's `array` (contiguous numpy) on every rank, in place; returns it."""
        self._watchdog.arm(what)
        try:
            self.comm.Bcast(array, root=0)
        finally:
            self._watchdog.disarm()
        return array

    def broadcast_object(self, value, what: str = "broadcast"):
        """Rank 0's small Python `value` on every rank."""
        self._watchdog.arm(what)
        try:
            return self.comm.bcast(value, root=0)
        finally:
            self._watchdog.disarm()


_ARRIVAL_TAG = 7100   # message tags of the all-reduce arrival announcements (7100..37099)
_world = None
_sync = threading.local()   # .world: what synchronised BatchNorm reduces over while a program runs
_nccl_worlds = {}     # id(MPI world) -> its NCCLWorld (one communicator per process)

#: Gradient bucket size of the bucketed all-reduce, in bytes. PyTorch DDP's default is 25 MB
#: for models of ~100 MB of gradients (ResNet-50: 4 buckets); the models this project trains on
#: CPUs have 0.25-9 MB of gradients, so 1 MiB (25x smaller) keeps a few buckets per model while
#: each message stays long enough (1 MiB / 12.5 GB/s = 84 us) to dwarf a link's ~10 us latency.
DEFAULT_BUCKET_BYTES = 1 << 20


def init(kind: str = "auto"):
    """Choose the world: "auto" (MPI when a launcher started more than one rank), "mpi" (always,
    even for one rank) or "local"; returns it. Called by `current()` on first use."""
    global _world
    if kind not in ("auto", "mpi", "local"):
        raise ValueError(f"n2d2.distributed.init: kind {kind!r}, expected 'auto', 'mpi' or 'local'")
    if kind == "mpi" or (kind == "auto" and launcher_size() > 1):
        _world = MPIWorld()
    else:
        _world = LocalWorld()
    return _world


def is_root() -> bool:
    """False only on the ranks other than 0 of a running data-parallel world (they print nothing)."""
    return _world is None or _world.is_root


def current(ban_multi_device: bool = False):
    """The world to train in; with `ban_multi_device`, one process whatever the launcher said."""
    if ban_multi_device:
        if _world is not None and _world.size > 1 or _world is None and launcher_size() > 1:
            warnings.warn("fit(ban_multi_device=True) under an MPI launcher: every process trains the whole model "
                          "alone (no data parallelism)", stacklevel=3)
        return LocalWorld()
    return _world if _world is not None else init()


# -- synchronised BatchNorm ----------------------------------------------------------------------------
@contextlib.contextmanager
def synchronising(world):
    """While the block runs (in this thread), `sync_group()` is `world` (None: no
    synchronisation): what the synchronised BatchNorm nodes of a training program reduce their
    statistics over."""
    previous = getattr(_sync, "world", None)
    _sync.world = world
    try:
        yield
    finally:
        _sync.world = previous


def sync_group():
    """The world of the training program running now in this thread (None: no synchronisation)."""
    return getattr(_sync, "world", None)


# -- gradient buckets ----------------------------------------------------------------------------------
def plan_buckets(nbytes, cap: int) -> list:
    """Group gradients (byte sizes, in the order they become final) into buckets of at most `cap`
    bytes (a larger gradient gets a bucket alone; `cap` <= 0: one bucket); returns lists of
    indices, consecutive, in order."""
    if isinstance(cap, bool) or not isinstance(cap, int):
        raise TypeError(f"gradient bucket size: expected a number of bytes (int), got {cap!r}")
    buckets, size = [], 0
    for k, n in enumerate(nbytes):
        if not buckets or (cap > 0 and size + n > cap and size > 0):
            buckets.append([])
            size = 0
        buckets[-1].append(k)
        size += n
    return buckets


# -- NCCL ----------------------------------------------------------------------------------------------
#: `N2D2_COLLECTIVES`: which library reduces the gradients of a CUDA program over the ranks.
ENGINES = ("auto", "mpi", "nccl")


def _import_nccl():
    """(cupy, cupy.cuda.nccl); ImportError when CuPy or its NCCL binding is missing."""
    cupy = importlib.import_module("cupy")
    nccl = importlib.import_module("cupy.cuda.nccl")
    if not getattr(nccl, "available", True):
        raise ImportError("CuPy was built without NCCL (cupy.cuda.nccl.available is False)")
    return cupy, nccl


class NCCLWorld:
    """Data parallelism on GPUs: NCCL (`cupy.cuda.nccl`) sums device arrays, the MPI world that
    started the processes does everything else (host arrays, objects, broadcasts, checks).

    Rank r uses the GPU `local rank % GPUs of the node`; rank 0 creates the NCCL unique id and
    MPI broadcasts it, then every rank joins the communicator. A device reduction is enqueued on
    CuPy's current stream (after the kernels that produced the gradients, before those that read
    them): `iallreduce_sum` returns at once, `wait_all` and `allreduce_sum` wait for the stream,
    under the MPI world's watchdog."""

    device_arrays = True

    def __init__(self, world, cupy=None, nccl=None):
        if cupy is None or nccl is None:
            cupy, nccl = _import_nccl()
        self.mpi = world
        self.rank, self.size, self.is_root = world.rank, world.size, world.is_root
        self._cp, self._nccl = cupy, nccl
        local = os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK") or os.environ.get("MPI_LOCALRANKID") or \
            os.environ.get("MV2_COMM_WORLD_LOCAL_RANK")
        local = int(local) if local and local.isdigit() else self.rank
        self.device = local % max(1, cupy.cuda.runtime.getDeviceCount())
        cupy.cuda.Device(self.device).use()
        uid = nccl.get_unique_id() if self.is_root else None
        uid = world.broadcast_object(uid, what="NCCL unique id broadcast")
        self.comm = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        self._pending = []

    def _enqueue(self, array, what):
        kind = self._types.get(np.dtype(array.dtype))
        if kind is None:
            raise TypeError(f"{what}: NCCL sums float32 or float64 arrays here, got {array.dtype}")
        stream = self._cp.cuda.get_current_stream()
        self.comm.allReduce(array.data.ptr, array.data.ptr, array.size, kind, self._nccl.NCCL_SUM, stream.ptr)
        return stream

    def _wait(self, stream, what):
        watchdog = getattr(self.mpi, "_watchdog", None)   # an MPIWorld's; none for one process
        if watchdog is None:
            stream.synchronize()
            return
        watchdog.arm(what)
        try:
            stream.synchronize()
        finally:
            watchdog.disarm()

    def allreduce_sum(self, array, what: str = "all-reduce"):
        """Sum over the ranks in place: a device array with NCCL, a numpy array with MPI."""
        if isinstance(array, np.ndarray):
            return self.mpi.allreduce_sum(array, what)
        self._wait(self._enqueue(array, what), what)
        return array

    def iallreduce_sum(self, array, what: str = "all-reduce"):
        if isinstance(array, np.ndarray):
            return self.mpi.iallreduce_sum(array, what)
        self._pending.append((self._enqueue(array, what), array))

    def progress(self):
        self.mpi.progress()

    def wait_all(self, what: str = "all-reduce"):
        pending, self._pending = self._pending, []
        for stream in {id(s): s for s, _ in pending}.values():
            self._wait(stream, what)
        self.mpi.wait_all(what)

    def sum_objects(self, value, what: str = "reduction"):
        return self.mpi.sum_objects(value, what)

    def check_same(self, facts: dict, what: str = "setup"):
        return self.mpi.check_same(facts, what)

    def barrier(self, what: str = "barrier"):
        return self.mpi.barrier(what)

    def broadcast(self, array, what: str = "broadcast"):
        return self.mpi.broadcast(array, what)

    def broadcast_object(self, value, what: str = "broadcast"):
        return self.mpi.broadcast_object(value, what)


def for_backend(world, backend: str, engine: str = None):
    """The world that reduces the gradients of a `backend` program: `world` itself (MPI, host
    buffers), or for the CUDA backend an `NCCLWorld` over it. `engine` (default
    `$N2D2_COLLECTIVES`, else "auto"): "auto" takes NCCL for CUDA when CuPy has it and falls back
    to MPI (through the host) with a warning otherwise; "nccl" demands it (a RuntimeError saying
    why it cannot); "mpi" never uses it."""
    engine = engine or os.environ.get("N2D2_COLLECTIVES") or "auto"
    if engine not in ENGINES:
        raise ValueError(f"N2D2_COLLECTIVES / engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if world.size == 1 or engine == "mpi":
        return world
    if backend != "cuda":
        if engine == "nccl":
            raise RuntimeError(f"N2D2_COLLECTIVES=nccl: NCCL reduces GPU arrays, the '{backend}' backend keeps "
                               "its gradients on the host; use the cuda backend, or N2D2_COLLECTIVES=mpi")
        return world
    if id(world) in _nccl_worlds:
        return _nccl_worlds[id(world)]
    try:
        cupy, nccl = _import_nccl()
    except ImportError as e:
        if engine == "nccl":
            raise RuntimeError(f"N2D2_COLLECTIVES=nccl: cupy.cuda.nccl cannot be imported ({e}); install CuPy "
                               "with NCCL (e.g. cupy-cuda12x and nvidia-nccl-cu12), or N2D2_COLLECTIVES=mpi") \
                from None
        warnings.warn(f"data-parallel CUDA training without NCCL (cupy.cuda.nccl: {e}): the gradients go "
                      "through the host and MPI", stacklevel=2)
        return world
    _nccl_worlds[id(world)] = NCCLWorld(world, cupy, nccl)
    return _nccl_worlds[id(world)]
