"""The embedded digits dataset: TFDS builder, array_record, no TensorFlow, cache reuse."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from train.data import DataError, build_input
from train.data.digits import JaxlossDigits, default_cache_dir, prepare_digits


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def source(cache_dir):
    return prepare_digits(cache_dir).as_data_source()["train"]


def _read_all(source):
    records = source.__getitems__(list(range(len(source))))
    order = np.argsort([r["index"] for r in records])
    images = np.stack([records[i]["image"] for i in order])
    labels = np.array([records[i]["label"] for i in order])
    return images, labels, np.array([records[i]["index"] for i in order])


def test_prepares_array_record_and_reads_without_tensorflow(cache_dir, source):
    builder = prepare_digits(cache_dir)
    assert builder.info.splits["train"].num_examples == 1797
    assert str(builder.info.file_format.value) == "array_record"
    files = os.listdir(builder.data_dir)
    assert any(".array_record-" in f for f in files), files
    assert not any("tfrecord" in f for f in files), files
    assert len(source) == 1797
    assert "tensorflow" not in sys.modules  # preparing and reading never imported it


def test_records_equal_sklearn_digits(source):
    images, labels, index = _read_all(source)
    digits = load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(index, np.arange(1797))  # every row exactly once
    assert labels.min() == 0 and labels.max() == 9
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(digits.target))
    np.testing.assert_array_equal(labels, digits.target)
    np.testing.assert_array_equal(images[..., 0], digits.images.astype(np.uint8))
    # One pixel, spelled out: row 0 of sklearn's digits is a 0 with value 13 at (0, 3).
    record = next(source[i] for i in range(len(source)) if source[i]["index"] == 0)
    assert record["image"][0, 3, 0] == digits.images[0, 0, 3] == 13.0
    assert record["label"] == 0


def test_second_prepare_reuses_the_cache(cache_dir, monkeypatch):
    builder = prepare_digits(cache_dir)
    data_file = next(f for f in os.listdir(builder.data_dir) if ".array_record-" in f)
    path = os.path.join(builder.data_dir, data_file)
    mtime = os.stat(path).st_mtime_ns

    def fail(self):
        raise AssertionError("re-prepared a prepared dataset")

    monkeypatch.setattr(JaxlossDigits, "_generate_examples", fail)
    again = prepare_digits(cache_dir)
    assert len(again.as_data_source()["train"]) == 1797
    inp = build_input(cache_dir=cache_dir, batch_size=16)  # the build_input path reuses it too
    assert inp.train_size + inp.val_size == 1797
    assert os.stat(path).st_mtime_ns == mtime


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXLOSS_DATA_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == str(tmp_path / "here")
    monkeypatch.delenv("JAXLOSS_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == str(tmp_path / ".cache" / "jaxloss" / "tensorflow_datasets")


def test_build_input_prepares_into_jaxloss_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXLOSS_DATA_DIR", str(tmp_path))
    inp = build_input(batch_size=32)
    assert os.path.isfile(tmp_path / "jaxloss_digits" / "1.0.0" / "dataset_info.json")
    assert (inp.num_classes, inp.image_shape, inp.class_names) == (
        10,
        (8, 8, 1),
        tuple("0123456789"),
    )
    assert (inp.train_size, inp.val_size, inp.test_size) == (1438, 359, 0)
    assert inp.steps_per_epoch == 1438 // 32


def test_digits_rejects_data_dir(tmp_path):
    with pytest.raises(ValueError, match="data_dir"):
        build_input(dataset="digits", data_dir=str(tmp_path), cache_dir=str(tmp_path))


def test_losing_a_concurrent_prepare_uses_the_winners_copy(tmp_path, monkeypatch):
    original = JaxlossDigits.download_and_prepare

    def prepared_by_someone_else(self, *args, **kwargs):
        other = JaxlossDigits(data_dir=str(tmp_path), file_format="array_record")
        monkeypatch.setattr(JaxlossDigits, "download_and_prepare", original)
        other.download_and_prepare()  # the other process finishes first...
        raise OSError("[Errno 39] Directory not empty")  # ...so our final rename fails

    monkeypatch.setattr(JaxlossDigits, "download_and_prepare", prepared_by_someone_else)
    builder = prepare_digits(str(tmp_path))
    assert len(builder.as_data_source()["train"]) == 1797


def test_a_failed_prepare_is_not_hidden(tmp_path, monkeypatch):
    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(JaxlossDigits, "download_and_prepare", broken)
    with pytest.raises(DataError, match=r"^cannot prepare the digits dataset in .*: disk full"):
        prepare_digits(str(tmp_path))
