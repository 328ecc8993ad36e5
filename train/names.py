"""Every name a flag or a `Config` field may take, defined once (no jax import: `--help` is fast).

The modules that implement the names (`train.models`, `train.losses`, `train.optim`,
`train.schedules`, `train.pytorch`) build their registries from these tuples, and a test checks
that each registry covers exactly its names.
"""

from __future__ import annotations

__all__ = [
    "BATCH_NORMS",
    "COMMAND",
    "DTYPES",
    "LOSSES",
    "MODELS",
    "OPTIMIZERS",
    "PORT_LAYOUTS",
    "RESNET_DEPTHS",
    "SCHEDULES",
    "SMOOTHING_SPREADS",
]

COMMAND = "jaxloss-train"
"""The trainer's console script (`train.cli.main`)."""

RESNET_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
}
"""Basic blocks per stage of each ResNet depth (He et al. 2016, table 1)."""

PORT_LAYOUTS: dict[str, str] = {
    **{name: "torchvision" for name in RESNET_DEPTHS},
    **{f"{name}_cifar": "cifar" for name in RESNET_DEPTHS},
}
"""Models with a PyTorch twin -> the state_dict layout of `train.pytorch.port`: torchvision's
names (`conv1`, `layer1.0.conv1`, ...) or seed 004's CIFAR names (`base.0`, `conv_block.0`, ...)."""

MODELS: tuple[str, ...] = (
    *(f"{name}_cifar" for name in RESNET_DEPTHS),
    *RESNET_DEPTHS,
    "small_cnn",
    "lenet",
)
"""`--model` choices (`train.models.MODELS`)."""

LOSSES: tuple[str, ...] = ("ce", "focal", "label_smoothing", "f1", "sigmoid_focal")
"""`--loss` choices (`train.losses.LOSSES`)."""

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
"""`--optimizer` choices (`train.optim.OPTIMIZERS`)."""

SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine", "plateau")
"""`--schedule` choices (`train.schedules.create_schedule`)."""

DTYPES: tuple[str, ...] = ("float32", "bfloat16")
"""`--dtype` choices: the models' compute dtype (parameters stay float32)."""

SMOOTHING_SPREADS: tuple[str, ...] = ("others", "uniform")
"""`--smoothing-spread` choices (`jaxloss.label_smoothing_loss`'s `spread`)."""

BATCH_NORMS: tuple[str, ...] = ("sync", "local")
"""`--batch-norm` choices: train-mode statistics over the global batch (torch's `SyncBatchNorm`) or
per device (DDP without it; `train.batch_norm.BatchNorm`'s `groups`)."""
