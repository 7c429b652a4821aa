"""`Cityscapes`: urban street scenes with pixel-wise labels, in the data set's own layout.

Layout of the official archives (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip,
gtCoarse.zip, leftImg8bit_trainextra.zip; https://www.cityscapes-dataset.com and the
cityscapesScripts README, "Dataset Structure")::

    <root>/leftImg8bit/{train,val,test,train_extra}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    <root>/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    <root>/gtCoarse/{train,val,train_extra}/<city>/<city>_<seq>_<frame>_gtCoarse_labelIds.png

A `*_labelIds.png` holds, for every pixel, the label id of cityscapesScripts' label table
(`labels.py`), which is also N2D2's label table: label index = label id, 0 ("unlabeled") to
33 ("bicycle"), then "license plate" (id -1 in the table, never drawn in the maps) is 34.
"""
import os

import numpy as np

from n2d2.database.database import DATABASE_PARAMETERS, Database
from n2d2.database.dir_db import read_image
from n2d2.database.layout import image_files, stimuli_of, sub_directories
from n2d2.error_handler import WrongInputType

CITYSCAPES_LABELS = (
    "unlabeled", "ego vehicle", "rectification border", "out of roi", "static", "dynamic", "ground",
    "road", "sidewalk", "parking", "rail track", "building", "wall", "fence", "guard rail", "bridge",
    "tunnel", "pole", "polegroup", "traffic light", "traffic sign", "vegetation", "terrain", "sky",
    "person", "rider", "car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle",
    "license plate",
)
_LAST_DRAWN_ID = 33
_IMAGE_SUFFIX = "_leftImg8bit"


def read_label_map(path: str) -> np.ndarray:
    """A `*_labelIds.png` as an (H, W) int32 array of label indices (checked to be 0..33)."""
    image = read_image(path)
    if image.shape[0] != 1 or image.dtype != np.uint8:
        raise ValueError(f"{path}: a Cityscapes label map is an 8-bit single-channel image, got "
                         f"{image.shape[0]} channel(s) of {image.dtype}")
    labels = image[0].astype(np.int32)
    if labels.size and labels.max() > _LAST_DRAWN_ID:
        raise ValueError(f"{path}: label id {int(labels.max())} is not in the Cityscapes label table "
                         f"(ids 0 to {_LAST_DRAWN_ID})")
    return labels


class Cityscapes(Database):
    """Cityscapes, a segmentation database: every image has a pixel-wise label map.

    `load(data_path, label_path="")`: `data_path` is the `leftImg8bit` folder; the label maps
    come from its sibling `gtFine` (or `gtCoarse` with `use_coarse`), or from `label_path`.
    train goes to Learn, val to Validation, test to Test (city folders and files sorted). The
    labels are the 35 names of the label table (module docstring).

    What a `DataProvider` returns: the images, with label -1 (a stimulus has no single class);
    with `composite_stimuli=True`, the pixel-wise label maps (moved along with the images by
    the transformations; all -1 for an image whose split has none). One map alone:
    `get_stimulus_label_map(stimulus_id)`.

    Parameters
    ----------
    inc_train_extra : bool
        Also put `leftImg8bit/train_extra` (coarse labels from `gtCoarse/train_extra`) in Learn.
    use_coarse : bool
        Read the label maps of `gtCoarse` (which has no test split: test images then have none).
    single_instance_labels : bool
        Must be True: the label maps already draw group regions ("cargroup") as their class
        ("car"); the group labels exist only in the polygon files, which n2d2 does not read.
    load_data_in_memory : bool
        Read the images and their label maps at `load` (else when a provider needs them).
    """

    _arguments = ("inc_train_extra", "use_coarse", "single_instance_labels", "load_data_in_memory")
    _parameters = dict(DATABASE_PARAMETERS)

    def __init__(self, inc_train_extra: bool = False, use_coarse: bool = False, single_instance_labels: bool = True,
                 load_data_in_memory: bool = False, **config):
        for name, value in (("inc_train_extra", inc_train_extra), ("use_coarse", use_coarse),
                            ("single_instance_labels", single_instance_labels),
                            ("load_data_in_memory", load_data_in_memory)):
            if not isinstance(value, bool):
                raise WrongInputType(name, type(value), ["bool"])
        if not single_instance_labels:
            raise ValueError("Cityscapes: single_instance_labels=False needs the polygon files "
                             "(*_polygons.json), which n2d2 does not read; the *_labelIds.png maps it reads "
                             "draw group regions as their single-instance class")
        super().__init__({"inc_train_extra": inc_train_extra, "use_coarse": use_coarse,
                          "single_instance_labels": single_instance_labels,
                          "load_data_in_memory": load_data_in_memory}, **config)
        self._label_names = list(CITYSCAPES_LABELS)
        self._label_map_files = []   # per stimulus: its *_labelIds.png (uint8 map once read), or None

    def load(self, data_path: str, label_path: str = "", extract_ROIs: bool = False):
        """Add train (Learn), val (Validation) and test (Test) with their label map files."""
        data_path = os.path.normpath(os.fspath(data_path))
        parent = os.path.dirname(data_path)
        kind = "gtCoarse" if self._args["use_coarse"] else "gtFine"
        label_root = os.fspath(label_path) or os.path.join(parent, kind)
        splits = [("train", "Learn", label_root, kind)]
        if self._args["inc_train_extra"]:
            splits.append(("train_extra", "Learn", os.fspath(label_path) or os.path.join(parent, "gtCoarse"),
                           "gtCoarse"))
        splits += [("val", "Validation", label_root, kind), ("test", "Test", label_root, kind)]
        for split, partition, labels_dir, suffix in splits:
            self._load_split(os.path.join(data_path, split), os.path.join(labels_dir, split), suffix, partition)

    def _load_split(self, image_dir, label_dir, kind, partition):
        # A split whose label folder is absent (gtCoarse has no test) has no label maps.
        has_labels = os.path.isdir(label_dir)
        for city_dir in sub_directories(image_dir):
            paths = image_files(city_dir)
            if not paths:
                continue
            city = os.path.basename(city_dir)
            maps = []
            for p in paths:
                stem = os.path.splitext(os.path.basename(p))[0]
                if not stem.endswith(_IMAGE_SUFFIX):
                    raise ValueError(f"Cityscapes: {p} is not named <city>_<seq>_<frame>{_IMAGE_SUFFIX}.png")
                label_file = os.path.join(label_dir, city, stem[:-len(_IMAGE_SUFFIX)] + f"_{kind}_labelIds.png")
                if has_labels and not os.path.isfile(label_file):
                    raise FileNotFoundError(f"Cityscapes: label map of {p} not found: {label_file}")
                if has_labels and self._args["load_data_in_memory"]:
                    maps.append(read_label_map(label_file).astype(np.uint8))  # ids 0..33: a quarter of int32
                else:
                    maps.append(label_file if has_labels else None)
            self._add_stimuli(stimuli_of(paths, self._args["load_data_in_memory"]), np.full(len(paths), -1),
                              partition, names=paths)
            self._label_map_files.extend(maps)

    def has_label_maps(self) -> bool:
        return True

    def _label_map(self, stimulus_id: int, shape: tuple) -> np.ndarray:
        if self._label_map_files[stimulus_id] is None:
            return np.full(shape, -1, dtype=np.int32)
        return self.get_stimulus_label_map(stimulus_id)

    def get_stimulus_label_map(self, stimulus_id: int) -> np.ndarray:
        """(H, W) int32 label indices of a stimulus (`ValueError` when its split has no labels)."""
        path = self._label_map_files[stimulus_id]
        if path is None:
            raise ValueError(f"Cityscapes: stimulus {stimulus_id} ({self._names[stimulus_id]}) has no label map")
        if isinstance(path, np.ndarray):
            return path.astype(np.int32)
        return read_label_map(path)

    def get_stimulus_name(self, stimulus_id: int) -> str:
        return self._names[stimulus_id]
