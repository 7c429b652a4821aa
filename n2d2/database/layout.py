"""Reading a data set in its own distribution's folder layout: sorted listings, metadata lines,
and file names taken from metadata (untrusted) kept inside the data set's folder."""
import os

from n2d2.database.dir_db import IMAGE_EXTENSIONS, read_stimulus_file


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
