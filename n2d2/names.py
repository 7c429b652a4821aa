"""Names from model files (cell, section, target names) turned into safe file names.

Model files come from strangers: a cell named `/conv/Conv_output_0` (every PyTorch ONNX export)
or `../../x` must not become a path. `file_stem` is the one place where a name becomes a file
name; names that are already safe map to themselves, so parameter folders written by upstream
N2D2 or earlier versions keep their file names.
"""
import hashlib
import re

from n2d2.error_handler import WrongInputType

#: Longest stem: leaves room for suffixes (`_variances.syntxt`) and temp-file prefixes under the
#: 255-byte NAME_MAX of common file systems.
MAX_STEM_LENGTH = 128

_SAFE_STEM = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_.\-]+")
#: Separates a mangled stem from its hash; not in the safe alphabet, so a mangled stem never
#: equals a name that maps to itself.
MANGLE_MARK = "+"
_HASH_LENGTH = 12


def is_safe_stem(name: str) -> bool:
    """True when `name` can be used as a file name as it is (ASCII letters, digits, `_`, `.`,
    `-`; not starting with `.` or `-`; no `..`; at most MAX_STEM_LENGTH characters)."""
    return (isinstance(name, str) and len(name) <= MAX_STEM_LENGTH and _SAFE_STEM.match(name) is not None
            and ".." not in name)


def file_stem(name: str) -> str:
    """A file name (without extension) for the cell/section name `name`.

    Safe names (see `is_safe_stem`) are returned unchanged; any other name becomes its safe
    characters (runs of others replaced by `_`, leading `.`/`-`/`_` dropped, `..` collapsed,
    bounded length; `cell` when nothing is left) followed by `+` and 12 hex digits of the
    SHA-256 of the full name, so two different names never share a stem (short of a hash
    collision) and no stem holds a path separator, `..`, NUL or control characters.
    """
    if not isinstance(name, str):
        raise WrongInputType("name", type(name), ["str"])
    if is_safe_stem(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_LENGTH]
    readable = _UNSAFE_RUN.sub("_", name)
    readable = re.sub(r"\.{2,}", ".", readable).lstrip("._-")
    readable = readable[:MAX_STEM_LENGTH - _HASH_LENGTH - len(MANGLE_MARK)] or "cell"
    return f"{readable}{MANGLE_MARK}{digest}"


def file_stems(names) -> dict:
    """{name: file_stem(name)} for a set of names, checking that no two names share a stem.

    Raises ValueError naming both names when they do (the same name given twice, or two names
    that differ only in case, which would overwrite each other on a case-insensitive disk).
    """
    stems, owner = {}, {}
    for name in names:
        stem = file_stem(name)
        key = stem.casefold()
        if key in owner and owner[key] != name:
            raise ValueError(f"Names '{owner[key]}' and '{name}' map to the same file name '{stem}' "
                             "(on a case-insensitive file system); rename one of the cells")
        if name in stems:
            raise ValueError(f"Name '{name}' appears twice: both cells would write the same files")
        owner[key] = name
        stems[name] = stem
    return stems
