"""Cross-entropy with torch semantics, and the seeds' label-smoothing loss."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxloss import _reduction, _validate
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
) -> jax.Array:
    r"""``torch.nn.functional.cross_entropy`` for integer labels, weights and smoothing included.

    .. math::
       \ell_i = (1 - \varepsilon)\, w_{y_i} (-\log p_{i,y_i})
                + \frac{\varepsilon}{C} \sum_j w_j (-\log p_{i,j})

    With ``weight=None`` all :math:`w = 1`. ``"mean"`` divides the summed losses by
    :math:`\sum_i w_{y_i}` over counted (not ignored) examples, the smoothing term included: exactly
    torch's rule. An all-ignored batch gives NaN for ``"mean"``, as in torch.

    Args:
      logits: float array of shape ``(..., C)``, ``C >= 2`` (classes last, unlike torch's ``(N, C,
        d1..)``). bf16/fp16 are upcast to float32.
      labels: integer array of shape ``(...)`` with values in ``[0, C)`` or ``ignore_index``.
      weight: ``None`` or ``(C,)`` class weights.
      ignore_index: label value to ignore (torch's default is -100; here ``None`` ignores nothing).
      label_smoothing: :math:`\varepsilon` in [0, 1), spread as :math:`\varepsilon / C` over all
        classes: a Python float, a 0-d array (both range-checked) or a traced scalar (unchecked; a
        new value does not recompile).
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(...)``).

    Returns:
      A scalar, or per-example losses of shape ``(...)``; float32 (float64 for float64 logits).

    Out-of-range labels raise ``ValueError`` when concrete and give NaN for that example under
    ``jit``.

    References:
      ``torch.nn.CrossEntropyLoss``; Szegedy et al., "Rethinking the Inception Architecture", 2016.

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
      >>> round(float(cross_entropy(logits, jnp.array([0, 1]))), 4)
      1.5755
      >>> round(float(cross_entropy(logits, jnp.array([0, 1]), label_smoothing=0.1)), 4)
      1.6055
    """
    logits, labels = _validate.logits_and_labels(logits, labels)
    num_classes = logits.shape[-1]
    weight = _validate.class_vector("weight", weight, num_classes)
    ignore_index = _validate.check_ignore_index(ignore_index)
    label_smoothing = _validate.hyperparameter(
        "label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True
    )
    # The value is traced (a new value does not recompile); only "is there smoothing" is static,
    # and a traced value always computes the smoothing term (0 gives exactly cross-entropy).
    reduction = _validate.check_reduction(reduction)
    _validate.check_labels_in_range(labels, num_classes, ignore_index)
    return _cross_entropy(
        logits,
        labels,
        weight,
        label_smoothing,
        smooth=_smooth(label_smoothing),
        ignore_index=ignore_index,
        reduction=reduction,
    )


def label_smoothing_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    smoothing: float = 0.0,
    spread: str = "others",
    weight: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
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
      logits: float array of shape ``(..., C)``, ``C >= 2``.
      labels: integer array of shape ``(...)``.
      smoothing: :math:`\varepsilon` in [0, 1): a Python float, a 0-d array (both range-checked)
        or a traced scalar (unchecked; a new value does not recompile).
      spread: ``"others"`` or ``"uniform"``.
      weight: ``None`` or ``(C,)`` class weights (torch semantics, see above).
      ignore_index: label value to ignore.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(...)``).

    Returns:
      A scalar, or per-example losses of shape ``(...)``; float32 (float64 for float64 logits).

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
    logits, labels = _validate.logits_and_labels(logits, labels)
    num_classes = logits.shape[-1]
    weight = _validate.class_vector("weight", weight, num_classes)
    ignore_index = _validate.check_ignore_index(ignore_index)
    reduction = _validate.check_reduction(reduction)
    _validate.check_labels_in_range(labels, num_classes, ignore_index)
    if spread == "others":
        smoothing = smoothing * num_classes / (num_classes - 1)
    return _cross_entropy(
        logits,
        labels,
        weight,
        smoothing,
        smooth=_smooth(smoothing),
        ignore_index=ignore_index,
        reduction=reduction,
    )


def _smooth(smoothing: Any) -> bool:
    """Static: whether the smoothing term is computed (always for a traced value)."""
    return not _validate.is_concrete(smoothing) or smoothing > 0


@functools.partial(jax.jit, static_argnames=("smooth", "ignore_index", "reduction"))
def _cross_entropy(logits, labels, weight, smoothing, *, smooth, ignore_index, reduction):
    dtype = _validate.compute_dtype(logits.dtype)
    x = logits.astype(dtype)
    num_classes = x.shape[-1]
    safe, counted, out_of_range = _reduction.mask_labels(labels, num_classes, ignore_index)
    example_weight = None if weight is None else weight.astype(dtype)[safe]
    if smooth:
        # sum_j w_j (-log p_j) = lse * sum(w) - z @ w: the row reduction z @ w and its gradient are
        # fused into target_stats' passes instead of materialising -log p of shape (..., C).
        class_weight = jnp.ones((num_classes,), dtype) if weight is None else weight.astype(dtype)
        z_t, lse_o, z_dot_w = target_stats_dot(x, safe, class_weight)
    else:
        z_t, lse_o = target_stats(x, safe)
    log_pt, _, lse = log_probs(z_t, lse_o)
    nll = -log_pt if example_weight is None else -log_pt * example_weight
    per_example = nll
    if smooth:
        smoothing = jnp.asarray(smoothing, dtype)
        smooth_term = lse * jnp.sum(class_weight) - z_dot_w
        per_example = (1 - smoothing) * nll + (smoothing / num_classes) * smooth_term
    return _reduction.finish(per_example, counted, out_of_range, example_weight, reduction)
