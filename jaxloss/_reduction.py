"""Label masking and torch-style reductions shared by the per-example losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxloss import _validate


def mask_labels(
    labels: jax.Array,
    num_classes: int,
    ignore_index: int | None,
    where: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Splits labels into ``(safe, counted, out_of_range)`` boolean masks, shape preserved.

    ``safe`` holds a valid class index everywhere (0 where the label is ignored or out of range), so
    gathers never clamp or wrap; ``counted`` marks examples that contribute to the loss;
    ``out_of_range`` marks labels that are neither in ``[0, num_classes)`` nor ``ignore_index``.
    An example where ``where`` (same shape) is False is neither counted nor out of range.
    """
    dtype = labels.dtype
    # Compared in the labels' own dtype, against constants it can hold: `labels < 300` on uint8
    # would cast 300 to 44 (or raise), `labels == -100` on uint8 would wrap. A C beyond the dtype
    # bounds nothing; an ignore_index the dtype cannot hold matches nothing.
    in_range = (
        labels >= 0 if jnp.issubdtype(dtype, jnp.signedinteger) else jnp.ones(labels.shape, bool)
    )
    if _validate.representable(num_classes, dtype):
        in_range &= labels < jnp.asarray(num_classes, dtype)
    ignored = jnp.zeros(labels.shape, bool)
    if ignore_index is not None and _validate.representable(ignore_index, dtype):
        ignored = labels == jnp.asarray(ignore_index, dtype)
    if where is not None:
        ignored |= ~where
    counted = in_range & ~ignored
    # Counted labels lie in [0, C), so int32 holds them exactly.
    safe = jnp.where(counted, labels, jnp.zeros((), dtype)).astype(jnp.int32)
    return safe, counted, ~in_range & ~ignored


def finish(
    per_example: jax.Array,
    counted: jax.Array,
    out_of_range: jax.Array,
    example_weight: jax.Array | None,
    reduction: str,
) -> jax.Array:
    """Zeroes ignored examples, turns out-of-range ones into NaN, then reduces as torch does.

    ``"mean"`` divides by the sum of ``example_weight`` over counted examples (torch NLL semantics
    with class weights) or by the number of counted examples; an all-ignored batch gives ``0 / 0 =
    NaN``, as in torch.
    """
    losses = jnp.where(counted, per_example, 0)
    losses = jnp.where(out_of_range, jnp.nan, losses)
    if reduction == "none":
        return losses
    total = jnp.sum(losses)
    if reduction == "sum":
        return total
    weights = counted.astype(losses.dtype)
    if example_weight is not None:
        weights = jnp.where(counted, example_weight, 0).astype(losses.dtype)
    return total / jnp.sum(weights)
