"""The run's configuration: one frozen dataclass, validated on construction, saved as config.json.

The defaults are the no-argument run: a width-24 CIFAR ResNet-18 on the embedded digits, Adam 1e-3
with cosine annealing over 20 epochs, batch 64: >= 95% validation accuracy in about a minute on a
2-core CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

__all__ = ["Config", "SCHEDULES", "DTYPES"]

SCHEDULES = ("constant", "step", "cosine", "plateau")
DTYPES = ("float32", "bfloat16")
_PORTABLE = ("resnet18", "resnet34", "resnet18_cifar", "resnet34_cifar")  # train.port.LAYOUTS


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on (`python -m train --help` documents each field's flag).

    Examples:
      >>> cfg = Config(epochs=3, schedule="cosine")
      >>> cfg.t_max_or_epochs, Config.from_json(cfg.to_json()) == cfg
      (3, True)
      >>> Config(lr=-1.0)
      Traceback (most recent call last):
      ...
      ValueError: lr must be a finite number >= 0.0, got lr=-1.0
    """

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    cache_dir: str | None = None
    val_fraction: float = 0.2
    imbalance: tuple[int, float] | None = None
    augment: bool = True
    image_size: int | None = None
    # model
    model: str = "resnet18_cifar"
    width: int | None = 24
    dtype: str = "float32"
    # fine-tuning from / export to a torch state_dict (ResNets only; train.port, train.finetune)
    init_from: str | None = None
    freeze_backbone: bool = False
    export_torch: str | None = None
    # loss
    loss: str = "ce"
    focal_gamma: float = 2.0
    focal_alpha: tuple[float, ...] | None = None
    label_smoothing: float | None = None
    smoothing_spread: str = "others"
    f1_epsilon: float = 1e-7
    disturb_label: float = 0.0
    # optimiser and schedule
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    step_size: int = 7
    gamma: float = 0.1
    t_max: int | None = None
    eta_min: float = 0.0
    plateau_mode: str = "min"
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    plateau_threshold: float = 1e-4
    plateau_cooldown: int = 0
    plateau_min_lr: float = 0.0
    # loop
    epochs: int = 20
    batch_size: int = 64
    eval_batch_size: int | None = None
    accum: int = 1
    early_stopping: int = 0
    limit_train_batches: int | None = None
    seed: int = 0
    resume: bool = False
    plot: bool = True

    def __post_init__(self) -> None:
        def real(
            name: str, low: float = -math.inf, high: float = math.inf, low_open: bool = False
        ) -> None:
            value = getattr(self, name)
            ok = (
                isinstance(value, (int, float))
                and math.isfinite(value)
                and value <= high
                and (value > low if low_open else value >= low)
            )
            if not ok:
                bound = f"> {low}" if low_open else f">= {low}"
                if high != math.inf:
                    bound = f"in [{low}, {high}]"
                raise ValueError(f"{name} must be a finite number {bound}, got {name}={value!r}")

        def integer(name: str, low: int, optional: bool = False) -> None:
            value = getattr(self, name)
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {name}={value!r}")

        real("lr", 0.0)
        real("momentum", 0.0)
        real("weight_decay", 0.0)
        real("gamma", 0.0, low_open=True)
        real("eta_min", 0.0)
        real("plateau_factor", 0.0, 1.0)
        real("plateau_threshold", 0.0)
        real("plateau_min_lr", 0.0)
        real("focal_gamma", 0.0)
        real("disturb_label", 0.0, 100.0)
        real("val_fraction", 0.0, 1.0)
        for name in ("epochs", "batch_size", "accum", "step_size"):
            integer(name, 1)
        for name in ("plateau_patience", "plateau_cooldown", "early_stopping"):
            integer(name, 0)
        for name in ("t_max", "eval_batch_size", "limit_train_batches", "width", "image_size"):
            integer(name, 1, optional=True)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed must be an integer, got seed={self.seed!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(
                f"val_fraction must be in [0, 1), got val_fraction={self.val_fraction!r}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got schedule={self.schedule!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got dtype={self.dtype!r}")
        if self.plateau_mode not in ("min", "max"):
            raise ValueError(f"plateau_mode must be 'min' or 'max', got {self.plateau_mode=}")
        if (self.init_from or self.export_torch) and self.model not in _PORTABLE:
            raise ValueError(
                f"--init-from/--export-torch need a ResNet model {_PORTABLE}, got "
                f"model={self.model!r}"
            )
        if self.freeze_backbone and not self.init_from:
            raise ValueError(
                "freeze_backbone needs init_from (a checkpoint to fine-tune), got "
                f"init_from={self.init_from!r}"
            )
        if self.imbalance is not None:
            cls, frac = self.imbalance
            if not isinstance(cls, int) or cls < 0 or not 0.0 < frac <= 1.0:
                raise ValueError(
                    "imbalance must be CLASS:FRACTION with CLASS >= 0 and FRACTION in "
                    f"(0, 1], got imbalance={self.imbalance!r}"
                )

    @property
    def t_max_or_epochs(self) -> int:
        """Cosine period: `t_max`, or the number of epochs when unset."""
        return self.epochs if self.t_max is None else self.t_max

    def to_json(self) -> str:
        """The config as indented JSON (tuples become lists)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        """Inverse of `to_json`; unknown keys raise ValueError."""
        raw: dict[str, Any] = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        for key in ("imbalance", "focal_alpha"):
            if raw.get(key) is not None:
                raw[key] = tuple(raw[key])
        return cls(**raw)

    def write(self, workdir: str | os.PathLike[str]) -> str:
        """Writes `workdir/config.json` and returns its path."""
        path = os.path.join(workdir, "config.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.to_json() + "\n")
        os.replace(tmp, path)
        return path
