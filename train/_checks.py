"""Eager checks of static arguments, shared by `train.config.Config` and the train modules.

The rule: an argument of the wrong kind (a string or a bool where a number belongs) raises
`ArgumentTypeError`, which is a `TypeError` and also a `ValueError`; a value of the right kind out
of range raises `ValueError`. Both name the argument and the value: `f"... got {name}={value!r}"`.
`Config` and the components it configures call the same helpers, so a limit reads the same
wherever it is enforced.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection
from typing import Any

__all__ = ["ArgumentTypeError", "check_choice", "check_int", "check_real"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong kind: a `TypeError`, caught by `except ValueError` too."""


def check_int(name: str, value: object, *, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum`` (bools are rejected).

    Examples:
      >>> check_int("step_size", 3, minimum=1)
      3
      >>> check_int("epochs", 0, minimum=1)
      Traceback (most recent call last):
      ...
      ValueError: epochs must be an integer >= 1, got epochs=0
    """
    if isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    try:
        value = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ArgumentTypeError(
            f"{name} must be an integer >= {minimum}, got {name}={value!r}"
        ) from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return value


def _bound(low: float, high: float, low_open: bool, high_open: bool) -> str:
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    if math.isinf(high):
        return f"{'>' if low_open else '>='} {low}"
    if math.isinf(low):
        return f"{'<' if high_open else '<='} {high}"
    return f"in {left}{low}, {high}{right}"


def check_real(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` between ``low`` and ``high`` (open ends as flagged).

    Python and NumPy scalars and 0-d arrays are accepted; bools and strings are not.

    Examples:
      >>> check_real("gamma", 0.5, low=0.0)
      0.5
      >>> check_real("lr", -1.0, low=0.0)
      Traceback (most recent call last):
      ...
      ValueError: lr must be a finite number >= 0.0, got lr=-1.0
    """
    bound = _bound(low, high, low_open, high_open)
    message = f"{name} must be a finite number {bound}, got {name}={value!r}"
    if isinstance(value, (bool, str, bytes)):
        raise ArgumentTypeError(message)
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ArgumentTypeError(message) from None
    below = number <= low if low_open else number < low
    above = number >= high if high_open else number > high
    if not math.isfinite(number) or below or above:
        raise ValueError(message)
    return number


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them.

    Examples:
      >>> check_choice("mode", "max", ("min", "max"))
      'max'
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {name}={value!r}")
    return value
