"""Building generated C into shared libraries, cached on disk by a hash of source and flags.

The cache lives in `$N2D2_CACHE` (default `~/.cache/n2d2`) and is kept private and verified by
`artifact_cache` (a library is loaded only when it is ours and matches its record). The key also holds the
compiler's version and the host CPU's identity (-march=native code built on another machine
must not be loaded here). `$N2D2_CFLAGS` adds flags after the defaults (e.g.
`-march=x86-64-v3` to build for AVX2 only).
"""
import ctypes
import functools
import os
import platform
import re
import shlex
import shutil
import subprocess

from n2d2.codegen import artifact_cache

# -fno-tree-loop-distribute-patterns: short copy loops stay inline vector code instead of memcpy
# calls. Templates avoid conditional loads inside loops (`c ? a[i] : 0`): GCC 12.2 at -O3 with
# AVX2 / AVX-512 miscompiles some of them (if-converted masked loads in completely unrolled
# loops); they use index ranges or bit masks (n2d2_keep) instead, and the backend tests compare
# every kernel with the reference.
DEFAULT_CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=gnu11", "-ffp-contract=fast",
                  "-fno-math-errno", "-fno-tree-loop-distribute-patterns",
                  "-Wall", "-Wno-unused-function", "-Wno-unused-variable", "-Wno-unused-but-set-variable")


class CompilerError(RuntimeError):
    """The C compiler is missing or rejected generated code (the message holds its output)."""


def cache_dir() -> str:
    """The private folder compiled artefacts are cached in (see `artifact_cache.cache_dir`)."""
    return artifact_cache.cache_dir()


def find_compiler():
    """The C compiler to use (`$CC`, else gcc, else cc), or None."""
    for candidate in (os.environ.get("CC"), "gcc", "cc"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@functools.lru_cache(maxsize=None)
def _compiler_version(cc) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return cc


@functools.lru_cache(maxsize=None)
def _host_id() -> str:
    """The CPU model and feature flags (what -march=native compiles for)."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    lines.append(line.strip())
                if len(lines) >= 3:
                    break
    except OSError:
        pass
    return platform.machine() + "|" + "|".join(lines)


def default_flags() -> tuple:
    """DEFAULT_CFLAGS followed by the flags of `$N2D2_CFLAGS`."""
    return DEFAULT_CFLAGS + tuple(shlex.split(os.environ.get("N2D2_CFLAGS", "")))


def build_jobs() -> int:
    """How many gcc processes a build may run at once: `$N2D2_CC_JOBS`, else the CPUs this
    process may use (at most 4)."""
    value = os.environ.get("N2D2_CC_JOBS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def build_shared_library(source: str, name: str = "n2d2_graph", flags=None, parts: int = 1) -> str:
    """Path of a shared library built from `source` (reused from the cache when present).

    `parts` > 1: the source is compiled once per part with -DN2D2_PART=k, in parallel, and the
    objects linked (see runtime.c.j2)."""
    cc = find_compiler()
    if cc is None:
        raise CompilerError("No C compiler found (set $CC or install gcc); use the numpy backend instead")
    flags = default_flags() if flags is None else tuple(flags)
    # comments (node and graph names) do not change the code: the same network traced under
    # other cell names reuses the library
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)
    inputs = "\0".join([code, " ".join(flags), _compiler_version(cc), _host_id()] + ([f"parts={parts}"] if parts > 1
                                                                                    else []))

    def command(src, out):
        if parts <= 1:
            return [cc, *flags, src, "-o", out, "-lm"]
        objs = [f"{out}.{k}.o" for k in range(parts)]
        compile_ = [[cc, *flags, f"-DN2D2_PART={k}", "-c", src, "-o", obj] for k, obj in enumerate(objs)]
        return [compile_, [[cc, *flags, *objs, "-o", out, "-lm"]]]

    try:
        return artifact_cache.cached_library(source, inputs, name, ".c", command)
    except artifact_cache.BuildFailed as e:
        raise CompilerError(f"{os.path.basename(cc)} failed on {e.source}:\n{e.output[-4000:]}") from None


def load_library(path: str):
    return ctypes.CDLL(path)
