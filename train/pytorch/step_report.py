"""What `jaxloss-verify --train-steps` found: one row per training step, and the whole comparison.

`train.pytorch.verify_steps.compare_training` builds these; `train.pytorch.verify` prints them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Retry", "StepRow", "TrainingComparison", "describe", "legend", "step_row"]

_STATS = ("running_mean", "running_var")


@dataclasses.dataclass(frozen=True)
class StepRow:
    """One step of the summary: the losses and the worst relative differences, Flax vs torch.

    A relative difference is ``max |flax - torch| / max |torch|`` of one tensor; the worst over
    the parameters (``params``), the optimizer moments (``moments``) and the running means and
    variances (``stats``). ``counters_equal``: every ``num_batches_tracked`` is the same.
    ``retries``: how many other batches this step took before one passed (or before it gave up).
    """

    step: int
    loss_torch: float
    loss_flax: float
    params: float
    moments: float
    stats: float
    counters_equal: bool
    passed: bool
    retries: int = 0

    @property
    def result(self) -> str:
        """``ok``, ``ok (retry 1)`` or ``FAIL`` (``FAIL (2 retries)``)."""
        if self.passed:
            return "ok" if not self.retries else f"ok (retry {self.retries})"
        return "FAIL" if not self.retries else f"FAIL ({self.retries} retries)"


@dataclasses.dataclass(frozen=True)
class Retry:
    """A step that failed on one batch and was taken again from the same state on another.

    ``failure`` is the first failed comparison's `jaxloss.parity.Entry` on batch ``attempt``
    (0: the step's own batch; 1, 2, ...: the spare batches).
    """

    step: int
    attempt: int
    failure: Any

    def describe(self) -> str:
        """One line: the step, the batch, and the comparison that failed on it."""
        batch = "its batch" if self.attempt == 0 else f"spare batch {self.attempt}"
        return (
            f"step {self.step} on {batch}: {self.failure.name.split(' ', 2)[-1]} "
            f"{self.failure.verdict.reason}"
        )


@dataclasses.dataclass(frozen=True)
class TrainingComparison:
    """What `compare_training` found for one optimizer.

    ``report``: every comparison that decides the verdict (per step, the batch it passed on, or
    its last try); ``retried``: the failures on batches a step was then retried after.
    """

    optimizer: str
    lr: float
    report: Any  # jaxloss.parity.Report
    rows: tuple[StepRow, ...]
    retried: tuple[Retry, ...] = ()

    @property
    def ok(self) -> bool:
        """Every comparison of every step passed (on its own batch or on a spare one)."""
        return bool(self.report.ok)

    def summary(self) -> list[str]:
        """The per-step table, a line each, then a line per retried batch."""
        head = (
            f"{'step':>4}  {'loss torch':>11}  {'loss flax':>11}  {'params rel':>10}  "
            f"{'moments rel':>11}  {'stats rel':>9}  {'counters':>8}  result"
        )
        lines = [head]
        for r in self.rows:
            lines.append(
                f"{r.step:>4}  {r.loss_torch:>11.6g}  {r.loss_flax:>11.6g}  {r.params:>10.2e}  "
                f"{r.moments:>11.2e}  {r.stats:>9.2e}  "
                f"{'equal' if r.counters_equal else 'DIFFER':>8}  {r.result}"
            )
        lines += [f"retried: {r.describe()}" for r in self.retried]
        return lines


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def step_row(
    step: int,
    flax: Mapping[str, np.ndarray],
    torch_: Mapping[str, np.ndarray],
    *,
    passed: bool,
    retries: int = 0,
) -> StepRow:
    """The `StepRow` of one step from both sides' states (`jaxloss.parity` training states).

    Examples:
      >>> s = {"loss": 1.0, "param/w": np.array([1.0, 2.0]), "buffer/n.num_batches_tracked": 1}
      >>> t = {**s, "param/w": np.array([1.0, 2.002])}
      >>> r = step_row(3, s, t, passed=True, retries=1)
      >>> round(r.params, 6), r.counters_equal, r.result
      (0.000998, True, 'ok (retry 1)')
    """
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
            worst[group] = max(worst[group], _relative(np.asarray(value), np.asarray(torch_[key])))
    return StepRow(
        step=step,
        loss_torch=float(torch_["loss"]),
        loss_flax=float(flax["loss"]),
        params=worst["param"],
        moments=worst["opt"],
        stats=worst["stats"],
        counters_equal=counters,
        passed=passed,
        retries=retries,
    )


def describe(result: TrainingComparison, setting: str, *, verbose: bool = False) -> list[str]:
    """The lines `jaxloss-verify` prints for one optimizer.

    Its verdict, the per-step table, and on a failure (or ``verbose``) the whole
    `jaxloss.parity.Report`.
    """
    n, bad = len(result.report.entries), len(result.report.failures)
    verdict = "all within the float64-reference rule" if result.ok else f"{bad} FAILED"
    lines = [f"{result.optimizer} ({setting}): {n} comparisons, {verdict}"]
    lines += ["  " + line for line in result.summary()]
    if verbose or not result.ok:
        lines.append(str(result.report))
    return lines


def legend(rules: Mapping[str, Any], *, failed: bool, free_running: bool) -> Sequence[str]:
    """How to read the tables, and on a failure how a port error differs from a kink event.

    ``rules``: `train.pytorch.verify_steps.RULES` (their floors are printed).
    """
    floors = ", ".join(f"{k.rstrip('/')} {r.ulps:g}" for k, r in rules.items())
    lines = [
        "rel: max |flax - torch| / max |torch| of a tensor, the worst tensor of each kind "
        "(params; optimizer moments: momentum_buffer, exp_avg, exp_avg_sq; BatchNorm running "
        "mean and var); counters: every num_batches_tracked equal. ok: every tensor's Flax "
        "error vs torch float64 <= 2 x torch float32's + a floor in ulps of its largest value "
        f"({floors}), rms and max; --verbose lists each comparison."
    ]
    if failed:
        lines.append(
            "A port error fails at every step and on every batch, with jax err far above torch "
            "err on the tensors it touches. A kink event (an activation within rounding of a "
            "ReLU or max-pool kink on one side only, which reroutes one gradient element and "
            "everything upstream of it) follows the batch: "
            + (
                "--free-running carries it to every later step; without it, each step starts "
                "from the float64 state and a failing one is retried on other batches."
                if free_running
                else "a step that fails on its batch and on every spare one is not one, unless "
                "--retries was too small; another --seed draws other batches."
            )
        )
    return lines
