"""Splits, class imbalance, batching and prefetch: from a loaded dataset to :class:`Input`.

One pipeline for every dataset kind. A *pool* (:mod:`train.data.pools`) holds the examples of
one stored
split (in memory for array datasets, as file paths for ImageFolder) and turns a
vector of indices into a normalised batch; a split of :class:`Input` is a pool
plus the indices it uses. Batches are built on the host with grain::

    grain.MapDataset.source(train_indices).shuffle(seed=s).batch(B, drop_remainder=True)
         .random_map(load_and_augment, seed=t).to_iter_dataset(ReadOptions(...))

``to_iter_dataset`` computes the next ``prefetch`` batches in background threads
while the device works on the current one. Each batch's augmentation generator is
seeded by ``t`` and the batch index, so the batches are the same with and without
prefetching, and ``s``, ``t`` are derived from ``(seed, epoch)``: same seed and
epoch, same batches; another epoch, another order.

Randomness, all derived from ``seed`` with ``numpy.random.SeedSequence`` and a
per-purpose tag: the train/validation split, the imbalance subsample, and per
epoch the shuffle and the augmentation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import grain
import numpy as np
from PIL import Image  # noqa: F401  (used by the doctests)

from jaxloss._validate import check_int
from train.data.augment import resize_images
from train.data.catalog import ArrayDataset
from train.data.errors import DataError
from train.data.imagefolder import ImageFolder
from train.data.pools import ArrayPool, FolderPool, Pool
from train.data.splits import _AUGMENT, _SHUFFLE, apply_imbalance, derive_seed, split_train_val

__all__ = [
    "Batch",
    "BatchOptions",
    "Input",
    "apply_imbalance",
    "derive_seed",
    "from_arrays",
    "from_folder",
    "split_train_val",
]

Batch = dict[str, np.ndarray]


# Per-channel (mean, std) of pixels / max_value over the training set. Unknown
# datasets get theirs computed from their training split.
_ARRAY_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "digits": ((0.3053,), (0.3760,)),  # all 1,797 images, pixels / 16
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
# Colour datasets whose classes are not mirror-symmetric (house numbers).
_NO_FLIP = frozenset({"svhn_cropped"})


@dataclasses.dataclass(frozen=True, eq=False)
class Input:
    """A dataset ready for training: sizes, shapes, and batch iterators.

    Every batch is ``{"image": float32 (B, H, W, C) normalised, "label": int32 (B,),
    "mask": bool (B,)}``. Training batches are full (``B == batch_size``, the
    remainder is dropped, ``mask`` all True); evaluation batches have ``B ==
    eval_batch_size`` and the last one is padded with ``mask`` False, so each
    example is counted exactly once.

    Attributes:
        num_classes: number of classes.
        image_shape: ``(H, W, C)`` of the batches.
        class_names: one name per class.
        train_size: training examples (after the split and any imbalance).
        val_size: validation examples (0 if none).
        test_size: test examples (0 if the dataset has no test split).
        steps_per_epoch: full training batches per epoch.
        batch_size: training batch size.
        eval_batch_size: evaluation batch size.
        seed: the seed every random choice derives from.
        augment: whether training batches are augmented.
        prefetch: batches computed ahead in background threads (0: none).
        num_threads: threads that compute batches ahead.
        splits: ``"train"``, ``"val"``, ``"test"`` (those present) to ``(pool,
            indices)``: the examples each split draws from its pool.

    Examples:
        >>> data = from_arrays(_tiny_dataset(), image_size=None, options=BatchOptions(batch_size=4))
        >>> data.train_size, data.val_size, data.test_size, data.steps_per_epoch
        (8, 2, 0, 2)
        >>> [b["label"].shape for b in data.train_batches(epoch=0)]
        [(4,), (4,)]
        >>> [b["mask"].tolist() for b in data.eval_batches("val")]
        [[True, True, False, False]]
    """

    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: tuple[str, ...]
    train_size: int
    val_size: int
    test_size: int
    steps_per_epoch: int
    batch_size: int
    eval_batch_size: int
    seed: int
    augment: bool
    prefetch: int
    num_threads: int
    splits: dict[str, tuple[Pool, np.ndarray]] = dataclasses.field(repr=False)

    def train_batches(self, epoch: int, rows: slice | None = None) -> Iterator[Batch]:
        """Shuffled, augmented, full training batches of one epoch.

        Args:
            epoch: 0-based epoch; with ``seed`` it fixes the order and the augmentation.
            rows: load only these rows of each batch (one process's share of the global batch,
                ``train.parallel.Devices.rows``); they equal those rows of the whole batch,
                augmentation included. Default: all.

        Returns:
            An iterator over ``steps_per_epoch`` batches.

        Examples:
            >>> options = BatchOptions(batch_size=4)
            >>> data = from_arrays(_tiny_dataset(), image_size=None, options=options)
            >>> first = [b["label"].tolist() for b in data.train_batches(0)]
            >>> first == [b["label"].tolist() for b in data.train_batches(0)]
            True
            >>> first == [b["label"].tolist() for b in data.train_batches(1)]
            False
        """
        epoch = check_int("epoch", epoch, minimum=0)
        pool, indices = self.splits["train"]
        ds = grain.MapDataset.source(indices).shuffle(seed=derive_seed(self.seed, epoch, _SHUFFLE))
        ds = ds.batch(self.batch_size, drop_remainder=True)
        if self.augment:
            ds = ds.random_map(
                _TrainBatch(pool, rows), seed=derive_seed(self.seed, epoch, _AUGMENT)
            )
        else:
            ds = ds.map(lambda b: _TrainBatch(pool, rows)(b, None))
        return self._iterate(ds)

    def eval_batches(self, split: str = "val", rows: slice | None = None) -> Iterator[Batch]:
        """Un-augmented batches of ``"val"`` or ``"test"`` in a fixed order, last one padded.

        Args:
            split: ``"val"`` or ``"test"``. A split of size 0 yields no batch.
            rows: load only these rows of each batch (see ``train_batches``). Default: all.

        Returns:
            An iterator over ``ceil(size / eval_batch_size)`` batches.

        Examples:
            >>> options = BatchOptions(batch_size=2, eval_batch_size=3, val_fraction=0.5)
            >>> data = from_arrays(_tiny_dataset(), image_size=None, options=options)
            >>> [int(b["mask"].sum()) for b in data.eval_batches("val")]
            [3, 2]
        """
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split=}")
        if split not in self.splits:
            return iter(())
        pool, indices = self.splits[split]
        n, size = len(indices), self.eval_batch_size
        num_batches = -(-n // size)
        padded = np.full(num_batches * size, indices[0] if n else 0, indices.dtype)
        padded[:n] = indices
        mask = np.arange(num_batches * size) < n

        pick = slice(None) if rows is None else rows

        def make(b: int) -> Batch:
            image, label = pool.load(padded[b * size : (b + 1) * size][pick], None)
            return {"image": image, "label": label, "mask": mask[b * size : (b + 1) * size][pick]}

        return self._iterate(grain.MapDataset.range(num_batches).map(make))

    def _iterate(self, ds: grain.MapDataset) -> Iterator[Batch]:
        threads = self.num_threads if self.prefetch > 0 else 0
        iterator = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=self.prefetch)
        ).__iter__()
        if self.prefetch > 0:
            iterator.start_prefetch()  # start computing batches now, not on the first next()
        return _closing(iterator)


class _TrainBatch:
    """Picklable ``(indices, rng) -> batch`` for grain (``rows`` of each batch only)."""

    def __init__(self, pool: Pool, rows: slice | None = None):
        self.pool = pool
        self.rows = rows

    def __call__(self, indices: np.ndarray, rng: np.random.Generator | None) -> Batch:
        image, label = self.pool.load(indices, rng, self.rows)
        return {"image": image, "label": label, "mask": np.ones(len(label), np.bool_)}


def _closing(iterator: grain.DatasetIterator) -> Iterator[Batch]:
    try:
        yield from iterator
    finally:
        iterator.close()  # stop the prefetch threads when the consumer stops early


def _channel_stats(
    images: np.ndarray, max_value: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``images / max_value``, in chunks (no float64 copy)."""
    c = images.shape[-1]
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for start in range(0, len(images), 4096):
        chunk = images[start : start + 4096].reshape(-1, c).astype(np.float64) / max_value
        total += chunk.sum(0)
        total_sq += np.square(chunk).sum(0)
    count = images.size // c
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return tuple(mean.tolist()), tuple(std.tolist())


@dataclasses.dataclass(frozen=True)
class BatchOptions:
    """The arguments of ``build_input`` that shape the splits and batches.

    ``build_input`` validates them; the fields mean what its arguments mean.

    Examples:
        >>> BatchOptions(batch_size=32).eval_batch_size
        32
    """

    batch_size: int
    eval_batch_size: int | None = None  # None: batch_size
    val_fraction: float = 0.2
    imbalance: tuple[int, float] | None = None
    augment: bool = True
    seed: int = 0
    prefetch: int = 2

    def __post_init__(self):
        if self.eval_batch_size is None:
            object.__setattr__(self, "eval_batch_size", self.batch_size)


def _assemble(
    pools: dict[str, Pool],
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    class_names: Sequence[str],
    options: BatchOptions,
    num_threads: int,
) -> Input:
    """Splits (unless the dataset has its own validation), thins a class, checks sizes."""
    train_pool = pools["train"]
    if "val" in pools:
        train_idx = np.arange(len(train_pool.labels))
        splits = {"val": (pools["val"], np.arange(len(pools["val"].labels)))}
    else:
        train_idx, val_idx = split_train_val(
            len(train_pool.labels), val_fraction=options.val_fraction, seed=options.seed
        )
        splits = {"val": (train_pool, val_idx)} if len(val_idx) else {}
    if options.imbalance is not None:
        cls, fraction = options.imbalance
        if not 0 <= cls < num_classes:
            raise ValueError(
                f"imbalance class must be in [0, {num_classes}), "
                f"got imbalance={options.imbalance!r}"
            )
        train_idx = apply_imbalance(
            train_idx, train_pool.labels, cls=cls, fraction=fraction, seed=options.seed
        )
    splits["train"] = (train_pool, train_idx)
    if "test" in pools:
        splits["test"] = (pools["test"], np.arange(len(pools["test"].labels)))
    steps = len(train_idx) // options.batch_size
    if steps == 0:
        raise DataError(
            f"batch_size={options.batch_size} is larger than the {len(train_idx)} "
            "training examples: "
            "no full batch per epoch"
        )
    return Input(
        num_classes=num_classes,
        image_shape=tuple(image_shape),  # type: ignore[arg-type]
        class_names=tuple(class_names),
        train_size=len(train_idx),
        val_size=len(splits["val"][1]) if "val" in splits else 0,
        test_size=len(splits["test"][1]) if "test" in splits else 0,
        steps_per_epoch=steps,
        batch_size=options.batch_size,
        eval_batch_size=options.eval_batch_size,
        seed=options.seed,
        augment=options.augment,
        prefetch=options.prefetch,
        num_threads=num_threads,
        splits=splits,
    )


def from_arrays(dataset: ArrayDataset, *, image_size: int | None, options: BatchOptions) -> Input:
    """Builds an :class:`Input` from an in-memory dataset (digits, MNIST, CIFAR, ...).

    Normalisation uses the dataset's known per-channel statistics, else those of
    its training split. Augmentation shifts by up to ``max(1, H // 8)`` pixels
    (4 for 32x32, 3 for 28x28, 1 for 8x8) and mirrors colour images only.
    ``image_size`` resizes every image (bilinear) once, in memory.

    Examples:
        >>> data = from_arrays(_tiny_dataset(), image_size=6, options=BatchOptions(batch_size=4))
        >>> data.image_shape, next(data.train_batches(0))["image"].shape
        ((6, 6, 1), (4, 6, 6, 1))
    """
    height, width, channels = dataset.image_shape
    resize = image_size is not None and (image_size, image_size) != (height, width)
    shape = (image_size, image_size, channels) if resize else (height, width, channels)
    mean_std = _ARRAY_STATS.get(dataset.name)
    if mean_std is None or len(mean_std[0]) != channels:
        mean_std = _channel_stats(dataset.splits["train"][0], dataset.max_value)
    pools: dict[str, Pool] = {}
    for split, key in (("train", "train"), ("val", "validation"), ("test", "test")):
        if key not in dataset.splits:
            continue
        images, labels = dataset.splits[key]
        pools[split] = ArrayPool(
            images=resize_images(images, shape[0]) if resize else images,
            labels=labels,
            max_value=dataset.max_value,
            mean=mean_std[0],
            std=mean_std[1],
            pad=max(1, shape[0] // 8),
            flip=channels == 3 and dataset.name not in _NO_FLIP,
        )
    return _assemble(
        pools,
        num_classes=len(dataset.class_names),
        image_shape=shape,
        class_names=dataset.class_names,
        options=options,
        num_threads=1,  # numpy batches: one thread ahead is enough and avoids GIL contention
    )


def from_folder(folder: ImageFolder, *, image_size: int, options: BatchOptions) -> Input:
    """Builds an :class:`Input` from a scanned ImageFolder (images decoded per batch).

    Examples:
        >>> import tempfile
        >>> from train.data.imagefolder import scan_imagefolder
        >>> root = tempfile.mkdtemp()
        >>> for cls in ("a", "b"):
        ...     os.makedirs(os.path.join(root, "train", cls))
        ...     for i in range(3):
        ...         Image.new("RGB", (12, 9)).save(os.path.join(root, "train", cls, f"{i}.png"))
        >>> options = BatchOptions(batch_size=2)
        >>> data = from_folder(scan_imagefolder(root), image_size=8, options=options)
        >>> data.class_names, data.train_size, next(data.train_batches(0))["image"].shape
        (('a', 'b'), 5, (2, 8, 8, 3))
    """
    pools: dict[str, Pool] = {
        split: FolderPool(paths=files.paths, labels=files.labels, size=image_size)
        for split, files in folder.splits.items()
    }
    return _assemble(
        pools,
        num_classes=len(folder.class_names),
        image_shape=(image_size, image_size, 3),
        class_names=folder.class_names,
        options=options,
        num_threads=max(1, min(4, os.cpu_count() or 1)),
    )


def _tiny_dataset() -> ArrayDataset:
    """Ten 4x4 grey images of two classes, for the examples above."""
    images = np.arange(10 * 16, dtype=np.uint8).reshape(10, 4, 4, 1)
    labels = (np.arange(10) % 2).astype(np.int32)
    return ArrayDataset(
        name="tiny", splits={"train": (images, labels)}, class_names=("even", "odd")
    )
