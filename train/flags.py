"""The trainer's flags: every `Config` field as a flag, presets, and the flags a user typed.

`build_parser` documents each flag (`jaxloss-train --help`); `parse_flags` applies `--preset`
defaults under explicit flags; `config_from_flags` builds the validated `Config`;
`explicit_flags` tells which fields were typed (what `--resume` may change).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from train import names
from train.config import Config
from train.presets import PRESETS

__all__ = ["PROG", "build_parser", "config_from_flags", "explicit_flags", "parse_flags"]

PROG = names.COMMAND
DESCRIPTION = (
    "Trains a Flax ResNet with jaxloss losses and PyTorch-exact schedules and optimisers; "
    "--workdir W --resume continues the run W/config.json describes."
)


class _Formatter(argparse.HelpFormatter):
    """Shows a default once, and only where it says something (not for on/off switches)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if "default" in text or switch or action.default in (None, argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (no usage dump) and exits with status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {PROG} --help)\n")


def _imbalance(text: str) -> tuple[int, float]:
    try:
        cls, frac = text.split(":")
        return int(cls), float(frac)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected CLASS:FRACTION such as 6:0.01, got {text!r}"
        ) from None


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number or a comma-separated list, got {text!r}"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: every flag is a `Config` field but those in `_NOT_CONFIG`."""
    d = Config()
    p = _Parser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=_Formatter,
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="start from a named preset (train/configs); other flags override it",
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=d.dataset,
        help="'digits' (embedded), 'imagefolder' (--data-dir root with train/ and val/), "
        "or a TFDS catalog name (mnist, cifar10, ...) prepared in --data-dir",
    )
    g.add_argument("--data-dir", default=None, help="TFDS data dir or ImageFolder root")
    g.add_argument(
        "--cache-dir",
        default=None,
        help="where the digits dataset is prepared (default $JAXLOSS_DATA_DIR or "
        "~/.cache/jaxloss/tensorflow_datasets)",
    )
    g.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="fraction of the training split held out for validation",
    )
    g.add_argument(
        "--imbalance",
        type=_imbalance,
        default=None,
        metavar="CLASS:FRACTION",
        help="keep only FRACTION of CLASS's training examples (e.g. 6:0.01)",
    )
    g.add_argument(
        "--no-augment", dest="augment", action="store_false", help="disable training augmentation"
    )
    g.add_argument("--image-size", type=int, default=None, help="resize images to this side")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=names.MODELS, default=d.model, help="architecture")
    g.add_argument(
        "--width",
        type=int,
        default=d.width,
        help="base width (ResNets: first stage channels, 64 is the paper's; small_cnn/"
        "lenet: first conv channels, 6)",
    )
    g.add_argument(
        "--dtype",
        choices=names.DTYPES,
        default=d.dtype,
        help="compute dtype (params stay float32); bfloat16 on GPU/TPU",
    )
    g = p.add_argument_group("fine-tuning / torch export (ResNets; needs PyTorch)")
    g.add_argument(
        "--init-from",
        default=None,
        metavar="WEIGHTS.pth",
        help="start from a torch state_dict (torchvision names for resnet18/34, seed-004 "
        "names for *_cifar); a head with another class count is replaced; the "
        "width comes from the checkpoint",
    )
    g.add_argument(
        "--freeze-backbone",
        action="store_true",
        help="with --init-from: train only the classifier head (fc)",
    )
    g.add_argument(
        "--export-torch",
        default=None,
        metavar="OUT.pth",
        help="write the best-by-val-loss model as a torch state_dict at the end",
    )
    g = p.add_argument_group("loss")
    g.add_argument("--loss", choices=names.LOSSES, default=d.loss, help="training loss (jaxloss)")
    g.add_argument(
        "--focal-gamma", type=float, default=d.focal_gamma, help="focal/sigmoid_focal gamma"
    )
    g.add_argument(
        "--focal-alpha",
        type=_floats,
        default=None,
        metavar="A or A0,A1,...",
        help="focal alpha: a scalar or one value per class (seed 003: 1,...,100,...); "
        "sigmoid_focal: a scalar (default 0.25)",
    )
    g.add_argument(
        "--label-smoothing",
        type=float,
        default=None,
        help="ce: torch's label_smoothing (default 0); label_smoothing: the smoothing "
        "(default 0.2)",
    )
    g.add_argument(
        "--smoothing-spread",
        choices=names.SMOOTHING_SPREADS,
        default=d.smoothing_spread,
        help="label_smoothing: spread over the other classes (seeds) or all (torch)",
    )
    g.add_argument("--f1-epsilon", type=float, default=d.f1_epsilon, help="f1 loss epsilon")
    g.add_argument(
        "--disturb-label",
        type=float,
        default=d.disturb_label,
        metavar="ALPHA",
        help="DisturbLabel noise rate in percent (0 disables)",
    )
    g = p.add_argument_group("optimiser")
    g.add_argument(
        "--optimizer",
        choices=names.OPTIMIZERS,
        default=d.optimizer,
        help="torch-equivalent optimiser",
    )
    g.add_argument("--lr", type=float, default=d.lr, help="base learning rate")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="SGD Nesterov momentum")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="sgd/adam: L2 added to the gradient (torch); adamw: decoupled",
    )
    g.add_argument(
        "--accum",
        type=int,
        default=d.accum,
        help="gradient accumulation: micro-batches per optimiser step",
    )
    g = p.add_argument_group("learning-rate schedule (per epoch, torch semantics)")
    g.add_argument("--schedule", choices=names.SCHEDULES, default=d.schedule, help="LR schedule")
    g.add_argument("--step-size", type=int, default=d.step_size, help="step: epochs per decay")
    g.add_argument("--gamma", type=float, default=d.gamma, help="step: decay factor")
    g.add_argument("--t-max", type=int, default=None, help="cosine: half period (default --epochs)")
    g.add_argument("--eta-min", type=float, default=d.eta_min, help="cosine: minimum LR")
    g.add_argument(
        "--plateau-mode",
        choices=("min", "max"),
        default=d.plateau_mode,
        help="plateau: min watches val loss, max watches val macro-F1",
    )
    g.add_argument("--plateau-factor", type=float, default=d.plateau_factor, help="plateau: factor")
    g.add_argument(
        "--plateau-patience",
        type=int,
        default=d.plateau_patience,
        help="plateau: bad epochs tolerated",
    )
    g.add_argument(
        "--plateau-threshold",
        type=float,
        default=d.plateau_threshold,
        help="plateau: relative improvement threshold",
    )
    g.add_argument(
        "--plateau-cooldown", type=int, default=d.plateau_cooldown, help="plateau: cooldown"
    )
    g.add_argument("--plateau-min-lr", type=float, default=d.plateau_min_lr, help="plateau: min LR")
    g = p.add_argument_group("loop")
    g.add_argument("--epochs", type=int, default=d.epochs, help="number of epochs")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="training batch size")
    g.add_argument("--eval-batch-size", type=int, default=None, help="default: --batch-size")
    g.add_argument(
        "--early-stopping",
        type=int,
        default=d.early_stopping,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a lower val loss (0 disables)",
    )
    g.add_argument(
        "--limit-train-batches",
        type=int,
        default=None,
        help="at most this many training batches per epoch (quick checks)",
    )
    g.add_argument(
        "--seed", type=int, default=d.seed, help="seed of init, split, shuffling, dropout"
    )
    g.add_argument(
        "--workdir", default=None, help="output directory (default runs/<time>_<dataset>_<model>)"
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --workdir from its latest checkpoint",
    )
    g.add_argument("--no-plot", dest="plot", action="store_false", help="do not write curves.png")
    g.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="'tuned' keeps glibc from unmapping large buffers after every step "
        "(train/runtime.py; faster on CPU, the process keeps its peak heap)",
    )
    g = p.add_argument_group(
        "devices and processes (train/parallel.py; the README's 'More devices, more hosts')"
    )
    g.add_argument(
        "--devices",
        type=int,
        default=None,
        help="devices the global batch is split over (default: all, over all processes)",
    )
    g.add_argument(
        "--batch-norm",
        choices=names.BATCH_NORMS,
        default=d.batch_norm,
        help="train-mode BatchNorm statistics over the global batch (torch SyncBatchNorm) or per "
        "device (DDP without SyncBatchNorm)",
    )
    g.add_argument(
        "--coordinator",
        default=None,
        metavar="HOST:PORT",
        help="process 0's address for a run of several processes (jax.distributed); 'auto' "
        "detects a cluster (SLURM, Open MPI, ...); default $JAX_COORDINATOR_ADDRESS, else one "
        "process",
    )
    g.add_argument("--num-processes", type=int, default=None, help="processes in the run")
    g.add_argument("--process-id", type=int, default=None, help="this process's index, from 0")
    return p


def parse_flags(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the flags; a `--preset` supplies new defaults that explicit flags override."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.preset is not None:
        parser.set_defaults(**PRESETS[known.preset])
    return parser.parse_args(argv)


def config_from_flags(args: argparse.Namespace) -> Config:
    """Builds the (validated) Config from parsed flags; raises ValueError on bad values."""
    fields = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    return Config(**fields)


# flags of the process, not of the run (several processes of one run differ in --process-id)
_NOT_CONFIG = ("workdir", "preset", "malloc", "coordinator", "num_processes", "process_id")


def explicit_flags(argv: Sequence[str] | None) -> dict[str, Any]:
    """The `Config` fields set by flags actually typed in `argv` (parsed, defaults left out).

    Examples:
      >>> explicit_flags(["--epochs", "9", "--workdir", "w", "--resume"])
      {'epochs': 9, 'resume': True}
    """
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = vars(parser.parse_args(argv))
    return {k: v for k, v in given.items() if k not in _NOT_CONFIG}
