"""Learning-rate schedules with the exact semantics of ``torch.optim.lr_scheduler``.

Every schedule is **epoch-indexed**: it gives the learning rate used *during*
epoch ``e`` (0-based), which is what a PyTorch loop sees when it calls
``scheduler.step()`` once after each epoch. Epoch 0 always uses ``base_lr``.

The schedules run on the host, once per epoch, in Python ``float`` (IEEE
float64), exactly as PyTorch computes them. The resulting value reaches the
jitted train step through the optimiser state (``train.optim.set_learning_rate``,
built on ``optax.inject_hyperparams``), so changing it never recompiles.

Why not optax's schedules: they are evaluated per optimiser step inside the
compiled step in float32 and differ from PyTorch in ways that matter for parity.
``optax.exponential_decay(..., staircase=True)`` computes ``base * gamma**k``,
while ``StepLR`` multiplies the previous LR by ``gamma`` (repeated rounding);
``optax.cosine_decay_schedule`` clamps at ``t_max`` where ``CosineAnnealingLR``
rises again; ``optax.contrib.reduce_on_plateau`` reduces one epoch later than
``ReduceLROnPlateau`` and has no ``mode="max"``, absolute ``min_lr`` or ``eps``.
So each schedule here mirrors PyTorch's own update rule, operation for
operation, and agrees with it bit for bit (``parity_tests/test_schedules_parity.py``).

References:
    PyTorch ``torch/optim/lr_scheduler.py``: ``StepLR``, ``CosineAnnealingLR``,
    ``ReduceLROnPlateau`` (torch 2.13); seed 002 compares the three, seed 000
    uses ``StepLR(step_size=7, gamma=0.1)``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal, NamedTuple

from train._checks import check_int, check_real

__all__ = [
    "PlateauState",
    "ReduceLROnPlateau",
    "constant_lr",
    "cosine_annealing_lr",
    "reduce_lr_on_plateau",
    "step_lr",
]

Schedule = Callable[[int], float]


# --------------------------------------------------------------------------- #
# Validation helpers (static arguments, checked eagerly).
# --------------------------------------------------------------------------- #
def _check_epoch(epoch: object) -> int:
    return check_int("epoch", epoch, minimum=0)


# --------------------------------------------------------------------------- #
# Epoch -> LR schedules.
# --------------------------------------------------------------------------- #
def constant_lr(base_lr: float) -> Schedule:
    """A constant learning rate (no scheduler in the PyTorch loop).

    Not ``torch.optim.lr_scheduler.ConstantLR``, which scales the first epochs by
    a factor; this is simply ``lr = base_lr`` for every epoch.

    Args:
        base_lr: the learning rate, a finite float >= 0.

    Returns:
        A function ``epoch -> lr`` (``epoch`` a Python int >= 0, ``lr`` a float).

    Raises:
        ValueError: if ``base_lr`` is negative or not finite.

    Examples:
        >>> schedule = constant_lr(0.1)
        >>> [schedule(e) for e in range(3)]
        [0.1, 0.1, 0.1]
    """
    base_lr = check_real("base_lr", base_lr, low=0.0)

    def schedule(epoch: int) -> float:
        _check_epoch(epoch)
        return base_lr

    return schedule


def step_lr(base_lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``torch.optim.lr_scheduler.StepLR``: multiply the LR by ``gamma`` every ``step_size`` epochs.

    .. math::
        \\mathrm{lr}_e = \\mathrm{base\\_lr} \\cdot \\gamma^{\\lfloor e / \\mathrm{step\\_size} \\rfloor}

    computed as PyTorch computes it in ``scheduler.step()``: the previous LR
    multiplied by ``gamma`` once per decay, in float64 (so the value is bit-equal
    to PyTorch's, not to the closed form ``base_lr * gamma**k``, which can differ
    in the last bit). Equivalent in optimiser-step units to
    ``optax.exponential_decay(base_lr, step_size * steps_per_epoch, gamma,
    staircase=True)`` up to float32 rounding; not used for that reason.

    Args:
        base_lr: learning rate of epoch 0, a finite float >= 0.
        step_size: period of the decay in epochs, an int >= 1.
        gamma: multiplicative decay factor, a finite float (PyTorch does not
            restrict it; values above 1 grow the LR).

    Returns:
        A function ``epoch -> lr`` (``epoch`` a Python int >= 0, ``lr`` a float).

    Raises:
        ValueError: for a bad ``base_lr``, ``step_size`` or ``gamma``, and (from the
            returned function) for a negative or non-integer ``epoch``.

    Examples:
        >>> schedule = step_lr(1.0, step_size=2, gamma=0.5)
        >>> [schedule(e) for e in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    """
    base_lr = check_real("base_lr", base_lr, low=0.0)
    step_size = check_int("step_size", step_size, minimum=1)
    gamma = check_real("gamma", gamma)

    def schedule(epoch: int) -> float:
        epoch = _check_epoch(epoch)
        lr = base_lr
        for _ in range(epoch // step_size):
            lr = lr * gamma  # StepLR.get_lr: group["lr"] * gamma
        return lr

    return schedule


def cosine_annealing_lr(base_lr: float, t_max: int, eta_min: float = 0.0) -> Schedule:
    """``torch.optim.lr_scheduler.CosineAnnealingLR`` with PyTorch's recursive update.

    The closed form is

    .. math::
        \\mathrm{lr}_e = \\eta_{min} + \\tfrac12 (\\mathrm{base\\_lr} - \\eta_{min})
        \\left(1 + \\cos\\frac{\\pi e}{T_{max}}\\right),

    so the LR falls to ``eta_min`` at ``e = t_max`` and then **rises again**
    (period ``2 * t_max``), as PyTorch's does; optax's ``cosine_decay_schedule``
    clamps instead. PyTorch's ``step()`` does not use the closed form but the
    recursion

    .. math::
        \\mathrm{lr}_e = \\eta_{min} + (\\mathrm{lr}_{e-1} - \\eta_{min})
        \\frac{1 + \\cos(\\pi e / T_{max})}{1 + \\cos(\\pi (e-1) / T_{max})},

    with an additive branch where the denominator vanishes
    (``(e - 1 - t_max) % (2 t_max) == 0``). This function replays that recursion
    operation for operation, so its values are bit-equal to PyTorch's (they agree
    with the closed form to about 1e-15 relative). Cost is O(epoch) per call,
    negligible for a per-epoch host schedule.

    Args:
        base_lr: learning rate of epoch 0, a finite float >= 0.
        t_max: half-period in epochs, an int >= 1.
        eta_min: minimum learning rate, a finite float (PyTorch allows any value).

    Returns:
        A function ``epoch -> lr`` (``epoch`` a Python int >= 0, ``lr`` a float).

    Raises:
        ValueError: for a bad ``base_lr``, ``t_max`` or ``eta_min``, and (from the
            returned function) for a negative or non-integer ``epoch``.

    Examples:
        >>> schedule = cosine_annealing_lr(1.0, t_max=2)
        >>> [round(schedule(e), 12) for e in range(6)]
        [1.0, 0.5, 0.0, 0.5, 1.0, 0.5]
    """
    base_lr = check_real("base_lr", base_lr, low=0.0)
    t_max = check_int("t_max", t_max, minimum=1)
    eta_min = check_real("eta_min", eta_min)

    def schedule(epoch: int) -> float:
        epoch = _check_epoch(epoch)
        lr = base_lr
        for e in range(1, epoch + 1):  # CosineAnnealingLR.get_lr with last_epoch = e
            if (e - 1 - t_max) % (2 * t_max) == 0:
                lr = lr + (base_lr - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
            else:
                lr = (1 + math.cos(math.pi * e / t_max)) / (
                    1 + math.cos(math.pi * (e - 1) / t_max)
                ) * (lr - eta_min) + eta_min
        return lr

    return schedule


# --------------------------------------------------------------------------- #
# ReduceLROnPlateau: a pure state machine.
# --------------------------------------------------------------------------- #
class PlateauState(NamedTuple):
    """State of :class:`ReduceLROnPlateau` (host-side Python scalars; a pytree).

    Attributes:
        lr: learning rate to use for the next epoch (float).
        best: best metric seen so far (``inf`` / ``-inf`` before the first update).
        num_bad_epochs: epochs since the last improvement, reset by a reduction and
            during cooldown.
        cooldown_counter: epochs of cooldown left after a reduction.
        epoch: number of ``update`` calls so far (PyTorch's ``last_epoch``).
    """

    lr: float
    best: float
    num_bad_epochs: int
    cooldown_counter: int
    epoch: int


@dataclasses.dataclass(frozen=True)
class ReduceLROnPlateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau`` as a pure ``init`` / ``update`` pair.

    Build it with :func:`reduce_lr_on_plateau`, which validates the arguments.
    Runs on the host once per epoch in Python float64, like PyTorch (which calls
    ``float(metrics)``); ``update`` never touches the device beyond converting a
    scalar metric to ``float``. ``update`` returns a new state and never mutates
    its input.

    Attributes: as the arguments of :func:`reduce_lr_on_plateau`.
    """

    base_lr: float
    mode: Literal["min", "max"] = "min"
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    threshold_mode: Literal["rel", "abs"] = "rel"
    cooldown: int = 0
    min_lr: float = 0.0
    eps: float = 1e-8

    def init(self) -> PlateauState:
        """The state before the first epoch: ``lr == base_lr``, nothing seen yet.

        Returns:
            A :class:`PlateauState`.

        Examples:
            >>> reduce_lr_on_plateau(0.1).init()
            PlateauState(lr=0.1, best=inf, num_bad_epochs=0, cooldown_counter=0, epoch=0)
        """
        worst = math.inf if self.mode == "min" else -math.inf
        return PlateauState(
            lr=self.base_lr, best=worst, num_bad_epochs=0, cooldown_counter=0, epoch=0
        )

    def _is_better(self, current: float, best: float) -> bool:
        # Same expressions as ReduceLROnPlateau._is_better (incl. its quirks: in
        # "rel" mode with a negative best the threshold moves the wrong way).
        if self.mode == "min" and self.threshold_mode == "rel":
            return current < best * (1.0 - self.threshold)
        if self.mode == "min":
            return current < best - self.threshold
        if self.threshold_mode == "rel":
            return current > best * (self.threshold + 1.0)
        return current > best + self.threshold

    def update(self, state: PlateauState, metric: float) -> PlateauState:
        """Feeds one epoch's metric; returns the state whose ``lr`` the next epoch uses.

        Mirrors ``ReduceLROnPlateau.step(metric)``: a metric better than ``best``
        by more than the threshold resets the bad-epoch count, otherwise it grows;
        during cooldown bad epochs are ignored; when ``num_bad_epochs > patience``
        the LR becomes ``max(lr * factor, min_lr)`` (kept only if it falls by more
        than ``eps``), the cooldown starts and the count resets. A NaN metric is
        never better (a bad epoch), as in PyTorch.

        Args:
            state: the current :class:`PlateauState`.
            metric: the monitored quantity for the epoch just finished: anything
                ``float()`` accepts (Python / NumPy scalar, 0-d ``jax.Array``).

        Returns:
            The new :class:`PlateauState`.

        Examples:
            >>> plateau = reduce_lr_on_plateau(1.0, patience=1, factor=0.5)
            >>> state = plateau.init()
            >>> lrs = []
            >>> for loss in [3.0, 2.0, 2.0, 2.0, 2.0, 1.0]:
            ...   state = plateau.update(state, loss)
            ...   lrs.append(state.lr)
            >>> lrs
            [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
        """
        current = float(metric)
        lr, best = float(state.lr), float(state.best)
        num_bad_epochs, cooldown_counter = int(state.num_bad_epochs), int(state.cooldown_counter)

        if self._is_better(current, best):
            best = current
            num_bad_epochs = 0
        else:
            num_bad_epochs += 1

        if cooldown_counter > 0:
            cooldown_counter -= 1
            num_bad_epochs = 0  # ignore any bad epochs in cooldown

        if num_bad_epochs > self.patience:
            new_lr = max(lr * self.factor, self.min_lr)
            if lr - new_lr > self.eps:
                lr = new_lr
            cooldown_counter = self.cooldown
            num_bad_epochs = 0

        return PlateauState(
            lr=lr,
            best=best,
            num_bad_epochs=num_bad_epochs,
            cooldown_counter=cooldown_counter,
            epoch=int(state.epoch) + 1,
        )


def reduce_lr_on_plateau(
    base_lr: float,
    *,
    mode: Literal["min", "max"] = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: Literal["rel", "abs"] = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
    eps: float = 1e-8,
) -> ReduceLROnPlateau:
    """``torch.optim.lr_scheduler.ReduceLROnPlateau``, every option, as a pure state machine.

    Usage: ``state = plateau.init()``; train epoch 0 with ``state.lr``; after
    each epoch ``state = plateau.update(state, val_loss)`` and train the next
    epoch with ``state.lr``. Host-side Python floats (float64), as PyTorch;
    ``optax.contrib.reduce_on_plateau`` is not used because it reduces one epoch
    later, lacks ``mode="max"``, an absolute ``min_lr`` and ``eps``, and compares
    in float32.

    Args:
        base_lr: initial learning rate, a finite float >= 0.
        mode: ``"min"`` (reduce when the metric stops decreasing) or ``"max"``.
        factor: new LR = LR * factor; ``0 <= factor < 1`` (PyTorch rejects >= 1).
        patience: bad epochs tolerated; the LR is reduced when the count of bad
            epochs exceeds it (``num_bad_epochs > patience``). An int >= 0.
        threshold: margin for a significant improvement, a finite float >= 0.
        threshold_mode: ``"rel"`` (better than ``best * (1 -/+ threshold)``) or
            ``"abs"`` (better than ``best -/+ threshold``).
        cooldown: epochs after a reduction during which bad epochs are not counted,
            an int >= 0.
        min_lr: lower bound of the LR, a finite float >= 0.
        eps: a reduction smaller than or equal to ``eps`` is skipped; float >= 0.

    Returns:
        A :class:`ReduceLROnPlateau` with ``init() -> PlateauState`` and
        ``update(state, metric) -> PlateauState``.

    Raises:
        ValueError: naming the argument and value, for any invalid argument.

    Examples:
        >>> plateau = reduce_lr_on_plateau(0.1, mode="max", patience=0)
        >>> state = plateau.update(plateau.init(), 0.9)   # first epoch sets the best
        >>> state = plateau.update(state, 0.8)            # worse: 1 bad epoch > 0
        >>> round(state.lr, 12), state.best
        (0.01, 0.9)
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode=}")
    if threshold_mode not in ("rel", "abs"):
        raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode=}")
    base_lr = check_real("base_lr", base_lr, low=0.0)
    factor = check_real("factor", factor, low=0.0)
    if factor >= 1.0:
        raise ValueError(f"factor must be < 1.0, got {factor=}")
    return ReduceLROnPlateau(
        base_lr=base_lr,
        mode=mode,
        factor=factor,
        patience=check_int("patience", patience, minimum=0),
        threshold=check_real("threshold", threshold, low=0.0),
        threshold_mode=threshold_mode,
        cooldown=check_int("cooldown", cooldown, minimum=0),
        min_lr=check_real("min_lr", min_lr, low=0.0),
        eps=check_real("eps", eps, low=0.0),
    )
