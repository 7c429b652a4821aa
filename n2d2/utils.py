"""Small helpers shared across the package: automatic names, downloads, model logging."""
import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.request
from collections import defaultdict

_name_counters = defaultdict(int)


def generate_name(obj) -> str:
    """`<ClassName>_<k>`, k counting unnamed objects of that exact class from 0 (process-wide)."""
    class_name = obj.__class__.__name__
    k = _name_counters[class_name]
    _name_counters[class_name] += 1
    return f"{class_name}_{k}"


def reset_name_counters():
    """Forget every naming counter (tests use this to get `Fc_0` again)."""
    _name_counters.clear()


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it races with threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def confined_path(folder: str, relative: str) -> str:
    """The absolute path of `relative` inside `folder`, refusing anything that would leave it.

    `relative` may name subfolders (`stimuli/inputs.bin`) but not be absolute nor hold `..`;
    the check is made again on the resolved path (symlinks followed) of its parent folder.
    """
    if not isinstance(relative, str) or not relative or "\0" in relative:
        raise ValueError(f"File name {relative!r} in the folder '{folder}' is empty, holds NUL or is not a string")
    parts = relative.replace(os.sep, "/").split("/")
    if os.path.isabs(relative) or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"File name {relative!r} would leave the folder '{folder}' (expected a relative "
                         "name without '..', '.' or empty components)")
    root = os.path.realpath(folder)
    path = os.path.join(root, *parts)
    parent = os.path.realpath(os.path.dirname(path))
    if os.path.commonpath([root, parent]) != root:
        raise ValueError(f"File {relative!r} resolves to {parent}, outside the folder '{folder}' "
                         "(a symbolic link points out of it)")
    return os.path.join(parent, os.path.basename(path))


def write_inside(folder: str, relative: str, data) -> str:
    """Write `data` (str or bytes) to `relative` inside `folder` atomically; return the path.

    The one writer of user-visible files: the name cannot leave `folder` (see `confined_path`),
    the file is written to a temp file in the same folder, fsynced and renamed over the target
    (a crash leaves the old file or the new one, never half of one), and it gets the mode a
    plain `open()` would give (0o666 less the umask; mkstemp alone gives 0o600).
    """
    os.makedirs(folder, exist_ok=True)
    parts = relative.replace(os.sep, "/").split("/") if isinstance(relative, str) else []
    if len(parts) > 1:
        confined_path(folder, relative)  # refuse '..' before creating any subfolder
        for depth in range(1, len(parts)):  # one level at a time: never mkdir through a link out
            sub = "/".join(parts[:depth])
            confined_path(folder, sub + "/x")
            os.makedirs(os.path.join(os.path.realpath(folder), *parts[:depth]), exist_ok=True)
    path = confined_path(folder, relative)
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix="_" + name[-64:])
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a power cut leaves the old file, not an empty one
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return os.path.join(folder, *parts) if parts else path


def atomic_write_text(path: str, text: str):
    """Write `text` to `path` through a temp file and a rename, so a crash never leaves half a file.

    `path` is the user's (trusted) path; names from model files go through `write_inside`.
    """
    path = os.path.abspath(path)
    return write_inside(os.path.dirname(path), os.path.basename(path), text)


@contextlib.contextmanager
def thread_flag(store, name: str):
    """Set `store.<name>` (a threading.local) to True for the `with` block, then restore it."""
    previous = getattr(store, name, False)
    setattr(store, name, True)
    try:
        yield
    finally:
        setattr(store, name, previous)


def file_digest(path: str, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (read in 1 MiB blocks: sizes are not bounded here)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(url: str, path: str, md5: str = None):
    """Download `url` to `path` (atomically), checking its md5 when given."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".dl_")
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        if md5 is not None:
            digest = file_digest(tmp, "md5")
            if digest != md5:
                raise RuntimeError(f"Download of {url}: md5 {digest} does not match the expected {md5}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def model_logger(model, path: str, log_dict: dict = None):
    """Export `model`'s parameters under `path` and, if given, `log_dict` to `path + 'log.txt'`."""
    model.export_free_parameters(path)
    if log_dict:
        text = "".join(f"{k}: {v}\n" for k, v in log_dict.items())
        atomic_write_text(path + "log.txt", text)
