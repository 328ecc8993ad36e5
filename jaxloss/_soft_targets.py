r"""Cross-entropy with probability targets: ``torch.nn.functional.cross_entropy``'s second form.

For logits ``z`` and float targets ``t`` of the same shape (classes on ``axis``), torch computes

.. math::
   t'_{ic} = (1 - \varepsilon)\, t_{ic} + \varepsilon / C, \qquad
   \ell_i = -\sum_c w_c\, t'_{ic} \log p_{ic}

and ``"mean"`` divides the sum by the number of examples, **not** by a sum of weights (the index
form's rule): ``aten/src/ATen/native/LossNLL.cpp``, ``cross_entropy_loss_prob_target``. Here the
mean counts the examples ``where`` selects.

Computed per example from one shifted row ``y = z - max(z)``: ``s = sum exp(y)``, then
``\ell = sum_c w_c t'_c (\log s - y_c)``, each factor exact (``y <= 0``, ``s`` in ``[1, C]``); no
``log_softmax`` of shape ``(..., C)`` is stored, and autodiff of these few lines is the backward
``g (sum(w t') softmax(z) - w t')`` (derivatives in the targets too: ``g w_c (1 - eps) (log s -
y_c)``). The max is a constant to autodiff (the loss does
not depend on it), so derivatives of every order, forward mode included, are finite.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxloss import _layout, _validate


def check_targets(
    targets: jax.Array, logits_shape: tuple[int, ...], axis: int, where: jax.Array | None
) -> None:
    """Concrete targets: of the logits' shape, in [0, 1], each counted row summing to 1."""
    if targets.shape != tuple(logits_shape):
        raise ValueError(
            f"probability targets must have the logits' shape {tuple(logits_shape)}, got "
            f"targets.shape={targets.shape}"
        )
    if not (_validate.is_concrete(targets) and (where is None or _validate.is_concrete(where))):
        return
    host = np.moveaxis(np.asarray(targets, np.float64), axis, -1)
    if where is not None:
        host = host[np.asarray(where)]
    if host.size == 0:
        return
    if not np.isfinite(host).all() or (host < 0).any() or (host > 1).any():
        raise ValueError("probability targets must lie in [0, 1], got values outside it")
    eps = float(jnp.finfo(targets.dtype).eps)
    tol = max(eps**0.5, host.shape[-1] * eps)
    sums = host.sum(axis=-1)
    bad = np.abs(sums - 1) > tol
    if bad.any():
        raise ValueError(
            f"probability targets must sum to 1 over the class axis {axis} (within {tol:.1e}), "
            f"got {int(bad.sum())} examples that do not, e.g. sums {sums[bad][:3].tolist()}"
        )


@functools.partial(jax.jit, static_argnames=("axis", "smooth", "reduction"))
def soft_cross_entropy(logits, targets, weight, smoothing, where, *, axis, smooth, reduction):
    """The loss; arguments checked by the caller (``cross_entropy``)."""
    dtype = _validate.compute_dtype(jnp.promote_types(logits.dtype, targets.dtype))
    view = _layout.layout(logits.shape, axis)
    x = view.rows(logits.astype(dtype))
    t = view.rows(targets.astype(dtype))
    counted = None
    if where is not None:
        counted = view.batch_rows(where)
        keep = _layout.expand(counted)
        x, t = jnp.where(keep, x, 0), jnp.where(keep, t, 0)
    # Traced targets are not checked: an example with a target outside [0, 1] (or NaN) gives NaN.
    # One row reduction (|t - 1/2| <= 1/2, false for NaN); a NaN select on t itself measured 2.7x
    # slower (it stops XLA from fusing t into the loss's reduction).
    bad = ~(jnp.max(jnp.abs(t - 0.5), axis=1) <= 0.5)
    if smooth:
        smoothing = jnp.asarray(smoothing, dtype)
        t = (1 - smoothing) * t + smoothing / view.num_classes
    if weight is not None:
        t = t * _layout.class_vector(weight.astype(dtype), x.ndim)
    m = lax.stop_gradient(jnp.max(x, axis=1, keepdims=True))
    y = x - m
    log_s = jnp.log(jnp.sum(jnp.exp(y), axis=1, keepdims=True))
    # One class reduction of t * (-log p) = t * (log s - y), each factor exact: three row
    # reductions in all (max, sum of exp, this), as log_softmax's own; no (..., C) log p stored.
    per_example = jnp.where(bad, jnp.nan, jnp.sum(t * (log_s - y), axis=1))
    if counted is not None:
        per_example = jnp.where(counted, per_example, 0)
    if reduction == "none":
        return view.unbatch(per_example)
    total = jnp.sum(per_example)
    if reduction == "sum":
        return total
    count = per_example.size if counted is None else jnp.sum(counted)
    return total / jnp.asarray(count, dtype)
