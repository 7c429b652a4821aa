"""The on-disk cache of compiled libraries, kept so that nobody else's code gets loaded from it.

A cached library is loaded into the process (`ctypes.CDLL` runs its constructors), so the cache is
trusted only when nobody but us can write to it, and an entry only when it is exactly what we built:

* the folder (`$N2D2_CACHE`, default `~/.cache/n2d2`) is ours, mode 0700 (tightened when it is
  more open), a real folder whose parents nobody else can swap; otherwise (owned by someone else,
  unwritable, not a folder) a private temporary folder is used for this process, with a warning;
* every library has a record `<key>.json` (written after the library: fsync, atomic rename) with
  the SHA-256 of the inputs it was built from and the size and SHA-256 of the library; an entry
  is loaded only when both files are ours, not writable by others, and the library matches the
  record; anything else is rebuilt (never loaded);
* a build runs in a private temporary folder inside the cache (source written there, compiler run
  there), the library is fsynced and renamed in; the temporary folder goes on every path;
* nothing in the cache is deleted or rewritten in place (a library another process has loaded
  stays as it is: a rebuild renames a new file over the name), so that readers never see a
  partial file;
* a build holds a lock (`flock` on `.locks/<key>`, one per key, never deleted): processes and
  threads that want the same entry meanwhile wait for it and load it instead of compiling it
  again; where locks are unsupported they build it too, which is still correct.

Libraries are named `<prefix>_<key>_<content hash>.so` (prefix at most 32 characters), so that two
processes building the same key at once each install a complete file and the record that wins
names a library that matches it.
"""
import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import warnings

from n2d2.utils import file_digest

RECORD_FORMAT = 1
PREFIX_CHARS = 32
_STALE_BUILD_S = 24 * 3600

_fallbacks = {}        # configured cache path -> private temporary folder used instead
_verified = {}         # library path -> (dev, inode, size, mtime_ns, ctime_ns, sha256) checked in this process


class CacheWarning(UserWarning):
    """The configured compile cache cannot be trusted or written; a private temporary one is used."""


class BuildFailed(Exception):
    """The compiler rejected a source; `source` is a copy of it kept in the cache for inspection."""

    def __init__(self, source: str, output: str):
        super().__init__(f"build failed on {source}")
        self.source = source
        self.output = output


def configured_cache_path() -> str:
    return os.environ.get("N2D2_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "n2d2")


def cache_dir() -> str:
    """The folder to cache compiled artefacts in: the configured one when it is private to us,
    else (with a `CacheWarning`, once per process) a private temporary folder."""
    configured = configured_cache_path()
    fallback = _fallbacks.get(configured)
    if fallback is not None and os.path.isdir(fallback):
        return fallback
    problem = _make_private(configured)
    if problem is None:
        return os.path.realpath(configured)
    fallback = tempfile.mkdtemp(prefix="n2d2-cache-")
    atexit.register(shutil.rmtree, fallback, True)
    _fallbacks[configured] = fallback
    warnings.warn(f"n2d2 compile cache {configured!r} is not used: {problem}; compiled code is cached in the "
                  f"private temporary folder {fallback} for this process only (set $N2D2_CACHE to a folder of "
                  "yours)", CacheWarning, stacklevel=3)
    return fallback


def _make_private(path: str):
    """Create `path` (0700) or tighten it to 0700; None when it is safe to use, else why not."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        return f"it cannot be created ({e.strerror or e})"
    real = os.path.realpath(path)
    if os.path.islink(path) and os.lstat(path).st_uid not in (os.geteuid(), 0):
        return f"it is a symbolic link owned by uid {os.lstat(path).st_uid}"
    try:
        st = os.stat(real)
    except OSError as e:
        return f"it cannot be examined ({e.strerror or e})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if st.st_uid != os.geteuid():
        return f"it is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    parent = _unsafe_parent(real)
    if parent is not None:
        return parent
    if st.st_mode & 0o077:
        try:
            os.chmod(real, stat.S_IMODE(st.st_mode) & 0o700)
        except OSError as e:
            return f"it is open to other users and cannot be made private ({e.strerror or e})"
    if not os.access(real, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


def _unsafe_parent(real: str):
    """Why a parent folder of `real` would let another user replace it (None when none does)."""
    parent = os.path.dirname(real)
    while True:
        try:
            st = os.stat(parent)
        except OSError as e:
            return f"its parent folder {parent} cannot be examined ({e.strerror or e})"
        if st.st_uid not in (os.geteuid(), 0):
            return f"its parent folder {parent} is owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"its parent folder {parent} is writable by other users"
        up = os.path.dirname(parent)
        if up == parent:
            return None
        parent = up


# -- entries -----------------------------------------------------------------------------------------
def _sha256_file(path: str) -> str:
    return file_digest(path, "sha256")


def _ours(st) -> bool:
    """A regular file of ours that nobody else may write."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _record_path(directory: str, key: str) -> str:
    return os.path.join(directory, f"{key}.json")


def lookup(directory: str, key: str, inputs_sha256: str):
    """Path of the verified library cached for `key`, or None (missing, foreign, corrupt: rebuild)."""
    record_path = _record_path(directory, key)
    try:
        st = os.lstat(record_path)
        if not _ours(st) or st.st_size > 4096:
            return None
        with open(record_path, "rb") as f:
            record = json.loads(f.read(4096))
        name = record["library"]
        if (record.get("format") != RECORD_FORMAT or record.get("inputs_sha256") != inputs_sha256
                or not isinstance(name, str)
                or not re.fullmatch(rf"[A-Za-z0-9_]{{0,{PREFIX_CHARS}}}_{key}_[0-9a-f]{{16}}\.so", name)
                or not name.endswith(f"_{record['sha256'][:16]}.so")):
            return None
        lib = os.path.join(directory, name)
        st = os.lstat(lib)
        if not _ours(st) or st.st_size != record["size"]:
            return None
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if _verified.get(lib) != stamp + (record["sha256"],):
            if _sha256_file(lib) != record["sha256"]:
                return None
            _verified[lib] = stamp + (record["sha256"],)
        return lib
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _fsync_dir(directory: str):
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_synced(path: str, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def prefix_of(name: str) -> str:
    """A short readable file-name prefix from any name (a graph's name may be long or hostile)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", str(name))[:PREFIX_CHARS] or "lib"


def _sweep_stale_builds(directory: str):
    """Remove build folders that a killed process left behind (older than a day)."""
    now = time.time()
    try:
        entries = [e for e in os.scandir(directory) if e.name.startswith(".build-") and e.is_dir(follow_symlinks=False)]
        for entry in entries:
            if now - entry.stat(follow_symlinks=False).st_mtime > _STALE_BUILD_S:
                shutil.rmtree(entry.path, ignore_errors=True)
    except OSError:
        pass


def _run_build(command, cwd):
    """Run one compiler command (an argument list), or stages of commands (a list of lists of
    argument lists: each stage's commands at once, the stages in order); returns the first
    failing process's result, else the last one's."""
    if command and isinstance(command[0], str):
        return subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    from concurrent.futures import ThreadPoolExecutor

    result = None
    for stage in command:
        with ThreadPoolExecutor(max_workers=len(stage)) as pool:
            results = list(pool.map(lambda c: subprocess.run(c, capture_output=True, text=True, cwd=cwd), stage))
        for result in results:
            if result.returncode != 0:
                return result
    return result


def _build(directory, key, inputs_sha256, source, prefix, source_suffix, command):
    """Compile `source` in a private temporary folder, then rename the library and its record in."""
    _sweep_stale_builds(directory)
    build = tempfile.mkdtemp(prefix=".build-", dir=directory)
    try:
        src = os.path.join(build, f"{prefix}{source_suffix}")
        out = os.path.join(build, f"{prefix}.so")
        _write_synced(src, source.encode())
        result = _run_build(command(src, out), build)
        if result.returncode != 0:
            failed = os.path.join(directory, f"{prefix}_{key}.failed{source_suffix}")
            os.replace(src, failed)
            raise BuildFailed(failed, (result.stderr + result.stdout)[-6000:])
        with open(out, "rb+") as f:
            os.fsync(f.fileno())
        digest = _sha256_file(out)
        final = os.path.join(directory, f"{prefix}_{key}_{digest[:16]}.so")
        os.chmod(out, 0o700)
        os.replace(out, final)
        record = {"format": RECORD_FORMAT, "key": key, "inputs_sha256": inputs_sha256,
                  "library": os.path.basename(final), "size": os.path.getsize(final), "sha256": digest}
        tmp_record = os.path.join(build, "record.json")
        _write_synced(tmp_record, json.dumps(record, indent=1).encode())
        os.replace(tmp_record, _record_path(directory, key))
        _fsync_dir(directory)
    finally:
        shutil.rmtree(build, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(directory: str, key: str):
    """Hold the build lock of `key` (see the module docstring); yields without one where the lock
    file cannot be opened or locked."""
    fd = None
    with contextlib.suppress(OSError):
        folder = os.path.join(directory, ".locks")
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(folder, key), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # per open file: threads of one process wait too
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def cached_library(source: str, inputs: str, name: str, source_suffix: str, command) -> str:
    """Path of a verified library built from `source`, from the cache when an entry matches.

    `inputs` is everything the library depends on (code, flags, compiler, host): its SHA-256 keys
    the entry. `command(src, out)` is the compiler's argument list, or stages of them (see
    `_run_build`). Raises `BuildFailed` when the
    compiler fails (a copy of the source is kept in the cache) and `OSError` when the cache
    cannot be written."""
    inputs_sha256 = hashlib.sha256(inputs.encode()).hexdigest()
    key = inputs_sha256[:24]
    directory = cache_dir()
    lib = lookup(directory, key, inputs_sha256)
    if lib is not None:
        return lib
    with _build_lock(directory, key):
        lib = lookup(directory, key, inputs_sha256)  # built meanwhile by the lock's previous holder
        if lib is None:
            _build(directory, key, inputs_sha256, source, prefix_of(name), source_suffix, command)
    lib = lookup(directory, key, inputs_sha256)
    if lib is None:
        raise OSError(f"the library just built for {name!r} does not verify in the cache {directory}")
    return lib
