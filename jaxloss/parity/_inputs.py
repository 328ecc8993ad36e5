"""Random inputs a user describes: floats, integer labels, probability rows, or fixed arrays.

Each description draws a float64 (or integer) NumPy array from a ``numpy.random.Generator``; the
comparison casts floats to the dtype under test, the same values for JAX and torch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["Input", "as_input", "fixed", "integers", "normal", "probabilities", "uniform"]


def _shape(shape: Sequence[int] | int, name: str) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if not all(isinstance(n, (int, np.integer)) and n >= 0 for n in shape):
        raise ValueError(f"{name}: shape must be non-negative ints, got {shape=}")
    return tuple(int(n) for n in shape)


@dataclasses.dataclass(frozen=True)
class Input:
    """One positional input of the compared functions.

    Attributes:
      kind: ``"normal"``, ``"uniform"``, ``"integers"``, ``"probabilities"`` or ``"fixed"``.
      shape: the array's shape.
      params: the kind's parameters (scale, bounds, axis).
      value: the array, for ``"fixed"``.
      grad: whether gradients with respect to this input are compared (floats only).
      dtype: integers: the JAX-side dtype (torch always gets int64, its index dtype).
    """

    kind: str
    shape: tuple[int, ...]
    params: tuple[float, ...] = ()
    value: np.ndarray | None = None
    grad: bool = True
    dtype: str = "float"

    @property
    def is_float(self) -> bool:
        """Whether the input is cast to the dtype under test (and may be differentiated)."""
        return self.dtype == "float"

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """A float64 (floats) or integer array of ``shape``."""
        if self.kind == "fixed":
            assert self.value is not None
            return self.value
        if self.kind == "normal":
            loc, scale = self.params
            return rng.normal(loc, scale, self.shape)
        if self.kind == "uniform":
            low, high = self.params
            return rng.uniform(low, high, self.shape)
        if self.kind == "integers":
            low, high = (int(p) for p in self.params)
            return rng.integers(low, high, self.shape).astype(self.dtype)
        (axis,) = (int(p) for p in self.params)
        z = rng.normal(size=self.shape)
        e = np.exp(z - z.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)


def normal(
    shape: Sequence[int] | int, *, scale: float = 1.0, loc: float = 0.0, grad: bool = True
) -> Input:
    """Floats drawn from ``N(loc, scale**2)``, e.g. logits or images.

    Examples:
      >>> normal((2, 3), scale=4.0).sample(np.random.default_rng(0)).shape
      (2, 3)
    """
    if not (math.isfinite(scale) and scale >= 0 and math.isfinite(loc)):
        raise ValueError(f"normal: need finite loc and scale >= 0, got {loc=}, {scale=}")
    return Input("normal", _shape(shape, "normal"), (float(loc), float(scale)), grad=grad)


def uniform(
    shape: Sequence[int] | int, *, low: float = -1.0, high: float = 1.0, grad: bool = True
) -> Input:
    """Floats drawn uniformly from ``[low, high)``.

    Examples:
      >>> x = uniform(4, low=2.0, high=3.0).sample(np.random.default_rng(0))
      >>> bool(((x >= 2) & (x < 3)).all())
      True
    """
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"uniform: need finite low < high, got {low=}, {high=}")
    return Input("uniform", _shape(shape, "uniform"), (float(low), float(high)), grad=grad)


def integers(shape: Sequence[int] | int, *, low: int = 0, high: int, dtype: str = "int32") -> Input:
    """Integers in ``[low, high)``, e.g. class labels; never differentiated.

    JAX receives ``dtype`` (int32 by default, JAX's own), torch int64 (what its losses index with).

    Examples:
      >>> integers(5, high=3).sample(np.random.default_rng(0)).dtype
      dtype('int32')
    """
    if high <= low:
        raise ValueError(f"integers: need low < high, got {low=}, {high=}")
    if not np.issubdtype(np.dtype(dtype), np.integer):
        raise ValueError(f"integers: dtype must be an integer dtype, got {dtype=}")
    return Input(
        "integers", _shape(shape, "integers"), (low, high), grad=False, dtype=str(np.dtype(dtype))
    )


def probabilities(shape: Sequence[int] | int, *, axis: int = -1, grad: bool = True) -> Input:
    """Rows of probabilities (non-negative, summing to 1 along ``axis``): soft targets.

    Examples:
      >>> p = probabilities((2, 4)).sample(np.random.default_rng(0))
      >>> np.allclose(p.sum(-1), 1.0), bool((p > 0).all())
      (True, True)
    """
    shape = _shape(shape, "probabilities")
    if not shape or not -len(shape) <= axis < len(shape):
        raise ValueError(f"probabilities: axis {axis} is out of range for {shape=}")
    return Input("probabilities", shape, (axis,), grad=grad)


def fixed(value: object, *, grad: bool | None = None) -> Input:
    """A given array, the same in every trial (floats differentiated unless ``grad=False``).

    Examples:
      >>> fixed(np.arange(3)).is_float, fixed([0.5, 1.5]).grad
      (False, True)
    """
    array = np.asarray(value)
    if array.dtype.kind in "fc":
        if array.dtype.kind == "c":
            raise ValueError("fixed: complex inputs are not supported")
        return Input("fixed", array.shape, value=array.astype(np.float64), grad=grad is not False)
    if array.dtype.kind in "iub":
        if grad:
            raise ValueError(f"fixed: an {array.dtype} input cannot be differentiated")
        return Input("fixed", array.shape, value=array, grad=False, dtype=str(array.dtype))
    raise ValueError(f"fixed: unsupported dtype {array.dtype}")


def as_input(value: object) -> Input:
    """An `Input` as is; anything else (an array, a list) as `fixed` (a user's own inputs)."""
    return value if isinstance(value, Input) else fixed(value)
