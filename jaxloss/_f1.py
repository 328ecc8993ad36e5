"""Soft macro-F1 loss (seed 001's ``F1Loss``)."""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp

from jaxloss import _reduction, _validate


def f1_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    num_classes: int | None = None,
    epsilon: float = 1e-7,
    clamp: bool = True,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""``1 - mean_c F1_c`` with soft counts from softmax probabilities.

    The counts are summed over all leading axes.

    .. math::
       tp_c = \sum_i y_{ic} p_{ic},\quad fp_c = \sum_i (1 - y_{ic}) p_{ic},\quad
       fn_c = \sum_i y_{ic} (1 - p_{ic}),

       P_c = \frac{tp_c}{tp_c + fp_c + \epsilon},\quad R_c = \frac{tp_c}{tp_c + fn_c +
       \epsilon},\quad F1_c = \frac{2 P_c R_c}{P_c + R_c + \epsilon},\quad \ell = 1 -
       \frac{1}{C}\sum_c F1_c

    ``clamp=True`` clips each :math:`F1_c` to :math:`[\epsilon, 1 - \epsilon]` exactly as the seed
    does; a clipped class then contributes **zero gradient**. The lower clip is the one that bites:
    a class that occurs in the batch but is missed badly (its probabilities ~1e-9) has :math:`F1_c <
    \epsilon`, so it gets no gradient to recover, exactly when it needs one. (The upper clip is
    never active: the :math:`\epsilon` in the denominators keeps :math:`F1_c \le 1 - 1.5\epsilon`.)
    ``clamp=False`` drops the clip, so every class keeps its gradient; the value differs from the
    seed only where the clip was active.

    Args:
      logits: float array of shape ``(..., C)``, ``C >= 2``; counts are summed over all leading axes
        (the seed accepts only ``(N, C)``). Computed in float32 (float64 for float64 input).
      labels: integer array of shape ``(...)`` with values in ``[0, C)``.
      num_classes: ``None`` or ``C`` (the seed's ``classes`` argument; must match
      ``logits.shape[-1]``).
      epsilon: the seed's :math:`\epsilon` in (0, 0.5), a Python float or a traced scalar.
      clamp: whether to clip :math:`F1_c` as the seed does.
      where: optional boolean array of shape ``(...)``; examples where it is False (e.g. the padding
        of a last batch) contribute nothing to the counts and their labels are not checked.

    Returns:
      A float scalar. Out-of-range labels raise ``ValueError`` when concrete; under ``jax.jit`` the
      loss is NaN if any label is out of range.

    References:
      ``F1Loss`` of seed ``001_2350445a1936b7c1.txt`` (002's copy hard-codes 2 classes).

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [0.0, 3.0, 0.0]])
      >>> round(float(f1_loss(logits, jnp.array([0, 2, 1]))), 4)
      0.1364
    """
    logits, labels = _validate.logits_and_labels(logits, labels)
    classes = logits.shape[-1]
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise TypeError(f"num_classes must be None or an int, got {num_classes=!r}")
        if num_classes != classes:
            raise ValueError(
                f"num_classes must equal logits.shape[-1]={classes}, got {num_classes=}"
            )
    epsilon = _validate.hyperparameter("epsilon", epsilon, low=0.0, high=0.5)
    if _validate.is_concrete(epsilon) and not 0.0 < epsilon < 0.5:
        raise ValueError(f"epsilon must lie in (0, 0.5), got {epsilon=}")
    if not isinstance(clamp, bool):
        raise TypeError(f"clamp must be a bool, got {clamp=!r}")
    if where is None:
        where = jnp.ones(labels.shape, bool)
    where = jnp.asarray(where)
    if where.shape != labels.shape or where.dtype != jnp.bool_:
        raise ValueError(
            f"where must be a boolean array of shape labels.shape={labels.shape}, got "
            f"where.shape={where.shape}, where.dtype={where.dtype}"
        )
    if _validate.is_concrete(labels) and _validate.is_concrete(where):
        _validate.check_labels_in_range(jnp.where(where, labels, 0), classes)
    return _f1_loss(logits, labels, where, epsilon, clamp=clamp)


@functools.partial(jax.jit, static_argnames=("clamp",))
def _f1_loss(logits, labels, where, epsilon, *, clamp):
    dtype = _validate.compute_dtype(logits.dtype)
    epsilon = jnp.asarray(epsilon, dtype)
    num_classes = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(dtype), axis=-1).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    keep = where.reshape(-1)
    probs = jnp.where(keep[:, None], probs, 0)
    # No one-hot of shape (N, C): tp_c sums each example's target probability into its class (a
    # gather of N elements and a segment sum), fp and fn follow from the column sums and the class
    # counts. fp = colsum - tp may cancel when almost all of class c's mass is true positives; its
    # absolute error (~ eps * tp) is then far below the epsilon in the denominators.
    # In-range test in the labels' own dtype (uint8 labels with C = 300 included), see mask_labels.
    safe, _, out_of_range = _reduction.mask_labels(labels, num_classes, None)
    p_target = jnp.take_along_axis(probs, safe[:, None], axis=-1)[:, 0]
    tp = jax.ops.segment_sum(p_target, safe, num_segments=num_classes)
    count = jax.ops.segment_sum(keep.astype(dtype), safe, num_segments=num_classes)
    fp = jnp.sum(probs, axis=0) - tp
    fn = count - tp
    precision = tp / (tp + fp + epsilon)
    recall = tp / (tp + fn + epsilon)
    f1 = 2 * (precision * recall) / (precision + recall + epsilon)
    if clamp:
        f1 = jnp.clip(f1, epsilon, 1 - epsilon)
    loss = 1 - jnp.mean(f1)
    return jnp.where(jnp.any(keep & out_of_range), jnp.nan, loss)
