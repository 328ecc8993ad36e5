"""scikit-learn's digits as a TFDS dataset builder: the embedded default dataset.

The 1,797 real 8x8 handwritten digits (UCI optdigits test set) ship inside the
scikit-learn package, so training works offline with nothing downloaded. They
are written once by :class:`JaxlossDigits`, a ``tfds.core.GeneratorBasedBuilder``
with ``tfds.features.Tensor`` features prepared as ``array_record``, and read back
with ``as_data_source()``: no TensorFlow is needed at any point (``tfds.load`` and
``tfds.features.Image`` encoding would need it).

Each example is ``{"image": uint8 (8, 8, 1) in [0, 16], "label": int64 in [0, 9],
"index": int64}``; ``index`` is the row of ``sklearn.datasets.load_digits()``, so
every record can be traced back to its source (TFDS stores the records in a
shuffled order). There is one split, ``train``; validation is carved from it by
``train.data.pipeline``.

The prepared copy lives in ``<cache_dir>/jaxloss_digits/1.0.0``; ``cache_dir``
defaults to ``$JAXLOSS_DATA_DIR`` or ``~/.cache/jaxloss/tensorflow_datasets``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from train.data.errors import DataError

__all__ = ["JaxlossDigits", "default_cache_dir", "prepare_digits"]

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
MAX_VALUE = 16  # pixel values of load_digits() are integers 0..16


class JaxlossDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder for ``sklearn.datasets.load_digits`` (no download, no TensorFlow).

    Not registered in the TFDS catalog (``skip_registration=True``): construct it
    directly, or use :func:`prepare_digits`.

    Examples:
        >>> import tempfile
        >>> builder = JaxlossDigits(data_dir=tempfile.mkdtemp(), file_format="array_record")
        >>> builder.info.features["image"].shape, builder.info.splits
        ((8, 8, 1), {})
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn.datasets.load_digits as uint8 8x8x1 Tensor features."}
    # TFDS 4.9.10's ``DatasetBuilder.code_path`` imports the ``importlib_resources``
    # backport for builders defined inside a package, but declares it only for
    # Python < 3.9 (tensorflow/datasets#11212), so ``download_and_prepare`` fails
    # with ModuleNotFoundError. The path only locates a URL-checksums file, and
    # this builder downloads nothing.
    code_path = None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "scikit-learn's digits: 1,797 8x8 grey-level images of handwritten "
                "digits, pixel values 0..16 (UCI optdigits)."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "index": tfds.features.Tensor(shape=(), dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # nothing to download: the data ships with scikit-learn
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict[str, Any]]]:
        from sklearn.datasets import load_digits  # lazy: sklearn import is slow

        digits = load_digits()
        images = digits.images.astype(np.uint8)[..., None]  # exact: values are 0..16
        for i, (image, label) in enumerate(zip(images, digits.target, strict=True)):
            yield i, {"image": image, "label": int(label), "index": i}


def default_cache_dir() -> str:
    """Returns where jaxloss prepares its own TFDS datasets.

    ``$JAXLOSS_DATA_DIR`` if set, else ``~/.cache/jaxloss/tensorflow_datasets``.

    Examples:
        >>> default_cache_dir().endswith("tensorflow_datasets") or "JAXLOSS_DATA_DIR" in os.environ
        True
    """
    env = os.environ.get("JAXLOSS_DATA_DIR")
    if env:
        return os.path.expanduser(env)
    return os.path.join(os.path.expanduser("~"), ".cache", "jaxloss", "tensorflow_datasets")


def prepare_digits(cache_dir: str | os.PathLike[str] | None = None) -> JaxlossDigits:
    """Returns the digits builder, preparing it into ``cache_dir`` on first use only.

    A prepared copy (``dataset_info.json`` present) is reused as is; TFDS writes
    into a temporary directory and renames it, so an interrupted preparation
    never leaves a half-written dataset behind, and when two processes prepare at
    once the loser uses the winner's copy. TFDS's own messages are silenced; one
    line says that the dataset is being prepared.

    Args:
        cache_dir: TFDS data directory; ``None`` means :func:`default_cache_dir`.

    Returns:
        The prepared builder; ``builder.as_data_source()["train"]`` holds 1,797
        records.

    Raises:
        DataError: the cache directory cannot be written.

    Examples:
        >>> import tempfile
        >>> builder = prepare_digits(tempfile.mkdtemp())
        >>> source = builder.as_data_source()["train"]
        >>> len(source), source[0]["image"].shape, source[0]["image"].dtype
        (1797, (8, 8, 1), dtype('uint8'))
    """
    data_dir = os.fspath(cache_dir) if cache_dir is not None else default_cache_dir()
    with _quiet_tfds():
        builder = JaxlossDigits(data_dir=data_dir, file_format="array_record")
        if builder.is_prepared():
            return builder
        print(
            f"preparing the embedded digits dataset once in {data_dir} (a few seconds; "
            "nothing is downloaded)",
            file=sys.stderr,
        )
        try:
            builder.download_and_prepare()
        except Exception as e:
            # Another process preparing the same cache may win the final rename;
            # its copy is complete, so use it. Anything else is a real failure.
            builder = JaxlossDigits(data_dir=data_dir, file_format="array_record")
            if not builder.is_prepared():
                raise DataError(f"cannot prepare the digits dataset in {data_dir}: {e}") from e
    return builder


@contextlib.contextmanager
def _quiet_tfds():
    """Silences TFDS while it prepares the embedded dataset.

    Its messages ("Downloading and preparing ... Unknown size", absl's "Variant folder ... has no
    dataset_info.json", progress bars) say nothing true about an embedded dataset.
    """
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        absl_logger.setLevel(level)
        tfds.display_progress_bar(True)
