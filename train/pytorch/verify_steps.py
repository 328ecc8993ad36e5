"""`jaxloss-verify --train-steps K`: K optimizer steps in torch and in Flax from one checkpoint.

Both sides start from the same state_dict and take the same random batches (NCHW to torch, NHWC
to Flax). torch runs its model in train mode with `torch.optim.SGD(momentum=0.9)` or
`torch.optim.Adam` and `F.cross_entropy`; Flax runs the trainer's own `train.step.train_step` with
`train.losses.create_loss("ce")` and `train.optim.create_optimizer`. A third loop, torch in
float64, is the reference: after every step the loss, every parameter, the optimizer's moments
(`momentum_buffer`; `exp_avg`, `exp_avg_sq`) and the BatchNorm running statistics and
`num_batches_tracked` are compared as `jaxloss.parity.compare_steps` compares them (the same
state names, `parity.judge`, a `parity.Report`), under the float64-reference rule with a floor per
kind of state (`RULES`): Flax's error against float64 at most twice torch float32's own, plus
that floor, in RMS and in max.

torch is imported only when a comparison runs (`train.pytorch.verify` imports this module lazily).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jaxloss import parity
from train.pytorch import step_report
from train.pytorch.step_report import Retry, StepRow, TrainingComparison, step_row

__all__ = [
    "ADAM_EPS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_LR",
    "MOMENTUM",
    "OPTIMIZERS",
    "RETRIES",
    "RULES",
    "StepRow",
    "TrainingComparison",
    "compare_training",
    "random_batches",
    "rename_for",
    "report_training",
]

OPTIMIZERS = ("sgd", "adam")
"""What `--optimizer both` runs, in this order."""

DEFAULT_LR: dict[str, float] = {"sgd": 1e-3, "adam": 1e-4}
"""Learning rates that move the weights measurably in a few steps and keep float32 stable."""

MOMENTUM = 0.9
"""SGD momentum (seed 000's `SGD(lr=0.001, momentum=0.9)`)."""

ADAM_EPS = 1e-3
"""Adam's default `eps` here (torch's is 1e-8), well above the float32 rounding of gradients.

Adam's first steps move each weight by `lr * g / (|g| + eps)`: with `eps = 1e-8`, a gradient
element of 1e-7 (rounding noise of a gradient whose largest element is 0.25) moves by anything
between 0 and `lr` depending on its last bits, on either side, and the float64-reference rule
compares two such coin tosses. `eps = 1e-3` keeps the step a smooth function of the gradient.
"""

RETRIES = 2
"""Spare batches a failing step is retried on (synced mode): see `compare_training`."""

DEFAULT_IMAGE_SIZE: dict[str, int] = {"torchvision": 64, "cifar": 32}
"""Side of the random training images per layout (see `compare_training` on float32 chaos)."""

RULES: dict[str, parity.Reference] = {
    "loss": parity.Reference(ulps=32, max_k=10),
    "param/": parity.Reference(ulps=32, max_k=10),
    "buffer/": parity.Reference(ulps=64, max_k=10),
    "opt/": parity.Reference(ulps=512, max_k=10),
}
"""The float64-reference rule per kind of training state (`jaxloss.parity.Reference`, k = 2).

Key prefixes for `jaxloss.parity.compare_steps`. The floors (in ulps of each tensor's largest
float64 value) are wider than `Reference()`'s 32 for the moments:
a gradient (SGD's `momentum_buffer`, Adam's moments) is a long sum with cancellation, whose
float32 error is tens of ulps of its largest element on both sides, and comparing two such
errors element by element is a coin toss.
"""


def rename_for(layout: str) -> Callable[[str], str] | None:
    """Flax module paths -> torch names (`jaxloss.parity`'s ``rename``) for a port layout.

    Examples:
      >>> rename_for("cifar")("layer1.0.bn2.running_var"), rename_for("cifar")("bn1")
      ('layer1.0.conv_block.4.running_var', 'base.1')
      >>> rename_for("torchvision") is None
      True
    """
    if layout == "torchvision":
        return None
    from train.pytorch import port

    def modules(name: str) -> str:  # port.torch_key maps module paths; "bias" is a placeholder
        return port.torch_key((*name.split("."), "bias"), layout=layout).removesuffix(".bias")

    @functools.cache
    def rename(key: str) -> str:
        mods, _, leaf = key.rpartition(".")
        if (
            leaf in ("weight", "bias", "num_batches_tracked", "running_mean", "running_var")
            and mods
        ):
            return f"{modules(mods)}.{leaf}"
        return modules(key)

    return rename


@functools.cache
def _optimizer(name: str, lr: float, eps: float) -> Any:
    """`train.optim.create_optimizer`, one object per setting: the jitted step compiles once."""
    from train import optim

    return optim.create_optimizer(name, learning_rate=lr, momentum=MOMENTUM, eps=eps)


@functools.cache
def _train_fn(num_classes: int) -> Callable[..., Any]:
    """`train.step.train_step` with the `"ce"` loss under `jax.jit` (no donation: no warnings)."""
    import jax

    from train import losses
    from train import step as step_lib

    loss_fn = losses.create_loss("ce", num_classes=num_classes)
    return jax.jit(functools.partial(step_lib.train_step, loss_fn=loss_fn, num_classes=num_classes))


def compare_training(
    state_dict: Mapping[str, np.ndarray],
    torch_model: Any,
    *,
    model: str,
    layout: str,
    num_classes: int,
    width: int,
    optimizer: str,
    lr: float,
    batches: list[tuple[np.ndarray, np.ndarray]],
    adam_eps: float = ADAM_EPS,
    synced: bool = True,
    spare_batches: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]] = (),
    float64: bool = True,
) -> TrainingComparison:
    """Trains torch (float32 and float64) and Flax from ``state_dict`` and compares every step.

    Float32 training is chaotic at the kinks: a ReLU input or a max-pool pair within rounding of a
    tie routes that step's gradient differently on one side (a *kink event*), and everything
    after differs from float64 by far more than rounding (BatchNorm over few values per channel
    amplifies it). It strikes torch and Flax alike, at random, and it follows the batch: the
    same state on another batch has no tie there. So by default (``synced``) every step of both
    float32 sides starts from the float64 reference's state, rounded (no error carries over),
    and a step that fails is taken again from that same state on each of its
    ``spare_batches`` in turn until one passes (the row says ``ok (retry 1)``, and
    `TrainingComparison.retried` keeps what failed). A port error fails on every batch, from step
    1, on every tensor it touches, so it still fails; what a retry forgives is one batch's tie.

    A kink event is a coin toss between two float32 implementations of equal quality: probed on
    a failing step, one pre-activation of `layer4.0`'s last ReLU was -3.8e-6 in float64 and
    +3.8e-6 in Flax float32 (torch's stayed negative; both sides' error there was 7e-6 RMS),
    and Flax's gradient of every earlier layer was 1e-3 off. In some states several batches in
    a row meet one; `train.pytorch.step_float64` (``float64``) is the comparison no rounding
    event upsets, and `train.pytorch.step_report.verdict` tolerates one such float32 step when
    it matched.
    `README.md` has the figures.

    Args:
      state_dict: the checkpoint (torch names, NumPy values).
      torch_model: a float32 torch model holding ``state_dict`` (copied, not changed).
      model: the `train.models` name.
      layout: its port layout (``"torchvision"``, ``"cifar"``).
      num_classes: the head's class count.
      width: the ResNet width.
      optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``.
      lr: the learning rate of both sides.
      batches: ``(images NCHW float32, labels int)`` pairs, one per step.
      adam_eps: Adam's ``eps`` on all sides (`ADAM_EPS`).
      synced: start every step of both float32 sides from the float64 reference's state
        (parameters, running statistics, counters, optimizer moments and step, rounded to
        float32), so that each step is compared on its own and float32 chaos cannot carry over;
        False: free-running trajectories, compared after every step (``spare_batches`` unused).
      spare_batches: per step, the batches to retry it on if it fails (synced only); `RETRIES`
        each in `report_training`.
      float64: also train Flax in float64 (``jax.enable_x64``) against torch float64 on the same
        batches, free-running (`train.pytorch.step_float64`, `TrainingComparison.float64`): where
        the float32 comparison can fail by a kink event, this one cannot; a port error fails it.

    Returns:
      The `TrainingComparison`: the `jaxloss.parity.Report` (per step, the comparisons of the
      batch that passed, or of its last try), the per-step summary rows, the retried failures.
    """
    from train.pytorch import step_sync

    _, channels, height, side = batches[0][0].shape
    setting = dict(model=model, layout=layout, num_classes=num_classes, width=width,
                   image_shape=(height, side, channels))  # fmt: skip
    state = step_sync.flax_state(state_dict, tx=_optimizer(optimizer, lr, adam_eps), **setting)
    flax_step, holder = step_sync.flax_loop(
        state, _train_fn(num_classes), rename=rename_for(layout)
    )
    exact = dict(state_dict=state_dict, torch_model=torch_model, optimizer=optimizer, lr=lr,
                 adam_eps=adam_eps, batches=batches)  # fmt: skip
    model32, model64 = copy.deepcopy(torch_model).float(), copy.deepcopy(torch_model).double()
    torch32, opt32 = step_sync.torch_loop(model32, optimizer, lr, momentum=MOMENTUM, eps=adam_eps)
    torch64, opt64 = step_sync.torch_loop(model64, optimizer, lr, momentum=MOMENTUM, eps=adam_eps)
    if not synced:
        seen: list[tuple[dict, dict]] = []

        def torch_step(batch: tuple[np.ndarray, np.ndarray]) -> dict:
            out = torch32(batch)
            seen.append((holder["last"], out))
            return out

        def recorded_flax_step(batch: tuple[np.ndarray, np.ndarray]) -> dict:
            holder["last"] = flax_step(batch)  # compare_steps' order: jax, torch, reference
            return holder["last"]

        report = parity.compare_steps(
            recorded_flax_step, torch_step, batches, reference_step=torch64, tolerance=RULES
        )
        rows = tuple(
            step_row(i, f, t, passed=_passed(report.entries, f"step {i} "))
            for i, (f, t) in enumerate(seen, start=1)
        )
        return TrainingComparison(
            optimizer, lr, report, rows, (), *_float64(float64, setting, **exact)
        )

    got: dict[str, dict] = {}  # the last states of both float32 sides

    def jax_side(batch: tuple[np.ndarray, np.ndarray]) -> dict:
        got["flax"] = flax_step(batch)
        return got["flax"]

    def torch_side(batch: tuple[np.ndarray, np.ndarray]) -> dict:
        got["torch"] = torch32(batch)
        return got["torch"]

    entries: list[Any] = []
    rows_: list[StepRow] = []
    retried: list[Retry] = []
    for i, batch in enumerate(batches, start=1):
        if i > 1:  # both float32 sides start the step from the float64 reference's state
            step_sync.sync_torch(model32, opt32, model64, opt64)
            holder["state"] = step_sync.sync_flax(
                holder["state"], model64, opt64, layout=layout, step=i - 1
            )
        start = (
            holder["state"],
            step_sync.snapshot(model32, opt32),
            step_sync.snapshot(model64, opt64),
        )
        tries = (batch, *(spare_batches[i - 1] if i <= len(spare_batches) else ()))
        for attempt, b in enumerate(tries):
            if attempt:  # the same state again, on a spare batch
                holder["state"] = start[0]
                step_sync.restore(model32, opt32, start[1])
                step_sync.restore(model64, opt64, start[2])
            one = parity.compare_steps(
                jax_side, torch_side, [b], reference_step=torch64, tolerance=RULES
            )
            if one.ok or attempt == len(tries) - 1:
                break
            retried.append(Retry(i, attempt, one.first_failure))
        entries += [
            dataclasses.replace(e, name=f"step {i} {e.name.removeprefix('step 1 ')}")
            for e in one.entries
        ]
        rows_.append(step_row(i, got["flax"], got["torch"], passed=one.ok, retries=attempt))
    report = parity.Report(tuple(entries), title="training steps")
    return TrainingComparison(
        optimizer, lr, report, tuple(rows_), tuple(retried), *_float64(float64, setting, **exact)
    )


def _float64(run: bool, setting: Mapping[str, Any], **kwargs: Any) -> tuple[Any, float]:
    """`train.pytorch.step_float64.compare_float64` with this module's step, optimizer, names."""
    from train.pytorch import step_float64

    if not run:
        return None, 0.0
    opt, lr, eps = kwargs.pop("optimizer"), kwargs.pop("lr"), kwargs.pop("adam_eps")
    return step_float64.compare_float64(
        **kwargs, **setting, optimizer=opt, lr=lr, adam_eps=eps, momentum=MOMENTUM,
        train_fn=_train_fn(setting["num_classes"]), tx=_optimizer(opt, lr, eps),
        rename=rename_for(setting["layout"]),
    )  # fmt: skip


def _passed(entries: Sequence[Any], prefix: str) -> bool:
    return all(e.passed for e in entries if e.name.startswith(prefix))


def random_batches(
    count: int,
    *,
    batch_size: int,
    shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    stream: int = 1,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` batches of standard-normal NCHW float32 images and uniform labels.

    ``stream`` picks an independent sequence for the same ``seed`` (1: the steps' batches;
    ``1 + i``: step ``i``'s spare batches in `report_training`).

    Examples:
      >>> [(x.shape, y.dtype) for x, y in random_batches(
      ...     2, batch_size=4, shape=(3, 8, 8), num_classes=5, seed=0)][:1]
      [((4, 3, 8, 8), dtype('int64'))]
    """
    rng = np.random.default_rng((seed, stream))
    return [
        (
            rng.normal(size=(batch_size, *shape)).astype(np.float32),
            rng.integers(0, num_classes, size=batch_size).astype(np.int64),
        )
        for _ in range(count)
    ]


def report_training(
    args: Any,
    state_dict: Mapping[str, np.ndarray],
    torch_model: Any,
    *,
    layout: str,
    info: Mapping[str, int],
    log: Callable[[str], None],
) -> None:
    """`jaxloss-verify --train-steps`: runs `compare_training` per optimizer and logs the summary.

    Args:
      args: the parsed command line (`train.pytorch.verify.build_parser`).
      state_dict: the checkpoint.
      torch_model: the float32 torch model holding it.
      layout: the port layout.
      info: `train.pytorch.port.checkpoint_info` of the checkpoint.
      log: where the lines go.

    Raises:
      ValueError: one line naming the first comparison that failed (the table is logged first).
    """
    size = args.train_image_size or DEFAULT_IMAGE_SIZE[layout]
    names = OPTIMIZERS if args.optimizer == "both" else (args.optimizer,)
    free = bool(getattr(args, "free_running", False))
    retries = 0 if free else getattr(args, "retries", None)
    retries = RETRIES if retries is None else retries
    shape = (info["in_channels"], size, size)
    draw = functools.partial(
        random_batches,
        batch_size=args.train_batch_size,
        shape=shape,
        num_classes=info["num_classes"],
        seed=args.seed,
    )
    batches = draw(args.train_steps)
    spares = [draw(retries, stream=1 + i) for i in range(1, args.train_steps + 1)]
    log(
        f"training: {args.train_steps} step(s) per optimizer on batches of "
        f"{args.train_batch_size} random {shape} images, torch "
        "(float32, float64 reference) and Flax (train.step.train_step) from the checkpoint; "
        + (
            "free-running trajectories (--free-running)"
            if free
            else "every step from the float64 reference's state, a failing step retried from "
            f"that state on up to {retries} other batch(es) (--retries)"
        )
    )
    first = None
    for name in names:
        lr = args.lr if args.lr is not None else DEFAULT_LR[name]
        result = compare_training(
            state_dict,
            torch_model,
            model=args.model,
            layout=layout,
            num_classes=info["num_classes"],
            width=info["width"],
            optimizer=name,
            lr=lr,
            batches=batches,
            adam_eps=args.adam_eps,
            synced=not free,
            spare_batches=spares,
        )
        extra = f"momentum {MOMENTUM:g}" if name == "sgd" else f"eps {args.adam_eps:g}"
        for line in step_report.describe(result, f"lr {lr:g}, {extra}", verbose=args.verbose):
            log(line)
        error, note = step_report.verdict(result)
        if note:
            log("  " + note)
        if first is None and error:
            first = f"{name} {error}"
    for line in step_report.legend(RULES, failed=first is not None, free_running=free):
        log(line)
    if first is not None:
        raise ValueError(first + " (the table above lists every comparison, failures first)")
