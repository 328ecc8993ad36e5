"""TFDS catalog datasets (``mnist``, ``cifar10``, ``fashion_mnist``, ...) read without TensorFlow.

Reading goes through ``tfds.data_source(name, data_dir=..., builder_kwargs=
{"file_format": "array_record"})``, which needs no TensorFlow when the dataset
was prepared as ``array_record``. Preparing a catalog dataset is another matter:
the catalog builders download from the network and encode their images with
TensorFlow. So :func:`load_catalog` reads a prepared copy; when there is none it
prepares one only if TensorFlow is importable, and otherwise raises
:class:`~train.data.errors.DataError` saying how to prepare it elsewhere.

The datasets here are small (MNIST: 60,000 28x28 images, 47 MB as uint8), so
every split is decoded once into a numpy array in memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import sys
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from train.data.errors import DataError

__all__ = ["ArrayDataset", "load_catalog", "load_splits"]

_READ_CHUNK = 1024  # records decoded per ``__getitems__`` call


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A dataset held in memory: one ``(images, labels)`` pair per split.

    Attributes:
        name: dataset name, e.g. ``"mnist"``.
        splits: split name (``"train"``, ``"validation"``, ``"test"``) to
            ``(images, labels)``: images of shape ``(N, H, W, C)`` (uint8, or the
            builder's dtype), labels int32 of shape ``(N,)``.
        class_names: one name per class, index = label.
        max_value: the value of a white pixel (255 for uint8 images, 16 for digits).
    """

    name: str
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: tuple[str, ...]
    max_value: float = 255.0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(self.splits["train"][0].shape[1:])  # type: ignore[return-value]


def load_splits(
    builder: tfds.core.DatasetBuilder,
    *,
    name: str,
    max_value: float = 255.0,
    sort_key: str | None = None,
) -> ArrayDataset:
    """Reads every split of a prepared ``array_record`` builder into memory.

    Args:
        builder: a prepared builder whose features have an image and a
            ``tfds.features.ClassLabel`` (``info.supervised_keys``, else the keys
            ``"image"`` and ``"label"``).
        name: the dataset name used in error messages and kept in the result.
        max_value: the value of a white pixel.
        sort_key: an integer feature to order each split by (TFDS stores
            records in a hashed order); ``None`` keeps the stored order.

    Returns:
        An :class:`ArrayDataset`; it has a ``"train"`` split.

    Raises:
        DataError: the features are not (image, class label), or there is no
            ``train`` split, or the records cannot be read.

    Examples:
        >>> import tempfile
        >>> from train.data.digits import prepare_digits
        >>> builder = prepare_digits(tempfile.mkdtemp())
        >>> ds = load_splits(builder, name="digits", max_value=16, sort_key="index")
        >>> ds.splits["train"][0].shape, ds.splits["train"][1][:5].tolist(), ds.class_names[:3]
        ((1797, 8, 8, 1), [0, 1, 2, 3, 4], ('0', '1', '2'))
    """
    try:
        sources = builder.as_data_source()
    except Exception as e:
        raise DataError(f"cannot read dataset {name!r} from {builder.data_dir}: {e}") from e
    return _read_splits(builder.info, sources, name=name, max_value=max_value, sort_key=sort_key)


def _read_splits(
    info: tfds.core.DatasetInfo,
    sources: dict[str, Any],
    *,
    name: str,
    max_value: float,
    sort_key: str | None,
) -> ArrayDataset:
    image_key, label_key = info.supervised_keys or ("image", "label")
    features = info.features
    if (
        not (isinstance(image_key, str) and isinstance(label_key, str))
        or image_key not in features
        or label_key not in features
    ):
        raise DataError(
            f"dataset {name!r} has no (image, label) features: it has {sorted(features.keys())}"
        )
    label_feature = features[label_key]
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise DataError(
            f"dataset {name!r}: feature {label_key!r} is not a class label "
            f"({type(label_feature).__name__})"
        )
    image_shape = tuple(features[image_key].shape)
    if len(image_shape) != 3 or None in image_shape:
        raise DataError(
            f"dataset {name!r}: images must have a fixed (H, W, C) shape, got {image_shape}"
        )
    if "train" not in sources:
        raise DataError(f"dataset {name!r} has no 'train' split (it has {sorted(sources)})")
    splits = {}
    for split in ("train", "validation", "test"):
        if split not in sources:
            continue
        source = sources[split]
        n = len(source)
        images = np.empty((n, *image_shape), dtype=features[image_key].np_dtype)
        labels = np.empty((n,), dtype=np.int32)
        keys = np.empty((n,), dtype=np.int64)
        try:
            for start in range(0, n, _READ_CHUNK):
                stop = min(start + _READ_CHUNK, n)
                records = source.__getitems__(list(range(start, stop)))
                images[start:stop] = np.stack([r[image_key] for r in records])
                labels[start:stop] = [r[label_key] for r in records]
                if sort_key is not None:
                    keys[start:stop] = [r[sort_key] for r in records]
        except Exception as e:
            raise DataError(f"cannot read split {split!r} of dataset {name!r}: {e}") from e
        if sort_key is not None:
            order = np.argsort(keys, kind="stable")
            images, labels = images[order], labels[order]
        splits[split] = (images, labels)
    return ArrayDataset(
        name=name, splits=splits, class_names=tuple(label_feature.names), max_value=max_value
    )


def load_catalog(name: str, *, data_dir: str | os.PathLike[str] | None = None) -> ArrayDataset:
    """Loads a TFDS dataset prepared as ``array_record`` into memory.

    The records are read with ``tfds.data_source(name, data_dir=data_dir,
    builder_kwargs={"file_format": "array_record"})``.

    Args:
        name: a TFDS dataset name (``"mnist"``, ``"cifar10"``, ``"fashion_mnist"``,
            ...), optionally with a config or version (``"mnist:3.0.1"``).
        data_dir: the TFDS data directory holding ``<name>/<version>/``; ``None``
            means TFDS's default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).

    Returns:
        An :class:`ArrayDataset` with the dataset's ``train`` split and, when it
        has them, its ``validation`` and ``test`` splits.

    Raises:
        DataError: the name is unknown; or the dataset is not prepared in
            ``data_dir`` and cannot be prepared here (preparing a catalog dataset
            needs TensorFlow and the network); or it is prepared only as
            TFRecord, which needs TensorFlow to read.

    Examples:
        >>> import tempfile
        >>> try:
        ...     load_catalog("no_such_dataset", data_dir=tempfile.mkdtemp())
        ... except DataError as e:
        ...     print(str(e)[:38])
        unknown dataset 'no_such_dataset': not
    """
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    where = data_dir or "the TFDS default data_dir"
    short = name.split(":")[0].split("/")[0]
    try:
        # No file_format here: a prepared copy's format is restored from its dataset_info.json.
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset {name!r}: not 'digits', 'imagefolder' or a TFDS catalog name "
            "(https://www.tensorflow.org/datasets/catalog)"
        ) from None
    except Exception as e:
        raise DataError(f"cannot open TFDS dataset {name!r} in {where}: {e}") from e
    builder_kwargs = {"file_format": "array_record"}
    if not builder.is_prepared():
        if importlib.util.find_spec("tensorflow") is None:
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir_root}, "
                "and preparing it needs "
                f"TensorFlow and the network: run `tfds build {short} --file_format=array_record "
                f"--data_dir=DIR` where both are available, then pass --data-dir DIR"
            )
        try:
            with contextlib.redirect_stdout(sys.stderr):
                tfds.data_source(
                    name, data_dir=data_dir, download=True, builder_kwargs=builder_kwargs
                )
        except Exception as e:
            raise DataError(f"cannot download and prepare TFDS dataset {name!r}: {e}") from e
        builder = tfds.builder(name, data_dir=data_dir)
    formats = {f.value for f in builder.info.available_file_formats()}
    if "array_record" not in formats:
        raise DataError(
            f"TFDS dataset {name!r} in {builder.data_dir} is prepared as {sorted(formats)}, "
            "which needs "
            f"TensorFlow to read: prepare it with `tfds build {short} --file_format=array_record`"
        )
    try:
        sources = tfds.data_source(
            name, data_dir=data_dir, download=False, builder_kwargs=builder_kwargs
        )
    except Exception as e:
        raise DataError(f"cannot read TFDS dataset {name!r} from {builder.data_dir}: {e}") from e
    return _read_splits(builder.info, sources, name=short, max_value=255.0, sort_key=None)
