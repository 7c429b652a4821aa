"""The databases upstream examples load (GTSRB, ILSVRC2012, Cityscapes, CIFAR-100, IMDB-WIKI),
each on a tiny fixture written here in the data set's own layout (no download)."""
import numpy as np
import pytest
from PIL import Image

import n2d2
from n2d2.database import CIFAR100, GTSRB, ILSVRC2012, IMDBWIKI, Cityscapes
from n2d2.frontends.ini import IniError, load_ini
from n2d2.provider import DataProvider

W, H = 8, 6


def write_rgb(path, rng, ext_format=None):
    """Write a random WxH RGB image; return what a reader decodes of the file (RGB, HxWx3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(path, format=ext_format)
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def chw_bgr(rgb):
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


def provider_batch(db, partition, batch_size):
    provider = DataProvider(db, [W, H, 3], batch_size=batch_size)
    provider.set_partition(partition)
    x = provider.read_batch(0)
    return x.to_numpy(), provider.get_labels().to_numpy().reshape(-1)


# -- GTSRB ------------------------------------------------------------------------------------------------
GTSRB_HEADER = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"


def make_gtsrb(root, per_class=4, classes=(0, 1, 2), nb_test=3):
    """Final_Training/Images/000NN/{000NN_000MM.ppm, GT-000NN.csv}, Final_Test/Images/*.ppm, GT-final_test.csv."""
    rng = np.random.default_rng(0)
    written = {}
    for c in classes:
        folder = root / "Final_Training" / "Images" / f"{c:05d}"
        lines = [GTSRB_HEADER]
        for k in range(per_class):
            name = f"{c:05d}_{k:05d}.ppm"
            written[str(folder / name)] = (write_rgb(folder / name, rng), c)
            lines.append(f"{name};{W};{H};1;1;{W - 1};{H - 2};{c}")
        (folder / f"GT-{c:05d}.csv").write_text("\n".join(lines) + "\n")
    folder = root / "Final_Test" / "Images"
    lines = [GTSRB_HEADER]
    for k in range(nb_test):
        name = f"{k:05d}.ppm"
        c = classes[(k + 1) % len(classes)]
        written[str(folder / name)] = (write_rgb(folder / name, rng), c)
        lines.append(f"{name};{W};{H};2;1;{W};{H};{c}")
    # The test images archive also ships a label-less GT-final_test.test.csv: not a stimulus.
    (folder / "GT-final_test.test.csv").write_text(GTSRB_HEADER.rsplit(";", 1)[0] + "\n")
    (root / "GT-final_test.csv").write_text("\n".join(lines) + "\n")
    return written


def test_gtsrb_partitions_labels_stimuli_and_provider(tmp_path):
    written = make_gtsrb(tmp_path)
    db = GTSRB(validation=0.25)
    db.load(str(tmp_path))
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test", "Unpartitioned")] == [9, 3, 3, 0]
    assert db.get_label_names() == ["0", "1", "2"] and db.get_nb_labels() == 3
    for p in ("Learn", "Validation"):  # the validation fraction is taken from every class
        ids = db.get_partition_ids(p)
        assert sorted(np.bincount([db.get_stimulus_label(int(i)) for i in ids]).tolist()) == \
            ([3, 3, 3] if p == "Learn" else [1, 1, 1])
    for i in range(db.get_nb_stimuli()):
        rgb, class_id = written[db.get_stimulus_name(i)]
        assert db.get_label_name(db.get_stimulus_label(i)) == str(class_id)
        np.testing.assert_array_equal(db._stimulus(i), chw_bgr(rgb))
    test_ids = db.get_partition_ids("Test")
    assert sorted(db.get_stimulus_name(int(i)).rsplit("/", 1)[1] for i in test_ids) == ["00000.ppm", "00001.ppm",
                                                                                        "00002.ppm"]
    x, labels = provider_batch(db, "Test", 3)
    expected = np.stack([chw_bgr(written[db.get_stimulus_name(int(i))][0]) for i in test_ids]) / 255.0
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    assert labels.tolist() == [written[db.get_stimulus_name(int(i))][1] for i in test_ids]
    assert sorted(labels.tolist()) == [0, 1, 2]


def test_gtsrb_extract_rois_crops_the_annotated_region(tmp_path):
    written = make_gtsrb(tmp_path, per_class=2, nb_test=1)
    db = GTSRB(validation=0.0)
    db.load(str(tmp_path), extract_ROIs=True)
    for i in range(db.get_nb_stimuli()):
        rgb, _ = written[db.get_stimulus_name(i)]
        crop = rgb[1:H - 2, 1:W - 1] if "Final_Training" in db.get_stimulus_name(i) else rgb[1:H, 2:W]
        np.testing.assert_array_equal(db._stimulus(i), chw_bgr(crop))


@pytest.mark.parametrize("line, message", [
    ("00000_00000.ppm;8;6;1;1", "expected 8 ';'-separated fields"),
    ("00000_00000.ppm;8;6;1;1;7;x;0", "must be integers"),
    ("00000_00000.ppm;8;6;5;1;2;4;0", "Roi.X1 < Roi.X2"),
    ("../../../etc/passwd;8;6;1;1;7;4;0", "not a relative path inside"),
    ("missing.ppm;8;6;1;1;7;4;0", "image 'missing.ppm' not found"),
])
def test_gtsrb_malformed_annotation_names_file_and_line(tmp_path, line, message):
    make_gtsrb(tmp_path, per_class=1, classes=(0,))
    csv = tmp_path / "Final_Training" / "Images" / "00000" / "GT-00000.csv"
    csv.write_text(csv.read_text() + line + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        GTSRB(0.0).load(str(tmp_path))
    assert f"{csv}:3" in str(info.value)


def test_gtsrb_missing_annotation_files_are_named(tmp_path):
    make_gtsrb(tmp_path, per_class=1)
    (tmp_path / "GT-final_test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="GT-final_test.csv"):
        GTSRB(0.0).load(str(tmp_path))
    (tmp_path / "Final_Training" / "Images" / "00001" / "GT-00001.csv").unlink()
    with pytest.raises(FileNotFoundError, match="no annotation file \\(GT-00001.csv\\) in .*00001"):
        GTSRB(0.0).load(str(tmp_path))


# -- ILSVRC2012 -------------------------------------------------------------------------------------------
SYNSETS = ("n01440764", "n01443537", "n01484850")


def make_ilsvrc(root, per_class=5, nb_val=4):
    """train/<wnid>/<wnid>_N.JPEG, val/ILSVRC2012_val_000000NN.JPEG, val.txt, synsets.txt."""
    rng = np.random.default_rng(1)
    written = {}
    for c, wnid in enumerate(SYNSETS):
        for k in range(per_class):
            path = root / "train" / wnid / f"{wnid}_{k}.JPEG"
            written[str(path)] = (write_rgb(path, rng, "JPEG"), c)
    lines = []
    for k in range(nb_val):
        name = f"ILSVRC2012_val_{k + 1:08d}.JPEG"
        c = (2 * k) % len(SYNSETS)
        written[str(root / "val" / name)] = (write_rgb(root / "val" / name, rng, "JPEG"), c)
        lines.append(f"{name} {c}")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    (root / "synsets.txt").write_text("\n".join(SYNSETS) + "\n")
    return written


def test_ilsvrc2012_partitions_labels_stimuli_and_provider(tmp_path):
    written = make_ilsvrc(tmp_path)
    db = ILSVRC2012(0.6, random_partitioning=False)
    db.load(str(tmp_path))
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test", "Unpartitioned")] == [9, 4, 6, 0]
    assert db.get_label_names() == list(SYNSETS)
    for i in range(db.get_nb_stimuli()):
        rgb, c = written[db.get_stimulus_name(i)]
        assert db.get_stimulus_label(i) == c
        np.testing.assert_array_equal(db._stimulus(i), chw_bgr(rgb))
    val_ids = db.get_partition_ids("Validation")
    assert [db.get_stimulus_label(int(i)) for i in val_ids] == [0, 2, 1, 0]  # val.txt order
    x, labels = provider_batch(db, "Validation", 4)
    np.testing.assert_allclose(x, np.stack([db._stimulus(int(i)) for i in val_ids]) / 255.0, rtol=1e-6)
    assert labels.tolist() == [0, 2, 1, 0]


def test_ilsvrc2012_validation_for_test_background_class_and_memory(tmp_path):
    make_ilsvrc(tmp_path)
    db = ILSVRC2012(1.0, use_validation_for_test=True, background_class=True, load_data_in_memory=True)
    db.load(str(tmp_path), str(tmp_path / "synsets.txt"))
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test")] == [15, 4, 4]
    assert db.get_label_names() == ["background"] + list(SYNSETS)
    val, test = db.get_partition_ids("Validation"), db.get_partition_ids("Test")
    assert [db.get_stimulus_label(int(i)) for i in test] == [1, 3, 2, 1]
    assert [db.get_stimulus_label(int(i)) for i in val] == [1, 3, 2, 1]
    assert db._is_uniform()  # read at load: one (N, 3, H, W) array


@pytest.mark.parametrize("line, message", [
    ("ILSVRC2012_val_00000001.JPEG", "expected '<file name> <label index>'"),
    ("ILSVRC2012_val_00000001.JPEG one", "is not an integer"),
    ("ILSVRC2012_val_00000001.JPEG 3", r"not in \[0, 3\)"),
    ("/etc/passwd 0", "not a relative path inside"),
    ("ILSVRC2012_val_00000099.JPEG 0", "not found"),
])
def test_ilsvrc2012_malformed_val_list_names_file_and_line(tmp_path, line, message):
    make_ilsvrc(tmp_path, per_class=1, nb_val=1)
    (tmp_path / "val.txt").write_text("ILSVRC2012_val_00000001.JPEG 0\n" + line + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        ILSVRC2012(1.0).load(str(tmp_path))
    assert f"{tmp_path / 'val.txt'}:2" in str(info.value)


def test_ilsvrc2012_missing_synset_folder_or_file(tmp_path):
    make_ilsvrc(tmp_path, per_class=1, nb_val=1)
    with pytest.raises(FileNotFoundError, match="synsets file not found: .*nope.txt"):
        ILSVRC2012(1.0).load(str(tmp_path), str(tmp_path / "nope.txt"))
    (tmp_path / "synsets.txt").write_text("\n".join(SYNSETS + ("n09999999",)))
    with pytest.raises(FileNotFoundError, match="no training folder .*n09999999.* listed in .*synsets.txt"):
        ILSVRC2012(1.0).load(str(tmp_path))
    (tmp_path / "synsets.txt").write_text("\n".join(SYNSETS + ("../../etc",)))
    with pytest.raises(ValueError, match=r"synsets.txt:4: file name '../../etc' is not a relative path"):
        ILSVRC2012(1.0).load(str(tmp_path))
    (tmp_path / "synsets.txt").write_text("\n".join(SYNSETS + (SYNSETS[0],)))
    with pytest.raises(ValueError, match="synsets.txt:4: synset 'n01440764' is listed twice"):
        ILSVRC2012(1.0).load(str(tmp_path))


# -- Cityscapes -------------------------------------------------------------------------------------------
def make_cityscapes(root, coarse=False):
    """leftImg8bit/<split>/<city>/*_leftImg8bit.png and gtFine/<split>/<city>/*_gtFine_labelIds.png."""
    rng = np.random.default_rng(2)
    written = {}
    layout = {"train": {"aachen": 2, "bremen": 1}, "val": {"frankfurt": 2}, "test": {"berlin": 1}}
    for split, cities in layout.items():
        for city, n in cities.items():
            for k in range(n):
                stem = f"{city}_{k:06d}_000019"
                image = root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
                rgb = write_rgb(image, rng)
                ids = rng.integers(0, 34, (H, W), dtype=np.uint8)
                label_file = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
                label_file.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(ids, mode="L").save(label_file)
                written[str(image)] = (rgb, ids)
    return written


def test_cityscapes_partitions_label_maps_and_provider(tmp_path):
    written = make_cityscapes(tmp_path)
    db = Cityscapes()
    db.load(str(tmp_path / "leftImg8bit"))
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test", "Unpartitioned")] == [3, 2, 1, 0]
    assert db.get_nb_labels() == 35
    assert (db.get_label_name(0), db.get_label_name(7), db.get_label_name(26), db.get_label_name(33),
            db.get_label_name(34)) == ("unlabeled", "road", "car", "bicycle", "license plate")
    for i in range(db.get_nb_stimuli()):
        rgb, ids = written[db.get_stimulus_name(i)]
        np.testing.assert_array_equal(db._stimulus(i), chw_bgr(rgb))
        np.testing.assert_array_equal(db.get_stimulus_label_map(i), ids)
        assert db.get_stimulus_label(i) == -1
    learn = [db.get_stimulus_name(int(i)).rsplit("/", 2)[1] for i in db.get_partition_ids("Learn")]
    assert learn == ["aachen", "aachen", "bremen"]
    x, labels = provider_batch(db, "Validation", 2)
    np.testing.assert_allclose(x, np.stack([db._stimulus(int(i)) for i in db.get_partition_ids("Validation")]) / 255.0,
                               rtol=1e-6)
    assert labels.tolist() == [-1, -1]


def test_cityscapes_bad_label_files(tmp_path):
    make_cityscapes(tmp_path)
    label = next((tmp_path / "gtFine" / "val" / "frankfurt").iterdir())
    Image.fromarray(np.full((H, W), 40, dtype=np.uint8), mode="L").save(label)
    db = Cityscapes()
    db.load(str(tmp_path / "leftImg8bit"))
    bad = next(i for i in range(db.get_nb_stimuli()) if label.name.split("_gtFine")[0] in db.get_stimulus_name(i))
    with pytest.raises(ValueError, match=f"{label}: label id 40 is not in the Cityscapes label table"):
        db.get_stimulus_label_map(bad)
    label.unlink()
    with pytest.raises(FileNotFoundError, match=f"label map of .* not found: {label}"):
        Cityscapes().load(str(tmp_path / "leftImg8bit"))
    with pytest.raises(ValueError, match="polygon"):
        Cityscapes(single_instance_labels=False)


# -- CIFAR-100 (binary version: 1 coarse + 1 fine label byte, then 3072 pixel bytes per record) ------------
def test_cifar100_binary_layout_stimuli_and_provider(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "cifar-100-binary"
    root.mkdir()
    records = {}
    for name, n in (("train.bin", 6), ("test.bin", 3)):
        coarse, fine = rng.integers(0, 20, n, dtype=np.uint8), rng.integers(0, 100, n, dtype=np.uint8)
        planes = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)  # R, G, B planes
        (root / name).write_bytes(np.concatenate([coarse[:, None], fine[:, None], planes.reshape(n, -1)], 1).tobytes())
        records[name] = (coarse, fine, planes)
    (root / "coarse_label_names.txt").write_text("\n".join(f"super{i}" for i in range(20)) + "\n")
    (root / "fine_label_names.txt").write_text("\n".join(f"class{i}" for i in range(100)) + "\n")
    db = CIFAR100(validation=0.0, use_coarse=True)
    db.load(str(root))
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test")] == [6, 0, 3]
    coarse, _, planes = records["test.bin"]
    test = db.get_partition_ids("Test")
    assert [db.get_label_name(db.get_stimulus_label(int(i))) for i in test] == [f"super{c}" for c in coarse]
    np.testing.assert_array_equal(np.stack([db._stimulus(int(i)) for i in test]), planes[:, ::-1])
    provider = DataProvider(db, [32, 32, 3], batch_size=3)
    np.testing.assert_allclose(provider.read_batch(0).to_numpy(), planes[:, ::-1] / 255.0, rtol=1e-6)


# -- IMDB-WIKI --------------------------------------------------------------------------------------------
# (full_path, name, face location x1 y1 x2 y2, year of birth, photo taken, gender)
FACES = [("01/a_1980.jpg", "Ann", (1, 2, 5, 6), 1980, 2010, 0.0),
         ("01/b_1975.jpg", "Bob", (2, 1, 7, 5), 1975, 2000, 1.0),
         ("02/c_1990.jpg", "Cid", (1, 1, 1, 1), 1990, 2012, 1.0),      # "no face" marker: skipped
         ("02/d_1960.jpg", "Dee", (0, 0, 8, 6), 1960, 2001, float("nan")),
         ("03/e_2020.jpg", "Ann", (2, 1, 4, 4), 2020, 2010, 0.0)]      # negative age


def make_imdbwiki(root, crop=True, metadata="mat"):
    rng = np.random.default_rng(5)
    image_dir = root / ("wiki_crop" if crop else "wiki")
    written = {}
    for path, *_ in FACES:
        written[str(image_dir / path)] = write_rgb(image_dir / path, rng, "JPEG")
    if metadata == "mat":
        import datetime

        from scipy.io import savemat

        n = len(FACES)
        def cells(values):
            out = np.empty((1, n), dtype=object)
            for k, v in enumerate(values):
                out[0, k] = v
            return out

        serial = [datetime.date(f[3], 7, 1).toordinal() + 366 for f in FACES]  # Matlab datenum
        savemat(image_dir / "wiki.mat", {"wiki": {
            "full_path": cells(np.array([f[0]]) for f in FACES), "name": cells(np.array([f[1]]) for f in FACES),
            "face_location": cells(np.array([f[2]], dtype=float) for f in FACES),
            "dob": np.array([serial], dtype=float), "photo_taken": np.array([[f[4] for f in FACES]], dtype=float),
            "gender": np.array([[f[5] for f in FACES]]), "face_score": np.ones((1, n))}})
    else:
        (root / "imdb_metadata").mkdir()
        lines = ["# full_path;name;x0;y0;x1;y1;dob;photo_taken;gender"]
        lines += [f"{p};{n.replace('Bob', 'B&amp;b')};{b[0]};{b[1]};{b[2]};{b[3]};{d};{t};{g}"
                  for p, n, b, d, t, g in FACES]
        (root / "imdb_metadata" / "wiki.csv").write_text("\n".join(lines) + "\n")
    return written


@pytest.mark.parametrize("metadata", ["mat", "csv"])
def test_imdbwiki_labels_partitions_stimuli_and_provider(tmp_path, metadata):
    written = make_imdbwiki(tmp_path, metadata=metadata)
    db = IMDBWIKI(wiki_set=True, crop_frame=True, learn=0.5, validation=0.25, random_partitioning=False)
    db.load(str(tmp_path))
    assert db.nb_corrupted_frames == 1
    assert db.get_label_names() == ["F-30", "M-25", "?-41", "F-?"]
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test", "Unpartitioned")] == [2, 1, 1, 0]
    for i in range(db.get_nb_stimuli()):
        np.testing.assert_array_equal(db._stimulus(i), chw_bgr(written[db.get_stimulus_name(i)]))
    assert db.get_stimulus_face_box(1) == (2, 1, 7, 5)
    x, labels = provider_batch(db, "Learn", 2)
    assert labels.tolist() == [0, 1]
    np.testing.assert_allclose(x, np.stack([db._stimulus(i) for i in (0, 1)]) / 255.0, rtol=1e-6)
    by_name = IMDBWIKI(use_name_as_label=True, crop_frame=True)
    by_name.load(str(tmp_path))
    assert by_name.get_label_names() == ["Ann", "B&b" if metadata == "csv" else "Bob", "Dee"]
    assert by_name.get_nb_stimuli("Learn") == 4


def test_imdbwiki_malformed_csv_and_unsafe_path(tmp_path):
    make_imdbwiki(tmp_path, metadata="csv")
    csv = tmp_path / "imdb_metadata" / "wiki.csv"
    text = csv.read_text()
    csv.write_text(text + "01/a_1980.jpg;Ann;1;2;5\n")
    with pytest.raises(ValueError, match=f"{csv}:7: expected 9 ';'-separated fields"):
        IMDBWIKI(crop_frame=True).load(str(tmp_path))
    csv.write_text(text + "01/a_1980.jpg;Ann;1;2;5;6;old;2000;1\n")
    with pytest.raises(ValueError, match=f"{csv}:7: fields 3 to 9"):
        IMDBWIKI(crop_frame=True).load(str(tmp_path))
    csv.write_text(text + "../../secret.jpg;Ann;1;2;5;6;1980;2000;1\n")
    with pytest.raises(ValueError, match=f"{csv}:7: file name '../../secret.jpg' is not a relative path"):
        IMDBWIKI(crop_frame=True).load(str(tmp_path))


def test_imdbwiki_missing_or_foreign_metadata_is_named(tmp_path):
    (tmp_path / "wiki_crop").mkdir()
    with pytest.raises(FileNotFoundError, match="wiki_crop/wiki.mat"):
        IMDBWIKI(crop_frame=True).load(str(tmp_path))
    from scipy.io import savemat

    savemat(tmp_path / "wiki_crop" / "wiki.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="wiki.mat: not an IMDB-WIKI metadata file"):
        IMDBWIKI(crop_frame=True).load(str(tmp_path))
    for content in (b"MATLAB 5.0 but truncated", b""):
        (tmp_path / "wiki_crop" / "wiki.mat").write_bytes(content)
        with pytest.raises(ValueError, match="wiki.mat: not an IMDB-WIKI metadata file"):
            IMDBWIKI(crop_frame=True).load(str(tmp_path))


# -- INI database types -----------------------------------------------------------------------------------
INI = """
[database]
Type={type}
DataPath={path}
{keys}

[sp]
SizeX={w}
SizeY={h}
NbChannels=3
BatchSize=2

[fc]
Input=sp
Type=Fc
NbOutputs=4

[fc.Target]
"""


def ini_database(tmp_path, type_, path, keys, w=W, h=H):
    ini = tmp_path / "net.ini"
    ini.write_text(INI.format(type=type_, path=path, keys=keys, w=w, h=h))
    return load_ini(str(ini), backend="numpy").get_provider().get_database()


def test_ini_ilsvrc2012_database(tmp_path):
    make_ilsvrc(tmp_path / "ILSVRC2012")
    db = ini_database(tmp_path, "ILSVRC2012_Database", tmp_path / "ILSVRC2012", "RandomPartitioning=0\nLearn=1.0")
    assert isinstance(db, ILSVRC2012)
    # UseValidationForTest defaults to 1 in INI files, as upstream's generator
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test")] == [15, 4, 4]
    assert db.get_label_names() == list(SYNSETS) and db.random_partitioning is False
    db = ini_database(tmp_path, "ILSVRC2012_Database", tmp_path / "ILSVRC2012",
                      f"Learn=0.4\nUseValidationForTest=0\nBackgroundClass=1\n"
                      f"LabelPath={tmp_path / 'ILSVRC2012' / 'synsets.txt'}")
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test")] == [6, 4, 9]
    assert db.get_label_name(0) == "background"


def test_ini_ilsvrc2012_default_paths_under_n2d2_data(tmp_path, monkeypatch):
    make_ilsvrc(tmp_path / "ILSVRC2012", per_class=1, nb_val=1)
    monkeypatch.setenv("N2D2_DATA", str(tmp_path))
    ini = tmp_path / "net.ini"
    ini.write_text(INI.format(type="ILSVRC2012_Database", path="x", keys="Learn=1.0", w=W, h=H)
                   .replace("DataPath=x\n", ""))
    db = load_ini(str(ini), backend="numpy").get_provider().get_database()
    assert db.get_nb_stimuli("Learn") == 3


def test_ini_gtsrb_dir_database(tmp_path):
    make_gtsrb(tmp_path / "GTSRB")
    db = ini_database(tmp_path, "GTSRB_DIR_Database", tmp_path / "GTSRB", "Validation=0.25")
    assert isinstance(db, GTSRB)
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test")] == [9, 3, 3]
    db = ini_database(tmp_path, "GTSRB_DIR_Database", tmp_path / "GTSRB", "ExtractROIs=1", w=W - 2, h=H - 3)
    assert db._stimulus(0).shape == (3, H - 3, W - 2)


def test_ini_imdbwiki_database(tmp_path):
    make_imdbwiki(tmp_path / "IMDB-WIKI", metadata="csv")
    db = ini_database(tmp_path, "IMDBWIKI_Database", tmp_path / "IMDB-WIKI",
                      "CropFrame=1\nLearn=0.75\nValidation=0.25\nRandomPartitioning=0")
    assert isinstance(db, IMDBWIKI)
    assert [db.get_nb_stimuli(p) for p in ("Learn", "Validation", "Test")] == [3, 1, 0]
    assert db.get_label_name(0) == "F-30"


def test_ini_upstream_database_errors_name_the_file(tmp_path):
    make_gtsrb(tmp_path / "GTSRB", per_class=1)
    with pytest.raises(IniError, match="Validation"):
        ini_database(tmp_path, "GTSRB_DIR_Database", tmp_path / "GTSRB", "Validation=2")
    with pytest.raises(IniError, match="Learn"):  # required, as upstream
        ini_database(tmp_path, "ILSVRC2012_Database", tmp_path, "")
    with pytest.raises(IniError, match="LabelPath 'nope.txt' does not exist"):
        ini_database(tmp_path, "ILSVRC2012_Database", tmp_path, "Learn=1.0\nLabelPath=nope.txt")
    with pytest.raises(IniError, match="LabelPath"):  # upstream's GTSRB generator reads no LabelPath
        ini_database(tmp_path, "GTSRB_DIR_Database", tmp_path / "GTSRB", f"LabelPath={tmp_path}")
    (tmp_path / "GTSRB" / "GT-final_test.csv").unlink()
    with pytest.raises(IniError, match="GT-final_test.csv") as info:
        ini_database(tmp_path, "GTSRB_DIR_Database", tmp_path / "GTSRB", "")
    assert "net.ini" in str(info.value)


def test_all_exported():
    for name in ("GTSRB", "ILSVRC2012", "Cityscapes", "CIFAR100", "IMDBWIKI"):
        assert name in n2d2.database.__all__ and hasattr(n2d2.database, name)
