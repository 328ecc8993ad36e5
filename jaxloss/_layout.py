"""The class axis: every loss views its logits as ``(A, C)`` or ``(A, C, B)``, never transposed.

A loss called with logits of shape ``(d0, ..., d_{k-1}, C, d_{k+1}, ...)`` and ``axis=k`` views them
as ``(A, C, B)`` with ``A = d0 * ... * d_{k-1}`` and ``B = d_{k+1} * ...`` (a reshape, which costs
nothing: the memory is contiguous) and its labels, of the batch shape (the logits' shape without the
class axis), as ``(A, B)``. When the class axis is the last one (``B = 1``) the views are ``(A, C)``
and ``(A,)``, the layout every kernel here was written for. Reductions over classes are over axis 1
in both views, so each kernel is one piece of code for both; torch's own layout ``(N, C, H, W)``
(``axis=1``) is read in place, with no transpose of the logits in the forward or the backward.

Unbatched input (logits ``(C,)``, a scalar label) is ``A = 1, B = 1``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp


class Layout(NamedTuple):
    """How a logits shape splits around its class axis."""

    shape: tuple[int, ...]  # the logits' shape
    axis: int  # the class axis, non-negative
    lead: int  # A: the product of the dims before the class axis
    num_classes: int  # C
    trail: int  # B: the product of the dims after it

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The labels' shape: the logits' shape without the class axis."""
        return self.shape[: self.axis] + self.shape[self.axis + 1 :]

    @property
    def rows_shape(self) -> tuple[int, ...]:
        """``(A, C)`` when the classes are last, else ``(A, C, B)``."""
        if self.trail == 1:
            return (self.lead, self.num_classes)
        return (self.lead, self.num_classes, self.trail)

    @property
    def batch_rows_shape(self) -> tuple[int, ...]:
        """``(A,)`` or ``(A, B)``: the shape of one value per example in the rows view."""
        return (self.lead,) if self.trail == 1 else (self.lead, self.trail)

    def rows(self, x: jax.Array) -> jax.Array:
        """The logits (or anything of their shape) as ``(A, C)`` / ``(A, C, B)``: a free reshape."""
        return x.reshape(self.rows_shape)

    def batch_rows(self, x: jax.Array) -> jax.Array:
        """A batch-shaped array as ``(A,)`` / ``(A, B)``."""
        return x.reshape(self.batch_rows_shape)

    def unbatch(self, x: jax.Array) -> jax.Array:
        """Per-example values in the rows view back to the batch shape."""
        return x.reshape(self.batch_shape)

    def unrows(self, x: jax.Array) -> jax.Array:
        """A rows-view array back to the logits' shape."""
        return x.reshape(self.shape)


def layout(shape: tuple[int, ...], axis: int) -> Layout:
    """The :class:`Layout` of logits of ``shape`` with the (non-negative) class ``axis``.

    >>> layout((16, 19, 128, 128), 1).rows_shape
    (16, 19, 16384)
    >>> layout((8, 10), 1).rows_shape, layout((10,), 0).batch_shape
    ((8, 10), ())
    """
    return Layout(
        tuple(shape),
        axis,
        math.prod(shape[:axis]),
        shape[axis],
        math.prod(shape[axis + 1 :]),
    )


def expand(r: jax.Array) -> jax.Array:
    """A per-example array ``(A,)`` / ``(A, B)`` broadcast against rows ``(A, C[, B])``."""
    return jnp.expand_dims(r, 1)


def class_vector(v: jax.Array, ndim: int) -> jax.Array:
    """A ``(C,)`` vector broadcast against rows of ``ndim`` (2 or 3) dims."""
    return v if ndim == 2 else v[:, None]


def class_iota(num_classes: int, ndim: int) -> jax.Array:
    """``arange(C)`` shaped to broadcast against rows: ``(C,)`` or ``(C, 1)``."""
    return class_vector(jnp.arange(num_classes), ndim)


def is_target(labels: jax.Array, num_classes: int) -> jax.Array:
    """The boolean one-hot mask ``(A, C)`` / ``(A, C, B)`` of ``labels`` ``(A,)`` / ``(A, B)``."""
    return class_iota(num_classes, labels.ndim + 1) == expand(labels)


def _target_index(labels: jax.Array) -> tuple[jax.Array, ...]:
    a = jnp.arange(labels.shape[0])
    if labels.ndim == 1:
        return (a, labels)
    return (a[:, None], labels, jnp.arange(labels.shape[1])[None, :])


def take_target(rows: jax.Array, labels: jax.Array) -> jax.Array:
    """``rows[a, labels[a, b], b]``: a gather of one element per example (no masked pass)."""
    return rows.at[_target_index(labels)].get(
        indices_are_sorted=labels.ndim == 1, unique_indices=True, mode="promise_in_bounds"
    )


def set_target(rows: jax.Array, labels: jax.Array, value: jax.Array) -> jax.Array:
    """``rows[a, labels[a, b], b] = value[a, b]``: an in-place scatter, one element per example."""
    return rows.at[_target_index(labels)].set(
        value, indices_are_sorted=labels.ndim == 1, unique_indices=True, mode="promise_in_bounds"
    )


def index_inputs(
    logits: jax.Array, labels: jax.Array, where: jax.Array | None, axis: int
) -> tuple[Layout, jax.Array, jax.Array, jax.Array | None]:
    """``(layout, rows, label rows, where rows)`` for a loss of class indices.

    A masked example's logits are replaced by 0 (a select fused into the first pass), so its NaN or
    inf reaches neither the value nor the gradient, which is exactly 0 there.
    """
    view = layout(logits.shape, axis)
    rows, labels = view.rows(logits), view.batch_rows(labels)
    if where is not None:
        where = view.batch_rows(where)
        rows = jnp.where(expand(where), rows, 0)
    return view, rows, labels, where
