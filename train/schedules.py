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

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from jaxloss._validate import check_int, check_real
from train.plateau import PlateauState, ReduceLROnPlateau, reduce_lr_on_plateau

__all__ = [
    "EpochSchedule",
    "PlateauState",
    "ReduceLROnPlateau",
    "constant_lr",
    "cosine_annealing_lr",
    "create_schedule",
    "reduce_lr_on_plateau",
    "step_lr",
]

Schedule = Callable[[int], float]


def _check_epoch(epoch: object) -> int:
    return check_int("epoch", epoch, minimum=0)


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
    r"""``torch.optim.lr_scheduler.StepLR``: the LR times ``gamma`` every ``step_size`` epochs.

    .. math::
        \mathrm{lr}_e = \mathrm{base\_lr} \cdot
        \gamma^{\lfloor e / \mathrm{step\_size} \rfloor}

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
    r"""``torch.optim.lr_scheduler.CosineAnnealingLR`` with PyTorch's recursive update.

    The closed form is

    .. math::
        \mathrm{lr}_e = \eta_{min} + \tfrac12 (\mathrm{base\_lr} - \eta_{min})
        \left(1 + \cos\frac{\pi e}{T_{max}}\right),

    so the LR falls to ``eta_min`` at ``e = t_max`` and then **rises again**
    (period ``2 * t_max``), as PyTorch's does; optax's ``cosine_decay_schedule``
    clamps instead. PyTorch's ``step()`` does not use the closed form but the
    recursion

    .. math::
        \mathrm{lr}_e = \eta_{min} + (\mathrm{lr}_{e-1} - \eta_{min})
        \frac{1 + \cos(\pi e / T_{max})}{1 + \cos(\pi (e-1) / T_{max})},

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


class EpochSchedule(NamedTuple):
    """The one interface the epoch loop sees: three pure functions over a JSON-able state.

    Attributes:
      init: ``() -> state``, the state before epoch 0 (``None`` for the epoch -> LR schedules, a
        list for ReduceLROnPlateau, so it is saved as JSON in the latest checkpoint).
      lr: ``(state, epoch) -> float``, the learning rate of 0-based ``epoch``.
      update: ``(state, record) -> state`` after an epoch, ``record`` holding its ``val_loss`` and
        ``val_f1`` (only ReduceLROnPlateau reads them).
    """

    init: Callable[[], Any]
    lr: Callable[[Any, int], float]
    update: Callable[[Any, Mapping[str, float]], Any]


def _stateless(fn: Schedule) -> EpochSchedule:
    return EpochSchedule(
        init=lambda: None, lr=lambda state, epoch: float(fn(epoch)), update=lambda s, r: s
    )


def _plateau(plateau: ReduceLROnPlateau, metric: str) -> EpochSchedule:
    def update(state: list[Any], record: Mapping[str, float]) -> list[Any]:
        return list(plateau.update(PlateauState(*state), record[metric]))

    return EpochSchedule(
        init=lambda: list(plateau.init()),
        lr=lambda state, epoch: float(PlateauState(*state).lr),
        update=update,
    )


def create_schedule(config: Any) -> EpochSchedule:
    """The run's schedule from a ``train.config.Config`` (``schedule`` and its fields).

    ``"constant"``, ``"step"`` (``step_size``, ``gamma``), ``"cosine"`` (``t_max``, default the
    number of epochs, ``eta_min``) or ``"plateau"`` (``plateau_*``; ``plateau_mode="min"`` watches
    ``val_loss``, ``"max"`` watches ``val_f1``), all from the base LR ``config.lr``.

    Examples:
      >>> from train.config import Config
      >>> s = create_schedule(Config(lr=0.1, schedule="step", step_size=2, gamma=0.5))
      >>> state = s.init()
      >>> [s.lr(state, e) for e in range(5)]
      [0.1, 0.1, 0.05, 0.05, 0.025]
      >>> p = create_schedule(Config(lr=1.0, schedule="plateau", plateau_patience=0))
      >>> state = p.update(p.update(p.init(), {"val_loss": 1.0}), {"val_loss": 2.0})
      >>> round(p.lr(state, 2), 12)
      0.1
    """
    if config.schedule == "plateau":
        plateau = reduce_lr_on_plateau(
            config.lr,
            mode=config.plateau_mode,
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            threshold=config.plateau_threshold,
            cooldown=config.plateau_cooldown,
            min_lr=config.plateau_min_lr,
        )
        return _plateau(plateau, "val_loss" if config.plateau_mode == "min" else "val_f1")
    if config.schedule == "step":
        return _stateless(step_lr(config.lr, config.step_size, config.gamma))
    if config.schedule == "cosine":
        return _stateless(cosine_annealing_lr(config.lr, config.t_max_or_epochs, config.eta_min))
    if config.schedule == "constant":
        return _stateless(constant_lr(config.lr))
    raise ValueError(f"unknown schedule: got {config.schedule=}")
