"""torchvision-style ImageFolder directories, read with PIL (no TensorFlow).

Layout::

    root/train/<class>/<any/sub/dirs>/*.png|jpg|...   (required)
    root/val/<class>/...                             (optional: else carved from train)
    root/test/<class>/...                            (optional)

As in ``torchvision.datasets.ImageFolder``: the classes are the sub-directories of
``train/`` sorted by name, a class's index is its sorted position, and the files
of a class are collected by a sorted recursive walk, keeping those with an image
extension (case-insensitive). Unlike torchvision, hidden directories
(``.ipynb_checkpoints``) are not classes, ``val/`` and ``test/`` must have exactly
the classes of ``train/`` (torchvision would silently re-index them), and every
file's header is opened once at scan time so an unreadable file is reported,
by name, before training starts. Pixels are decoded lazily, one batch at a time.
Images are converted to RGB (torchvision's default loader).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from PIL import Image

from train.data.errors import DataError

__all__ = ["IMG_EXTENSIONS", "FolderSplit", "ImageFolder", "load_image", "scan_imagefolder"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSplit:
    """The files of one split.

    Attributes:
        paths: one path per example, in torchvision's order.
        labels: int32 class indices of shape ``(N,)``.
    """

    paths: tuple[str, ...]
    labels: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolder:
    """A scanned ImageFolder root.

    Attributes:
        root: the root directory.
        class_names: the sorted class directory names.
        splits: ``"train"`` and, where present, ``"val"`` and ``"test"``.
    """

    root: str
    class_names: tuple[str, ...]
    splits: dict[str, FolderSplit]


def _find_classes(split_dir: str) -> tuple[str, ...]:
    return tuple(
        sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    )


def _check_readable(path: str) -> None:
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018  (the header is parsed on open)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"unreadable image file {path}: {e}") from None


def _scan_split(split_dir: str, class_names: tuple[str, ...], *, verify: bool) -> FolderSplit:
    paths: list[str] = []
    labels: list[int] = []
    for index, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        count = 0
        for walk_root, _, fnames in sorted(os.walk(class_dir, followlinks=True)):
            for fname in sorted(fnames):
                if fname.lower().endswith(IMG_EXTENSIONS):
                    path = os.path.join(walk_root, fname)
                    if verify:
                        _check_readable(path)
                    paths.append(path)
                    labels.append(index)
                    count += 1
        if count == 0:
            raise DataError(
                f"class folder {class_dir} has no images "
                f"({'/'.join(e[1:] for e in IMG_EXTENSIONS)})"
            )
    return FolderSplit(paths=tuple(paths), labels=np.asarray(labels, np.int32))


def scan_imagefolder(root: str | os.PathLike[str], *, verify: bool = True) -> ImageFolder:
    """Lists the classes and files of an ImageFolder root, checking what it can.

    Args:
        root: directory holding ``train/`` (and optionally ``val/``, ``test/``).
        verify: open every file's header now, so unreadable files fail here.

    Returns:
        The scanned :class:`ImageFolder`.

    Raises:
        DataError: ``root`` or ``root/train`` is missing, ``train/`` has no class
            folder, a class folder has no image, a file cannot be opened as an
            image, or ``val/`` / ``test/`` classes differ from ``train/``'s.

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> for cls in ("cat", "ant"):
        ...     os.makedirs(os.path.join(root, "train", cls))
        ...     Image.new("RGB", (5, 4)).save(os.path.join(root, "train", cls, "0.png"))
        >>> folder = scan_imagefolder(root)
        >>> folder.class_names, folder.splits["train"].labels.tolist(), sorted(folder.splits)
        (('ant', 'cat'), [0, 1], ['train'])
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DataError(f"imagefolder root {root} does not exist or is not a directory")
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        raise DataError(
            f"imagefolder root {root} has no train/ directory "
            f"(expected {root}/train/<class>/*.png|jpg)"
        )
    class_names = _find_classes(train_dir)
    if not class_names:
        raise DataError(
            f"{train_dir} has no class folders (expected {train_dir}/<class>/*.png|jpg)"
        )
    splits = {"train": _scan_split(train_dir, class_names, verify=verify)}
    for split in ("val", "test"):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        found = _find_classes(split_dir)
        if found != class_names:
            missing = sorted(set(class_names) - set(found))
            extra = sorted(set(found) - set(class_names))
            raise DataError(
                f"{split_dir} classes do not match train/ classes: missing {missing}, extra {extra}"
            )
        splits[split] = _scan_split(split_dir, class_names, verify=verify)
    return ImageFolder(root=root, class_names=class_names, splits=splits)


def load_image(path: str) -> Image.Image:
    """Decodes one image file to RGB, as torchvision's default loader does.

    Args:
        path: the image file.

    Returns:
        The fully decoded RGB image.

    Raises:
        DataError: the file cannot be decoded (named in the message).

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "g.png")
        >>> Image.new("L", (3, 2), 7).save(path)
        >>> image = load_image(path)
        >>> image.mode, image.size, image.getpixel((0, 0))
        ('RGB', (3, 2), (7, 7, 7))
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot decode image file {path}: {e}") from None
