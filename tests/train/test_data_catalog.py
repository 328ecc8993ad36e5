"""TFDS catalog datasets through tfds.data_source, tested offline with locally prepared stand-ins.

``_StandinMnist`` writes, into a temporary TFDS data_dir, an ``array_record`` dataset
under the catalog's own name and version (``mnist/3.0.1``) with MNIST's features
(``tfds.features.Image(28, 28, 1)``, ``ClassLabel(10)``). ``build_input("mnist")``
then reads it through TFDS's real, registered ``mnist`` builder, exactly as it would
read a copy prepared with ``tfds build mnist --file_format=array_record``. The images
are given to TFDS as PIL images, which it encodes to PNG without TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from train.data import DataError, build_input
from train.data.catalog import load_catalog

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _mnist_like(n, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    labels = np.arange(n) % 10
    return images, labels


class _StandinMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "mnist"
    VERSION = tfds.builder_cls("mnist").VERSION
    code_path = None  # tfds 4.9.10 needs importlib_resources otherwise (tensorflow/datasets#11212)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(28, 28, 1)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(60, 1), "test": self._generate_examples(25, 2)}

    def _generate_examples(self, n, seed):
        images, labels = _mnist_like(n, seed)
        for i in range(n):
            yield i, {"image": Image.fromarray(images[i, :, :, 0]), "label": int(labels[i])}


class JaxlossStandinTiny(tfds.core.GeneratorBasedBuilder):
    """A registered (non-catalog) name with its own validation split and Tensor features."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(4, 4, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(30),
            "validation": self._generate_examples(9),
            "test": self._generate_examples(6),
        }

    def _generate_examples(self, n):
        for i in range(n):
            yield i, {"image": np.full((4, 4, 3), i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds_catalog")
    _StandinMnist(data_dir=str(path), file_format="array_record").download_and_prepare()
    JaxlossStandinTiny(data_dir=str(path), file_format="array_record").download_and_prepare()
    return str(path)


def test_catalog_mnist_reads_through_the_registered_builder(data_dir):
    builder = tfds.builder("mnist", data_dir=data_dir, file_format="array_record")
    assert type(builder).__module__ == "tensorflow_datasets.image_classification.mnist"
    assert builder.is_prepared()
    ds = load_catalog("mnist", data_dir=data_dir)
    assert sorted(ds.splits) == ["test", "train"] and ds.class_names == tuple("0123456789")
    for split, (n, seed) in {"train": (60, 1), "test": (25, 2)}.items():
        images, labels = ds.splits[split]
        want_images, want_labels = _mnist_like(n, seed)
        assert (
            images.shape == (n, 28, 28, 1) and images.dtype == np.uint8 and labels.dtype == np.int32
        )
        got = sorted(zip((im.tobytes() for im in images), labels.tolist(), strict=True))
        want = sorted(zip((im.tobytes() for im in want_images), want_labels.tolist(), strict=True))
        assert got == want  # every (image, label) pair exactly once, pixels lossless (PNG)
    assert "tensorflow" not in sys.modules


def test_build_input_on_catalog_mnist(data_dir):
    inp = build_input(
        dataset="mnist",
        data_dir=data_dir,
        batch_size=8,
        eval_batch_size=10,
        augment=False,
        val_fraction=0.25,
    )
    assert (inp.num_classes, inp.image_shape) == (10, (28, 28, 1))
    assert (inp.train_size, inp.val_size, inp.test_size, inp.steps_per_epoch) == (45, 15, 25, 5)
    test_batches = list(inp.eval_batches("test"))
    assert len(test_batches) == 3 and int(sum(b["mask"].sum() for b in test_batches)) == 25
    images = np.concatenate([b["image"] for b in test_batches])[
        np.concatenate([b["mask"] for b in test_batches])
    ]
    raw = (images.astype(np.float64) * MNIST_STD + MNIST_MEAN) * 255  # MNIST's own normalisation
    np.testing.assert_allclose(raw, np.round(raw), atol=1e-3)
    want, _ = _mnist_like(25, 2)
    assert sorted(im.tobytes() for im in np.round(raw).astype(np.uint8)) == sorted(
        im.tobytes() for im in want
    )
    batch = next(build_input(dataset="mnist", data_dir=data_dir, batch_size=8).train_batches(0))
    assert batch["image"].shape == (8, 28, 28, 1) and batch["label"].dtype == np.int32


def test_registered_name_with_own_validation_split(data_dir):
    inp = build_input(
        dataset="jaxloss_standin_tiny",
        data_dir=data_dir,
        batch_size=4,
        eval_batch_size=4,
        val_fraction=0.5,
    )
    assert inp.class_names == ("a", "b", "c") and inp.image_shape == (4, 4, 3)
    # The dataset's validation split is used as is; val_fraction does not carve the train split.
    assert (inp.train_size, inp.val_size, inp.test_size) == (30, 9, 6)
    mask = np.concatenate([b["mask"] for b in inp.eval_batches("val")])
    assert mask.tolist() == [True] * 9 + [False] * 3


@pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is not None, reason="with TensorFlow it would download"
)
def test_unprepared_catalog_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(
        DataError, match=r"'mnist' is not prepared in .*tfds build mnist --file_format=array_record"
    ):
        build_input(dataset="mnist", data_dir=str(tmp_path))


def test_unknown_dataset_name_is_a_clear_error(tmp_path):
    with pytest.raises(
        DataError, match=r"^unknown dataset 'no_such_set_xyz': not 'digits', 'imagefolder'"
    ):
        build_input(dataset="no_such_set_xyz", data_dir=str(tmp_path))


def test_tfrecord_only_copy_is_a_clear_error(data_dir, tmp_path):
    import json
    import shutil

    shutil.copytree(os.path.join(data_dir, "mnist"), tmp_path / "mnist")
    info_path = next((tmp_path / "mnist").glob("*/dataset_info.json"))
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"  # as `tfds build mnist` writes by default
    info_path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"prepared as \['tfrecord'\].*--file_format=array_record"):
        build_input(dataset="mnist", data_dir=str(tmp_path))
