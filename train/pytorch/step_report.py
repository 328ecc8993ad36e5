"""What `jaxloss-verify --train-steps` found: one row per training step, and the whole comparison.

`train.pytorch.verify_steps.compare_training` builds these; `train.pytorch.verify` prints them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["Retry", "StepRow", "TrainingComparison", "describe", "legend", "step_row", "verdict"]

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

    ``report``: every float32 comparison that decides the verdict (per step, the batch it passed
    on, or its last try); ``retried``: the failures on batches a step was then retried after;
    ``float64``: the float64 comparison (Flax in float64 against torch float64), or None.
    """

    optimizer: str
    lr: float
    report: Any  # jaxloss.parity.Report
    rows: tuple[StepRow, ...]
    retried: tuple[Retry, ...] = ()
    float64: Any = None  # the float64 comparison's jaxloss.parity.Report, or None
    float64_worst: float = 0.0  # its worst relative difference (`StepRow`'s, over every step)

    @property
    def ok(self) -> bool:
        """Every comparison of every step passed (float32: on its own batch or a spare one)."""
        return bool(self.report.ok) and (self.float64 is None or bool(self.float64.ok))

    @property
    def float64_ok(self) -> bool:
        """The float64 comparison passed (True when it was not run)."""
        return self.float64 is None or bool(self.float64.ok)

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
      (0.000999, True, 'ok (retry 1)')
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
    verdict = "all within the float64-reference rule" if result.report.ok else f"{bad} FAILED"
    lines = [f"{result.optimizer} ({setting}): float32: {n} comparisons, {verdict}"]
    lines += ["  " + line for line in result.summary()]
    if verbose or not result.report.ok:
        lines.append(str(result.report))
    exact = result.float64
    if exact is not None:
        state = "equal to torch float64" if exact.ok else f"{len(exact.failures)} FAILED"
        lines.append(
            f"  float64 (Flax in float64 vs torch float64, every step): {len(exact.entries)} "
            f"comparisons, {state}; worst tensor max |flax - torch| / max |torch| "
            f"{result.float64_worst:.1e}"
        )
        if verbose or not exact.ok:
            lines.append(str(exact))
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
            "A difference of the training step's computation fails the float64 comparison (Flax "
            "in float64 against torch float64, where no rounding event can happen). A float32 "
            "failure while float64 matches is float32 rounding: a kink event (an activation "
            "within rounding of a ReLU or max-pool kink on one side only reroutes one gradient "
            "element and everything upstream of it) or a float32-only shortcut, which fails "
            "from step 1 at every step. "
            + (
                "--free-running carries a kink to every later step; without it, each step "
                "starts from the float64 state and a failing one is retried on other batches."
                if free_running
                else "One step failing on every batch tried is tolerated when float64 matches; "
                "--retries N tries more batches, another --seed draws other ones."
            )
        )
    return lines


def _tolerance_failure(entry: Any) -> bool:
    """A rule's figures were exceeded (not a NaN, a missing tensor or a dtype that differs)."""
    return entry.verdict.reason.startswith(("rms error", "max error"))


def verdict(result: TrainingComparison) -> tuple[str | None, str | None]:
    """``(error, note)`` of one optimizer's comparison: the error line's text, or None.

    * The float64 comparison fails: an error (the training step computes something else).
    * float32 fails at exactly one step of three or more (on its batch and every spare one),
      by figures only (no NaN, no missing tensor, no dtype change), while float64 matched at
      every step: a note, not an error. That is a float32 rounding event (an activation within
      rounding of a ReLU or max-pool kink, which float64 is 2**29 times too fine to meet), not
      a difference of the computation: a float32-only defect (a float32 shortcut, a dtype leak)
      fails from step 1 at every step.
    * Any other float32 failure: an error.
    """
    exact = result.float64
    if exact is not None and exact.first_failure is not None:
        e = exact.first_failure
        return f"float64 {e.name} differs from torch float64: {e.verdict.reason}", None
    failed = [r.step for r in result.rows if not r.passed]
    if not failed:
        return None, None
    first = result.report.first_failure
    isolated = (
        exact is not None
        and len(failed) == 1
        and len(result.rows) >= 3
        and all(_tolerance_failure(e) for e in result.report.failures)
    )
    if isolated:
        return None, (
            f"note: float32 step {failed[0]} failed on every batch tried while float64 matched "
            f"torch at every step (worst {result.float64_worst:.1e}): one float32 rounding "
            f"event, tolerated once in {len(result.rows)} steps (first: {first.name} "
            f"{first.verdict.reason})"
        )
    return f"float32 {first.name} fails the float64-reference rule: {first.verdict.reason}", None
