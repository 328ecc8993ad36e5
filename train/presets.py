"""Named presets: the seeds' training setups as `Config` overrides (`jaxloss-train --preset NAME`).

Flags given with `--preset` override the preset's values. Runtimes are for this 2-core CPU.

- `digits` (the no-argument default): `jaxloss-train`. Width-24 CIFAR ResNet-18, Adam 1e-3,
  cosine over 20 epochs, batch 64. 50-70 s (JAX compilation and
  preparing the dataset included; the machine shared); 96.7% validation accuracy (seed 0; 98.1%
  and 98.3% with seeds 1 and 2; measured 07:20 UTC 2026-11-24).
- `cifar10_seed004`: `jaxloss-train --preset cifar10_seed004 --data-dir DIR` (CIFAR-10 prepared
  as array_record in DIR). Seed 004: CIFAR ResNet-18 (width 64), Adam 1e-3, batch 128, keeps the
  best-by-val-loss model (test accuracy reported on it), early stopping patience 5; the seed reports
  76.2% test accuracy early-stopped. Not run here (no CIFAR-10 offline; ~2 s per step on this CPU,
  so use a GPU).
- `mnist_imbalance_seed003`: `jaxloss-train --preset mnist_imbalance_seed003 --data-dir DIR`.
  Seed 003: MNIST with digit 6 cut to 1/100, LeNet, Adam 1e-3, 5 epochs, focal loss with alpha 100
  on class 6 (1 elsewhere); the seed reports 92.0% digit-6 accuracy (4.8% with plain CE: add
  `--loss ce`). Not run here (no MNIST offline).
- `imagefolder_seed000`: `jaxloss-train --preset imagefolder_seed000 --data-dir ROOT`
  (ROOT/train/<class>/, ROOT/val/<class>/). Seed 000: torchvision-layout ResNet-18, SGD lr 1e-3
  momentum 0.9, StepLR(7, 0.1), focal loss alpha 0.25 gamma 2, 25 epochs, 224x224 crops. The seed
  fine-tunes ImageNet weights, which this package does not load (random init here).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS"]

PRESETS: dict[str, dict[str, Any]] = {
    "digits": {},
    "cifar10_seed004": dict(
        dataset="cifar10",
        model="resnet18_cifar",
        width=64,
        optimizer="adam",
        lr=1e-3,
        schedule="constant",
        batch_size=128,
        epochs=30,
        early_stopping=5,
        val_fraction=0.4,
    ),
    "mnist_imbalance_seed003": dict(
        dataset="mnist",
        model="lenet",
        width=6,
        optimizer="adam",
        lr=1e-3,
        schedule="constant",
        epochs=5,
        imbalance=(6, 0.01),
        loss="focal",
        focal_gamma=2.0,
        focal_alpha=(1.0,) * 6 + (100.0,) + (1.0,) * 3,
    ),
    "imagefolder_seed000": dict(
        dataset="imagefolder",
        model="resnet18",
        width=64,
        optimizer="sgd",
        lr=1e-3,
        momentum=0.9,
        schedule="step",
        step_size=7,
        gamma=0.1,
        loss="focal",
        focal_alpha=(0.25,),
        focal_gamma=2.0,
        epochs=25,
        batch_size=32,
    ),
}
