"""Writes a small synthetic two-class ImageFolder (circles vs squares) for offline fine-tuning runs.

Layout (torchvision's ImageFolder): ROOT/{train,val}/{circle,square}/NNNN.png. Each image is an RGB
square of side `--size`: dark noise and one bright filled shape of random colour, large and near
the centre; the classes are balanced. Deterministic given `--seed`.

    python examples/make_synthetic_imagefolder.py /tmp/shapes --train 200 --val 50
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square")


def make_image(rng: np.random.Generator, cls: str, size: int) -> Image.Image:
    """One `size` x `size` RGB image: a bright `cls` ("circle" or "square") on dark noise.

    The shape is large (radius 25-40% of the side) and near the centre, so that random-resized
    crops usually keep some of its outline.
    """
    background = rng.integers(0, 90, 3)
    noise = rng.normal(0, 25, (size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.25, 0.4) * size
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1, 2) * size
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    colour = tuple(int(c) for c in rng.integers(150, 256, 3))
    (draw.ellipse if cls == "circle" else draw.rectangle)(box, fill=colour)
    return image


def make_imagefolder(
    root: str, *, train: int = 200, val: int = 50, size: int = 64, seed: int = 0
) -> str:
    """Writes `train` and `val` images per class under `root`; returns `root`.

    Examples:
      >>> import tempfile
      >>> root = make_imagefolder(tempfile.mkdtemp(), train=2, val=1, size=16)
      >>> sorted(os.listdir(os.path.join(root, "train")))
      ['circle', 'square']
      >>> len(os.listdir(os.path.join(root, "val", "circle")))
      1
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for cls in CLASSES:
            directory = os.path.join(root, split, cls)
            os.makedirs(directory, exist_ok=True)
            for i in range(count):
                make_image(rng, cls, size).save(os.path.join(directory, f"{i:04d}.png"))
    return root


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="output directory")
    p.add_argument("--train", type=int, default=200, help="training images per class")
    p.add_argument("--val", type=int, default=50, help="validation images per class")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    args = p.parse_args(argv)
    root = make_imagefolder(
        args.root, train=args.train, val=args.val, size=args.size, seed=args.seed
    )
    print(f"wrote {2 * (args.train + args.val)} images to {root}")
    return root


if __name__ == "__main__":
    main(sys.argv[1:])
