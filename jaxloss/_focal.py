"""Softmax focal loss (multi-class); the sigmoid form is `jaxloss._sigmoid_focal`."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxloss import _layout, _reduction, _validate
from jaxloss._target_stats import log_probs, target_stats


def focal_loss(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    gamma: float = 2.0,
    alpha: jax.typing.ArrayLike | None = None,
    weight: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    from_logits: bool = True,
    axis: int = -1,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax focal loss with scalar or per-class ``alpha`` and torch-style class weights.

    .. math::
       \ell_i = -\alpha_{y_i}\, w_{y_i}\, (1 - p_{i,y_i})^\gamma \log p_{i,y_i},
       \qquad p_i = \operatorname{softmax}(z_i)

    ``"mean"`` divides the sum by :math:`\sum_i w_{y_i}` over counted examples when ``weight`` is
    given (torch NLL semantics, seed 001), else by the number of counted examples; ``alpha`` never
    enters the denominator (plain mean, seeds 000 and 003).

    Numerics: :math:`\log p_t` and :math:`\log(1 - p_t)` are computed from the target logit and the
    log-sum-exp of the *other* logits, so both are exact at saturation, the loss is computed in
    float32 (float64 for float64 input) and the gradient is finite for every finite input and every
    ``gamma >= 0``, including ``0 < gamma < 1`` where the references' gradient is NaN at ``p_t =
    1``.

    Args:
      logits: float array with ``C >= 2`` classes on ``axis``: ``(..., C)``, torch's ``(N, C, d1,
        ..., dk)`` with ``axis=1``, or unbatched ``(C,)``; unnormalised scores, or probabilities
        when ``from_logits=False``. Any float dtype; bf16/fp16 are upcast to float32.
      labels: integer array of the batch shape (the logits' shape without ``axis``; a scalar for
        ``(C,)`` logits) with values in ``[0, C)`` or ``ignore_index``.
      gamma: focusing parameter ``>= 0``, a Python float or a traced scalar (a new value does not
        recompile). ``gamma=0`` is cross-entropy scaled by ``alpha``.
      alpha: ``None`` (1), a scalar (seed 000) or a ``(C,)`` array gathered by label (seed 003).
      weight: ``None`` or ``(C,)`` class weights with ``torch.nn.functional.nll_loss`` semantics.
      ignore_index: label value whose examples contribute 0 and are not counted in ``"mean"``. An
        all-ignored batch gives NaN for ``"mean"``, as torch does.
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-example losses of shape ``(...)``).
      from_logits: ``False`` takes probabilities instead of logits (seed 003 ``with_logits=False``):
        :math:`\log p_t` uses :math:`p_t` clipped to the smallest normal float instead of the seed's
        ``p + 1e-8``, and :math:`(1 - p_t)^\gamma` has gradient 0 where :math:`p_t = 1`.
      axis: the class axis (default -1). Any axis is read in place: ``axis=1`` costs no transpose.
      where: ``None`` or a boolean array of the batch shape (optax's convention): an example where
        it is False contributes 0 (``"none"``: 0), is not counted in ``"mean"``, its label is not
        checked, and its logits (even NaN or inf) affect neither the value nor the gradient, which
        is 0 there. Combines with ``ignore_index`` and ``weight``.

    Returns:
      A scalar (``"mean"``, ``"sum"``) or an array of the batch shape (``"none"``), float32 for
      float32/bf16/fp16 logits, float64 for float64 logits.

    Out-of-range labels raise ``ValueError`` when ``labels`` is concrete; under ``jax.jit`` each
    such example's loss is NaN (so a reduced loss is NaN), never a silently wrapped class.

    References:
      Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017. Mirrors ``FocalLoss`` of seeds
      ``000_f8f010a8acf11d4d.txt`` (scalar alpha), ``001_2350445a1936b7c1.txt`` (class weights) and
      ``003_2cd919201b34d348.txt`` (per-class alpha, ``with_logits``).

    Examples:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
      >>> labels = jnp.array([0, 1])
      >>> round(float(focal_loss(logits, labels, gamma=2.0)), 4)
      1.3061
      >>> focal_loss(logits, labels, reduction="none").shape
      (2,)
      >>> round(float(focal_loss(logits.T, labels, axis=0)), 4)  # classes first: the same loss
      1.3061
      >>> round(float(focal_loss(logits, labels, where=jnp.array([True, False]))), 4)
      0.0111
    """
    logits, labels, axis = _validate.logits_and_labels(logits, labels, axis=axis)
    num_classes = logits.shape[axis]
    where = _validate.check_where(where, labels.shape)
    gamma = _validate.hyperparameter("gamma", gamma, low=0.0)
    alpha = _validate.class_vector("alpha", alpha, num_classes, allow_scalar=True)
    weight = _validate.class_vector("weight", weight, num_classes)
    ignore_index = _validate.check_ignore_index(ignore_index)
    reduction = _validate.check_reduction(reduction)
    if not isinstance(from_logits, bool):
        raise TypeError(f"from_logits must be a bool, got {from_logits=!r}")
    _validate.check_labels_in_range(
        _validate.labels_to_check(labels, where), num_classes, ignore_index
    )
    return _focal_loss(
        logits,
        labels,
        gamma,
        alpha,
        weight,
        where,
        axis=axis,
        ignore_index=ignore_index,
        reduction=reduction,
        from_logits=from_logits,
    )


@functools.partial(jax.jit, static_argnames=("axis", "ignore_index", "reduction", "from_logits"))
def _focal_loss(
    logits, labels, gamma, alpha, weight, where, *, axis, ignore_index, reduction, from_logits
):
    dtype = _validate.compute_dtype(logits.dtype)
    view, x, labels, where = _layout.index_inputs(logits.astype(dtype), labels, where, axis)
    gamma = jnp.asarray(gamma, dtype)
    safe, counted, out_of_range = _reduction.mask_labels(
        labels, view.num_classes, ignore_index, where
    )
    if from_logits:
        z_t, lse_o = target_stats(x, safe)
        per_example, example_weight = focal_terms(z_t, lse_o, safe, gamma, alpha, weight)
    else:
        p_t = jnp.sum(jnp.where(_layout.is_target(safe, view.num_classes), x, 0), axis=1)
        log_pt = jnp.log(jnp.maximum(p_t, jnp.finfo(dtype).tiny))
        one_minus = 1 - p_t
        positive = one_minus > 0
        # Double `where`: the gradient of (1 - p)**gamma at 1 - p = 0 is inf for gamma < 1; use 0
        # there. 0**0 = 1 (torch's pow), so gamma = 0 is plain cross-entropy even at p_t = 1.
        modulator = jnp.where(
            positive, jnp.where(positive, one_minus, 1) ** gamma, jnp.where(gamma == 0, 1.0, 0.0)
        )
        per_example, example_weight = _weighted(-modulator * log_pt, safe, alpha, weight)
    out = _reduction.finish(per_example, counted, out_of_range, example_weight, reduction)
    return view.unbatch(out) if reduction == "none" else out


def _weighted(per_example, safe, alpha, weight):
    """``alpha_t * w_t * per_example`` and the example weights ``w_t`` (None without weights)."""
    dtype = per_example.dtype
    if alpha is not None:
        per_example = per_example * (
            alpha.astype(dtype) if alpha.ndim == 0 else alpha.astype(dtype)[safe]
        )
    example_weight = None
    if weight is not None:
        example_weight = weight.astype(dtype)[safe]
        per_example = per_example * example_weight
    return per_example, example_weight


def focal_terms(
    z_t: jax.Array,
    lse_o: jax.Array,
    safe: jax.Array,
    gamma: jax.Array,
    alpha: jax.Array | None,
    weight: jax.Array | None,
) -> tuple[jax.Array, jax.Array | None]:
    """Per-example focal losses from the row statistics, and the example weights ``w_t``.

    ``-alpha_t w_t (1 - p_t)**gamma log p_t`` with both logs exact (`log_probs`); shared by
    `focal_loss` and `jaxloss.linear_focal_loss`. ``safe``: labels in ``[0, C)``.
    """
    log_pt, log1m_pt, _ = log_probs(z_t, lse_o)
    gamma = jnp.asarray(gamma, z_t.dtype)
    modulator = jnp.exp(gamma * log1m_pt)  # log1m_pt is finite, so gamma = 0 gives exactly 1
    return _weighted(-modulator * log_pt, safe, alpha, weight)
