"""`DIR` database: a folder tree of images (or numeric data files), one label per sub-folder."""
import fnmatch
import os

from n2d2.database.database import DATABASE_PARAMETERS, Database

# file reading sits below the databases (in layout), importable from here as before
from n2d2.database.layout import (  # noqa: F401
    ARRAY_EXTENSIONS,
    IMAGE_EXTENSIONS,
    STIMULUS_EXTENSIONS,
    TEXT_EXTENSIONS,
    _extension,
    read_image,
    read_stimulus_file,
)
from n2d2.error_handler import WrongInputType


class DIR(Database):
    """Database of files in a folder tree; the sub-folder names (down to `label_depth` levels)
    are the labels, in alphabetical order.

    Parameters
    ----------
    data_path : str
        Root folder.
    learn, validation, test : float
        With `per_label_partitioning` (default), fractions of each label's stimuli put in each
        partition (`test` defaults to what is left: every stimulus not in Learn or Validation
        goes to Test). Otherwise numbers of stimuli, drawn regardless of labels.
    depth : int
        Number of sub-folder levels explored (negative: all).
    label_path : str
        A label file `<file name> <label id>` per line (used with `label_depth=0`), or the name
        prefix given to the labels.
    label_depth : int
        Number of sub-folder name levels forming the label (0: no folder label; -1: no label).
    per_label_partitioning, equiv_label_partitioning : bool
        See `learn`; with `equiv_label_partitioning` every label gives as many stimuli to Learn
        and Validation as the smallest label.
    ignore_mask : list of str
        Files whose path matches one of these wildcard patterns are ignored.
    valid_extensions : list of str
        Extensions accepted (default: images, .txt/.dat/.csv numbers, .npy).
    load_data_in_memory : bool
        Read every file now (else files are read when a provider first needs them).
    """

    _arguments = ("data_path", "learn", "test", "validation", "depth", "label_path", "label_depth", "roi_file",
                  "roi_dir", "roi_extension", "per_label_partitioning", "equiv_label_partitioning",
                  "ignore_mask", "valid_extensions", "load_data_in_memory")
    _parameters = dict(DATABASE_PARAMETERS)

    def __init__(self, data_path: str, learn: float, test: float = None, validation: float = 0.0, depth: int = 1,
                 label_path: str = "", label_depth: int = 1, roi_file: str = "", roi_dir: str = "",
                 roi_extension: str = "json", per_label_partitioning: bool = True,
                 equiv_label_partitioning: bool = True, ignore_mask: list = None, valid_extensions: list = None,
                 load_data_in_memory: bool = False, **config):
        data_path = os.fspath(data_path)
        for name, value, types in (("data_path", data_path, str), ("label_path", label_path, str),
                                   ("depth", depth, int), ("label_depth", label_depth, int),
                                   ("per_label_partitioning", per_label_partitioning, bool),
                                   ("equiv_label_partitioning", equiv_label_partitioning, bool),
                                   ("load_data_in_memory", load_data_in_memory, bool)):
            if not isinstance(value, types) or (types is int and isinstance(value, bool)):
                raise WrongInputType(name, type(value), [types.__name__])
        for name, value in (("learn", learn), ("validation", validation), ("test", test)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise WrongInputType(name, type(value), ["float"])
        ignore_mask = list(ignore_mask or [])
        valid_extensions = [e.lower().lstrip(".") for e in (valid_extensions or [])]
        super().__init__({"data_path": data_path, "learn": learn, "test": test, "validation": validation,
                          "depth": depth, "label_path": label_path, "label_depth": label_depth,
                          "roi_file": roi_file, "roi_dir": roi_dir, "roi_extension": roi_extension,
                          "per_label_partitioning": per_label_partitioning,
                          "equiv_label_partitioning": equiv_label_partitioning, "ignore_mask": ignore_mask,
                          "valid_extensions": valid_extensions, "load_data_in_memory": load_data_in_memory},
                         **config)
        self.load(data_path, depth, label_path, label_depth)
        nb = self.get_nb_stimuli("Unpartitioned")
        if per_label_partitioning:
            learn, validation = float(learn), float(validation)
            if learn + validation > 1.0 + 1e-9:
                raise RuntimeError(f"DIR Database: Learn ({learn}) + Validation ({validation}) cannot be > 1.0")
            if test is None:
                test = max(0.0, 1.0 - learn - validation)
            elif learn + validation + test > 1.0 + 1e-9:
                raise RuntimeError(f"DIR Database: Learn ({learn}) + Validation ({validation}) + Test ({test}) "
                                   f"cannot be > 1.0")
            self.partition_stimuli_per_label(learn, validation, float(test), equiv_label_partitioning)
            # Whatever is left goes to Test, as upstream.
            self._move_unpartitioned({"Test": self.get_nb_stimuli("Unpartitioned")})
        else:
            learn, validation = int(learn), int(validation)
            if nb < learn + validation:
                raise RuntimeError(f"DIR Database: Learn ({learn}) + Validation ({validation}) cannot be > number "
                                   f"of detected stimuli ({nb})")
            test = nb - learn - validation if test is None else int(test)
            if nb < learn + validation + test:
                raise RuntimeError(f"DIR Database: Learn ({learn}) + Validation ({validation}) + Test ({test}) "
                                   f"cannot be > number of detected stimuli ({nb})")
            self._move_unpartitioned({"Learn": learn, "Validation": validation, "Test": test})

    def _accepts(self, path: str) -> bool:
        ext = _extension(path)
        valid = self._args["valid_extensions"]
        if valid and ext not in valid:
            return False
        if ext not in STIMULUS_EXTENSIONS:
            return False  # not a stimulus this reader knows (N2D2 prints a notice and ignores it)
        return not any(fnmatch.fnmatch(path, m) or m in path for m in self._args["ignore_mask"])

    def load(self, data_path: str, depth: int = 1, label_path: str = "", label_depth: int = 1):
        """Add the files of the folder tree `data_path` to Unpartitioned."""
        data_path = os.fspath(data_path)
        if not os.path.isdir(data_path):
            raise FileNotFoundError(f"Couldn't open database directory: {data_path}")
        file_labels = None
        if label_path and os.path.isfile(label_path):
            file_labels = self._read_label_file(label_path)
            prefix = ""
        else:
            prefix = label_path
        found = []  # (path, label name or None)
        self._walk(data_path, depth, prefix, label_depth, found)
        if not found:
            return
        paths, labels = [], []
        for path, name in found:
            if file_labels is not None:
                key = os.path.relpath(path, data_path)
                label = file_labels.get(key, file_labels.get(os.path.basename(path), -1))
                if label >= 0:
                    while len(self._label_names) <= label:
                        self._label_names.append(str(len(self._label_names)))
            else:
                label = self._label_id(name) if name is not None else -1
            paths.append(path)
            labels.append(label)
        stimuli = [read_stimulus_file(p) for p in paths] if self._args["load_data_in_memory"] else paths
        self._add_stimuli(stimuli, labels, "Unpartitioned", names=paths)

    def _walk(self, directory, depth, label_name, label_depth, found):
        entries = sorted(os.listdir(directory))
        files = [os.path.join(directory, e) for e in entries if os.path.isfile(os.path.join(directory, e))]
        dirs = [os.path.join(directory, e) for e in entries if os.path.isdir(os.path.join(directory, e))]
        files = [f for f in files if self._accepts(f)]
        for f in files:
            found.append((f, label_name if label_depth >= 0 else None))
        if depth != 0:
            for d in dirs:
                if label_depth > 0:
                    name = (label_name + "/" if label_name else "") + os.path.basename(d)
                    self._walk(d, depth - 1, name, label_depth - 1, found)
                else:
                    self._walk(d, depth - 1, label_name, label_depth, found)

    @staticmethod
    def _read_label_file(path):
        mapping = {}
        with open(path) as f:
            for k, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise ValueError(f"{path}:{k}: expected '<file name> <label id>', got {line.strip()!r}")
                try:
                    mapping[parts[0]] = int(parts[1])
                except ValueError:
                    raise ValueError(f"{path}:{k}: label id {parts[1]!r} is not an int") from None
        return mapping

    def get_stimulus_name(self, stimulus_id: int) -> str:
        return self._names[stimulus_id]
