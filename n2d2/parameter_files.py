"""Parameter sets on disk: N2D2 `.syntxt` files (one per cell and kind) plus a manifest.

Why this module: parameter folders come from strangers and outlive processes. File names come
from `n2d2.names.file_stem` (a cell named `/conv/Conv_output_0` or `../../x` stays inside the
folder; safe names map to themselves so upstream folders still import), every write goes
through `n2d2.utils.write_inside`, `.syntxt` numbers are parsed strictly, and a manifest written
*last* (after an "incomplete" one written first) lets an import notice a torn set: files from
two different exports, e.g. after a kill in the middle of an export. A folder without a
manifest (upstream N2D2, older n2d2) imports by the plain names.
"""
import hashlib
import json
import os
import re
import stat
import warnings

import numpy as np

from n2d2.error_handler import ParameterFileError
from n2d2.names import file_stem, file_stems
from n2d2.utils import confined_path, write_inside

MANIFEST_NAME = "n2d2_parameters.json"
_FORMAT = "n2d2 parameter set"
_VERSION = 1
_MAX_MANIFEST_BYTES = 16 << 20
#: A value written by N2D2 or n2d2 takes < 20 bytes; 64 leaves room for hand-written files.
_MAX_BYTES_PER_VALUE = 64
_FLOAT32_MAX = float(np.finfo(np.float32).max)

_TOKEN = rb"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_LINE = re.compile(rb"[ \t]*(?:" + _TOKEN + rb"(?:[ \t]+" + _TOKEN + rb")*)?[ \t]*\r?\Z")
_TOKEN_ALONE = re.compile(_TOKEN + rb"\Z")
_WORD = re.compile(rb"[^ \t]+")
_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\-]*\.syntxt\Z")


# -- one .syntxt file --------------------------------------------------------------------------------
def _read_bounded(path, cell_name, expected_shape, ignore_not_exists):
    """The bytes of `path`, refusing a file larger than `expected_shape` values can take."""
    if not os.path.exists(path):
        if ignore_not_exists:
            return None
        raise FileNotFoundError(f"Cell '{cell_name}': parameter file {path} does not exist")
    limit = int(np.prod(expected_shape)) * _MAX_BYTES_PER_VALUE + 4096
    data = _read_regular_file(path, limit + 1, f"Cell '{cell_name}': {path}")
    if len(data) > limit:
        raise ParameterFileError(f"Cell '{cell_name}': {path} is larger than {limit} bytes, too large for "
                                 f"the {int(np.prod(expected_shape))} values expected (shape {list(expected_shape)})")
    return data


def _read_regular_file(path, max_bytes, what):
    """At most `max_bytes` of `path`, refusing what is not a regular file (a FIFO would block the
    import, a device never end); opened non-blocking so that the check itself cannot hang."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ParameterFileError(f"{what} is not a regular file")
        return f.read(max_bytes)


def parse_syntxt(data: bytes, path: str, cell_name: str, expected_shape) -> np.ndarray:
    """Parse .syntxt bytes: whitespace-separated plain finite decimal numbers, ASCII only.

    Anything else (`nan`, `inf`, `1_000`, hex, full-width digits, a value beyond float32 such as
    `1e400`) raises ParameterFileError naming `path`, line and column. The count is checked
    against `expected_shape` line by line, so a file never makes us allocate more than that.
    """
    expected = int(np.prod(expected_shape))
    values = np.empty(expected, dtype=np.float32)
    count = 0
    for lineno, line in enumerate(data.split(b"\n"), 1):
        if not _LINE.match(line):
            _raise_bad_line(path, cell_name, lineno, line)
        tokens = line.split()
        if not tokens:
            continue
        if count + len(tokens) > expected:
            raise ParameterFileError(f"Cell '{cell_name}': {path}:{lineno} holds more than the {expected} values "
                                     f"expected (shape {list(expected_shape)})")
        with np.errstate(over="ignore"):  # beyond float32 becomes inf here, and is refused below
            chunk = np.array(tokens, dtype=np.float64).astype(np.float32)
        out_of_range = ~np.isfinite(chunk)
        if out_of_range.any():
            k = int(np.argmax(out_of_range))
            col = [m.start() for m in _WORD.finditer(line)][k] + 1
            raise ParameterFileError(f"Cell '{cell_name}': {path}:{lineno}:{col}: {_show(tokens[k])} is outside the "
                                     f"float32 range (|value| <= {_FLOAT32_MAX:.6g})")
        values[count:count + len(tokens)] = chunk
        count += len(tokens)
    if count != expected:
        raise ParameterFileError(f"Cell '{cell_name}': {path} holds {count} values, expected {expected} "
                                 f"(shape {list(expected_shape)})")
    return values.reshape(expected_shape)


def _raise_bad_line(path, cell_name, lineno, line):
    for m in _WORD.finditer(line.rstrip(b"\r")):
        if not _TOKEN_ALONE.match(m.group()):
            raise ParameterFileError(
                f"Cell '{cell_name}': {path}:{lineno}:{m.start() + 1}: {_show(m.group())} is not a number in "
                "plain decimal notation (expected ASCII digits with an optional sign, point and exponent, "
                "e.g. -1.5e-3)")
    raise ParameterFileError(f"Cell '{cell_name}': {path}:{lineno}: unexpected character (only numbers separated "
                             "by spaces or tabs are allowed)")


def _show(token: bytes) -> str:
    """A token quoted for an error message: bounded, non-ASCII and control characters escaped."""
    return ascii(token[:40].decode("utf-8", "replace")) + ("..." if len(token) > 40 else "")


# -- the manifest ------------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(folder: str):
    """The manifest of the parameter set in `folder`, or None when there is none (upstream folder).

    The manifest is untrusted like the rest: a malformed one raises ParameterFileError.
    """
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.lexists(path):
        return None
    try:
        raw = _read_regular_file(path, _MAX_MANIFEST_BYTES + 1, path)
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {_MAX_MANIFEST_BYTES} bytes")
        doc = json.loads(raw.decode("utf-8"))
        _check_manifest(doc)
    except (OSError, ValueError, RecursionError) as e:
        raise ParameterFileError(f"{path}: not a valid parameter set manifest ({e}); delete it to import the "
                                 ".syntxt files by their plain names") from None
    return doc


def _check_manifest(doc):
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT or doc.get("version") != _VERSION:
        raise ValueError(f"expected a JSON object with format '{_FORMAT}' and version {_VERSION}")
    if not isinstance(doc.get("complete"), bool) or not isinstance(doc.get("files"), dict):
        raise ValueError("expected 'complete' (true/false) and 'files' (an object)")
    for name, entry in doc["files"].items():
        if not _FILE_NAME.match(name):
            raise ValueError(f"file name {name!r} is not a plain .syntxt file name")
        if (not isinstance(entry, dict) or not isinstance(entry.get("cell"), str)
                or not isinstance(entry.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
                or type(entry.get("bytes")) is not int or entry["bytes"] < 0):
            raise ValueError(f"entry {name!r}: expected {{'cell': str, 'bytes': int, 'sha256': 64 hex digits}}")


def _write_manifest(folder, files, complete):
    doc = {"format": _FORMAT, "version": _VERSION, "complete": complete,
           "files": {name: files[name] for name in sorted(files)}}
    write_inside(folder, MANIFEST_NAME, json.dumps(doc, indent=1) + "\n")


# -- sets of cells -----------------------------------------------------------------------------------
def _parameter_cells(cells):
    """Cells that have parameter files, each once (a cell used twice is exported once)."""
    seen, out = set(), []
    for c in cells:
        if id(c) not in seen and hasattr(c, "_parameter_files"):
            seen.add(id(c))
            out.append(c)
    return out


def export_set(folder: str, cells, verbose=True):
    """Write the parameter files of `cells` into `folder`, then the manifest.

    Order: a manifest marked incomplete first, the files (each atomically), the complete
    manifest last, so that a kill at any point leaves a folder whose import says what happened.
    Entries of other cells already in the manifest are kept (a single cell may be re-exported).
    """
    cells = _parameter_cells(cells)
    stems = file_stems([c.get_name() for c in cells])
    files = {}
    for c in cells:
        for suffix, text in {**c._parameter_files(), **getattr(c, "_quantizer_files", dict)()}.items():
            name = stems[c.get_name()] + suffix + ".syntxt"
            if name in files:
                raise ParameterFileError(f"Cells '{files[name][0]}' and '{c.get_name()}' would both write {name} "
                                         f"in {folder}; rename one of them")
            files[name] = (c.get_name(), text.encode("ascii"))
    if not files:  # cells without parameters (Pool, Softmax...) write nothing, as upstream
        return
    try:
        old = read_manifest(folder)
    except ParameterFileError as e:
        warnings.warn(f"{e}: replaced", stacklevel=3)
        old = None
    entries = dict(old["files"]) if old else {}
    _write_manifest(folder, entries, complete=False)
    exported = set(stems)
    entries = {name: e for name, e in entries.items() if e["cell"] not in exported}
    for name, (cell, data) in files.items():
        path = write_inside(folder, name, data)
        if verbose:
            print(f"Export to {path}")
        entries[name] = {"cell": cell, "bytes": len(data), "sha256": _sha256(data)}
    _write_manifest(folder, entries, complete=True)


def import_set(folder: str, cells, ignore_not_exists=False):
    """Read the parameter files of `cells` from `folder`: all parsed and checked, then assigned.

    Raises ParameterFileError on a malformed file, or on a torn set (a file whose content does
    not match the manifest, or an export that was interrupted), naming the files; nothing is
    assigned then. Missing files raise FileNotFoundError unless `ignore_not_exists`.
    """
    manifest = read_manifest(folder)
    loaded, read = [], {}
    for c in _parameter_cells(cells):
        stem, values = file_stem(c.get_name()), {}
        quantizer_scalars = getattr(c, "_quantizer_scalars", dict)()
        shapes = {**c._parameter_shapes(), **{suffix: (1,) for suffix in quantizer_scalars}}
        for suffix, shape in shapes.items():
            name = stem + suffix + ".syntxt"
            path = confined_path(folder, name)
            # a quantizer's scalar is optional: phase 2 of SAT reads phase 1's files, which have none
            data = _read_bounded(path, c.get_name(), shape, ignore_not_exists or suffix in quantizer_scalars)
            if data is None:
                continue
            print(f"Import {os.path.join(folder, name)}")
            values[suffix] = parse_syntxt(data, path, c.get_name(), shape)
            read[name] = (c.get_name(), data)
        loaded.append((c, values))
    if manifest is not None:
        _check_not_torn(folder, manifest, read)
    for c, values in loaded:
        quantizer_values = {k: values.pop(k) for k in list(values) if k in getattr(c, "_quantizer_scalars", dict)()}
        c._set_parameter_values(values)
        if quantizer_values:
            c._set_quantizer_values(quantizer_values)


def _check_not_torn(folder, manifest, read):
    listed = manifest["files"]
    changed = sorted(name for name, (_, data) in read.items() if name in listed
                     and (listed[name]["bytes"] != len(data) or listed[name]["sha256"] != _sha256(data)))
    if not manifest["complete"]:
        detail = f" (changed since the last complete export: {', '.join(changed)})" if changed else ""
        raise ParameterFileError(f"Parameter set {folder} is torn: an export into it was interrupted{detail}; "
                                 f"export again, or delete {MANIFEST_NAME} to import the files as they are")
    if changed:
        raise ParameterFileError(f"Parameter set {folder} is torn: {', '.join(changed)} do not match {MANIFEST_NAME} "
                                 f"(files from another export); export again, or delete {MANIFEST_NAME} to import "
                                 "the files as they are")
