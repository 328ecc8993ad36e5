"""Cross-entropy with torch semantics, and the seeds' label-smoothing loss."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _layout, _reduction, _soft_targets, _validate
from jaxloss._target_stats import log_probs, target_stats, target_stats_dot

SPREADS = ("others", "uniform")


def cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    weight: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    axis: int = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""``torch.nn.functional.cross_entropy``: class indices or probabilities, weights, smoothing.

    .. math::
       \ell_i = (1 - \varepsilon)\, w_{y_i} (-\log p_{i,y_i})
                + \frac{\varepsilon}{C} \sum_j w_j (-\log p_{i,j})

    With ``weight=None`` all :math:`w = 1`. ``"mean"`` divides the summed losses by
    :math:`\sum_i w_{y_i}` over counted (not ignored) examples, the smoothing term included: exactly
    torch's rule. An all-ignored batch gives NaN for ``"mean"``, as in torch.

    Probability targets (float ``labels`` of the logits' shape: mixup, cutmix, distillation) follow
    torch's other form, :math:`t' = (1 - \varepsilon) t + \varepsilon / C`,
    :math:`\ell_i = -\sum_c w_c t'_{ic} \log p_{ic}`, and ``"mean"`` divides by the number of
    counted examples, not by a weight sum (torch's rule for this form; timm's
    ``SoftTargetCrossEntropy`` without weights). ``ignore_index`` does not apply (use ``where``).

    Args:
      logits: float array with ``C >= 2`` classes on ``axis``: ``(..., C)``, torch's ``(N, C, d1,
        ..., dk)`` with ``axis=1``, or unbatched ``(C,)``. bf16/fp16 are upcast to float32.
      labels: integer array of the batch shape (the logits' shape without ``axis``; a scalar for
        ``(C,)`` logits) with values in ``[0, C)`` or ``ignore_index``; or float probability targets
        of the logits' shape, each example's summing to 1 (concrete targets are checked: values in
        [0, 1], sums within ``max(sqrt(eps), C eps)`` of 1; traced ones are used as given, and an
        example with a target outside [0, 1] or NaN gives NaN). Gradients flow to float targets.
      weight: ``None`` or ``(C,)`` class weights.
      ignore_index: label value to ignore (torch's default is -100; here ``None`` ignores nothing).
      label_smoothing: :math:`\varepsilon` in [0, 1), spread as :math:`\varepsilon / C` over all
        classes: a Python float, a 0-d array (both range-checked) or a traced scalar (unchecked; a
        new value does not recompile).
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the batch shape).
      axis: the class axis (default -1), read in place: ``axis=1`` costs no transpose.
      where: ``None`` or a boolean array of the batch shape (optax's convention): an example where
        it is False contributes 0, is not counted in ``"mean"``, its label is not checked, and its
        logits (even NaN) affect neither the value nor the gradient (0 there).

    Returns:
      A scalar, or per-example losses of the batch shape; float32 (float64 for float64 logits).

    Out-of-range labels raise ``ValueError`` when concrete and give NaN for that example under
    ``jit``.

    References:
      ``torch.nn.CrossEntropyLoss`` (both target forms); Szegedy et al., "Rethinking the Inception
      Architecture", 2016.

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
      >>> round(float(cross_entropy(logits, jnp.array([0, 1]))), 4)
      1.5755
      >>> round(float(cross_entropy(logits, jnp.array([0, 1]), label_smoothing=0.1)), 4)
      1.6055
      >>> round(float(cross_entropy(logits, jnp.array([[1.0, 0, 0], [0, 1.0, 0]]))), 4)  # one-hot
      1.5755
      >>> round(float(cross_entropy(logits.T, jnp.array([0, 1]), axis=0)), 4)  # classes first
      1.5755
    """
    label_smoothing = _validate.hyperparameter(
        "label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True
    )
    # The value is traced (a new value does not recompile); only "is there smoothing" is static,
    # and a traced value always computes the smoothing term (0 gives exactly cross-entropy).
    return _dispatch(logits, labels, weight, ignore_index, label_smoothing, reduction, axis, where)


def _dispatch(logits, labels, weight, ignore_index, smoothing, reduction, axis, where):
    """Checks the arguments of both public functions, then runs the index or probability form."""
    ignore_index = _validate.check_ignore_index(ignore_index)
    reduction = _validate.check_reduction(reduction)
    if _is_probabilities(labels):
        logits, axis = _validate.logits_with_classes(logits, axis=axis)
        if ignore_index is not None:
            raise ValueError(
                f"ignore_index applies to integer labels only, got {ignore_index=} with "
                "probability targets (mask examples with where=)"
            )
        targets = jnp.asarray(labels)
        if targets.shape != logits.shape:
            raise _validate.ArgumentTypeError(
                f"labels must be integer class indices of the batch shape or float probability "
                f"targets of the logits' shape {logits.shape}, got dtype {targets.dtype} and "
                f"labels.shape={targets.shape}"
            )
        batch_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
        where = _validate.check_where(where, batch_shape)
        _soft_targets.check_targets(targets, logits.shape, axis, where)
        weight = _validate.class_vector("weight", weight, logits.shape[axis])
        return _soft_targets.soft_cross_entropy(
            logits,
            targets,
            weight,
            smoothing,
            where,
            axis=axis,
            smooth=_smooth(smoothing),
            reduction=reduction,
        )
    logits, labels, axis = _validate.logits_and_labels(logits, labels, axis=axis)
    num_classes = logits.shape[axis]
    weight = _validate.class_vector("weight", weight, num_classes)
    where = _validate.check_where(where, labels.shape)
    _validate.check_labels_in_range(
        _validate.labels_to_check(labels, where), num_classes, ignore_index
    )
    return _cross_entropy(
        logits,
        labels,
        weight,
        smoothing,
        where,
        axis=axis,
        smooth=_smooth(smoothing),
        ignore_index=ignore_index,
        reduction=reduction,
    )


def _is_probabilities(labels: jax.typing.ArrayLike) -> bool:
    """Float labels are probability targets (torch's rule: the dtype decides the form)."""
    dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
    return bool(jnp.issubdtype(dtype, jnp.floating))


def label_smoothing_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    smoothing: float = 0.0,
    spread: str = "others",
    weight: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    axis: int = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""The seeds' ``LabelSmoothingLoss``, or torch's smoothing with ``spread="uniform"``.

    ``spread="others"`` (the seeds): the target class gets :math:`1 - \varepsilon`, every other
    class :math:`\varepsilon / (C - 1)`:

    .. math::
       \ell_i = (1 - \varepsilon)(-\log p_{i,y_i}) + \frac{\varepsilon}{C - 1}\sum_{j \ne y_i}
       (-\log p_{i,j})

    ``spread="uniform"``: identical to ``cross_entropy(..., label_smoothing=smoothing)``.

    ``"others"`` with smoothing :math:`\varepsilon` equals ``"uniform"`` with
    :math:`\varepsilon' = \varepsilon C / (C - 1)`; ``weight`` and ``ignore_index`` (which the seeds
    do not have) therefore follow torch's rules: each class term is weighted by :math:`w_j`, and
    ``"mean"`` divides by :math:`\sum_i w_{y_i}` over counted examples. Without them, ``"mean"`` is
    the seeds' mean over the batch.

    Args:
      logits: float array with ``C >= 2`` classes on ``axis`` (``(..., C)``, ``(N, C, d1, ...)``
        with ``axis=1``, or ``(C,)``).
      labels: integer array of the batch shape; with ``spread="uniform"`` also float probability
        targets of the logits' shape (exactly ``cross_entropy``'s probability form).
      smoothing: :math:`\varepsilon` in [0, 1): a Python float, a 0-d array (both range-checked)
        or a traced scalar (unchecked; a new value does not recompile).
      spread: ``"others"`` or ``"uniform"``.
      weight: ``None`` or ``(C,)`` class weights (torch semantics, see above).
      ignore_index: label value to ignore.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the batch shape).
      axis: the class axis (default -1), read in place.
      where: ``None`` or a boolean array of the batch shape: masked examples contribute nothing
        and are not counted in ``"mean"`` (as in ``cross_entropy``).

    Returns:
      A scalar, or per-example losses of the batch shape; float32 (float64 for float64 logits).

    References:
      ``LabelSmoothingLoss`` of seeds ``001_2350445a1936b7c1.txt``, ``002_87cf32fcfe6917c6.txt`` and
      ``004_1e0f039da5020c04.txt``; Szegedy et al., 2016.

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
      >>> round(float(label_smoothing_loss(logits, jnp.array([0, 1]), smoothing=0.1)), 4)
      1.6205
    """
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, got {spread=}")
    smoothing = _validate.hyperparameter("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
    if spread == "others":
        if _is_probabilities(labels):
            raise ValueError(
                "spread='others' needs integer labels (the target class is the one smoothed "
                "away from); probability targets take spread='uniform'"
            )
        logits, class_axis = _validate.logits_with_classes(logits, axis=axis)
        num_classes = logits.shape[class_axis]
        smoothing = smoothing * num_classes / (num_classes - 1)
    return _dispatch(logits, labels, weight, ignore_index, smoothing, reduction, axis, where)


def _smooth(smoothing: Any) -> bool:
    """Static: whether the smoothing term is computed (always for a traced value)."""
    return not _validate.is_concrete(smoothing) or smoothing > 0


@functools.partial(jax.jit, static_argnames=("axis", "smooth", "ignore_index", "reduction"))
def _cross_entropy(
    logits, labels, weight, smoothing, where, *, axis, smooth, ignore_index, reduction
):
    dtype = _validate.compute_dtype(logits.dtype)
    view, x, labels, where = _layout.index_inputs(logits.astype(dtype), labels, where, axis)
    num_classes = view.num_classes
    safe, counted, out_of_range = _reduction.mask_labels(labels, num_classes, ignore_index, where)
    class_weight: jax.Array | None = None
    if smooth:
        # sum_j w_j (-log p_j) = lse * sum(w) - z @ w: the class reduction z @ w and its gradient
        # are fused into target_stats' passes instead of materialising -log p of the logits' shape.
        class_weight = vector = smoothing_vector(weight, num_classes, dtype)
        z_t, lse_o, z_dot_w = target_stats_dot(x, safe, vector)
    else:
        (z_t, lse_o), z_dot_w = target_stats(x, safe), None
    per_example, example_weight = cross_entropy_terms(
        z_t, lse_o, z_dot_w, safe, weight, class_weight, smoothing, num_classes
    )
    out = _reduction.finish(per_example, counted, out_of_range, example_weight, reduction)
    return view.unbatch(out) if reduction == "none" else out


def smoothing_vector(weight: jax.Array | None, num_classes: int, dtype: Any) -> jax.Array:
    """The class vector ``w`` of the smoothing term ``sum_j w_j (-log p_j)``; ones if no weights."""
    return jnp.ones((num_classes,), dtype) if weight is None else weight.astype(dtype)


def cross_entropy_terms(
    z_t: jax.Array,
    lse_o: jax.Array,
    z_dot_w: jax.Array | None,
    safe: jax.Array,
    weight: jax.Array | None,
    class_weight: jax.Array | None,
    smoothing: Any,
    num_classes: int,
) -> tuple[jax.Array, jax.Array | None]:
    """Per-example torch cross-entropy from the row statistics, and the example weights ``w_t``.

    ``(1 - eps) w_t (-log p_t) + eps / C (lse sum(w) - z . w)``; without ``z_dot_w`` (no smoothing)
    only the first term. Shared by `cross_entropy` and `jaxloss.linear_cross_entropy`.
    """
    dtype = z_t.dtype
    example_weight = None if weight is None else weight.astype(dtype)[safe]
    log_pt, _, lse = log_probs(z_t, lse_o)
    nll = -log_pt if example_weight is None else -log_pt * example_weight
    if z_dot_w is None or class_weight is None:
        return nll, example_weight
    smoothing = jnp.asarray(smoothing, dtype)
    smooth_term = lse * jnp.sum(class_weight) - z_dot_w
    return (1 - smoothing) * nll + (smoothing / num_classes) * smooth_term, example_weight
