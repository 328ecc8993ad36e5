"""Eager argument checks shared by every loss.

The rule, for jaxloss and the trainer alike (``train`` imports these checks): ``TypeError`` for a
value of the wrong kind (a bool or a string where a number is expected, a float where an integer is
expected, a float array of labels; the scalar checks raise ``ArgumentTypeError``, which is also a
``ValueError``), ``ValueError`` for a value of the right kind that is out of range (a negative
``gamma``, ``label_smoothing=1``, a label outside ``[0, C)``). Every message names the argument and
its value.

Static arguments (reductions, hyper-parameters, shapes, dtypes) are checked before anything is
traced. Array *values* can only be checked when they are concrete: :func:`check_labels_in_range`
raises for concrete out-of-range labels and does nothing for tracers (under ``jax.jit`` the losses
turn those examples into NaN instead). Integer labels given as NumPy arrays or Python ints are
checked on the host *before* they become JAX arrays, so a 64-bit label that JAX would wrap to 32
bits (x64 off) raises instead of becoming another class.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

REDUCTIONS = ("mean", "sum", "none")


def is_concrete(x: Any) -> bool:
    """True when ``x`` holds values (NumPy, Python or a committed ``jax.Array``), not a tracer."""
    return not isinstance(x, jax.core.Tracer)


def compute_dtype(dtype: Any) -> jnp.dtype:
    """The float dtype losses compute in: float32 for half types, float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


def as_float_array(name: str, x: jax.typing.ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def as_label_array(name: str, x: jax.typing.ArrayLike) -> jax.Array:
    """An integer ``jax.Array`` of labels in its own dtype; host inputs checked before conversion.

    With x64 off, ``jnp.asarray`` converts int64/uint64 to int32/uint32 by wrapping (``2**32 + 1``
    becomes 1): a NumPy or Python label outside the 32-bit range raises ``ValueError`` here instead,
    since it is out of range for every ``C``.
    """
    if not isinstance(x, jax.Array):
        host = np.asarray(x)
        if not np.issubdtype(host.dtype, np.integer):
            raise TypeError(
                f"{name} must be an integer array of class indices, got dtype {host.dtype}"
            )
        narrow = jnp.dtype(jax.dtypes.canonicalize_dtype(host.dtype))
        if narrow != host.dtype and host.size:
            info = np.iinfo(narrow)
            wide = host.astype(object) if host.dtype == np.uint64 else host
            bad = (wide < info.min) | (wide > info.max)
            if bad.any():
                values = np.unique(host[bad])[:5].tolist()
                raise ValueError(
                    f"labels must lie in [0, C) (or equal ignore_index), got {int(bad.sum())} "
                    f"outside the {narrow} range JAX would wrap them to (x64 is off), e.g. {values}"
                )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        raise TypeError(f"{name} must be an integer array of class indices, got dtype {x.dtype}")
    return x


def representable(value: int, dtype: Any) -> bool:
    """Whether the Python int ``value`` is a value of the integer ``dtype``.

    >>> representable(-100, jnp.uint8), representable(255, jnp.uint8)
    (False, True)
    """
    info = np.iinfo(dtype)
    return int(info.min) <= value <= int(info.max)


def check_reduction(reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction=}")
    return reduction


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong kind: a ``TypeError`` that ``except ValueError`` also catches.

    So a caller that treats every bad argument alike (the trainer's CLI, ``Config``) needs one
    ``except ValueError``, while the kind of the mistake stays visible.
    """


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """A Python or NumPy integer ``>= minimum`` (bools rejected), as a Python ``int``.

    Raises:
      ArgumentTypeError: ``value`` is not an integer (``operator.index`` fails) or is a bool.
      ValueError: ``value < minimum``.

    >>> check_int("steps", 3, minimum=1)
    3
    >>> check_int("epochs", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an integer >= 1, got epochs=0
    """
    if isinstance(value, (bool, np.bool_)):
        raise ArgumentTypeError(f"{name} must be an integer, got {name}={value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ArgumentTypeError(f"{name} must be an integer, got {name}={value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return number


def _bound(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high}"
    return ""


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    high_open: bool = False,
    low_open: bool = False,
) -> float:
    """A concrete real in ``[low, high]`` (open ends with ``low_open``/``high_open``) as a float.

    Accepts Python and NumPy real scalars and 0-d real arrays (NumPy or JAX). Every value error
    reads ``"{name} must be a finite number {bound}, got {name}={value!r}"``.

    Raises:
      ArgumentTypeError: a bool, a string, a complex number or any non-real (or an array that is
        not 0-d).
      ValueError: NaN or infinite, or outside the bounds.

    >>> check_real("rate", 0.5, low=0.0, high=1.0)
    0.5
    >>> check_real("lr", -1.0, low=0.0)
    Traceback (most recent call last):
    ...
    ValueError: lr must be a finite number >= 0.0, got lr=-1.0
    """
    if isinstance(value, (np.ndarray, jax.Array, np.generic)) and not isinstance(
        value, jax.core.Tracer
    ):
        arr = np.asarray(value)
        if arr.ndim != 0 or arr.dtype.kind not in "iuf":
            raise ArgumentTypeError(f"{name} must be a real number, got {name}={value!r}")
        value = arr.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be a real number, got {name}={value!r}")
    number = float(value)
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if not np.isfinite(number) or below or above:
        bound = _bound(low, high, low_open, high_open)
        raise ValueError(f"{name} must be a finite number{bound}, got {name}={value!r}")
    return number


def check_choice(name: str, value: Any, choices: Any) -> Any:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them.

    >>> check_choice("mode", "max", ("min", "max"))
    'max'
    """
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {name}={value!r}")
    return value


def hyperparameter(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    high_open: bool = False,
) -> Any:
    """A scalar hyper-parameter that is traced, not static.

    A Python real is range-checked and kept, a concrete 0-d array is checked too (and returned as a
    float), a tracer passes through unchecked.
    """
    if isinstance(value, jax.core.Tracer):
        if value.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got {name}.shape={value.shape}")
        return value
    if isinstance(value, (np.ndarray, jax.Array)) and value.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got {name}.shape={value.shape}")
    return check_real(name, value, low=low, high=high, high_open=high_open)


def check_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be None or a Python int, got {ignore_index=!r}")
    return int(ignore_index)


def check_axis(axis: Any, ndim: int) -> int:
    """The class ``axis`` of logits with ``ndim`` dims, as a non-negative int.

    >>> check_axis(-1, 4), check_axis(1, 4)
    (3, 1)
    """
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise ArgumentTypeError(f"axis must be an int (the class axis), got axis={axis!r}")
    axis = int(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis must lie in [-{ndim}, {ndim}) for logits with {ndim} dims, got axis={axis}"
        )
    return axis % ndim


def logits_with_classes(
    logits: jax.typing.ArrayLike, *, axis: Any = -1, min_classes: int = 2
) -> tuple[jax.Array, int]:
    """Checks float ``logits`` with ``C >= min_classes`` classes on ``axis``; ``(logits, axis)``.

    >>> logits_with_classes(jnp.zeros((2, 3, 4)), axis=1)[1]
    1
    """
    logits = as_float_array("logits", logits)
    if logits.ndim < 1:
        raise ValueError(
            f"logits must have a class axis (shape (C,) or (..., C, ...)), got "
            f"logits.shape={logits.shape}"
        )
    axis = check_axis(axis, logits.ndim)
    if logits.shape[axis] < min_classes:
        raise ValueError(
            f"logits must have at least {min_classes} classes on axis {axis}, got "
            f"logits.shape={logits.shape}"
        )
    return logits, axis


def logits_and_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    axis: Any = -1,
    min_classes: int = 2,
) -> tuple[jax.Array, jax.Array, int]:
    """Checks float ``logits`` with ``C >= min_classes`` classes on ``axis`` and int ``labels``.

    ``labels`` must have the logits' shape without the class axis (a scalar for unbatched ``(C,)``
    logits). Returns ``(logits, labels, axis)`` with ``axis`` non-negative.
    """
    logits, axis = logits_with_classes(logits, axis=axis, min_classes=min_classes)
    labels = as_label_array("labels", labels)
    batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
    if labels.shape != batch_shape:
        raise ValueError(
            f"labels.shape must equal logits.shape without the class axis {axis}, i.e. "
            f"{batch_shape}, got labels.shape={labels.shape} and logits.shape={logits.shape}"
        )
    return logits, labels, axis


def check_where(where: jax.typing.ArrayLike | None, batch_shape: tuple[int, ...]) -> Any:
    """``None``, or ``where`` as a boolean array of exactly ``batch_shape`` (one flag per example).

    >>> check_where([True, False], (2,)).shape
    (2,)
    """
    if where is None:
        return None
    arr = jnp.asarray(where)
    if arr.dtype != jnp.bool_:
        raise ArgumentTypeError(
            f"where must be a boolean array (True: the example counts), got dtype {arr.dtype}"
        )
    if arr.shape != tuple(batch_shape):
        raise ValueError(
            f"where must have the batch shape {tuple(batch_shape)} (the logits' shape without "
            f"the class axis), got where.shape={arr.shape}"
        )
    return arr


def labels_to_check(labels: jax.Array, where: Any) -> jax.Array:
    """The labels whose range matters: a masked example's label is never checked (it is unused)."""
    if where is None or not (is_concrete(labels) and is_concrete(where)):
        return labels
    return jnp.where(where, labels, jnp.zeros((), labels.dtype))


def class_vector(
    name: str, value: jax.typing.ArrayLike | None, num_classes: int, *, allow_scalar: bool = False
) -> jax.Array | None:
    """``None``, a ``(num_classes,)`` float vector, or (``allow_scalar``) a scalar."""
    if value is None:
        return None
    arr = jnp.asarray(value)
    if not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
        raise TypeError(f"{name} must be real, got dtype {arr.dtype}")
    if allow_scalar and arr.ndim == 0:
        return arr
    if arr.shape != (num_classes,):
        expected = (
            f"a scalar or shape ({num_classes},)" if allow_scalar else f"shape ({num_classes},)"
        )
        raise ValueError(
            f"{name} must have {expected} to match the {num_classes} classes of the logits, got "
            f"{name}.shape={arr.shape}"
        )
    return arr


def check_labels_in_range(
    labels: jax.Array, num_classes: int, ignore_index: int | None = None
) -> None:
    """Raises ``ValueError`` for concrete labels outside ``[0, num_classes)`` but ``ignore_index``.

    Compared as Python-exact integers whatever the label dtype (``uint8`` labels and ``C = 300``,
    ``int8`` and ``ignore_index=-100`` included); an ``ignore_index`` that the dtype cannot hold
    matches nothing. Tracers are not checked: the losses give NaN for those examples instead.
    """
    if not is_concrete(labels):
        return
    host = np.asarray(labels)
    wide = host.astype(np.uint64 if host.dtype.kind == "u" else np.int64)
    bad = wide >= np.array(num_classes, wide.dtype)
    if host.dtype.kind != "u":
        bad |= wide < 0
    if ignore_index is not None and representable(ignore_index, host.dtype):
        bad &= wide != np.array(ignore_index, wide.dtype)
    if bad.any():
        values = np.unique(host[bad])[:5].tolist()
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (or equal ignore_index={ignore_index}), "
            f"got {int(bad.sum())} out of range, e.g. {values}"
        )
