"""ImageFolder directories: torchvision's layout and class order, PIL decoding, clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from train.data import DataError, build_input
from train.data.augment import IMAGENET_MEAN, IMAGENET_STD
from train.data.imagefolder import scan_imagefolder

# One solid colour per class: a crop, resize or flip of a solid image keeps its
# colour, so every batch pixel tells which class the image came from.
COLOURS = {"zebra": (250, 10, 10), "ant": (10, 250, 10), "cat": (10, 10, 250)}
SIZES = [(20, 14), (9, 30), (16, 16)]


def _write_split(root, split, counts, fmt="png"):
    for name, n in counts.items():
        folder = os.path.join(root, split, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            ext = fmt if i % 2 == 0 else "JPG"  # mixed formats, upper-case extension
            image = Image.new("RGB", SIZES[i % len(SIZES)], COLOURS[name])
            image.save(
                os.path.join(folder, f"{i:03d}.{ext}"),
                format="PNG" if ext == "png" else "JPEG",
                quality=100,
            )


@pytest.fixture
def root(tmp_path):
    _write_split(tmp_path, "train", {"zebra": 5, "ant": 4, "cat": 3})
    _write_split(tmp_path, "val", {"zebra": 2, "ant": 1, "cat": 2})
    (tmp_path / "train" / "ant" / "notes.txt").write_text(
        "not an image"
    )  # ignored, as torchvision does
    os.makedirs(tmp_path / "train" / ".ipynb_checkpoints")  # hidden: not a class
    return tmp_path


def _class_of_pixels(images):
    """Maps each normalised image back to the class whose colour it has."""
    raw = images * np.asarray(IMAGENET_STD, np.float32) + np.asarray(IMAGENET_MEAN, np.float32)
    centre = raw[:, raw.shape[1] // 2, raw.shape[2] // 2] * 255  # (B, 3)
    names = sorted(COLOURS)
    table = np.array([COLOURS[n] for n in names], np.float64)
    distance = np.abs(centre[:, None, :] - table[None]).max(-1)
    assert (distance.min(1) < 12).all(), distance  # JPEG and resampling keep solid colours
    return distance.argmin(1)


def test_classes_sorted_and_samples_in_torchvision_order(root):
    folder = scan_imagefolder(root)
    assert folder.class_names == ("ant", "cat", "zebra")
    train = folder.splits["train"]
    assert train.labels.tolist() == [0] * 4 + [1] * 3 + [2] * 5
    assert [os.path.basename(p) for p in train.paths[:4]] == [
        "000.png",
        "001.JPG",
        "002.png",
        "003.JPG",
    ]
    assert sorted(folder.splits) == ["train", "val"] and folder.splits["val"].labels.tolist() == [
        0,
        1,
        1,
        2,
        2,
    ]


def test_build_input_happy_path(root):
    inp = build_input(
        dataset="imagefolder",
        data_dir=str(root),
        batch_size=4,
        eval_batch_size=3,
        image_size=12,
        seed=1,
    )
    assert (inp.num_classes, inp.class_names, inp.image_shape) == (
        3,
        ("ant", "cat", "zebra"),
        (12, 12, 3),
    )
    assert (inp.train_size, inp.val_size, inp.test_size, inp.steps_per_epoch) == (12, 5, 0, 3)
    epoch = list(inp.train_batches(0))
    assert len(epoch) == 3
    labels = []
    for batch in epoch:
        assert batch["image"].shape == (4, 12, 12, 3) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and batch["mask"].all()
        np.testing.assert_array_equal(_class_of_pixels(batch["image"]), batch["label"])
        labels += batch["label"].tolist()
    assert sorted(labels) == [0] * 4 + [1] * 3 + [2] * 5  # 12 examples, batch 4: all of them
    again = list(inp.train_batches(0))
    for x, y in zip(epoch, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])  # random-resized-crop is seeded
    val = list(inp.eval_batches("val"))
    assert [b["mask"].tolist() for b in val] == [[True] * 3, [True, True, False]]
    for batch in val:
        np.testing.assert_array_equal(_class_of_pixels(batch["image"]), batch["label"])
    assert np.concatenate([b["label"] for b in val])[:5].tolist() == [0, 1, 1, 2, 2]


def test_random_resized_crop_changes_pixels_and_eval_does_not(tmp_path):
    folder = tmp_path / "train" / "grad"
    os.makedirs(folder)
    ramp = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    for i in range(4):
        Image.fromarray(np.stack([ramp] * 3, -1)).save(folder / f"{i}.png")
    plain = build_input(
        dataset="imagefolder",
        data_dir=str(tmp_path),
        batch_size=4,
        image_size=16,
        augment=False,
        val_fraction=0,
    )
    aug = build_input(
        dataset="imagefolder", data_dir=str(tmp_path), batch_size=4, image_size=16, val_fraction=0
    )
    x_plain = next(plain.train_batches(0))["image"]
    x_aug = next(aug.train_batches(0))["image"]
    np.testing.assert_array_equal(x_plain[0], x_plain[1])  # resize + centre crop: deterministic
    assert not np.array_equal(x_aug[0], x_aug[1])  # different random crops of the same image
    assert x_aug.shape == x_plain.shape == (4, 16, 16, 3)


def test_default_size_is_224_and_val_carved_without_val_dir(tmp_path):
    _write_split(tmp_path, "train", {"ant": 5, "cat": 5})
    inp = build_input(dataset="imagefolder", data_dir=str(tmp_path), batch_size=2, val_fraction=0.2)
    assert inp.image_shape == (224, 224, 3)
    assert (inp.train_size, inp.val_size) == (8, 2)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match=r"^imagefolder root .*nowhere does not exist"):
        build_input(dataset="imagefolder", data_dir=str(tmp_path / "nowhere"))


def test_missing_data_dir_argument():
    with pytest.raises(ValueError, match="data_dir"):
        build_input(dataset="imagefolder")


def test_missing_train_dir(tmp_path):
    _write_split(tmp_path, "val", {"ant": 1})
    with pytest.raises(DataError, match=r"has no train/ directory"):
        build_input(dataset="imagefolder", data_dir=str(tmp_path))


def test_train_dir_without_classes(tmp_path):
    os.makedirs(tmp_path / "train")
    with pytest.raises(DataError, match=r"train has no class folders"):
        build_input(dataset="imagefolder", data_dir=str(tmp_path))


def test_empty_class_folder(root):
    os.makedirs(root / "train" / "dog")
    (root / "train" / "dog" / "readme.md").write_text("no images here")
    with pytest.raises(DataError, match=r"class folder .*train/dog has no images"):
        build_input(dataset="imagefolder", data_dir=str(root))


def test_corrupt_image_named_at_scan(root):
    (root / "train" / "cat" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=r"^unreadable image file .*train/cat/broken\.png"):
        build_input(dataset="imagefolder", data_dir=str(root))


def test_truncated_image_named_when_decoded(root):
    path = root / "train" / "cat" / "truncated.png"
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    big.save(path)
    path.write_bytes(path.read_bytes()[:400])  # the header parses, the pixels do not
    inp = build_input(
        dataset="imagefolder", data_dir=str(root), batch_size=13, image_size=8, prefetch=2
    )  # one batch: every file
    with pytest.raises(DataError, match=r"^cannot decode image file .*truncated\.png"):
        list(inp.train_batches(0))


def test_val_classes_must_match_train(root):
    _write_split(root, "val", {"zebra": 1})
    os.rename(root / "val" / "cat", root / "val" / "cow")
    with pytest.raises(
        DataError,
        match=r"val classes do not match train/ classes: missing \['cat'\], extra \['cow'\]",
    ):
        build_input(dataset="imagefolder", data_dir=str(root))
