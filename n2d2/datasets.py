"""Where the data sets are: finding (or downloading) MNIST.

`mnist_path()` returns a folder holding the four MNIST IDX files, looking in order at:

1. the explicit `path` argument;
2. `$N2D2_DATA/mnist` (and `$N2D2_DATA` itself);
3. the copy bundled with the repository, `data/mnist/` at the repository root (the parent of
   the `n2d2` package folder), then `data/mnist/` under the current directory;
4. otherwise the four `.gz` files are downloaded from a public mirror (md5-checked) into
   `path`, or `$N2D2_DATA/mnist`, or `~/DATABASE/mnist`.

MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, under CC BY-SA 3.0;
credit them when you use it. The bundled copy's provenance is in `data/mnist/SOURCE.md`.
"""
import os

from n2d2.utils import download, file_digest

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

# md5 of the original .gz files as the mirrors serve them.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def repository_root() -> str:
    """The folder that holds the `n2d2` package (the repository root in a source checkout)."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def has_mnist(directory: str) -> bool:
    """True when `directory` holds the four MNIST IDX files (plain or .gz)."""
    if not directory or not os.path.isdir(directory):
        return False
    return all(os.path.isfile(os.path.join(directory, f)) or os.path.isfile(os.path.join(directory, f + ".gz"))
               for f in MNIST_FILES)


def mnist_candidates(path: str = None) -> list:
    """The folders `mnist_path` looks at, in order."""
    candidates = []
    if path:
        candidates.append(os.fspath(path))
    data_root = os.environ.get("N2D2_DATA")
    if data_root:
        candidates += [os.path.join(data_root, "mnist"), os.path.join(data_root, "MNIST"), data_root]
    candidates.append(os.path.join(repository_root(), "data", "mnist"))
    candidates.append(os.path.join(os.getcwd(), "data", "mnist"))
    return candidates


def mnist_path(path: str = None, download_if_missing: bool = True) -> str:
    """A folder holding MNIST (see the module docstring for the search order)."""
    candidates = mnist_candidates(path)
    for c in candidates:
        if has_mnist(c):
            return c
    if not download_if_missing:
        raise FileNotFoundError("MNIST not found in: " + ", ".join(candidates))
    target = os.fspath(path) if path else os.path.join(
        os.environ.get("N2D2_DATA") or os.path.join(os.path.expanduser("~"), "DATABASE"), "mnist")
    try:
        return download_mnist(target)
    except OSError as e:
        raise RuntimeError(f"MNIST not found (looked in: {', '.join(candidates)}) and the download to "
                           f"'{target}' failed ({e}). Put the four IDX files (.gz or plain) in one of "
                           f"these folders, or set $N2D2_DATA.") from e


def download_mnist(directory: str) -> str:
    """Download the four MNIST `.gz` files into `directory` (md5-checked), trying each mirror."""
    os.makedirs(directory, exist_ok=True)
    for name, md5 in MNIST_MD5.items():
        target = os.path.join(directory, name)
        if os.path.isfile(target) and file_md5(target) == md5:
            continue
        errors = []
        for mirror in MNIST_MIRRORS:
            try:
                download(mirror + name, target, md5=md5)
                break
            except Exception as e:  # network error, HTTP error, md5 mismatch: next mirror
                errors.append(f"{mirror}: {e}")
        else:
            raise OSError(f"could not download {name}: " + "; ".join(errors))
    return directory


def file_md5(path: str) -> str:
    return file_digest(path, "md5")


def verify_md5sums(directory: str) -> dict:
    """Check the files listed in `directory/MD5SUMS` (`md5sum -c` format): name -> True/False."""
    result = {}
    with open(os.path.join(directory, "MD5SUMS")) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2:
                md5, name = parts
                path = os.path.join(directory, name.lstrip("*"))
                result[name] = os.path.isfile(path) and file_md5(path) == md5
    return result
