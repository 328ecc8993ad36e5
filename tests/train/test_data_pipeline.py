"""Splits, imbalance, shuffling, augmentation, eval padding and prefetch of train.data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.datasets import load_digits

from train.data import DataError, build_input
from train.data.catalog import ArrayDataset
from train.data.pipeline import BatchOptions, apply_imbalance, from_arrays, split_train_val

DIGITS_MEAN, DIGITS_STD = 0.3053, 0.3760  # the table entry in train/data/pipeline.py


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int32)


def _raw(batch_images):
    """Undoes digits normalisation: back to integer pixel values 0..16."""
    raw = (batch_images[..., 0].astype(np.float64) * DIGITS_STD + DIGITS_MEAN) * 16
    np.testing.assert_allclose(raw, np.round(raw), atol=1e-4)
    return np.round(raw).astype(np.uint8)


def _keys(images):
    return [im.tobytes() for im in images]


def _all(iterator):
    return list(iterator)


def test_split_sizes_and_determinism(cache_dir):
    a = build_input(cache_dir=cache_dir, batch_size=50, val_fraction=0.25, seed=3)
    assert (a.train_size, a.val_size) == (1797 - 449, 449)  # round(0.25 * 1797) = 449
    assert a.steps_per_epoch == (1797 - 449) // 50
    train, val = split_train_val(1797, val_fraction=0.25, seed=3)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 1797
    again, _ = split_train_val(1797, val_fraction=0.25, seed=3)
    other, _ = split_train_val(1797, val_fraction=0.25, seed=4)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)
    none = build_input(cache_dir=cache_dir, batch_size=50, val_fraction=0.0)
    assert (none.train_size, none.val_size) == (1797, 0) and _all(none.eval_batches("val")) == []


def test_shuffle_same_seed_same_order_other_epoch_other_order(cache_dir, digits):
    kw = dict(cache_dir=cache_dir, batch_size=64, augment=False, seed=1)
    a, b = build_input(**kw), build_input(**kw)
    e0, e0_again, e1 = _all(a.train_batches(0)), _all(b.train_batches(0)), _all(a.train_batches(1))
    assert len(e0) == len(e1) == a.steps_per_epoch == 1438 // 64
    for x, y in zip(e0, e0_again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    labels0 = np.concatenate([x["label"] for x in e0])
    labels1 = np.concatenate([x["label"] for x in e1])
    assert not np.array_equal(labels0, labels1)
    # Both epochs draw from the same training set (dropping a different remainder).
    images, labels = digits
    train_idx, _ = split_train_val(1797, val_fraction=0.2, seed=1)
    train_keys = set(_keys(images[train_idx]))
    for epoch in (e0, e1):
        raw = _raw(np.concatenate([x["image"] for x in epoch]))
        assert set(_keys(raw)) <= train_keys
        assert len(set(_keys(raw))) >= len(raw) - 5  # few exact duplicates among digits


def test_images_stay_aligned_with_labels(cache_dir, digits):
    images, labels = digits
    label_of = {}
    for im, y in zip(_keys(images), labels, strict=True):
        label_of.setdefault(im, set()).add(int(y))
    inp = build_input(cache_dir=cache_dir, batch_size=32, augment=False, seed=5)
    batch = next(inp.train_batches(2))
    assert batch["image"].shape == (32, 8, 8, 1) and batch["image"].dtype == np.float32
    assert (
        batch["label"].dtype == np.int32 and batch["mask"].dtype == np.bool_ and batch["mask"].all()
    )
    for im, y in zip(_keys(_raw(batch["image"])), batch["label"], strict=True):
        assert int(y) in label_of[im]


def test_normalisation_uses_digits_statistics(cache_dir, digits):
    inp = build_input(cache_dir=cache_dir, batch_size=1000, augment=False, val_fraction=0.0)
    x = next(inp.train_batches(0))["image"]
    expected = (digits[0] / 16.0 - DIGITS_MEAN) / DIGITS_STD
    assert abs(float(x.mean()) - expected.mean()) < 0.05 and abs(float(x.mean())) < 0.05
    assert abs(float(x.std()) - 1.0) < 0.05


def test_imbalance_keeps_fraction_of_one_class(cache_dir):
    kw = dict(cache_dir=cache_dir, batch_size=1, augment=False, seed=2, prefetch=0)
    full = build_input(**kw)
    thin = build_input(**kw, imbalance=(6, 0.1))
    tiny = build_input(**kw, imbalance=(6, 0.0001))
    count6 = int(sum(int(b["label"][0]) == 6 for b in full.train_batches(0)))
    kept = max(1, round(0.1 * count6))
    assert thin.train_size == full.train_size - count6 + kept
    assert tiny.train_size == full.train_size - count6 + 1  # at least one example kept
    labels = np.array([int(b["label"][0]) for b in thin.train_batches(0)])
    assert len(labels) == thin.train_size and int((labels == 6).sum()) == kept
    assert int((labels == 0).sum()) > 100  # the other classes are untouched
    # Validation stays balanced and identical.
    assert thin.val_size == full.val_size
    for a, b in zip(full.eval_batches("val"), thin.eval_batches("val"), strict=True):
        np.testing.assert_array_equal(a["label"], b["label"])


def test_apply_imbalance_is_deterministic_and_exact():
    labels = np.repeat(np.arange(3), 100)
    idx = np.arange(300)
    a = apply_imbalance(idx, labels, cls=1, fraction=0.25, seed=0)
    b = apply_imbalance(idx, labels, cls=1, fraction=0.25, seed=0)
    c = apply_imbalance(idx, labels, cls=1, fraction=0.25, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.bincount(labels[a]).tolist() == [100, 25, 100]


@pytest.mark.parametrize("eval_batch_size", [64, 359, 1000])
def test_eval_pads_and_masks_each_example_exactly_once(cache_dir, digits, eval_batch_size):
    images, _ = digits
    inp = build_input(cache_dir=cache_dir, batch_size=32, eval_batch_size=eval_batch_size, seed=7)
    batches = _all(inp.eval_batches("val"))
    assert len(batches) == math.ceil(359 / eval_batch_size)
    for b in batches:
        assert b["image"].shape == (eval_batch_size, 8, 8, 1)
        assert b["label"].shape == b["mask"].shape == (eval_batch_size,)
    mask = np.concatenate([b["mask"] for b in batches])
    assert int(mask.sum()) == 359 and mask[:359].all() and not mask[359:].any()
    seen = _raw(np.concatenate([b["image"] for b in batches])[mask])
    _, val_idx = split_train_val(1797, val_fraction=0.2, seed=7)
    assert sorted(_keys(seen)) == sorted(_keys(images[val_idx]))
    again = _all(inp.eval_batches("val"))  # eval order is fixed
    for x, y in zip(batches, again, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert _all(inp.eval_batches("test")) == []


def test_augmentation_is_deterministic_and_shifts_digits(cache_dir, digits):
    kw = dict(cache_dir=cache_dir, batch_size=128, seed=11)
    aug, aug_again, plain = build_input(**kw), build_input(**kw), build_input(**kw, augment=False)
    a = next(aug.train_batches(4))
    np.testing.assert_array_equal(a["image"], next(aug_again.train_batches(4))["image"])
    p = next(plain.train_batches(4))
    np.testing.assert_array_equal(a["label"], p["label"])  # same order, only pixels differ
    assert a["image"].shape == p["image"].shape == (128, 8, 8, 1)
    raw_a, raw_p = _raw(a["image"]), _raw(p["image"])
    changed = [not np.array_equal(x, y) for x, y in zip(raw_a, raw_p, strict=True)]
    assert 60 < sum(changed) < 128  # 8 of 9 shifts move the image
    # Every augmented digit is its original shifted by at most 1 pixel, never mirrored.
    for x, y in zip(raw_a, raw_p, strict=True):
        padded = np.pad(y, 1)
        assert any(
            np.array_equal(x, padded[dy : dy + 8, dx : dx + 8])
            for dy in range(3)
            for dx in range(3)
        )


def test_prefetch_yields_identical_batches(cache_dir):
    kw = dict(cache_dir=cache_dir, batch_size=64, eval_batch_size=100, seed=9)
    eager, ahead = build_input(**kw, prefetch=0), build_input(**kw, prefetch=4)
    for epoch in (0, 3):
        xs, ys = _all(eager.train_batches(epoch)), _all(ahead.train_batches(epoch))
        assert len(xs) == len(ys) == eager.steps_per_epoch
        for x, y in zip(xs, ys, strict=True):
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(x[key], y[key])
    for x, y in zip(eager.eval_batches("val"), ahead.eval_batches("val"), strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])


def test_stopping_early_closes_the_iterator(cache_dir):
    inp = build_input(cache_dir=cache_dir, batch_size=16, prefetch=3)
    it = inp.train_batches(0)
    first = next(it)
    it.close()  # consumer stops: prefetch threads shut down, no error
    np.testing.assert_array_equal(first["label"], next(inp.train_batches(0))["label"])


def _synthetic(name, shape, n=40, classes=4):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.int32)
    return ArrayDataset(
        name=name,
        splits={"train": (images, labels), "test": (images[:10], labels[:10])},
        class_names=tuple(str(i) for i in range(classes)),
    )


_OPTIONS = BatchOptions(
    batch_size=8,
    eval_batch_size=8,
    val_fraction=0.25,
    imbalance=None,
    augment=True,
    seed=0,
    prefetch=0,
)


@pytest.mark.parametrize(
    "name, shape, pad, flip",
    [
        ("cifar10", (32, 32, 3), 4, True),
        ("mnist", (28, 28, 1), 3, False),
        ("digits", (8, 8, 1), 1, False),
        ("svhn_cropped", (32, 32, 3), 4, False),
    ],
)
def test_augmentation_policy_per_dataset(name, shape, pad, flip):
    inp = from_arrays(_synthetic(name, shape), image_size=None, options=_OPTIONS)
    pool = inp.splits["train"][0]
    assert (pool.pad, pool.flip) == (pad, flip)
    assert (
        inp.image_shape == shape
        and inp.test_size == 10
        and (inp.train_size, inp.val_size) == (30, 10)
    )
    batch = next(inp.train_batches(0))
    assert batch["image"].shape == (8, *shape)


def test_unknown_dataset_statistics_are_computed():
    ds = _synthetic("my_dataset", (6, 6, 2))
    inp = from_arrays(ds, image_size=None, options=_OPTIONS)
    pool = inp.splits["train"][0]
    x = ds.splits["train"][0] / 255.0
    np.testing.assert_allclose(pool.mean, x.mean(axis=(0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(pool.std, x.std(axis=(0, 1, 2)), rtol=1e-6)


def test_image_size_resizes_array_datasets(cache_dir):
    inp = build_input(cache_dir=cache_dir, batch_size=16, image_size=16)
    assert inp.image_shape == (16, 16, 1) and inp.splits["train"][0].pad == 2
    assert next(inp.train_batches(0))["image"].shape == (16, 16, 16, 1)
    assert next(inp.eval_batches())["image"].shape == (16, 16, 16, 1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(eval_batch_size=0), "eval_batch_size"),
        (dict(val_fraction=1.0), "val_fraction"),
        (dict(val_fraction=-0.1), "val_fraction"),
        (dict(imbalance=(3, 0.0)), "imbalance"),
        (dict(imbalance=(3, 1.5)), "imbalance"),
        (dict(imbalance=(-1, 0.5)), "imbalance"),
        (dict(imbalance=(10, 0.5)), "imbalance"),
        (dict(imbalance=3), "imbalance"),
        (dict(image_size=0), "image_size"),
        (dict(seed=-1), "seed"),
        (dict(prefetch=-1), "prefetch"),
        (dict(dataset=""), "dataset"),
    ],
)
def test_bad_arguments_name_the_argument(cache_dir, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_input(cache_dir=cache_dir, **kwargs)


def test_batch_larger_than_training_set_is_a_data_error(cache_dir):
    with pytest.raises(DataError, match="batch_size=5000"):
        build_input(cache_dir=cache_dir, batch_size=5000)


def test_bad_epoch_and_split(cache_dir):
    inp = build_input(cache_dir=cache_dir, batch_size=64)
    with pytest.raises(ValueError, match="epoch"):
        inp.train_batches(-1)
    with pytest.raises(ValueError, match="split"):
        inp.eval_batches("train")
