"""The run's configuration: one frozen dataclass, validated on construction, saved as config.json.

The defaults are the no-argument run: a width-24 CIFAR ResNet-18 on the embedded digits, Adam 1e-3
with cosine annealing over 20 epochs, batch 64: >= 95% validation accuracy in about a minute on a
2-core CPU.
"""

from __future__ import annotations

import dataclasses
import json

from jaxloss._validate import ArgumentTypeError, check_choice, check_int, check_real
from train import names

__all__ = ["Config"]


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run depends on (`jaxloss-train --help` documents each field's flag).

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
    # fine-tuning from / export to a torch state_dict (ResNets only; train.pytorch)
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
    # devices (train.parallel): None uses every device of every process
    devices: int | None = None
    batch_norm: str = "sync"

    def __post_init__(self) -> None:
        """Checks every limit a component enforces, with its message (`jaxloss._validate`)."""
        for name in ("lr", "momentum", "weight_decay", "eta_min", "plateau_min_lr"):
            check_real(name, getattr(self, name), low=0.0)
        check_real("gamma", self.gamma, low=0.0, low_open=True)
        check_real("plateau_factor", self.plateau_factor, low=0.0, high=1.0, high_open=True)
        check_real("plateau_threshold", self.plateau_threshold, low=0.0)
        check_real("focal_gamma", self.focal_gamma, low=0.0)
        check_real("disturb_label", self.disturb_label, low=0.0, high=100.0)
        check_real("val_fraction", self.val_fraction, low=0.0, high=1.0, high_open=True)
        check_real("f1_epsilon", self.f1_epsilon, low=0.0, high=0.5, low_open=True, high_open=True)
        if self.label_smoothing is not None:
            check_real("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_open=True)
        for name in ("epochs", "batch_size", "accum", "step_size"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("plateau_patience", "plateau_cooldown", "early_stopping", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        for name in (
            "t_max",
            "eval_batch_size",
            "limit_train_batches",
            "width",
            "image_size",
            "devices",
        ):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), minimum=1)
        for name, choices in (
            ("model", names.MODELS),
            ("loss", names.LOSSES),
            ("optimizer", names.OPTIMIZERS),
            ("schedule", names.SCHEDULES),
            ("dtype", names.DTYPES),
            ("smoothing_spread", names.SMOOTHING_SPREADS),
            ("plateau_mode", ("min", "max")),
            ("batch_norm", names.BATCH_NORMS),
        ):
            check_choice(name, getattr(self, name), choices)
        for name in ("augment", "nesterov", "freeze_backbone", "resume", "plot"):
            if not isinstance(getattr(self, name), bool):
                raise ArgumentTypeError(
                    f"{name} must be a bool, got {name}={getattr(self, name)!r}"
                )
        self._check_combinations()

    def _check_combinations(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ArgumentTypeError(f"dataset must be a non-empty string, got {self.dataset=}")
        if self.dataset == "digits" and self.data_dir is not None:
            raise ValueError(
                "dataset 'digits' is embedded and takes no data_dir (use cache_dir), got "
                f"data_dir={self.data_dir!r}"
            )
        if self.nesterov and self.optimizer != "sgd":
            raise ValueError(f"nesterov is an SGD option, got nesterov=True with {self.optimizer=}")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError(f"nesterov momentum requires momentum > 0, got {self.momentum=}")
        if self.focal_alpha is not None:
            for a in self.focal_alpha:
                check_real("focal_alpha", a)
            if self.loss == "sigmoid_focal" and len(self.focal_alpha) != 1:
                raise ValueError(f"sigmoid_focal takes a scalar alpha, got {self.focal_alpha=}")
        if (self.init_from or self.export_torch) and self.model not in names.PORT_LAYOUTS:
            raise ValueError(
                f"--init-from/--export-torch need a ResNet model {tuple(names.PORT_LAYOUTS)}, got "
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
        """Inverse of `to_json`; raises ValueError for anything but a JSON object of fields."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"expected a JSON object of fields, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        for key in ("imbalance", "focal_alpha"):
            if isinstance(raw.get(key), list):
                raw[key] = tuple(raw[key])
        try:
            return cls(**raw)
        except TypeError as e:  # a wrong kind of value, e.g. a string for an epoch count
            raise ValueError(str(e)) from None
