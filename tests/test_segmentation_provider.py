"""Segmentation: a DataProvider with `composite_stimuli` delivers the database's pixel-wise label
maps, moved by every geometric transformation exactly as its image (nearest neighbour, -1 where
padded), on a Cityscapes fixture written by the test; a small fully convolutional network trains
on it with Score on the numpy and C backends."""
import shutil

import numpy as np
import pytest
from PIL import Image

import n2d2
from n2d2 import transform as T
from n2d2.activation import Rectifier
from n2d2.cells import Conv, Sequence, Softmax
from n2d2.database import Cityscapes
from n2d2.provider import DataProvider
from n2d2.solver import SGD
from tests.test_databases_upstream import H, W, make_cityscapes


@pytest.fixture
def cityscapes(tmp_path):
    make_cityscapes(tmp_path)
    return tmp_path


def load(root, **kw) -> Cityscapes:
    db = Cityscapes(**kw)
    db.load(str(root / "leftImg8bit"))
    return db


def partition_maps(db, partition):
    return [db.get_stimulus_label_map(int(i)) for i in db.get_partition_ids(partition)]


def partition_images(db, partition):
    return [db._stimulus(int(i)) for i in db.get_partition_ids(partition)]


def test_provider_labels_are_the_label_maps(cityscapes):
    db = load(cityscapes)
    assert db.has_label_maps() and not n2d2.database.Numpy().has_label_maps()
    p = DataProvider(db, [W, H, 3], batch_size=4, composite_stimuli=True)
    p.set_partition("Learn")
    x = p.read_batch(0)
    labels = p.get_labels()
    assert labels.dims() == [W, H, 1, 4] and labels.to_numpy().shape == (4, 1, H, W)
    maps = partition_maps(db, "Learn")
    for j in range(3):
        np.testing.assert_array_equal(labels.to_numpy()[j, 0], maps[j])
    assert (labels.to_numpy()[3] == -1).all()  # invalid slot past the end of the partition
    np.testing.assert_allclose(x.to_numpy()[:3], np.stack(partition_images(db, "Learn")) / 255.0, rtol=1e-6)
    # Without composite_stimuli: one label per stimulus, -1 (no single class), as before.
    with pytest.warns(UserWarning, match="Cityscapes has pixel-wise label maps, which this provider does not "
                                         "deliver .* pass composite_stimuli=True"):
        plain = DataProvider(db, [W, H, 3], batch_size=2)
    plain.set_partition("Learn")
    plain.read_batch(0)
    assert plain.get_labels().to_numpy().shape == (2, 1, 1, 1) and (plain.get_labels().to_numpy() == -1).all()


def nearest_rescale(m, out_h, out_w):
    """OpenCV INTER_NEAREST, computed independently: output i takes source floor(i * in / out)."""
    rows = [int(np.floor(i * m.shape[0] / out_h)) for i in range(out_h)]
    cols = [int(np.floor(j * m.shape[1] / out_w)) for j in range(out_w)]
    return m[np.ix_(rows, cols)]


@pytest.mark.parametrize("in_memory", [False, True])
def test_rescale_flip_padcrop_move_labels_pixel_for_pixel(cityscapes, in_memory):
    db = load(cityscapes, load_data_in_memory=in_memory)
    assert db._is_uniform() == in_memory
    if in_memory:  # images and label maps were read at load
        shutil.rmtree(cityscapes / "gtFine")
        shutil.rmtree(cityscapes / "leftImg8bit")
    out_w, out_h = 7, 3
    p = DataProvider(db, [out_w, out_h, 3], batch_size=2, composite_stimuli=True)
    rescale, flip = T.Rescale(5, 4), T.Flip(horizontal_flip=True)
    padcrop = T.PadCrop(out_w, out_h, border_type="ReflectBorder")
    p.add_transformation(rescale)                # static: cached with its label map
    p.add_on_the_fly_transformation(flip)
    p.add_on_the_fly_transformation(padcrop)     # 5 -> 7 wide: one padded column each side; 4 -> 3 high
    p.set_partition("Learn")
    expected_maps, expected_images = [], []
    for image, m in zip(partition_images(db, "Learn"), partition_maps(db, "Learn")):
        m = nearest_rescale(m, 4, 5)[:, ::-1][:3]                     # Rescale, Flip, crop the last row
        expected_maps.append(np.pad(m, ((0, 0), (1, 1)), constant_values=-1))  # padded labels are -1
        expected_images.append(padcrop.apply(flip.apply(rescale.apply(image))) / 255.0)
    for _ in range(2):  # the second pass reads the static cache
        got_maps, got_images = [], []
        for x in p.prefetch_batches(shuffle=False):
            k = int((p.get_labels().to_numpy()[:, 0] >= 0).any(axis=(1, 2)).sum())
            got_maps.extend(p.get_labels().to_numpy()[:k, 0])
            got_images.extend(x.to_numpy()[:k])
        assert len(got_maps) == 3
        for got, want in zip(got_maps, expected_maps):
            np.testing.assert_array_equal(got, want)
        for got, want in zip(got_images, expected_images):
            np.testing.assert_allclose(got, want, rtol=1e-6)


def test_random_flips_use_the_same_draw_for_image_and_labels(cityscapes):
    db = load(cityscapes)
    p = DataProvider(db, [W, H, 3], batch_size=4, composite_stimuli=True)
    p.add_on_the_fly_transformation(T.Flip(random_horizontal_flip=True, random_vertical_flip=True))
    p.set_partition("Learn")
    sources = list(zip(partition_images(db, "Learn"), partition_maps(db, "Learn")))
    flips = [lambda a: a, lambda a: a[..., ::-1], lambda a: a[..., ::-1, :], lambda a: a[..., ::-1, ::-1]]
    seen = set()
    for _ in range(6):
        x = p.read_random_batch().to_numpy()
        labels = p.get_labels().to_numpy()[:, 0]
        for j in range(4):
            matches = [(s, f) for s, (image, _) in enumerate(sources) for f, flip in enumerate(flips)
                       if np.allclose(x[j], flip(image) / 255.0)]
            assert len(matches) == 1
            s, f = matches[0]
            np.testing.assert_array_equal(labels[j], flips[f](sources[s][1]))
            seen.add(f)
    assert len(seen) > 1  # the draws did flip some images


RANDOM_GEOMETRY = [
    T.Distortion(elastic_gaussian_size=5, elastic_sigma=2.0, elastic_scaling=2.0, scaling=20.0, rotation=30.0),
    T.SliceExtraction(12, 10, random_offset_x=True, random_offset_y=True, random_rotation=True,
                      random_rotation_range=[-40.0, 40.0], random_scaling=True, allow_padding=True),
    T.SliceExtraction(12, 10, random_offset_x=True, random_offset_y=True),
    T.RandomResizeCrop(12, 10, scale_min=0.3, scale_max=0.9, ratio_min=0.5, ratio_max=2.0),
]


@pytest.mark.parametrize("transformation", RANDOM_GEOMETRY, ids=lambda t: t.get_type())
def test_random_geometry_moves_labels_with_the_image(transformation):
    """Images whose channels are the pixel's own (y, x) (bilinear sampling keeps linear functions
    exact) and labels y * w + x: where a label is valid and its source pixel is not on the border,
    the image sampled the point whose nearest pixel is that label's, so both used the same draw."""
    n, h, w = 6, 16, 20
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    images = np.broadcast_to(np.stack([ys, xs]), (n, 2, h, w)).copy()
    labels = np.broadcast_to((np.arange(h)[:, None] * w + np.arange(w)).astype(np.int32), (n, h, w)).copy()
    out, out_labels = transformation.apply_batch_with_labels(images, labels, np.random.default_rng(7))
    # The labels do not change what the images get from the same generator.
    np.testing.assert_array_equal(out, transformation.apply_batch(images, np.random.default_rng(7)))
    assert out_labels.shape == (n,) + out.shape[2:] and out_labels.dtype == np.int32
    ly, lx = np.divmod(out_labels, w)
    inner = (out_labels >= 0) & (ly >= 1) & (ly <= h - 2) & (lx >= 1) & (lx <= w - 2)
    assert inner.mean() > 0.3
    assert np.abs(out[:, 0] - ly)[inner].max() <= 0.5 + 1e-6
    assert np.abs(out[:, 1] - lx)[inner].max() <= 0.5 + 1e-6
    assert len({tuple(m.ravel()) for m in out_labels}) == n  # one draw per image


def test_padding_is_minus_one_and_intensity_transformations_leave_labels():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    labels = rng.integers(0, 34, (2, 4, 5)).astype(np.int32)
    for t in (T.RangeAffine("Multiplies", [2.0]), T.ColorSpace("HSV"), T.ChannelExtraction("Gray")):
        x, lab = t.apply_batch_with_labels(images, labels)
        np.testing.assert_array_equal(lab, labels)
        np.testing.assert_array_equal(x, t.apply_batch(images))
    _, lab = T.SliceExtraction(4, 3, offset_x=3, offset_y=2, allow_padding=True,
                               border_type="ReplicateBorder").apply_batch_with_labels(images, labels)
    np.testing.assert_array_equal(lab[:, :2, :2], labels[:, 2:, 3:])
    assert (lab[:, 2:] == -1).all() and (lab[:, :, 2:] == -1).all()
    _, lab = T.PadCrop(2, 2, additive_wh=True, border_type="WrapBorder").apply_batch_with_labels(images, labels)
    assert lab.shape == (2, 6, 7) and (lab[:, 0] == -1).all() and (lab[:, :, -1] == -1).all()
    np.testing.assert_array_equal(lab[:, 1:5, 1:6], labels)
    with pytest.raises(RuntimeError, match="Reshape: cannot be applied to a stimulus with a pixel-wise label map"):
        T.Reshape(2).apply_batch_with_labels(images, labels)
    with pytest.raises(ValueError, match=r"Flip: label maps must be integers of shape \(N, H, W\) = \[2, 4, 5\]"):
        T.Flip().apply_batch_with_labels(images, labels[:, :3])


def test_split_without_labels_gives_minus_one_and_bad_map_size_is_named(cityscapes):
    shutil.rmtree(cityscapes / "gtFine" / "test")  # as gtCoarse: the test split has no label maps
    db = load(cityscapes)
    p = DataProvider(db, [W, H, 3], batch_size=1, composite_stimuli=True)
    p.read_batch(0)  # Test partition
    assert (p.get_labels().to_numpy() == -1).all()
    label = next((cityscapes / "gtFine" / "train" / "bremen").iterdir())
    Image.fromarray(np.zeros((H - 1, W), dtype=np.uint8), mode="L").save(label)
    db = load(cityscapes)
    bad = next(i for i in db.get_partition_ids("Learn") if "bremen" in db.get_stimulus_name(int(i)))
    p = DataProvider(db, [W, H, 3], batch_size=3, composite_stimuli=True)
    p.set_partition("Learn")
    with pytest.raises(RuntimeError, match=rf"the label map of stimulus {bad} \(.*bremen.*\) is int32 of shape "
                                           rf"\[{H - 1}, {W}\]; expected integers of its image's shape \[{H}, {W}\]"):
        p.read_batch(0)


def test_ini_sp_composite_stimuli_gives_label_maps(tmp_path):
    """`[sp] CompositeStimuli=1` reaches the provider: (N, 1, H, W) labels."""
    from n2d2.frontends.ini import load_ini

    for k in range(2):
        (tmp_path / "data" / f"c{k}").mkdir(parents=True)
        Image.fromarray(np.full((H, W), 10 * k, dtype=np.uint8), mode="L").save(tmp_path / "data" / f"c{k}" / "a.png")
    ini = tmp_path / "net.ini"
    ini.write_text(f"[database]\nType=DIR_Database\nDataPath={tmp_path / 'data'}\nLearn=1.0\n\n"
                   f"[sp]\nSizeX={W}\nSizeY={H}\nBatchSize=2\nCompositeStimuli=1\n\n"
                   "[conv]\nInput=sp\nType=Conv\nKernelWidth=1\nKernelHeight=1\nNbOutputs=2\n\n[conv.Target]\n")
    provider = load_ini(str(ini), backend="numpy").get_provider()
    assert provider.get_parameter("composite_stimuli") is True
    provider.set_partition("Learn")
    provider.read_batch(0)
    labels = provider.get_labels().to_numpy()
    assert labels.shape == (2, 1, H, W) and sorted(labels[:, 0, 0, 0].tolist()) == [0, 1]


def _fcn():
    n2d2.global_variables.seed = 4
    model = Sequence([Conv(3, 8, [3, 3], padding_dims=[1, 1], activation=Rectifier()),
                      Conv(8, 4, [3, 3], stride_dims=[2, 2], padding_dims=[1, 1]),
                      Softmax(with_loss=True)])
    model.set_solver(SGD(learning_rate=0.5, momentum=0.9))
    return model


def _train(root, backend, steps=20):
    db = load(root)
    provider = DataProvider(db, [W + 2, H + 2, 3], batch_size=2, composite_stimuli=True)
    provider.add_on_the_fly_transformation(T.PadCrop(W + 2, H + 2, border_type="ReplicateBorder"))
    provider.add_on_the_fly_transformation(T.Flip(random_horizontal_flip=True))
    (root / "mapping.txt").write_text("road 1\ncar 2\n'traffic sign' 3\ndefault 0\n")
    target = n2d2.target.Score(provider, labels_mapping=str(root / "mapping.txt"))
    dn = _fcn().to_deepnet_cell(provider, target, backend=backend)
    provider.set_partition("Learn")
    dn.learn()
    n2d2.global_variables.seed = 9
    rows = np.zeros(4, dtype=np.int64)
    ids = {db.get_label_id(name): out for name, out in (("road", 1), ("car", 2), ("traffic sign", 3))}
    losses = []
    for _ in range(steps):
        loss = target(dn(provider.read_random_batch()))
        loss.back_propagate()
        loss.update()
        losses.append(target.loss())
        # Score resamples the (H + 2) x (W + 2) maps to the 5 x 4 output: nearest at pixel centres.
        maps = provider.get_labels().to_numpy()[:, 0][:, [1, 3, 5, 7]][:, :, [1, 3, 5, 7, 9]]
        mapped = np.vectorize(lambda v: -1 if v < 0 else ids.get(v, 0))(maps)
        rows += np.bincount(mapped[mapped >= 0], minlength=4)
    return target, losses, rows


@pytest.mark.parametrize("backend", ["numpy", "c"])
def test_fcn_trains_with_score_on_label_maps(cityscapes, backend, monkeypatch):
    monkeypatch.chdir(cityscapes)
    target, losses, rows = _train(cityscapes, backend)
    confusion = target.get_confusion_matrix("Learn")
    assert confusion.shape == (4, 4)
    # The confusion matrix counts output pixels (padded -1 labels left out), per mapped class.
    np.testing.assert_array_equal(confusion.sum(axis=1), rows)
    assert 0 < confusion.sum() < 20 * 2 * 4 * 5
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    target.log_confusion_matrix("Learn", "Learn")
    assert (cityscapes / target.get_name() / "ConfusionMatrix_Learn.dat").is_file()
