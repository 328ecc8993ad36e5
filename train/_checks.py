"""Eager checks of static arguments, shared by the train modules.

Each raises ``ValueError`` naming the argument and its value (``f"... got {name}={value!r}"``).
"""

from __future__ import annotations

import math
import operator


def check_int(name: str, value: object, *, minimum: int) -> int:
    """``value`` as an ``int`` >= ``minimum`` (bools are rejected).

    >>> check_int("step_size", 3, minimum=1)
    3
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {name}={value!r}")
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {name}={value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {name}={value!r}")
    return value


def check_real(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` in ``[low, high]`` (``[low, high)`` when ``high_open``).

    Python and NumPy scalars and 0-d arrays are accepted; bools and strings are not.

    >>> check_real("gamma", 0.5, low=0.0)
    0.5
    """
    if isinstance(value, (bool, str, bytes)):
        raise ValueError(f"{name} must be a real number, got {name}={value!r}")
    try:
        value = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {name}={value!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {name}={value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {name}={value!r}")
    if value >= high if high_open else value > high:
        raise ValueError(
            f"{name} must be {'<' if high_open else '<='} {high}, got {name}={value!r}"
        )
    return value
