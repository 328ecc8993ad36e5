"""Eager argument checks shared by every loss.

Static arguments (reductions, hyper-parameters, shapes, dtypes) are checked before anything is traced
and raise ``ValueError`` or ``TypeError`` naming the argument and its value. Array *values* can only be
checked when they are concrete: :func:`check_labels_in_range` raises for concrete out-of-range labels
and does nothing for tracers (under ``jax.jit`` the losses turn those examples into NaN instead).
"""

from __future__ import annotations

import numbers
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
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
        raise TypeError(f"{name} must be an integer array of class indices, got dtype {x.dtype}")
    return x


def check_reduction(reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction=}")
    return reduction


def check_real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    high_open: bool = False,
) -> float:
    """A static Python real in ``[low, high]`` (or ``[low, high)`` when ``high_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a Python real number, got {name}={value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {name}={value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {name}={value!r}")
    if high is not None and (value >= high if high_open else value > high):
        bound = f"< {high}" if high_open else f"<= {high}"
        raise ValueError(f"{name} must be {bound}, got {name}={value!r}")
    return value


def hyperparameter(
    name: str, value: Any, *, low: float | None = None, high: float | None = None
) -> Any:
    """A scalar hyper-parameter that is traced, not static: a Python real is range-checked and kept,
    a concrete 0-d array is checked too, a tracer passes through unchecked.
    """
    if isinstance(value, jax.core.Tracer):
        if value.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got {name}.shape={value.shape}")
        return value
    if isinstance(value, (np.ndarray, jax.Array)):
        if value.ndim != 0:
            raise ValueError(f"{name} must be a scalar, got {name}.shape={value.shape}")
        value = value.item()
    return check_real(name, value, low=low, high=high)


def check_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be None or a Python int, got {ignore_index=!r}")
    return int(ignore_index)


def logits_and_labels(
    logits: jax.typing.ArrayLike, labels: jax.typing.ArrayLike, *, min_classes: int = 2
) -> tuple[jax.Array, jax.Array]:
    """Checks ``logits`` of shape ``(..., C)`` (float, ``C >= min_classes``) and int ``labels`` ``(...)``."""
    logits = as_float_array("logits", logits)
    labels = as_label_array("labels", labels)
    if logits.ndim < 2:
        raise ValueError(
            f"logits must have shape (..., num_classes) with at least 2 dims, got "
            f"logits.shape={logits.shape}"
        )
    if logits.shape[-1] < min_classes:
        raise ValueError(
            f"logits must have at least {min_classes} classes on the last axis, got "
            f"logits.shape={logits.shape}"
        )
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels.shape must equal logits.shape[:-1], got labels.shape={labels.shape} "
            f"and logits.shape={logits.shape}"
        )
    return logits, labels


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
            f"{name} must have {expected} to match logits.shape[-1]={num_classes}, got "
            f"{name}.shape={arr.shape}"
        )
    return arr


def check_labels_in_range(
    labels: jax.Array, num_classes: int, ignore_index: int | None = None
) -> None:
    """Raises ``ValueError`` for concrete labels outside ``[0, num_classes)`` (``ignore_index`` allowed).

    Tracers are not checked: the losses give NaN for those examples instead (see each docstring).
    """
    if not is_concrete(labels):
        return
    host = np.asarray(labels)
    bad = (host < 0) | (host >= num_classes)
    if ignore_index is not None:
        bad &= host != ignore_index
    if bad.any():
        values = np.unique(host[bad])[:5].tolist()
        raise ValueError(
            f"labels must lie in [0, {num_classes}) (or equal ignore_index={ignore_index}), "
            f"got {int(bad.sum())} out of range, e.g. {values}"
        )
