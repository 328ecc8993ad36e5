"""Pools: the examples of one stored split, turned into normalised batches by index.

An :class:`ArrayPool` holds images in memory (digits, MNIST, CIFAR) and augments a
whole batch at once with :func:`~train.data.augment.pad_crop_flip`; a
:class:`FolderPool` holds file paths (ImageFolder) and decodes, crops and resizes
one file at a time with PIL. Both are immutable and safe to call from the
prefetch threads; randomness comes only from the ``rng`` argument.
"""

from __future__ import annotations

import dataclasses
import os  # noqa: F401  (used by the doctests)
from typing import Protocol

import numpy as np
from PIL import Image

from train.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    normalize,
    pad_crop_flip,
    random_resized_crop,
    resize_center_crop,
)
from train.data.imagefolder import load_image

__all__ = ["ArrayPool", "FolderPool", "Pool"]


class Pool(Protocol):
    """The examples of one stored split; ``load`` builds a batch from indices."""

    labels: np.ndarray

    def load(
        self, indices: np.ndarray, rng: np.random.Generator | None, rows: slice | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels of ``indices[rows]``; ``rng`` (training) augments, ``None`` does not.

        ``rows`` (default all) is one process's share of the batch ``indices``: the random draws
        are made for the whole batch, so an example is augmented alike however it is split.
        """
        ...


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayPool:
    """In-memory images; training batches get pad-and-crop (+ flip) augmentation.

    Attributes:
        images: raw pixels of shape ``(N, H, W, C)``.
        labels: int32 of shape ``(N,)``.
        max_value: raw value of a white pixel.
        mean: per-channel mean after scaling by ``max_value``.
        std: per-channel standard deviation after scaling.
        pad: shift range in pixels for augmentation.
        flip: whether augmentation mirrors images.
    """

    images: np.ndarray
    labels: np.ndarray
    max_value: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    flip: bool

    def load(
        self, indices: np.ndarray, rng: np.random.Generator | None, rows: slice | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns float32 ``(B, H, W, C)`` images and int32 ``(B,)`` labels; ``rng`` augments.

        ``B`` is ``len(indices[rows])``; see :class:`Pool`.

        Examples:
            >>> pool = ArrayPool(np.full((3, 2, 2, 1), 255, np.uint8), np.arange(3, dtype=np.int32),
            ...                  255.0, (0.5,), (0.5,), pad=1, flip=False)
            >>> x, y = pool.load(np.array([2, 0]), None)
            >>> x.shape, float(x.max()), y.tolist()
            ((2, 2, 2, 1), 1.0, [2, 0])
        """
        picked = indices if rows is None else indices[rows]
        images = self.images[picked]
        if rng is not None:
            images = pad_crop_flip(
                images, rng, pad=self.pad, flip=self.flip, rows=rows, batch_size=len(indices)
            )
        return normalize(
            images, max_value=self.max_value, mean=self.mean, std=self.std
        ), self.labels[picked]


@dataclasses.dataclass(frozen=True, eq=False)
class FolderPool:
    """Image files decoded per batch, with ImageNet normalisation.

    Training batches (``rng`` given) get random-resized-crop and a horizontal
    flip, each example from its own generator (seeded by one draw per example of ``rng``, so a
    process that loads only some rows crops them as the whole batch would); evaluation batches
    get resize + centre crop.

    Attributes:
        paths: one file per example.
        labels: int32 of shape ``(N,)``.
        size: output side length.
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    size: int

    def load(
        self, indices: np.ndarray, rng: np.random.Generator | None, rows: slice | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Float32 ``(B, size, size, 3)`` images and int32 ``(B,)`` labels; ``rng`` augments.

        ``B`` is ``len(indices[rows])``; see :class:`Pool`.

        Examples:
            >>> import tempfile
            >>> path = os.path.join(tempfile.mkdtemp(), "a.png")
            >>> Image.new("RGB", (9, 7), (255, 255, 255)).save(path)
            >>> pool = FolderPool((path,), np.array([3], np.int32), size=4)
            >>> x, y = pool.load(np.array([0, 0]), None)
            >>> x.shape, round(float(x[0, 0, 0, 0]), 4), y.tolist()
            ((2, 4, 4, 3), 2.2489, [3, 3])
        """
        pick = slice(None) if rows is None else rows
        picked = indices[pick]
        seeds = None if rng is None else rng.integers(0, 2**63 - 1, size=len(indices))[pick]
        out = np.empty((len(picked), self.size, self.size, 3), np.uint8)
        for k, i in enumerate(picked):
            image = load_image(self.paths[i])
            if seeds is None:
                image = resize_center_crop(image, size=self.size)
            else:
                example_rng = np.random.default_rng(seeds[k])
                image = random_resized_crop(image, example_rng, size=self.size)
                if example_rng.random() < 0.5:
                    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out[k] = np.asarray(image)
        return normalize(out, max_value=255.0, mean=IMAGENET_MEAN, std=IMAGENET_STD), self.labels[
            picked
        ]
