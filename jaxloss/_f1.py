"""Soft macro-F1 loss (seed 001's ``F1Loss``)."""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp

from jaxloss import _f1_sums, _layout, _reduction, _validate


def f1_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    num_classes: int | None = None,
    epsilon: float = 1e-7,
    clamp: bool = True,
    axis: int = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""``1 - mean_c F1_c`` with soft counts from softmax probabilities.

    The counts are summed over every example: all axes but the class axis.

    .. math::
       tp_c = \sum_i y_{ic} p_{ic},\quad fp_c = \sum_i (1 - y_{ic}) p_{ic},\quad
       fn_c = \sum_i y_{ic} (1 - p_{ic}),

       P_c = \frac{tp_c}{tp_c + fp_c + \epsilon},\quad R_c = \frac{tp_c}{tp_c + fn_c +
       \epsilon},\quad F1_c = \frac{2 P_c R_c}{P_c + R_c + \epsilon},\quad \ell = 1 -
       \frac{1}{C}\sum_c F1_c

    ``tp_c + fp_c`` is computed as the column sum :math:`\sum_i p_{ic}` and ``tp_c + fn_c`` as the
    class count, which is what they are exactly (no cancellation, no one-hot of shape ``(N, C)``).

    ``clamp=True`` clips each :math:`F1_c` to :math:`[\epsilon, 1 - \epsilon]` exactly as the seed
    does; a clipped class then contributes **zero gradient**. The lower clip is the one that bites:
    a class that occurs in the batch but is missed badly (its probabilities ~1e-9) has :math:`F1_c <
    \epsilon`, so it gets no gradient to recover, exactly when it needs one. (The upper clip is
    never active: the :math:`\epsilon` in the denominators keeps :math:`F1_c \le 1 - 1.5\epsilon`.)
    ``clamp=False`` drops the clip, so every class keeps its gradient; the value differs from the
    seed only where the clip was active.

    Args:
      logits: float array with ``C >= 2`` classes on ``axis``: ``(..., C)``, torch's ``(N, C, d1,
        ..., dk)`` with ``axis=1``, or unbatched ``(C,)`` (one example). Computed in float32
        (float64 for float64 input); the gradient comes back in the logits' dtype.
      labels: integer array of the batch shape (the logits' shape without ``axis``; a scalar for
        unbatched logits) with values in ``[0, C)``.
      num_classes: ``None`` or ``C`` (the seed's ``classes`` argument; must equal
        ``logits.shape[axis]``).
      epsilon: the seed's :math:`\epsilon` in (0, 0.5), a Python float or a traced scalar.
      clamp: whether to clip :math:`F1_c` as the seed does.
      axis: the class axis (default -1). Any axis is read in place: ``axis=1`` costs no transpose.
      where: ``None`` or a boolean array of the batch shape: an example where it is False (e.g. the
        padding of a last batch) contributes nothing to the counts, its label is not checked, and
        its logits (even NaN or inf) affect neither the value nor the gradient, which is 0 there.

    Returns:
      A float scalar, float32 for float32/bf16/fp16 logits, float64 for float64 logits.

    Out-of-range labels of counted examples raise ``ValueError`` when ``labels`` (and ``where``)
    are concrete; under ``jax.jit`` the loss is NaN if any counted label is out of range (masked
    examples never matter). A wrong ``axis``, or a ``where`` of the wrong shape or dtype, raises
    ``ValueError`` (``where`` of a non-bool dtype: ``_validate.ArgumentTypeError``, also a
    ``TypeError``); a non-int ``axis`` raises ``ArgumentTypeError``.

    References:
      ``F1Loss`` of seed ``001_2350445a1936b7c1.txt`` (002's copy hard-codes 2 classes).

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [0.0, 3.0, 0.0]])
      >>> labels = jnp.array([0, 2, 1])
      >>> round(float(f1_loss(logits, labels)), 4)
      0.1364
      >>> round(float(f1_loss(logits.T, labels, axis=0)), 4)  # classes first: the same loss
      0.1364
      >>> images = logits.T.reshape(1, 3, 3, 1)  # torch's (N, C, H, W), 3 pixels
      >>> round(float(f1_loss(images, labels.reshape(1, 3, 1), axis=1)), 4)
      0.1364
      >>> round(float(f1_loss(logits, labels, where=jnp.array([True, True, False]))), 4)
      0.4059
    """
    logits, labels, axis = _validate.logits_and_labels(logits, labels, axis=axis)
    classes = logits.shape[axis]
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise TypeError(f"num_classes must be None or an int, got {num_classes=!r}")
        if num_classes != classes:
            raise ValueError(
                f"num_classes must equal logits.shape[axis]={classes} (axis={axis}), got "
                f"{num_classes=}"
            )
    epsilon = _validate.hyperparameter("epsilon", epsilon, low=0.0, high=0.5)
    if _validate.is_concrete(epsilon) and not 0.0 < epsilon < 0.5:
        raise ValueError(f"epsilon must lie in (0, 0.5), got {epsilon=}")
    if not isinstance(clamp, bool):
        raise TypeError(f"clamp must be a bool, got {clamp=!r}")
    where = _validate.check_where(where, labels.shape)
    _validate.check_labels_in_range(_validate.labels_to_check(labels, where), classes)
    return _f1_loss(logits, labels, where, epsilon, axis=axis, clamp=clamp)


@functools.partial(jax.jit, static_argnames=("axis", "clamp"))
def _f1_loss(logits, labels, where, epsilon, *, axis, clamp):
    dtype = _validate.compute_dtype(logits.dtype)
    epsilon = jnp.asarray(epsilon, dtype)
    view = _layout.layout(logits.shape, axis)
    x = view.rows(logits.astype(dtype))
    labels = view.batch_rows(labels)
    if where is not None:
        where = view.batch_rows(where)
    # In-range test in the labels' own dtype (uint8 labels with C = 300 included), see mask_labels.
    safe, counted, out_of_range = _reduction.mask_labels(labels, view.num_classes, None, where)
    tp, colsum = _f1_sums.soft_counts(x, safe, where)
    count = jax.ops.segment_sum(
        counted.reshape(-1).astype(dtype), safe.reshape(-1), num_segments=view.num_classes
    )
    precision = tp / (colsum + epsilon)  # colsum = tp + fp
    recall = tp / (count + epsilon)  # count = tp + fn
    f1 = 2 * (precision * recall) / (precision + recall + epsilon)
    if clamp:
        f1 = jnp.clip(f1, epsilon, 1 - epsilon)
    loss = 1 - jnp.mean(f1)
    return jnp.where(jnp.any(out_of_range), jnp.nan, loss)
