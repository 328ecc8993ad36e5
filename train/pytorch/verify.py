"""`jaxloss-verify CHECKPOINT.pth --model resnet18`: torch and Flax logits from one file.

Builds the PyTorch ResNet (torchvision's parameter names, `train.pytorch.models`) and the Flax
`train.models` ResNet from the same state_dict (`train.pytorch.port`), runs both in eval mode on
the same batch, with a float64 copy of the torch model as the reference, and prints
`max |logit diff| = X (relative R; max |logit| M)` and whether the Flax logits are within the
float64-reference rule of `jaxloss.parity` (their error against float64 at most twice torch
float32's own, plus 32 ulp of the largest logit): the user's own proof that the port is exact.
`--train-steps K` then takes K optimizer steps on both sides (`train.pytorch.verify_steps`) and
compares the loss, parameters, optimizer moments and BatchNorm statistics after every step, in
float32 (each step from the float64 state, a failing one retried on spare batches) and in float64
(Flax in float64 against torch float64: the verdict on the step's logic). The
class count, width and input channels come from the checkpoint (`fc.weight` rows,
`conv1.weight`). Needs torch (imported only when the command runs).

Examples (shell):
  jaxloss-verify resnet18.pth --model resnet18                  # 2 random 224x224 images
  jaxloss-verify ckpt.pth --model resnet34 --images batch.npy --save-logits flax.npy
  jaxloss-verify seed004.pth --model resnet18_cifar             # 32x32, seed-004 names
  jaxloss-verify resnet18.pth --model resnet18 --train-steps 5  # + 5 SGD and 5 Adam steps

`--images` takes a float32 `.npy` of shape `(N, C, H, W)` (NCHW, as torch takes them; the Flax side
gets it transposed to NHWC). Exit status: 0, or 1 with one `error: ...` line (unreadable file,
mismatched keys or shapes, bad images, logits outside the rule or above `--atol` when given, a
training step outside the rule).
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import sys
from collections.abc import Sequence

import numpy as np

from train.names import PORT_LAYOUTS

__all__ = ["build_parser", "main", "verify"]

_MODELS = tuple(PORT_LAYOUTS)
_OPTIMIZERS = ("sgd", "adam")  # train.pytorch.verify_steps.OPTIMIZERS
_EPS32 = float(np.finfo(np.float32).eps)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see jaxloss-verify --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser.

    Examples:
      >>> args = build_parser().parse_args(["w.pth", "--model", "resnet34"])
      >>> args.model, args.num_classes, args.image_size
      ('resnet34', None, None)
    """
    p = _Parser(
        prog="jaxloss-verify",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="torch state_dict file (.pth/.pt; .safetensors if installed)")
    p.add_argument(
        "--model",
        choices=_MODELS,
        required=True,
        help="architecture; resnet18/34: torchvision names, *_cifar: seed-004 names",
    )
    p.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="expected class count (default: the rows of the checkpoint's fc.weight)",
    )
    p.add_argument(
        "--images",
        default=None,
        help="float32 .npy batch (N, C, H, W) to verify on instead of random images",
    )
    p.add_argument("--batch-size", type=int, default=2, help="random images: how many")
    p.add_argument(
        "--image-size", type=int, default=None, help="random images: side (default 224, *_cifar 32)"
    )
    p.add_argument("--seed", type=int, default=0, help="random images: seed")
    p.add_argument("--save-logits", default=None, help="write the Flax logits to this .npy file")
    p.add_argument(
        "--atol",
        type=float,
        default=None,
        help="judge the logits by max |diff| <= ATOL instead of the float64-reference rule",
    )
    p.add_argument(
        "--layers",
        action="store_true",
        help="print every layer's activations compared (done anyway when the logits fail)",
    )
    t = p.add_argument_group("training steps")
    t.add_argument(
        "--train-steps",
        type=int,
        default=0,
        metavar="K",
        help="K optimizer steps on both sides from the checkpoint, compared after each (0: off)",
    )
    t.add_argument("--optimizer", choices=(*_OPTIMIZERS, "both"), default="both")
    t.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: 1e-3 for SGD, momentum 0.9; 1e-4 for Adam)",
    )
    t.add_argument(
        "--train-batch-size",
        type=int,
        default=8,
        help="random training images per step (BatchNorm needs > 1 value per channel)",
    )
    t.add_argument(
        "--train-image-size",
        type=int,
        default=None,
        help="side of the training images (default 64, *_cifar 32)",
    )
    t.add_argument(
        "--adam-eps",
        type=float,
        default=1e-3,
        help="Adam's eps on both sides (torch's default 1e-8 makes tiny gradients coin tosses)",
    )
    t.add_argument(
        "--retries",
        type=int,
        default=None,
        metavar="N",
        help="a step that fails is taken again from the same float64 state on up to N other "
        "random batches; it passes if one does (default 2; a kink event follows the batch, a "
        "port error fails on all)",
    )
    t.add_argument(
        "--free-running",
        action="store_true",
        help="compare free-running trajectories instead (no step restarts from the float64 "
        "state, no retries: one kink event fails every later step)",
    )
    t.add_argument("--verbose", action="store_true", help="print every comparison of every step")
    return p


def _images(args: argparse.Namespace, in_channels: int) -> np.ndarray:
    if args.images is not None:
        try:
            x = np.load(args.images, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read --images {args.images}: {e}") from None
        if x.ndim != 4 or x.shape[1] != in_channels or x.dtype != np.float32:
            raise ValueError(
                f"--images must be float32 (N, {in_channels}, H, W) NCHW, got {x.dtype} {x.shape}"
            )
        return x
    size = args.image_size or (32 if args.model.endswith("_cifar") else 224)
    if args.batch_size < 1 or size < 1:
        raise ValueError(
            f"--batch-size and --image-size must be >= 1, got {args.batch_size=}, {size=}"
        )
    rng = np.random.default_rng(args.seed)
    return rng.normal(size=(args.batch_size, in_channels, size, size)).astype(np.float32)


def _check_training_args(args: argparse.Namespace) -> None:
    if args.train_steps < 0:
        raise ValueError(f"--train-steps must be >= 0, got {args.train_steps}")
    if args.retries is not None and (args.retries < 0 or args.free_running):
        raise ValueError(
            f"--retries must be >= 0 and cannot go with --free-running, got {args.retries}"
        )
    if args.train_batch_size < 1:
        raise ValueError(f"--train-batch-size must be >= 1, got {args.train_batch_size}")
    if args.train_image_size is not None and args.train_image_size < 1:
        raise ValueError(f"--train-image-size must be >= 1, got {args.train_image_size}")
    for flag, value in (("--lr", args.lr), ("--adam-eps", args.adam_eps)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a finite number > 0, got {value}")


@functools.cache
def _forward(graphdef):
    """The Flax model's eval-mode logits under `jax.jit`, compiled once per model structure."""
    import jax
    from flax import nnx

    @jax.jit
    def forward(params, stats, images):
        return nnx.merge(graphdef, params, stats)(images, train=False)

    return forward


def verify(args: argparse.Namespace, log=print) -> float:
    """Runs the comparisons and logs what they found; returns the max absolute logit difference.

    Raises:
      ValueError (train.pytorch.port.PortError for the checkpoint): one-line reasons, a failed
        comparison included.
    """
    _check_training_args(args)
    import torch
    from flax import nnx

    from jaxloss import parity
    from train import models
    from train.pytorch import models as torch_models
    from train.pytorch import port, verify_steps

    state_dict = port.load_state_dict(args.checkpoint)
    bad = [k for k, v in state_dict.items() if not np.all(np.isfinite(np.asarray(v, float)))]
    if bad:  # NaN logits on both sides would compare as "no difference" in a careless check
        raise ValueError(
            f"the checkpoint holds non-finite values (NaN or inf) in {len(bad)} tensor(s), e.g. "
            f"{bad[0]}: nothing to verify"
        )
    layout = port.LAYOUTS[args.model]
    info = port.checkpoint_info(state_dict, layout=layout)
    if args.num_classes is not None and args.num_classes != info["num_classes"]:
        raise ValueError(
            f"--num-classes {args.num_classes} but the checkpoint's head has "
            f"{info['num_classes']} rows (fc.weight {state_dict['fc.weight'].shape})"
        )
    x = _images(args, info["in_channels"])
    abstract = nnx.eval_shape(
        lambda: models.create_model(
            args.model,
            num_classes=info["num_classes"],
            width=info["width"],
            image_shape=(x.shape[2], x.shape[3], info["in_channels"]),
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    params, stats = port.from_torch(state_dict, params, stats, layout=layout)

    torch_model = torch_models.build(
        args.model,
        num_classes=info["num_classes"],
        width=info["width"],
        in_channels=info["in_channels"],
    )
    torch_model.load_state_dict(
        {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}, strict=True
    )
    torch_model.eval()
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x)).numpy()
        reference = copy.deepcopy(torch_model).double()(torch.from_numpy(x).double()).numpy()

    logits = np.asarray(_forward(graphdef)(params, stats, x.transpose(0, 2, 3, 1)))
    if logits.shape != expected.shape:  # e.g. seed 004's AvgPool2d(4) at sizes other than 32
        raise ValueError(
            f"torch logits {expected.shape} and Flax logits {logits.shape} differ in "
            f"shape for images {x.shape}"
        )
    if args.save_logits is not None:
        np.save(args.save_logits, logits)
    for side, values in (("torch", expected), ("Flax", logits)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"the {side} logits are not all finite: the port cannot be verified")
    diff = float(np.abs(logits - expected).max())
    scale = float(np.abs(expected).max())
    log(
        f"{args.model} ({layout} layout), {info['num_classes']} classes, width {info['width']}, "
        f"images {tuple(x.shape)} NCHW{'' if args.images else ' (random)'}"
    )
    log(
        f"max |logit diff| = {diff:.3g} (relative {diff / scale if scale else diff:.2g}; "
        f"max |logit| {scale:.3g})"
    )
    rule = parity.Reference()
    verdict = parity.judge(logits, expected, reference, rule, eps=_EPS32, allow_nonfinite=False)
    log(
        f"within the float64-reference rule: {'yes' if verdict.passed else 'no'} "
        f"(jax err {verdict.err_jax:.2g}, torch err {verdict.err_torch:.2g}: RMSE vs torch "
        f"float64; closer: {verdict.closer}{'' if verdict.passed else '; ' + verdict.reason})"
    )
    if args.atol is not None:
        log(f"within --atol {args.atol:g}: {'yes' if diff <= args.atol else 'no'}")
        failed = f"the difference exceeds --atol {args.atol}" if not diff <= args.atol else ""
    else:
        failed = "" if verdict.passed else "the Flax logits fail the float64-reference rule"
    if args.layers or failed:
        rename = verify_steps.rename_for(layout)
        report = parity.compare_layers(
            torch_model,
            nnx.merge(graphdef, params, stats),
            x,
            jax_call=lambda m, v: m(v, train=False),
            rename=rename,
        )
        log(str(report))
        first = report.first_failure
        if failed and first is not None:
            failed += f" (first diverging: {first.name}, max |diff| {first.verdict.max_abs:.3g})"
    if failed:
        raise ValueError(failed)
    if args.train_steps:
        verify_steps.report_training(
            args, state_dict, torch_model, layout=layout, info=info, log=log
        )
    return diff


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        verify(args)
    except (ValueError, OSError, RuntimeError) as e:  # PortError is a ValueError
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
