"""Host-side augmentation and normalisation (train/data/augment.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from train.data.augment import (
    normalize,
    pad_crop_flip,
    random_resized_crop,
    resize_center_crop,
    resize_images,
)


def _batch(b=64, h=6, w=6, c=2):
    return np.random.default_rng(0).integers(1, 256, (b, h, w, c), dtype=np.uint8)  # no zeros


def test_pad_crop_is_a_zero_filled_shift_within_pad():
    x = _batch()
    y = pad_crop_flip(x, np.random.default_rng(1), pad=2, flip=False)
    assert y.shape == x.shape and y.dtype == x.dtype
    shifts = set()
    for xi, yi in zip(x, y, strict=True):
        padded = np.pad(xi, ((2, 2), (2, 2), (0, 0)))
        found = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if np.array_equal(yi, padded[dy : dy + 6, dx : dx + 6])
        ]
        assert len(found) == 1
        shifts.add(found[0])
    assert len(shifts) > 15  # offsets cover most of the 25 positions


def test_flip_mirrors_about_half_and_is_seeded():
    x = _batch(b=400)
    y = pad_crop_flip(x, np.random.default_rng(2), pad=0, flip=True)
    mirrored = np.array([np.array_equal(yi, xi[:, ::-1]) for xi, yi in zip(x, y, strict=True)])
    same = np.array([np.array_equal(yi, xi) for xi, yi in zip(x, y, strict=True)])
    assert (mirrored ^ same).all()
    assert 160 < mirrored.sum() < 240
    np.testing.assert_array_equal(y, pad_crop_flip(x, np.random.default_rng(2), pad=0, flip=True))
    assert not np.array_equal(y, pad_crop_flip(x, np.random.default_rng(3), pad=0, flip=True))


def test_pad_must_be_non_negative():
    with pytest.raises(ValueError, match="pad=-1"):
        pad_crop_flip(_batch(), np.random.default_rng(0), pad=-1, flip=False)


def test_normalize_values():
    x = np.array([[[[0, 255, 51]]]], np.uint8)  # (1, 1, 1, 3)
    y = normalize(x, max_value=255, mean=(0.5, 0.5, 0.2), std=(0.25, 0.5, 0.1))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y[0, 0, 0], [-2.0, 1.0, 0.0], atol=1e-6)


def test_random_resized_crop_full_area_is_a_plain_resize():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8))
    out = random_resized_crop(
        image, np.random.default_rng(0), size=6, scale=(1.0, 1.0), ratio=(1.0, 1.0)
    )
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(image.resize((6, 6), Image.Resampling.BILINEAR))
    )


def test_random_resized_crop_fallback_is_central():
    # A 40x10 image cannot hold a crop of ratio <= 4/3 with area >= 90% in ten tries:
    # torchvision falls back to the central 13x10 crop (ratio clamped to 4/3).
    array = np.random.default_rng(0).integers(0, 256, (10, 40, 3), dtype=np.uint8)
    out = random_resized_crop(
        Image.fromarray(array), np.random.default_rng(0), size=5, scale=(0.9, 1.0)
    )
    want = Image.fromarray(array).crop((13, 0, 26, 10)).resize((5, 5), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))


def test_random_resized_crop_is_seeded_and_varies():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 30, 3), dtype=np.uint8))
    a = np.asarray(random_resized_crop(image, np.random.default_rng(5), size=8))
    b = np.asarray(random_resized_crop(image, np.random.default_rng(5), size=8))
    c = np.asarray(random_resized_crop(image, np.random.default_rng(6), size=8))
    assert a.shape == (8, 8, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resize_center_crop_matches_torchvision_rule():
    # Resize(224 * 8 // 7 = 256) on the short side, then the central 224x224.
    array = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    out = resize_center_crop(Image.fromarray(array), size=224)
    resized = Image.fromarray(array).resize(
        (426, 256), Image.Resampling.BILINEAR
    )  # int(256 * 500 / 300) = 426
    want = resized.crop(
        (101, 16, 325, 240)
    )  # round((426 - 224) / 2) = 101, round((256 - 224) / 2) = 16
    np.testing.assert_array_equal(np.asarray(out), np.asarray(want))


def test_resize_images_keeps_fractional_values():
    x = np.zeros((1, 2, 2, 1), np.uint8)
    x[0, :, 1, 0] = 16
    y = resize_images(x, 4)
    assert y.dtype == np.float32 and y.shape == (1, 4, 4, 1)
    values = np.unique(np.round(y[0, 0, :, 0], 4)).tolist()
    assert values == [0.0, 4.0, 12.0, 16.0]  # bilinear ramp, not rounded to integers
