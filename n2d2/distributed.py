"""Data-parallel training over MPI processes (`mpirun -np N python script.py`).

`current()` is the world the training loop runs in: a one-process `LocalWorld` unless the
environment says this process was started by an MPI launcher with more than one rank (or
`init("mpi")` was called), in which case mpi4py is imported (only then) and an `MPIWorld`
wraps `MPI.COMM_WORLD`.

The rule (see docs/distributed.md): every rank reads a disjoint shard of each global batch of
`N x batch_size` stimuli; the parameter gradients (sums over the local batch) are summed over
the ranks in one all-reduce of a flat buffer per step, and each solver then steps with the
global batch size, so N ranks with batch b train exactly as one process with batch N*b and the
same learning rate. A rank that stops answering for `N2D2_MPI_TIMEOUT` seconds (default 60)
makes the waiting ranks exit with an error; a rank that dies is reported by mpirun.
"""
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
        self._announced = False     # inside allreduce_sum: arrivals are announced to rank 0
        self._watchdog = _Watchdog(self.rank, self.size, timeout, self._missing_ranks)

    def _tag(self) -> int:
        return _ARRIVAL_TAG + self._sequence % 30000

    def _missing_ranks(self) -> str:
        """On rank 0: the ranks whose arrival at the current all-reduce was not announced."""
        if not self.is_root or not self._announced:
            return ": a rank died or hangs" + ("" if self.is_root else " (rank 0 names it)")
        tag = self._tag()
        missing = [r for r in range(1, self.size) if not self.comm.Iprobe(source=r, tag=tag)]
        if not missing:
            return ": every rank arrived; the all-reduce itself hangs"
        return f": lost rank(s) {', '.join(map(str, missing))} (died or hang)"

    def allreduce_sum(self, array: np.ndarray, what: str = "all-reduce") -> np.ndarray:
        """Sum `array` (contiguous numpy) over the ranks, in place; returns it.

        Each rank but 0 first announces its arrival to rank 0 (one tiny message), so that when
        the collective times out rank 0 names the ranks that never came."""
        self._sequence += 1
        tag = self._tag()
        mark = np.array([self._sequence], dtype=np.int64)
        sent = None if self.is_root else self.comm.Isend(mark, dest=0, tag=tag)
        self._announced = True
        self._watchdog.arm(what)
        try:
            self.comm.Allreduce(self._MPI.IN_PLACE, array, op=self._MPI.SUM)
            if self.is_root:
                for r in range(1, self.size):
                    self.comm.Recv(mark, source=r, tag=tag)
            else:
                sent.Wait()
        finally:
            self._watchdog.disarm()
            self._announced = False
        return array

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
