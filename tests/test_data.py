"""Image datasets: shapes, labels, determinism, splits, bad input."""

import numpy as np
import pytest
from PIL import Image

from entropy_cliff.errors import EntropyCliffError
from vcq.data import PATCH_SOURCES, SHAPES, load_dataset, split_indices


@pytest.mark.parametrize("name,n,classes", [("digits", None, 10), ("patches", 300, len(PATCH_SOURCES)),
                                            ("shapes", 300, len(SHAPES))])
@pytest.mark.parametrize("channels", [1, 3])
def test_builtin_sets_are_deterministic_uint8_images(name, n, classes, channels):
    a = load_dataset(name, split="train", image_size=16, channels=channels, n=n, seed=3)
    b = load_dataset(name, split="train", image_size=16, channels=channels, n=n, seed=3)
    idx = np.arange(0, len(a), max(1, len(a) // 20))
    x = a.images(idx)
    assert x.dtype == np.uint8 and x.shape == (len(idx), 16, 16, channels)
    np.testing.assert_array_equal(x, b.images(idx))
    lab = a.label_array()
    assert lab.min() >= 0 and lab.max() < classes and len(a.class_names) == classes
    assert x.std() > 0  # not blank


def test_patch_labels_name_the_source_image():
    from vcq.data import _source_images

    d = load_dataset("patches", split="all", image_size=16, n=80, seed=0)
    srcs = _source_images()
    gray = {i for i, s in enumerate(srcs) if np.array_equal(s[..., 0], s[..., 1]) and np.array_equal(s[..., 0], s[..., 2])}
    assert {PATCH_SOURCES.index(g) for g in ("camera", "moon", "coins")} <= gray
    x = d.images(np.arange(80)).astype(int)
    for img, lab in zip(x, d.label_array()):
        lo, hi = srcs[lab].reshape(-1, 3).min(0).astype(int), srcs[lab].reshape(-1, 3).max(0).astype(int)
        assert (img.reshape(-1, 3).min(0) >= lo).all() and (img.reshape(-1, 3).max(0) <= hi).all()
        is_gray = np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
        assert is_gray == (lab in gray)
    other = load_dataset("patches", split="all", image_size=16, n=80, seed=1)
    assert not np.array_equal(other.images(np.arange(10)), x[:10])


def test_splits_are_disjoint_and_cover_the_set():
    for seed in (0, 5):
        tr, va = split_indices(101, "train", seed, 0.2), split_indices(101, "val", seed, 0.2)
        assert len(va) == 20 and len(np.intersect1d(tr, va)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(101))
    assert not np.array_equal(split_indices(101, "val", 0, 0.2), split_indices(101, "val", 1, 0.2))
    with pytest.raises(EntropyCliffError):
        split_indices(10, "test", 0, 0.1)


def test_batch_flips_only_when_augmenting():
    d = load_dataset("shapes", split="train", image_size=16, n=50)
    assert d.hflip
    idx = np.arange(16)
    rng = np.random.default_rng(0)
    flip = np.random.default_rng(0).random(16) < 0.5
    b = d.batch(idx, rng)
    orig = d.images(idx)
    np.testing.assert_array_equal(b["image"][flip], orig[flip][:, :, ::-1])
    np.testing.assert_array_equal(b["image"][~flip], orig[~flip])
    np.testing.assert_array_equal(b["label"], d.label_array()[idx])
    v = load_dataset("shapes", split="val", image_size=16, n=50)
    np.testing.assert_array_equal(v.batch(np.arange(3), rng)["image"], v.images(np.arange(3)))


def test_folder_reads_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for c, (w, h) in (("cat", (40, 30)), ("dog", (20, 20))):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(tmp_path / "dog" / "gray.png")
    d = load_dataset("folder", split="all", path=tmp_path, image_size=16)
    assert d.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(d.label_array(), [0, 0, 0, 1, 1, 1, 1])
    assert d.images(np.arange(7)).shape == (7, 16, 16, 3)
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(EntropyCliffError, match="no images"):
        load_dataset("folder", path=tmp_path / "empty", image_size=16)
    with pytest.raises(EntropyCliffError, match="no such"):
        load_dataset("folder", path=tmp_path / "missing", image_size=16)


def test_npy_checks_size_channels_and_labels(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(20) % 4)
    d = load_dataset("npy", split="all", path=tmp_path / "x.npy", labels_path=tmp_path / "y.npy", image_size=16)
    np.testing.assert_array_equal(d.images(np.arange(20)), x)
    np.testing.assert_array_equal(d.label_array(), np.arange(20) % 4)
    with pytest.raises(EntropyCliffError, match="16×16×3"):
        load_dataset("npy", path=tmp_path / "x.npy", image_size=32)
    with pytest.raises(EntropyCliffError, match="16×16×3"):
        load_dataset("npy", path=tmp_path / "x.npy", image_size=16, channels=1)
    np.save(tmp_path / "short.npy", np.arange(5))
    with pytest.raises(EntropyCliffError, match="labels"):
        load_dataset("npy", path=tmp_path / "x.npy", labels_path=tmp_path / "short.npy", image_size=16)
    np.save(tmp_path / "f.npy", x.astype(np.float32))
    with pytest.raises(EntropyCliffError, match="uint8"):
        load_dataset("npy", path=tmp_path / "f.npy", image_size=16)
    with pytest.raises(EntropyCliffError, match="needs a path"):
        load_dataset("npy", image_size=16)
    with pytest.raises(EntropyCliffError, match="unknown dataset"):
        load_dataset("imagenet")
