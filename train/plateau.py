"""``torch.optim.lr_scheduler.ReduceLROnPlateau`` as a pure host-side state machine.

Every option of torch's scheduler (``mode``, ``factor``, ``patience``, ``threshold`` and
``threshold_mode``, ``cooldown``, ``min_lr``, ``eps``), in Python floats (IEEE float64) as torch
computes it, bit for bit (``parity_tests/test_schedules_parity.py``).
``optax.contrib.reduce_on_plateau`` is not used: it reduces one epoch later, lacks ``mode="max"``,
an absolute ``min_lr`` and ``eps``, and compares in float32. ``train.schedules.create_schedule``
puts it behind the same ``init`` / ``lr`` / ``update`` interface as the epoch schedules.

References:
    PyTorch ``torch/optim/lr_scheduler.py``: ``ReduceLROnPlateau`` (torch 2.13).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple

from jaxloss._validate import check_int, check_real

__all__ = ["PlateauState", "ReduceLROnPlateau", "reduce_lr_on_plateau"]


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
