"""Classifier head and loss in one pass: the losses of ``features @ kernel + bias``, no logits.

`jaxloss._linear_stats` computes the row statistics every softmax loss here is built from in
chunks of the class axis; the per-example formulas are the logits forms' own
(`jaxloss._focal.focal_terms`, `jaxloss._smoothing.cross_entropy_terms`), so the semantics,
defaults, validation and numerics are theirs.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxloss import _reduction, _validate
from jaxloss._focal import focal_terms
from jaxloss._linear_stats import linear_target_stats
from jaxloss._smoothing import (
    SPREADS,
    _is_probabilities,
    _smooth,
    cross_entropy_terms,
    smoothing_vector,
)

CHUNK_SIZE = 8192
"""Classes per chunk by default: ``(N, 8192)`` float32 is 128 MiB at ``N = 4096``."""


def _check_head(
    features: Any, kernel: Any, bias: Any, labels: Any, where: Any, chunk_size: Any
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array, Any, int]:
    """Validates the head's arguments; ``(x (A, D), kernel, bias, labels (A,), where, dtype)``."""
    features = _validate.as_float_array("features", features)
    kernel = _validate.as_float_array("kernel", kernel)
    if features.ndim < 1:
        raise ValueError(f"features must have shape (..., D), got features.shape={features.shape}")
    if kernel.ndim != 2 or kernel.shape[0] != features.shape[-1] or kernel.shape[1] < 2:
        raise ValueError(
            f"kernel must have shape (D, C) with D = features.shape[-1] = {features.shape[-1]} "
            f"and C >= 2 (a torch Linear.weight (C, D) is passed as weight.T), got "
            f"kernel.shape={kernel.shape}"
        )
    num_classes = kernel.shape[1]
    if bias is not None:
        bias = _validate.as_float_array("bias", bias)
        if bias.shape != (num_classes,):
            raise ValueError(
                f"bias must have shape ({num_classes},) to match kernel.shape={kernel.shape}, "
                f"got bias.shape={bias.shape}"
            )
    labels = _validate.as_label_array("labels", labels)
    batch_shape = features.shape[:-1]
    if labels.shape != batch_shape:
        raise ValueError(
            f"labels.shape must equal features.shape[:-1] = {batch_shape}, got "
            f"labels.shape={labels.shape}"
        )
    where = _validate.check_where(where, batch_shape)
    chunk_size = CHUNK_SIZE if chunk_size is None else chunk_size
    chunk_size = _validate.check_int("chunk_size", chunk_size, minimum=1)
    return features, kernel, bias, labels, where, chunk_size


def _check_loss(
    labels: jax.Array,
    where: Any,
    num_classes: int,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
) -> tuple[jax.Array | None, int | None, str]:
    """The checks every fused loss shares after `_check_head`.

    Returns ``(weight, ignore_index, reduction)``; concrete labels (those ``where`` selects) must
    be in range.
    """
    weight = _validate.class_vector("weight", weight, num_classes)
    ignore_index = _validate.check_ignore_index(ignore_index)
    reduction = _validate.check_reduction(reduction)
    _validate.check_labels_in_range(
        _validate.labels_to_check(labels, where), num_classes, ignore_index
    )
    return weight, ignore_index, reduction


def _rows(features, kernel, bias, labels, where):
    """The compute-dtype rows ``(A, D)``, kernel, bias, ``(A,)`` labels and mask."""
    dtype = _validate.compute_dtype(jnp.result_type(features.dtype, kernel.dtype))
    x = features.astype(dtype).reshape(-1, features.shape[-1])
    labels = labels.reshape(-1)
    if where is not None:
        where = where.reshape(-1)
        x = jnp.where(where[:, None], x, 0)  # a masked example's features never reach a result
    b = jnp.zeros(kernel.shape[1], dtype) if bias is None else bias.astype(dtype)
    return x, kernel.astype(dtype), b, labels, where


def linear_focal_loss(
    features: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    gamma: float = 2.0,
    alpha: jax.typing.ArrayLike | None = None,
    weight: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    where: jax.typing.ArrayLike | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    r"""``focal_loss(features @ kernel + bias, labels, ...)`` without materialising the logits.

    .. math::
       \ell_i = -\alpha_{y_i} w_{y_i} (1 - p_{i,y_i})^\gamma \log p_{i,y_i},
       \qquad p_i = \operatorname{softmax}(x_i W + b)

    The same semantics, defaults and numerics as `jaxloss.focal_loss` (exact :math:`\log p_t` and
    :math:`\log(1 - p_t)`, finite gradients at saturation, torch's weighted mean); the head's
    matrix product is computed in chunks of ``chunk_size`` classes inside a ``jax.custom_vjp``
    with an online log-sum-exp, so no ``(N, C)`` array exists in the forward or the backward.
    Gradients flow to ``features``, ``kernel`` and ``bias``.

    Shapes: ``features (..., D)``, ``kernel (D, C)`` (Flax's ``nnx.Linear`` layout; pass a torch
    ``Linear.weight (C, D)`` as ``weight.T``), ``bias (C,)`` or None, ``labels`` of the batch shape
    ``features.shape[:-1]``.

    Args:
      features: float ``(..., D)``; bf16/fp16 (and the kernel) compute in float32.
      kernel: float ``(D, C)``, ``C >= 2``.
      labels: integer array of the batch shape, values in ``[0, C)`` or ``ignore_index``.
      bias: ``None`` or ``(C,)``.
      gamma: focusing parameter ``>= 0`` (a Python float or a traced scalar).
      alpha: ``None``, a scalar or a ``(C,)`` array gathered by label.
      weight: ``None`` or ``(C,)`` class weights with torch NLL semantics.
      ignore_index: label value whose examples contribute 0 and are not counted.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.
      where: ``None`` or a boolean array of the batch shape: a masked example contributes 0, is not
        counted, and its features (even NaN) reach neither the value nor any gradient.
      chunk_size: classes per chunk (default `CHUNK_SIZE`); when ``C <= chunk_size`` the forward
        keeps its one chunk's softmax for the backward (the logits form's memory and speed).

    Returns:
      A scalar, or per-example losses of the batch shape (``"none"``); float32 (float64 for
      float64 features or kernel).

    References:
      Mirrors ``FocalLoss`` of seeds 000, 001 and 003 applied to ``F.linear(x, W, b)``; the chunked
      head after Liger-Kernel's fused linear cross-entropy and Wijmans et al., "Cut Your Losses in
      Large-Vocabulary Language Models" (2024).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxloss import focal_loss
      >>> x = jnp.array([[1.0, 2.0], [0.5, -1.0]])
      >>> w = jnp.array([[0.0, 1.0, 0.5], [1.0, 0.0, -1.0]])
      >>> y = jnp.array([0, 2])
      >>> round(float(linear_focal_loss(x, w, y, chunk_size=2)), 5)
      0.04416
      >>> round(float(focal_loss(x @ w, y)), 5)
      0.04416
    """
    features, kernel, bias, labels, where, chunk_size = _check_head(
        features, kernel, bias, labels, where, chunk_size
    )
    num_classes = kernel.shape[1]
    gamma = _validate.hyperparameter("gamma", gamma, low=0.0)
    alpha = _validate.class_vector("alpha", alpha, num_classes, allow_scalar=True)
    weight, ignore_index, reduction = _check_loss(
        labels, where, num_classes, weight, ignore_index, reduction
    )
    return _linear_focal(
        features, kernel, bias, labels, gamma, alpha, weight, where,
        ignore_index=ignore_index, reduction=reduction, chunk_size=chunk_size,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("ignore_index", "reduction", "chunk_size"))
def _linear_focal(
    features, kernel, bias, labels, gamma, alpha, weight, where, *, ignore_index, reduction,
    chunk_size,
):  # fmt: skip
    batch_shape = labels.shape
    x, w, b, labels, where = _rows(features, kernel, bias, labels, where)
    safe, counted, out_of_range = _reduction.mask_labels(labels, w.shape[1], ignore_index, where)
    z_t, lse_o, _ = linear_target_stats(x, w, b, safe, None, chunk_size=chunk_size)
    per_example, example_weight = focal_terms(z_t, lse_o, safe, gamma, alpha, weight)
    out = _reduction.finish(per_example, counted, out_of_range, example_weight, reduction)
    return out.reshape(batch_shape) if reduction == "none" else out


def linear_cross_entropy(
    features: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    weight: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    where: jax.typing.ArrayLike | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    r"""``cross_entropy(features @ kernel + bias, labels, ...)`` without materialising the logits.

    .. math::
       \ell_i = (1 - \varepsilon)\, w_{y_i} (-\log p_{i,y_i})
                + \frac{\varepsilon}{C} \sum_j w_j (-\log p_{i,j})

    torch's ``F.cross_entropy(F.linear(x, W, b), y, weight, ignore_index=..., label_smoothing=...)``
    for class indices: ``"mean"`` divides by :math:`\sum_i w_{y_i}` over counted examples, the
    smoothing term included. The smoothing sum :math:`\sum_j w_j z_j = x (W w) + b \cdot w` is one
    matrix-vector product. Chunking, gradients and numerics as in `linear_focal_loss`.

    Shapes: ``features (..., D)``, ``kernel (D, C)`` (Flax's ``nnx.Linear`` layout; pass a torch
    ``Linear.weight (C, D)`` as ``weight.T``), ``bias (C,)`` or None, ``labels`` of the batch shape
    ``features.shape[:-1]``.

    Args:
      features: float ``(..., D)``; bf16/fp16 compute in float32.
      kernel: float ``(D, C)``, ``C >= 2``.
      labels: integer array of the batch shape, values in ``[0, C)`` or ``ignore_index``.
      bias: ``None`` or ``(C,)``.
      weight: ``None`` or ``(C,)`` class weights.
      ignore_index: label value to ignore.
      label_smoothing: :math:`\varepsilon` in [0, 1), spread as :math:`\varepsilon / C`.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.
      where: ``None`` or a boolean array of the batch shape (as in `linear_focal_loss`).
      chunk_size: classes per chunk (default `CHUNK_SIZE`).

    Returns:
      A scalar, or per-example losses of the batch shape; float32 (float64 for float64 input).

    References:
      ``torch.nn.functional.cross_entropy`` of ``torch.nn.functional.linear``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxloss import cross_entropy
      >>> x = jnp.array([[1.0, 2.0], [0.5, -1.0]])
      >>> w = jnp.array([[0.0, 1.0, 0.5], [1.0, 0.0, -1.0]])
      >>> y = jnp.array([0, 2])
      >>> round(float(linear_cross_entropy(x, w, y, label_smoothing=0.1, chunk_size=2)), 5)
      0.52055
      >>> round(float(cross_entropy(x @ w, y, label_smoothing=0.1)), 5)
      0.52055
    """
    label_smoothing = _validate.hyperparameter(
        "label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True
    )
    return _ce_dispatch(
        features, kernel, labels, bias, weight, ignore_index, label_smoothing, reduction, where,
        chunk_size,
    )  # fmt: skip


def linear_label_smoothing_loss(
    features: jax.typing.ArrayLike,
    kernel: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    smoothing: float = 0.0,
    spread: str = "others",
    weight: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
    where: jax.typing.ArrayLike | None = None,
    chunk_size: int | None = None,
) -> jax.Array:
    r"""``label_smoothing_loss(features @ kernel + bias, labels, ...)``, no logits materialised.

    The seeds' ``LabelSmoothingLoss`` (``spread="others"``: :math:`1 - \varepsilon` on the target,
    :math:`\varepsilon / (C - 1)` on every other class) or torch's (``spread="uniform"``), exactly
    as `jaxloss.label_smoothing_loss`; chunking, gradients and numerics as in
    `linear_focal_loss`.

    Shapes: ``features (..., D)``, ``kernel (D, C)`` (Flax's ``nnx.Linear`` layout; pass a torch
    ``Linear.weight (C, D)`` as ``weight.T``), ``bias (C,)`` or None, ``labels`` of the batch shape
    ``features.shape[:-1]``.

    Args:
      features: float ``(..., D)``; bf16/fp16 compute in float32.
      kernel: float ``(D, C)``, ``C >= 2``.
      labels: integer array of the batch shape, values in ``[0, C)`` or ``ignore_index``.
      bias: ``None`` or ``(C,)``.
      smoothing: :math:`\varepsilon` in [0, 1).
      spread: ``"others"`` (the seeds) or ``"uniform"`` (torch).
      weight: ``None`` or ``(C,)`` class weights (torch semantics).
      ignore_index: label value to ignore.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``.
      where: ``None`` or a boolean array of the batch shape (as in `linear_focal_loss`).
      chunk_size: classes per chunk (default `CHUNK_SIZE`).

    Returns:
      A scalar, or per-example losses of the batch shape; float32 (float64 for float64 input).

    References:
      ``LabelSmoothingLoss`` of seeds 001, 002 and 004 applied to ``F.linear(x, W, b)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxloss import label_smoothing_loss
      >>> x = jnp.array([[1.0, 2.0], [0.5, -1.0]])
      >>> w = jnp.array([[0.0, 1.0, 0.5], [1.0, 0.0, -1.0]])
      >>> y = jnp.array([0, 2])
      >>> round(float(linear_label_smoothing_loss(x, w, y, smoothing=0.1, chunk_size=2)), 5)
      0.58305
      >>> round(float(label_smoothing_loss(x @ w, y, smoothing=0.1)), 5)
      0.58305
    """
    if spread not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, got {spread=}")
    smoothing = _validate.hyperparameter("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
    if spread == "others":
        kernel_ = _validate.as_float_array("kernel", kernel)
        if kernel_.ndim == 2 and kernel_.shape[1] >= 2:  # else _check_head names the error
            num_classes = kernel_.shape[1]
            smoothing = smoothing * num_classes / (num_classes - 1)
    return _ce_dispatch(
        features, kernel, labels, bias, weight, ignore_index, smoothing, reduction, where,
        chunk_size,
    )  # fmt: skip


def _ce_dispatch(
    features, kernel, labels, bias, weight, ignore_index, smoothing, reduction, where, chunk_size
):  # fmt: skip
    if _is_probabilities(labels):
        raise _validate.ArgumentTypeError(
            "labels must be integer class indices: the fused head takes no probability targets "
            "(compute the logits and call cross_entropy for those)"
        )
    features, kernel, bias, labels, where, chunk_size = _check_head(
        features, kernel, bias, labels, where, chunk_size
    )
    weight, ignore_index, reduction = _check_loss(
        labels, where, kernel.shape[1], weight, ignore_index, reduction
    )
    return _linear_ce(
        features, kernel, bias, labels, weight, smoothing, where,
        ignore_index=ignore_index, reduction=reduction, smooth=_smooth(smoothing),
        chunk_size=chunk_size,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnames=("ignore_index", "reduction", "smooth", "chunk_size"))
def _linear_ce(
    features, kernel, bias, labels, weight, smoothing, where, *, ignore_index, reduction, smooth,
    chunk_size,
):  # fmt: skip
    batch_shape = labels.shape
    x, w, b, labels, where = _rows(features, kernel, bias, labels, where)
    num_classes = w.shape[1]
    safe, counted, out_of_range = _reduction.mask_labels(labels, num_classes, ignore_index, where)
    class_weight = smoothing_vector(weight, num_classes, x.dtype) if smooth else None
    z_t, lse_o, z_dot_w = linear_target_stats(x, w, b, safe, class_weight, chunk_size=chunk_size)
    per_example, example_weight = cross_entropy_terms(
        z_t, lse_o, z_dot_w, safe, weight, class_weight, smoothing, num_classes
    )
    out = _reduction.finish(per_example, counted, out_of_range, example_weight, reduction)
    return out.reshape(batch_shape) if reduction == "none" else out
