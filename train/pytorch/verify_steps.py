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
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxloss import parity

__all__ = [
    "ADAM_EPS",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_LR",
    "MOMENTUM",
    "OPTIMIZERS",
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

DEFAULT_IMAGE_SIZE: dict[str, int] = {"torchvision": 64, "cifar": 32}
"""Side of the random training images per layout (see `compare_training` on float32 chaos)."""

_STATS = ("running_mean", "running_var")

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


@dataclasses.dataclass(frozen=True)
class StepRow:
    """One step of the summary: the losses and the worst relative differences, Flax vs torch.

    A relative difference is ``max |flax - torch| / max |torch|`` of one tensor; the worst over
    the parameters (``params``), the optimizer moments (``moments``) and the running means and
    variances (``stats``). ``counters_equal``: every ``num_batches_tracked`` is the same.
    """

    step: int
    loss_torch: float
    loss_flax: float
    params: float
    moments: float
    stats: float
    counters_equal: bool
    passed: bool


@dataclasses.dataclass(frozen=True)
class TrainingComparison:
    """What `compare_training` found for one optimizer."""

    optimizer: str
    lr: float
    report: Any  # jaxloss.parity.Report
    rows: tuple[StepRow, ...]

    @property
    def ok(self) -> bool:
        """Every comparison of every step passed."""
        return bool(self.report.ok)

    def summary(self) -> list[str]:
        """The per-step table, a line each."""
        head = (
            f"{'step':>4}  {'loss torch':>11}  {'loss flax':>11}  {'params rel':>10}  "
            f"{'moments rel':>11}  {'stats rel':>9}  {'counters':>8}  result"
        )
        lines = [head]
        for r in self.rows:
            lines.append(
                f"{r.step:>4}  {r.loss_torch:>11.6g}  {r.loss_flax:>11.6g}  {r.params:>10.2e}  "
                f"{r.moments:>11.2e}  {r.stats:>9.2e}  "
                f"{'equal' if r.counters_equal else 'DIFFER':>8}  {'ok' if r.passed else 'FAIL'}"
            )
        return lines


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def _row(step: int, flax: Mapping[str, np.ndarray], torch_: Mapping[str, np.ndarray]) -> StepRow:
    worst = {"param": 0.0, "opt": 0.0, "stats": 0.0}
    counters = True
    for key, value in flax.items():
        if key == "loss" or key not in torch_:
            continue
        kind = key.split("/", 1)[0]
        if key.endswith("num_batches_tracked"):
            counters &= bool(np.array_equal(value, torch_[key]))
            continue
        group = "stats" if key.endswith(_STATS) else kind
        if group in worst:
            worst[group] = max(worst[group], _relative(value, torch_[key]))
    return StepRow(
        step=step,
        loss_torch=float(torch_["loss"]),
        loss_flax=float(flax["loss"]),
        params=worst["param"],
        moments=worst["opt"],
        stats=worst["stats"],
        counters_equal=counters,
        passed=True,  # set from the report afterwards
    )


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
        if leaf in ("weight", "bias", "num_batches_tracked", *_STATS) and mods:
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


def _torch_optimizer(name: str, params: Any, lr: float, eps: float) -> Any:
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=MOMENTUM)
    return torch.optim.Adam(params, lr=lr, eps=eps)


def _torch_loop(
    model: Any, optimizer_name: str, lr: float, eps: float
) -> tuple[Callable[[Any], dict], Any]:
    """``(step, optimizer)``: one torch training step on ``model``, and its optimizer."""
    import torch
    import torch.nn.functional as F

    dtype = next(model.parameters()).dtype
    opt = _torch_optimizer(optimizer_name, model.parameters(), lr, eps)
    model.train()

    def step(batch: tuple[np.ndarray, np.ndarray]) -> dict:
        x, y = batch
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(torch.from_numpy(x).to(dtype)), torch.from_numpy(y).long())
        loss.backward()
        opt.step()
        return parity.torch_training_state(model, opt, loss=loss.detach())

    return step, opt


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
    synced: bool = False,
) -> TrainingComparison:
    """Trains torch (float32 and float64) and Flax from ``state_dict`` and compares every step.

    Float32 training is chaotic at the kinks: a ReLU input or a max-pool pair within rounding of a
    tie routes that step's gradient differently on one side, and everything after differs from
    float64 by far more than rounding (BatchNorm over few values per channel amplifies it). It
    strikes torch and Flax alike, at random. Measured on width-64 ResNet-18s, batches of 8, 5
    steps: at 64 px, 6 of 9 optimizer runs (3 checkpoints, 3 seeds) matched throughout, three
    Adam runs diverged at step 2 or 3 (e.g. an Adam first moment 2% of its largest element off,
    where torch's stayed within rounding); at 224 px, with the maximum held to 2x torch's (it is
    10x now, `RULES`), both optimizers failed at step 1 in both runs, on the
    gradients of one channel through several blocks (max error 3.5x and 6x torch's, RMS within
    1.3x and 2.1x: one kink event among 10^7 activations); at 32 px (a 1x1 last stage) both
    optimizers diverged by step 3. A porting error instead shows from step 1 on every tensor it
    touches. `DEFAULT_IMAGE_SIZE` and `ADAM_EPS` are the settings that matched.

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
        False (the default): free-running trajectories, compared after every step.

    Returns:
      The `TrainingComparison`: the `jaxloss.parity.Report` and the per-step summary rows.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from train import models
    from train import step as step_lib
    from train.pytorch import port, step_sync

    _, channels, height, side = batches[0][0].shape
    abstract = nnx.eval_shape(
        lambda: models.create_model(
            model,
            num_classes=num_classes,
            width=width,
            image_shape=(height, side, channels),
            rngs=nnx.Rngs(0),
        )
    )
    graphdef, params, stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    params, stats = port.from_torch(state_dict, params, stats, layout=layout)
    tx = _optimizer(optimizer, lr, adam_eps)
    state = step_lib.TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=stats,
        opt_state=tx.init(params),
        graphdef=graphdef,
        tx=tx,
    )
    train_fn = _train_fn(num_classes)
    rename = rename_for(layout)
    key = jax.random.key(0)
    holder: dict[str, Any] = {"state": state}

    def flax_step(batch: tuple[np.ndarray, np.ndarray]) -> dict:
        x, y = batch
        images = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        labels = y.astype(np.int32)
        new, m = train_fn(
            holder["state"],
            {"image": images, "label": labels, "mask": np.ones(len(y), bool)},
            key,
        )
        holder["state"] = new
        loss = np.float32(m.loss_sum) / np.float32(m.count)  # float32, as torch's
        return parity.nnx_training_state(new.model(), new.opt_state, loss=loss, rename=rename)

    model32, model64 = copy.deepcopy(torch_model).float(), copy.deepcopy(torch_model).double()
    torch32, opt32 = _torch_loop(model32, optimizer, lr, adam_eps)
    torch64, opt64 = _torch_loop(model64, optimizer, lr, adam_eps)
    seen: list[tuple[dict, dict]] = []

    def torch_step(batch: tuple[np.ndarray, np.ndarray]) -> dict:
        out = torch32(batch)
        seen.append((holder["last"], out))
        return out

    def recorded_flax_step(batch: tuple[np.ndarray, np.ndarray]) -> dict:
        # runs first in each step (compare_steps' order: jax, torch, reference): both float32
        # sides start the step from the float64 reference's state, so no error carries over
        if synced and seen:
            step_sync.sync_torch(model32, opt32, model64, opt64)
            holder["state"] = step_sync.sync_flax(
                holder["state"], model64, opt64, layout=layout, step=len(seen)
            )
        holder["last"] = flax_step(batch)
        return holder["last"]

    report = parity.compare_steps(
        recorded_flax_step, torch_step, batches, reference_step=torch64, tolerance=RULES
    )
    rows = []
    for i, (flax, torch_) in enumerate(seen, start=1):
        passed = all(e.passed for e in report.entries if e.name.startswith(f"step {i} "))
        rows.append(dataclasses.replace(_row(i, flax, torch_), passed=passed))
    return TrainingComparison(optimizer, lr, report, tuple(rows))


def random_batches(
    count: int, *, batch_size: int, shape: tuple[int, int, int], num_classes: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` batches of standard-normal NCHW float32 images and uniform labels.

    Examples:
      >>> [(x.shape, y.dtype) for x, y in random_batches(
      ...     2, batch_size=4, shape=(3, 8, 8), num_classes=5, seed=0)][:1]
      [((4, 3, 8, 8), dtype('int64'))]
    """
    rng = np.random.default_rng((seed, 1))
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
    batches = random_batches(
        args.train_steps,
        batch_size=args.train_batch_size,
        shape=(info["in_channels"], size, size),
        num_classes=info["num_classes"],
        seed=args.seed,
    )
    log(
        f"training: {args.train_steps} step(s) per optimizer on batches of "
        f"{args.train_batch_size} random {tuple(batches[0][0].shape[1:])} images, torch "
        "(float32, float64 reference) and Flax (train.step.train_step) from the checkpoint; "
        + (
            "every step from the float64 reference's state (--synced)"
            if getattr(args, "synced", False)
            else "free-running (--synced: every step from the float64 state)"
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
            synced=getattr(args, "synced", False),
        )
        extra = f"momentum {MOMENTUM:g}" if name == "sgd" else f"eps {args.adam_eps:g}"
        setting = f"lr {lr:g}, {extra}"
        n, bad = len(result.report.entries), len(result.report.failures)
        verdict = "all within the float64-reference rule" if result.ok else f"{bad} FAILED"
        log(f"{name} ({setting}): {n} comparisons, {verdict}")
        for line in result.summary():
            log("  " + line)
        if args.verbose or not result.ok:
            log(str(result.report))
        if first is None and result.report.first_failure is not None:
            first = (name, result.report.first_failure)
    floors = ", ".join(f"{k.rstrip('/')} {r.ulps:g}" for k, r in RULES.items())
    log(
        "rel: max |flax - torch| / max |torch| of a tensor, the worst tensor of each kind "
        "(params; optimizer moments: momentum_buffer, exp_avg, exp_avg_sq; BatchNorm running "
        "mean and var); counters: every num_batches_tracked equal. ok: every tensor's Flax "
        "error vs torch float64 <= 2 x torch float32's + a floor in ulps of its largest value "
        f"({floors}), rms and max; --verbose lists each comparison."
    )
    if first is not None:
        log(
            "A port error fails at every step, with jax err far above torch err on the tensors "
            "it touches. A failure at one step among matching ones is usually a float32 kink "
            "event: an activation within rounding of a ReLU or max-pool kink on one side only "
            "(it strikes torch too), which reroutes one gradient element and everything upstream "
            "of it; another --seed tells them apart."
        )
        name, entry = first
        raise ValueError(
            f"{name} {entry.name} fails the float64-reference rule: {entry.verdict.reason} "
            "(the table above lists every comparison, failures first)"
        )
