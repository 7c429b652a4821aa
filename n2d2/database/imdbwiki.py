"""`IMDBWIKI`: the IMDB-WIKI face images with gender and age labels.

Layout of the official archives (https://data.vision.ee.ethz.ch/cvl/rrothe/imdb-wiki/:
imdb_crop.tar, wiki_crop.tar, the full-frame imdb_*.tar + imdb_meta.tar, wiki.tar.gz)::

    <data_path>/imdb_crop/NN/*.jpg + imdb_crop/imdb.mat       (CropFrame: face crops)
    <data_path>/imdb/NN/*.jpg      + imdb/imdb.mat            (whole frames)
    <data_path>/wiki_crop/NN/*.jpg + wiki_crop/wiki.mat
    <data_path>/wiki/NN/*.jpg      + wiki/wiki.mat

The `.mat` struct has one entry per image: `full_path`, `name`, `face_location`
([x1 y1 x2 y2]), `dob` (Matlab serial date number), `photo_taken` (year), `gender` (0 female,
1 male, NaN unknown). Upstream N2D2 reads the same metadata converted to a CSV,
`<label_path>/imdb.csv` / `wiki.csv` (label_path defaults to `<data_path>/imdb_metadata`), one line
`full_path;name;x0;y0;x1;y1;dob;photo_taken;gender` per image with `dob` a year; when that
file exists it is read instead of the `.mat`.
"""
import datetime
import math
import os

import numpy as np

from n2d2.database.database import DATABASE_PARAMETERS, Database, check_fraction
from n2d2.database.layout import member_path, stimuli_of, text_lines
from n2d2.error_handler import WrongInputType

CSV_FIELDS = ("full_path", "name", "x0", "y0", "x1", "y1", "dob", "photo_taken", "gender")
# Matlab's serial date 1 is 1 January of year 0; Python's ordinal 1 is 1 January of year 1.
_MATLAB_ORDINAL_OFFSET = 366


def read_faces_csv(path: str) -> list:
    """Face records (dicts of CSV_FIELDS, `where` = "file:line") of upstream's metadata CSV."""
    faces = []
    for line_no, line in text_lines(path, "IMDB-WIKI metadata file"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.replace("&amp;", "&").split(";")
        where = f"{path}:{line_no}"
        if len(fields) != len(CSV_FIELDS):
            raise ValueError(f"{where}: expected {len(CSV_FIELDS)} ';'-separated fields ({';'.join(CSV_FIELDS)}), "
                             f"got {len(fields)}: {line!r}")
        try:
            numbers = [float(v) for v in fields[2:]]
        except ValueError:
            raise ValueError(f"{where}: fields 3 to 9 ({';'.join(CSV_FIELDS[2:])}) must be numbers, "
                             f"got {line!r}") from None
        face = dict(zip(CSV_FIELDS[2:], numbers), full_path=fields[0].strip(), name=fields[1].strip(), where=where)
        faces.append(face)
    return faces


def _matlab_year(serial: float) -> float:
    """Year of a Matlab serial date number (NaN when it is not a date)."""
    if not math.isfinite(serial) or serial < _MATLAB_ORDINAL_OFFSET + 1:
        return math.nan
    try:
        return float(datetime.date.fromordinal(int(serial) - _MATLAB_ORDINAL_OFFSET).year)
    except (ValueError, OverflowError):
        return math.nan


def read_faces_mat(path: str, set_name: str) -> list:
    """Face records of the official `imdb.mat` / `wiki.mat` (needs scipy)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IMDB-WIKI metadata file not found: {path} (nor a {set_name}.csv)")
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise ImportError(f"Reading {path} needs scipy (pip install scipy), or give the metadata as "
                          f"{set_name}.csv in label_path") from None
    try:
        meta = loadmat(path)[set_name][0, 0]
        columns = {k: np.ravel(meta[k]) for k in ("full_path", "name", "face_location", "dob", "photo_taken",
                                                  "gender")}
    except (MatReadError, KeyError, IndexError, ValueError, TypeError, NotImplementedError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not an IMDB-WIKI metadata file (a struct '{set_name}' with full_path, name, "
                         f"face_location, dob, photo_taken, gender): {e}") from None
    n = columns["full_path"].size
    if any(c.size != n for c in columns.values()):
        raise ValueError(f"{path}: the fields of '{set_name}' do not have the same length")
    faces = []
    for k in range(n):
        where = f"{path}: entry {k + 1}"
        box = np.ravel(np.asarray(columns["face_location"][k], dtype=np.float64))
        if box.size != 4:
            raise ValueError(f"{where}: face_location has {box.size} values, expected 4 (x1 y1 x2 y2)")
        faces.append({"full_path": _text(columns["full_path"][k]), "name": _text(columns["name"][k]),
                      "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
                      "dob": _matlab_year(float(columns["dob"][k])), "photo_taken": float(columns["photo_taken"][k]),
                      "gender": float(columns["gender"][k]), "where": where})
    return faces


def _text(cell) -> str:
    values = np.ravel(cell)
    return str(values[0]) if values.size else ""


def face_label(face: dict, use_name: bool) -> str:
    """Upstream's label text: the name, or "<F|M|?>-<age|?>" with age = photo_taken - dob."""
    if use_name:
        return face["name"]
    gender = {0.0: "F", 1.0: "M"}.get(face["gender"], "?")
    age = face["photo_taken"] - face["dob"]
    return f"{gender}-{age:g}" if 0.0 <= age <= 99.0 else f"{gender}-?"


class IMDBWIKI(Database):
    """IMDB-WIKI faces (Rothe, Timofte, Van Gool), labelled by gender and age or by name.

    `load(data_path, label_path="")` reads the IMDB and/or WIKI part (module docstring). A
    record whose face location is the "no face" marker (x1 = y1 = 1, or x2 = y2 = 1) is
    skipped (counted in `nb_corrupted_frames`). Labels are "F-34", "M-27", "?-?" ... (or the
    person's name with `use_name_as_label`), numbered in the order met. The stimuli are then
    split: `learn`, `validation`, the rest to Test (per label with `use_name_as_label`).

    Parameters
    ----------
    wiki_set, imdb_set : bool
        Read the WIKI part, the IMDB part.
    crop_frame : bool
        Read the face crops (`*_crop` folders); else the whole frames, whose face box is
        `get_stimulus_face_box(id)` (the frame carries the face's label).
    use_name_as_label : bool
        Label = the person's name instead of gender and age.
    learn, validation : float
        Fractions put in Learn and Validation.
    load_data_in_memory : bool
        Read the images at `load` (else when a provider first needs them).
    """

    _arguments = ("wiki_set", "imdb_set", "crop_frame", "use_name_as_label", "learn", "validation",
                  "load_data_in_memory")
    _parameters = dict(DATABASE_PARAMETERS)

    def __init__(self, wiki_set: bool = True, imdb_set: bool = False, crop_frame: bool = False,
                 use_name_as_label: bool = False, learn: float = 1.0, validation: float = 0.0,
                 load_data_in_memory: bool = False, **config):
        for name, value in (("wiki_set", wiki_set), ("imdb_set", imdb_set), ("crop_frame", crop_frame),
                            ("use_name_as_label", use_name_as_label), ("load_data_in_memory", load_data_in_memory)):
            if not isinstance(value, bool):
                raise WrongInputType(name, type(value), ["bool"])
        learn, validation = check_fraction("learn", learn), check_fraction("validation", validation)
        if learn + validation > 1.0 + 1e-9:
            raise ValueError(f"IMDBWIKI: learn ({learn}) + validation ({validation}) cannot be > 1")
        super().__init__({"wiki_set": wiki_set, "imdb_set": imdb_set, "crop_frame": crop_frame,
                          "use_name_as_label": use_name_as_label, "learn": learn, "validation": validation,
                          "load_data_in_memory": load_data_in_memory}, **config)
        self.nb_corrupted_frames = 0
        self._face_boxes = []

    def load(self, data_path: str, label_path: str = "", extract_ROIs: bool = False):
        """Add the selected parts, then partition every unpartitioned stimulus."""
        data_path = os.fspath(data_path)
        label_root = os.fspath(label_path) or os.path.join(data_path, "imdb_metadata")
        crop = self._args["crop_frame"]
        for selected, set_name in ((self._args["imdb_set"], "imdb"), (self._args["wiki_set"], "wiki")):
            if not selected:
                continue
            image_dir = os.path.join(data_path, set_name + ("_crop" if crop else ""))
            csv = os.path.join(label_root, set_name + ".csv")
            faces = read_faces_csv(csv) if os.path.isfile(csv) else \
                read_faces_mat(os.path.join(image_dir, set_name + ".mat"), set_name)
            self._add_faces(faces, image_dir)
        learn, validation = self._args["learn"], self._args["validation"]
        test = max(0.0, 1.0 - learn - validation)
        if self._args["use_name_as_label"]:
            self.partition_stimuli_per_label(learn, validation, test, equiv_label=False)
        else:
            self.partition_stimuli(learn, validation, test)

    def _add_faces(self, faces, image_dir):
        paths, labels, boxes = [], [], []
        for face in faces:
            if (face["x0"] == 1 and face["y0"] == 1) or (face["x1"] == 1 and face["y1"] == 1):
                self.nb_corrupted_frames += 1
                continue
            path = member_path(image_dir, face["full_path"], face["where"])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{face['where']}: image {face['full_path']!r} not found in {image_dir}")
            paths.append(path)
            labels.append(self._label_id(face_label(face, self._args["use_name_as_label"])))
            boxes.append((face["x0"], face["y0"], face["x1"], face["y1"]))
        if paths:
            self._add_stimuli(stimuli_of(paths, self._args["load_data_in_memory"]), labels, names=paths)
            self._face_boxes.extend(boxes)

    def get_stimulus_face_box(self, stimulus_id: int) -> tuple:
        """(x1, y1, x2, y2) of the face in the stimulus's original frame (x2, y2 exclusive)."""
        return self._face_boxes[stimulus_id]

    def get_stimulus_name(self, stimulus_id: int) -> str:
        return self._names[stimulus_id]
