"""Small helpers shared across the package: automatic names, downloads, model logging."""
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


def atomic_write_text(path: str, text: str):
    """Write `text` to `path` through a temp file and a rename, so a crash never leaves half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
            with open(tmp, "rb") as f:
                digest = hashlib.md5(f.read()).hexdigest()
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
