"""`GTSRB`: the German Traffic Sign Recognition Benchmark in its distribution's layout.

Layout, as the benchmark's own archives extract (GTSRB_Final_Training_Images.zip,
GTSRB_Final_Test_Images.zip, GTSRB_Final_Test_GT.zip; https://benchmark.ini.rub.de/gtsrb_dataset.html
and the Readme-Images.txt they ship)::

    <data_path>/Final_Training/Images/000NN/*.ppm        one folder per class
    <data_path>/Final_Training/Images/000NN/GT-000NN.csv
    <data_path>/Final_Test/Images/*.ppm
    <label_path or data_path>/GT-final_test.csv

Every annotation file is `;`-separated with a header line
`Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId`.
"""
import os

import numpy as np

from n2d2.database.database import DATABASE_PARAMETERS, Database, check_fraction
from n2d2.database.dir_db import read_stimulus_file
from n2d2.database.layout import image_files, member_path, stimuli_of, sub_directories, text_lines
from n2d2.error_handler import WrongInputType

GTSRB_COLUMNS = ("Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId")


def read_gtsrb_csv(path: str, image_dir: str) -> dict:
    """{image path: (class id, (x1, y1, x2, y2), line)} of one GTSRB annotation file.

    Malformed lines, file names outside `image_dir` and images that do not exist raise a
    `ValueError` / `FileNotFoundError` naming the file and line.
    """
    rows = {}
    for line_no, line in text_lines(path, "GTSRB annotation file"):
        fields = [f.strip() for f in line.split(";")]
        if not line.strip() or (line_no == 1 and fields[0] == "Filename"):
            continue
        expected = ";".join(GTSRB_COLUMNS)
        if len(fields) != len(GTSRB_COLUMNS):
            raise ValueError(f"{path}:{line_no}: expected {len(GTSRB_COLUMNS)} ';'-separated fields "
                             f"({expected}), got {len(fields)}: {line.strip()!r}")
        try:
            width, height, x1, y1, x2, y2, class_id = (int(v) for v in fields[1:])
        except ValueError:
            raise ValueError(f"{path}:{line_no}: fields 2 to 8 of {expected} must be integers, "
                             f"got {line.strip()!r}") from None
        if class_id < 0 or width <= 0 or height <= 0 or not (0 <= x1 < x2 and 0 <= y1 < y2):
            raise ValueError(f"{path}:{line_no}: expected ClassId >= 0, Width, Height > 0, "
                             f"0 <= Roi.X1 < Roi.X2 and 0 <= Roi.Y1 < Roi.Y2, got {line.strip()!r}")
        image = member_path(image_dir, fields[0], f"{path}:{line_no}")
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{path}:{line_no}: image {fields[0]!r} not found in {image_dir}")
        rows[os.path.normpath(image)] = (class_id, (x1, y1, x2, y2), line_no)
    return rows


class GTSRB(Database):
    """German Traffic Sign Recognition Benchmark (43 classes of cropped sign images, .ppm).

    `load(data_path, label_path="", extract_ROIs=False)` reads `Final_Training/Images`
    (Learn, and Validation for a fraction `validation` of each class) and `Final_Test/Images`
    (Test) with their annotation files (module docstring). The label of an image is the
    `ClassId` of its annotation line; label names are the class ids as text ("0", "1", ...),
    numbered in the order met (class folders sorted), so that with the whole data set label
    index = ClassId. An image without an annotation line gets label -1.

    Parameters
    ----------
    validation : float
        Fraction of each class of the training set moved to Validation.
    load_data_in_memory : bool
        Read the images at `load` (else when a provider first needs them). With
        `extract_ROIs` the images are cropped at `load`, hence always in memory.
    """

    _arguments = ("validation", "load_data_in_memory")
    _parameters = dict(DATABASE_PARAMETERS)

    def __init__(self, validation: float = 0.0, load_data_in_memory: bool = False, **config):
        validation = check_fraction("validation", validation)
        if not isinstance(load_data_in_memory, bool):
            raise WrongInputType("load_data_in_memory", type(load_data_in_memory), ["bool"])
        super().__init__({"validation": validation, "load_data_in_memory": load_data_in_memory}, **config)

    def load(self, data_path: str, label_path: str = "", extract_ROIs: bool = False):
        """Add the training images (partitioned per class) and the test images (Test)."""
        data_path = os.fspath(data_path)
        label_root = os.fspath(label_path) or data_path
        train_dir = os.path.join(data_path, "Final_Training", "Images")
        label_dir = os.path.join(label_root, "Final_Training", "Images")
        for class_dir in sub_directories(train_dir):
            rows = {}
            annotation_dir = os.path.join(label_dir, os.path.basename(class_dir))
            csvs = image_files(annotation_dir, ("csv",)) if os.path.isdir(annotation_dir) else []
            if not csvs:
                raise FileNotFoundError(f"GTSRB: no annotation file (GT-{os.path.basename(class_dir)}.csv) "
                                        f"in {annotation_dir}")
            for csv in csvs:
                rows.update(read_gtsrb_csv(csv, class_dir))
            self._add_annotated(image_files(class_dir, ("ppm",)), rows, extract_ROIs)
        validation = self._args["validation"]
        self.partition_stimuli_per_label(1.0 - validation, validation, 0.0, equiv_label=False)
        test_dir = os.path.join(data_path, "Final_Test", "Images")
        rows = read_gtsrb_csv(os.path.join(label_root, "GT-final_test.csv"), test_dir)
        self._add_annotated(image_files(test_dir, ("ppm",)), rows, extract_ROIs)
        # Everything still unpartitioned goes to Test, as upstream's final partitionStimuli(0, 0, 1).
        self._move_unpartitioned({"Test": self.get_nb_stimuli("Unpartitioned")})

    def _add_annotated(self, paths, rows, extract_rois):
        if not paths:
            return
        labels, stimuli = [], []
        for path in paths:
            row = rows.get(os.path.normpath(path))
            labels.append(self._label_id(str(row[0])) if row is not None else -1)
            if extract_rois and row is not None:
                stimuli.append(self._crop(path, row[1]))
        if not extract_rois:
            stimuli = stimuli_of(paths, self._args["load_data_in_memory"])
        elif len(stimuli) != len(paths):
            missing = next(p for p in paths if os.path.normpath(p) not in rows)
            raise ValueError(f"GTSRB: extract_ROIs needs an annotation line for every image; "
                             f"{missing} has none")
        self._add_stimuli(stimuli, np.asarray(labels), "Unpartitioned", names=list(paths))

    @staticmethod
    def _crop(path, roi):
        """The ROI of an image; Roi.X2 / Roi.Y2 are exclusive, as N2D2's rectangular ROIs."""
        image = read_stimulus_file(path)
        x1, y1, x2, y2 = roi
        if x2 > image.shape[2] or y2 > image.shape[1]:
            raise ValueError(f"GTSRB: ROI {roi} is outside the {image.shape[2]}x{image.shape[1]} image {path}")
        return np.ascontiguousarray(image[:, y1:y2, x1:x2])

    def get_stimulus_name(self, stimulus_id: int) -> str:
        return self._names[stimulus_id]
