"""`ILSVRC2012`: ImageNet's 2012 classification challenge in the layout N2D2 reads.

Layout: the images of the challenge's archives (ILSVRC2012_img_train.tar: one folder per synset
of `nXXXXXXXX_*.JPEG`; ILSVRC2012_img_val.tar: 50000 flat `ILSVRC2012_val_000NNNNN.JPEG`)
and the label files of Caffe's `get_ilsvrc_aux.sh` (caffe_ilsvrc12.tar.gz, as upstream expects)::

    <data_path>/train/<wnid>/*.JPEG
    <data_path>/val/*.JPEG
    <data_path>/val.txt           "<file name> <label index>" per line (index into synsets.txt)
    <label_path>                  synsets.txt: one wnid per line, line k = label k
"""
import os

import numpy as np

from n2d2.database.database import DATABASE_PARAMETERS, Database, check_fraction
from n2d2.database.layout import image_files, member_path, stimuli_of, text_lines
from n2d2.error_handler import WrongInputType


def read_synsets(path: str) -> list:
    """The synset ids of `synsets.txt`, in order (first word of each non-empty line, so that
    `synset_words.txt` works too)."""
    names = []
    for line_no, line in text_lines(path, "ILSVRC2012 synsets file"):
        words = line.split()
        if not words:
            continue
        if words[0] in names:
            raise ValueError(f"{path}:{line_no}: synset {words[0]!r} is listed twice")
        member_path("train", words[0], f"{path}:{line_no}")
        names.append(words[0])
    if not names:
        raise ValueError(f"{path}: no synset in the file")
    return names


def read_val_list(path: str, image_dir: str, nb_labels: int) -> tuple:
    """(image paths, label indices) of `val.txt`; a malformed line, an index out of range or a
    missing image raises an error naming the file and line."""
    paths, labels = [], []
    for line_no, line in text_lines(path, "ILSVRC2012 validation labels file"):
        words = line.split()
        if not words:
            continue
        if len(words) != 2:
            raise ValueError(f"{path}:{line_no}: expected '<file name> <label index>', got {line.strip()!r}")
        try:
            label = int(words[1])
        except ValueError:
            raise ValueError(f"{path}:{line_no}: label index {words[1]!r} is not an integer") from None
        if not 0 <= label < nb_labels:
            raise ValueError(f"{path}:{line_no}: label index {label} is not in [0, {nb_labels}) "
                             f"(the synsets file lists {nb_labels})")
        image = member_path(image_dir, words[0], f"{path}:{line_no}")
        if not os.path.isfile(image):
            raise FileNotFoundError(f"{path}:{line_no}: image {words[0]!r} not found in {image_dir}")
        paths.append(image)
        labels.append(label)
    return paths, labels


class ILSVRC2012(Database):
    """ImageNet ILSVRC2012 (1000 synsets).

    `load(data_path, label_path="")` reads the training images of every synset listed in
    `label_path` (default `<data_path>/synsets.txt`), in that order: label k = line k, named
    by its wnid; a fraction `learn` of them goes to Learn, the rest to Test. The validation
    images listed in `<data_path>/val.txt` go to Validation, and with
    `use_validation_for_test` to Test as well (as upstream, a second copy of each).

    Parameters
    ----------
    learn : float
        Fraction of the training images put in Learn (the others go to Test).
    use_validation_for_test : bool
        Also put the validation images in Test.
    background_class : bool
        Label 0 is an extra "background" class (no image) and synset k is label k + 1, for
        1001-output networks (TensorFlow's MobileNet).
    load_data_in_memory : bool
        Read the images at `load` (else when a provider first needs them).
    """

    _arguments = ("learn", "use_validation_for_test", "background_class", "load_data_in_memory")
    _parameters = dict(DATABASE_PARAMETERS)

    def __init__(self, learn: float, use_validation_for_test: bool = False, background_class: bool = False,
                 load_data_in_memory: bool = False, **config):
        learn = check_fraction("learn", learn)
        for name, value in (("use_validation_for_test", use_validation_for_test),
                            ("background_class", background_class), ("load_data_in_memory", load_data_in_memory)):
            if not isinstance(value, bool):
                raise WrongInputType(name, type(value), ["bool"])
        super().__init__({"learn": learn, "use_validation_for_test": use_validation_for_test,
                          "background_class": background_class, "load_data_in_memory": load_data_in_memory},
                         **config)

    def load(self, data_path: str, label_path: str = "", extract_ROIs: bool = False):
        """Add the training images (Learn / Test) and the validation images (Validation)."""
        data_path = os.fspath(data_path)
        synsets_file = os.fspath(label_path) or os.path.join(data_path, "synsets.txt")
        synsets = read_synsets(synsets_file)
        if self._args["background_class"]:
            self._label_id("background")
        ids = [self._label_id(s) for s in synsets]
        in_memory = self._args["load_data_in_memory"]
        paths, labels = [], []
        for synset, label in zip(synsets, ids):
            folder = os.path.join(data_path, "train", synset)
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"ILSVRC2012: no training folder {folder} for synset {synset!r} "
                                        f"listed in {synsets_file}")
            files = image_files(folder)
            paths.extend(files)
            labels.extend([label] * len(files))
        if paths:  # one call: appending synset by synset would copy the growing list 1000 times
            self._add_stimuli(stimuli_of(paths, in_memory), labels, names=paths)
        learn = self._args["learn"]
        self.partition_stimuli(learn, 0.0, 1.0 - learn)
        paths, labels = read_val_list(os.path.join(data_path, "val.txt"), os.path.join(data_path, "val"),
                                      len(synsets))
        if paths:
            labels = np.asarray(ids)[labels]
            stimuli = stimuli_of(paths, in_memory)
            self._add_stimuli(stimuli, labels, "Validation", names=paths)
            if self._args["use_validation_for_test"]:
                self._add_stimuli(stimuli, labels, "Test", names=paths)

    def get_stimulus_name(self, stimulus_id: int) -> str:
        return self._names[stimulus_id]
