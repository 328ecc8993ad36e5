"""Image augmentation and normalisation on the host, in numpy and PIL.

Two families, matching what the seeds' torchvision pipelines do:

* In-memory datasets (digits, MNIST, CIFAR): :func:`pad_crop_flip` works on a
  whole batch at once, vectorised: zero-pad by ``pad`` pixels, crop back to the
  original size at a random offset per image (torchvision ``RandomCrop(size,
  padding=pad)``), and for natural colour images mirror half of them
  (``RandomHorizontalFlip``). Digits are not mirror-symmetric, so grey-level
  digit datasets get the shift only.
* ImageFolder (decoded one file at a time): :func:`random_resized_crop` (torchvision
  ``RandomResizedCrop``, same sampling rule) for training and
  :func:`resize_center_crop` (``Resize(size * 8 // 7)`` + ``CenterCrop(size)``,
  i.e. 256/224) for evaluation.

:func:`normalize` maps raw pixels to ``(x / max_value - mean) / std`` in float32.
Randomness comes from an explicit ``numpy.random.Generator`` (grain hands one to
each batch, seeded by the pipeline seed and the batch index), so every result is
a pure function of its inputs and the generator state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "normalize",
    "pad_crop_flip",
    "random_resized_crop",
    "resize_center_crop",
    "resize_images",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def pad_crop_flip(
    images: np.ndarray,
    rng: np.random.Generator,
    *,
    pad: int,
    flip: bool,
    rows: slice | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    """Random shift (zero-pad then crop) and optional horizontal flip of a batch.

    Args:
        images: raw pixels of shape ``(B, H, W, C)``, any dtype.
        rng: the generator to draw the offsets (and flips) from.
        pad: pixels of zero padding on every side; offsets are uniform in
            ``[0, 2 * pad]``. ``0`` disables the shift.
        flip: mirror each image left-right with probability 1/2.
        rows: ``images`` are these rows of a batch of ``batch_size`` examples (one process's
            share): the offsets are drawn for the whole batch and these rows' are applied, so each
            example gets the same augmentation however the batch is split.
        batch_size: the whole batch's size when ``rows`` is given.

    Returns:
        An array of the same shape and dtype as ``images``.

    Examples:
        >>> x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
        >>> y = pad_crop_flip(x, np.random.default_rng(0), pad=1, flip=False)
        >>> y.shape, y.dtype
        ((2, 4, 4, 1), dtype('uint8'))
        >>> bool(np.array_equal(pad_crop_flip(x, np.random.default_rng(0), pad=0, flip=False), x))
        True
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad=}")
    b, h, w, _ = images.shape
    total = b if rows is None else batch_size
    if total is None or (rows is not None and len(range(total)[rows]) != b):
        raise ValueError(f"rows={rows} of batch_size={batch_size} do not match {b} images")
    pick = slice(None) if rows is None else rows
    out = images
    if pad > 0:
        padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        dy = rng.integers(0, 2 * pad + 1, size=total)[pick]
        dx = rng.integers(0, 2 * pad + 1, size=total)[pick]
        ys = dy[:, None] + np.arange(h)  # (B, H)
        xs = dx[:, None] + np.arange(w)  # (B, W)
        out = padded[np.arange(b)[:, None, None], ys[:, :, None], xs[:, None, :]]
    if flip:
        mirror = (rng.random(total) < 0.5)[pick]
        out = np.where(mirror[:, None, None, None], out[:, :, ::-1], out)
    return out


def normalize(
    images: np.ndarray, *, max_value: float, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Scales raw pixels to ``[0, 1]`` and standardises each channel.

    Args:
        images: raw pixels of shape ``(..., C)``.
        max_value: the raw value of a white pixel (255 for uint8 images).
        mean: per-channel mean of the scaled pixels, length ``C``.
        std: per-channel standard deviation of the scaled pixels, length ``C``.

    Returns:
        float32 array of the same shape: ``(images / max_value - mean) / std``.

    Examples:
        >>> x = np.array([[0, 255]], np.uint8)[..., None]
        >>> normalize(x, max_value=255, mean=[0.5], std=[0.5])[..., 0]
        array([[-1.,  1.]], dtype=float32)
    """
    scale = np.float32(1.0 / max_value)
    mean = np.asarray(mean, np.float32)
    inv_std = np.float32(1.0) / np.asarray(std, np.float32)
    return (images.astype(np.float32) * scale - mean) * inv_std


def random_resized_crop(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
) -> Image.Image:
    """Torchvision's ``RandomResizedCrop(size)``: crop a random area and aspect, resize.

    Up to ten tries draw an area fraction uniformly from ``scale`` and a log-uniform
    aspect ratio from ``ratio``; the first crop that fits is taken at a uniform
    position, else a central crop clamped to ``ratio`` (torchvision's fallback).
    The crop is resized to ``size x size`` with bilinear (antialiased) filtering.

    Args:
        image: the decoded image.
        rng: generator for the crop parameters.
        size: output side length.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height).

    Returns:
        A ``size x size`` PIL image in the input's mode.

    Examples:
        >>> img = Image.new("RGB", (40, 30))
        >>> random_resized_crop(img, np.random.default_rng(0), size=16).size
        (16, 16)
    """
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(height * max(ratio))), height
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    # Crop, then resize (as torchvision): resize(box=...) would filter across the box edge.
    return image.crop((left, top, left + w, top + h)).resize(
        (size, size), Image.Resampling.BILINEAR
    )


def resize_center_crop(image: Image.Image, *, size: int) -> Image.Image:
    """Torchvision's ``Resize(size * 8 // 7)`` then ``CenterCrop(size)`` (256 -> 224).

    Args:
        image: the decoded image.
        size: output side length.

    Returns:
        A ``size x size`` PIL image in the input's mode.

    Examples:
        >>> resize_center_crop(Image.new("RGB", (50, 20)), size=16).size
        (16, 16)
    """
    short = size * 8 // 7
    width, height = image.size
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a stack of images to ``size x size``, in float32.

    Each channel is resized as a PIL ``"F"`` (float32) image, so values are not
    rounded (digits have only 17 grey levels).

    Args:
        images: shape ``(N, H, W, C)``, any real dtype.
        size: output side length.

    Returns:
        float32 array of shape ``(N, size, size, C)`` on the input's value scale.

    Examples:
        >>> resize_images(np.ones((2, 8, 8, 1), np.uint8), 16).shape
        (2, 16, 16, 1)
    """
    n, _, _, c = images.shape
    out = np.empty((n, size, size, c), np.float32)
    for i in range(n):
        for k in range(c):
            channel = Image.fromarray(
                np.ascontiguousarray(images[i, :, :, k], dtype=np.float32)
            )  # mode "F"
            out[i, :, :, k] = np.asarray(channel.resize((size, size), Image.Resampling.BILINEAR))
    return out
