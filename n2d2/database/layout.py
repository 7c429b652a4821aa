"""Reading a data set in its own distribution's folder layout: sorted listings, metadata lines,
and file names taken from metadata (untrusted) kept inside the data set's folder; reading one
stimulus file (image, numbers as text, .npy)."""
import os

import numpy as np

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "ppm", "pgm", "pbm", "pnm", "tif", "tiff", "gif", "webp")
TEXT_EXTENSIONS = ("txt", "dat", "csv")
ARRAY_EXTENSIONS = ("npy",)
STIMULUS_EXTENSIONS = IMAGE_EXTENSIONS + TEXT_EXTENSIONS + ARRAY_EXTENSIONS


def _extension(path: str) -> str:
    return os.path.splitext(path)[1][1:].lower()


def read_image(path: str) -> np.ndarray:
    """An image file as a (C, H, W) array: gray (1 channel) or BGR(A), in the file's bit depth."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow is a declared dependency of [train]
        raise ImportError("Reading image files needs Pillow: pip install pillow") from e
    with Image.open(path) as img:
        mode = img.mode
        if mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode in ("1", "L", "LA"):
            img = img.convert("L")
        elif mode in ("CMYK", "YCbCr", "HSV", "LAB"):
            img = img.convert("RGB")
        a = np.asarray(img)
    if a.ndim == 2:
        return np.ascontiguousarray(a[None])
    if a.shape[2] in (3, 4):  # RGB(A) -> BGR(A), N2D2's (OpenCV's) order
        a = a[:, :, [2, 1, 0] + ([3] if a.shape[2] == 4 else [])]
    return np.ascontiguousarray(np.transpose(a, (2, 0, 1)))


def read_stimulus_file(path: str) -> np.ndarray:
    """Read one stimulus file (image, whitespace/comma separated numbers, or .npy) as (C, H, W)."""
    ext = _extension(path)
    try:
        if ext in TEXT_EXTENSIONS:
            with open(path) as f:
                text = f.read().replace(",", " ")
            rows = [[float(v) for v in line.split()] for line in text.splitlines() if line.strip()]
            if not rows or any(len(r) != len(rows[0]) for r in rows):
                raise ValueError("rows of different lengths, or no value")
            return np.asarray(rows, dtype=np.float32)[None]
        if ext in ARRAY_EXTENSIONS:
            a = np.load(path, allow_pickle=False)
            return a[None] if a.ndim == 2 else a
        return read_image(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read stimulus file {path}: {e}") from None


def member_path(root: str, name: str, where: str) -> str:
    """`root/name` for a relative file name read from a metadata file.

    `where` ("file:line") names the metadata line in the error raised when the name is empty,
    absolute, or climbs out of `root` with '..'.
    """
    parts = name.replace("\\", "/").split("/")
    if not name or "\0" in name or os.path.isabs(name) or name.startswith(("/", "\\")) or ".." in parts:
        raise ValueError(f"{where}: file name {name!r} is not a relative path inside {root}")
    return os.path.join(root, name)


def image_files(directory: str, extensions=IMAGE_EXTENSIONS) -> list:
    """The image files directly inside `directory`, sorted by name."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Couldn't open database directory: {directory}")
    with os.scandir(directory) as entries:  # d_type: no stat per file (ImageNet has 1.3 M of them)
        names = sorted(e.name for e in entries
                       if e.name.rpartition(".")[2].lower() in extensions and e.is_file())
    return [os.path.join(directory, n) for n in names]


def sub_directories(directory: str) -> list:
    """The folders directly inside `directory`, sorted by name."""
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Couldn't open database directory: {directory}")
    with os.scandir(directory) as entries:
        return [os.path.join(directory, n) for n in sorted(e.name for e in entries if e.is_dir())]


def text_lines(path: str, what: str):
    """(line number, line without its end) of a UTF-8 text file; `what` names the file's role in
    the error raised when it is missing or not text."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {what} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return list(enumerate(lines, 1))


def stimuli_of(paths: list, in_memory: bool) -> list:
    """The stimuli to store: the files read now (`in_memory`), else their paths (read on demand)."""
    return [read_stimulus_file(p) for p in paths] if in_memory else list(paths)
