"""Input pipelines for ``train``: datasets through tensorflow-datasets and grain, no TensorFlow.

:func:`build_input` turns a dataset name into an :class:`Input`: sizes, shapes
and host-side batch iterators (``train_batches(epoch)``, ``eval_batches(split)``)
yielding ``{"image": float32 (B, H, W, C), "label": int32 (B,), "mask": bool (B,)}``.

Datasets:

* ``"digits"`` (default): scikit-learn's 1,797 8x8 digits, embedded, prepared once
  as a TFDS ``array_record`` dataset in ``cache_dir`` (:mod:`train.data.digits`).
* a TFDS catalog name (``"mnist"``, ``"cifar10"``, ``"fashion_mnist"``, ...):
  read from a prepared ``array_record`` copy in ``data_dir`` with
  ``tfds.data_source`` (:mod:`train.data.catalog`).
* ``"imagefolder"``: ``data_dir/train/<class>/*.png|jpg`` (and ``val/``,
  ``test/``), torchvision's ImageFolder layout, decoded with PIL
  (:mod:`train.data.imagefolder`).

Problems with the data raise :class:`DataError` (a ``ValueError``) with one line
naming what is wrong; bad arguments raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from jaxloss._validate import check_int, check_real
from train.data.errors import DataError

if TYPE_CHECKING:
    from train.data.pipeline import Batch, Input

__all__ = ["Batch", "DataError", "Input", "build_input", "input_from_config"]

# `import train.data` stays light (no tfds, no grain: ~1.3 s) so `jaxloss-train
# --help` is quick; `Input` and `Batch` load with the pipeline on first access.
_LAZY = ("Batch", "BatchOptions", "Input")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from train.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_IMAGEFOLDER_SIZE = 224  # torchvision's ImageNet crop


def build_input(
    *,
    dataset: str = "digits",
    data_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    val_fraction: float = 0.2,
    imbalance: tuple[int, float] | None = None,
    augment: bool = True,
    image_size: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    prefetch: int = 2,
) -> Input:
    """Loads a dataset and returns its splits as batch iterators.

    Args:
        dataset: ``"digits"``, ``"imagefolder"``, or a TFDS catalog name.
        data_dir: for a catalog name, the TFDS data directory holding the prepared
            ``array_record`` copy (``None``: TFDS's default); for ``"imagefolder"``,
            the root directory (required); must be ``None`` for ``"digits"``.
        batch_size: training batch size (the last partial batch is dropped).
        eval_batch_size: evaluation batch size; ``None`` means ``batch_size``.
        val_fraction: fraction of the training split held out for validation, in
            ``[0, 1)``; ignored when the dataset has its own validation split
            (a TFDS ``validation`` split, or ``val/`` in an ImageFolder).
        imbalance: ``(class, fraction)``: keep only ``fraction`` (in ``(0, 1]``) of
            that class's training examples, at least one (seed 003).
        augment: augment training batches (pad-and-crop, plus flip for colour
            images; random-resized-crop and flip for ImageFolder).
        image_size: output side length; ``None`` keeps the native size of array
            datasets and means 224 for ImageFolder.
        seed: seed of the split, the imbalance subsample, shuffling and augmentation.
        cache_dir: where ``"digits"`` is prepared; ``None`` means
            ``$JAXLOSS_DATA_DIR`` or ``~/.cache/jaxloss/tensorflow_datasets``.
        prefetch: batches computed ahead in background threads (0: none).

    Returns:
        The :class:`Input`.

    Raises:
        ValueError: an argument is out of range (the message names it).
        DataError: the dataset cannot be found, prepared or read.

    Examples:
        >>> import tempfile
        >>> data = build_input(batch_size=32, cache_dir=tempfile.mkdtemp())
        >>> data.train_size, data.val_size, data.steps_per_epoch, data.image_shape
        (1438, 359, 44, (8, 8, 1))
        >>> batch = next(data.train_batches(epoch=0))
        >>> batch["image"].shape, batch["image"].dtype, batch["label"].dtype
        ((32, 8, 8, 1), dtype('float32'), dtype('int32'))
        >>> bool(batch["mask"].all())
        True
    """
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset must be a non-empty string, got {dataset=}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    eval_batch_size = (
        batch_size
        if eval_batch_size is None
        else check_int("eval_batch_size", eval_batch_size, minimum=1)
    )
    val_fraction = check_real("val_fraction", val_fraction)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction=}")
    if imbalance is not None:
        try:
            cls, fraction = imbalance
        except (TypeError, ValueError):
            raise ValueError(f"imbalance must be (class, fraction), got {imbalance=}") from None
        cls = check_int("imbalance class", cls, minimum=0)
        fraction = check_real("imbalance fraction", fraction)
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"imbalance fraction must be in (0, 1], got {imbalance=}")
        imbalance = (cls, fraction)
    if image_size is not None:
        image_size = check_int("image_size", image_size, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    prefetch = check_int("prefetch", prefetch, minimum=0)

    # Imports here keep `import train.data` light (tfds and grain load on first use).
    from train.data import pipeline

    options = pipeline.BatchOptions(
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        val_fraction=val_fraction,
        imbalance=imbalance,
        augment=bool(augment),
        seed=seed,
        prefetch=prefetch,
    )

    if dataset == "imagefolder":
        from train.data.imagefolder import scan_imagefolder

        if data_dir is None:
            raise ValueError(
                "dataset 'imagefolder' needs data_dir (the root holding train/<class>/...), "
                "got data_dir=None"
            )
        folder = scan_imagefolder(data_dir)
        return pipeline.from_folder(
            folder, image_size=image_size or _IMAGEFOLDER_SIZE, options=options
        )
    if dataset == "digits":
        from train.data.catalog import load_splits
        from train.data.digits import MAX_VALUE, prepare_digits

        if data_dir is not None:
            raise ValueError(
                "dataset 'digits' is embedded and takes no data_dir (use cache_dir), "
                f"got {data_dir=}"
            )
        # Sorted by sklearn row, so indices (and the seeded split) refer to load_digits() rows.
        arrays = load_splits(
            prepare_digits(cache_dir), name="digits", max_value=MAX_VALUE, sort_key="index"
        )
    else:
        from train.data.catalog import load_catalog

        arrays = load_catalog(dataset, data_dir=data_dir)
    return pipeline.from_arrays(arrays, image_size=image_size, options=options)


def input_from_config(config: Any, *, prefetch: int = 2) -> Input:
    """:func:`build_input` with a ``train.config.Config``'s data fields.

    ``dataset``, ``data_dir``, ``batch_size``, ``eval_batch_size``, ``val_fraction``,
    ``imbalance``, ``augment``, ``image_size``, ``seed`` and ``cache_dir``: the one place the
    trainer, the examples and the benchmarks turn a configuration into batches.

    Examples:
        >>> import tempfile
        >>> from train.config import Config
        >>> data = input_from_config(Config(batch_size=32, cache_dir=tempfile.mkdtemp()))
        >>> data.steps_per_epoch, data.num_classes
        (44, 10)
    """
    return build_input(
        dataset=config.dataset,
        data_dir=config.data_dir,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        val_fraction=config.val_fraction,
        imbalance=config.imbalance,
        augment=config.augment,
        image_size=config.image_size,
        seed=config.seed,
        cache_dir=config.cache_dir,
        prefetch=prefetch,
    )
