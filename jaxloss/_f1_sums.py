"""The soft counts of the F1 loss in one fused ``jax.custom_vjp``.

For logits viewed as ``(A, C)`` or ``(A, C, B)`` (:mod:`jaxloss._layout`, classes on axis 1) with
softmax probabilities ``p`` and labels ``y``, the F1 loss depends on the logits only through two
class vectors

* ``colsum_c = sum_i p_ic`` (``tp_c + fp_c``), and
* ``tp_c = sum_i p_{i,y_i} [y_i = c]``, each example's target probability summed into its class,

plus the label counts ``n_c = tp_c + fn_c``, which do not depend on the logits. So no one-hot of
shape ``(N, C)`` is ever formed: ``tp`` is a gather of one element per example and a segment sum.

Backward. With cotangents ``a = dL/dcolsum`` and ``b = dL/dtp`` (class vectors), ``dL/dp_ic = a_c +
b_c [c = y_i]`` and, through the softmax, ``dL/dz_ic = p_ic (a_c - k_i) + [c = y_i] p_{i,y_i}
b_{y_i}`` with ``k_i = p_i . a + p_{i,y_i} b_{y_i}``: one row reduction (``p @ a``) and one
elementwise pass, the target term written in place by a scatter of one element per example.

Passes over the ``(N, C)`` data (value and gradient): the softmax (XLA fuses max, exp, sum and the
normalisation into one pass that writes ``p``), the column sums, the row reduction and the
elementwise pass. ``p`` is saved for the backward: recomputing it from the logits (one more read and
two ``exp``) measured slower on XLA:CPU.

Masked examples (``where``): their logits are replaced by 0 before the softmax (one select, only
when ``where`` is given), so a NaN or inf there reaches nothing in any derivative; their
probabilities are multiplied by 0 inside the column-sum reduction and selected away at the target
gather, and their gradient inside the backward's elementwise pass, so it is exactly 0 and the mask
costs no pass over the probabilities beyond the sanitising select (zeroing ``p`` itself would).

The backward is differentiable JAX code of the saved ``p`` (a function of the logits), so reverse
mode works to any order and ``jax.hessian`` too; every intermediate lies in ``[0, 1]`` times the
cotangents. Forward mode of the sums themselves is unavailable (a ``custom_vjp``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxloss import _layout


def _class_sum(rows: jax.Array) -> jax.Array:
    """Sum over every axis but the class axis 1: ``(A, C[, B]) -> (C,)``."""
    return jnp.sum(rows, axis=0 if rows.ndim == 2 else (0, 2))


def _row_dot(rows: jax.Array, v: jax.Array) -> jax.Array:
    """``sum_c rows[:, c(, :)] v_c``: ``(A, C[, B]), (C,) -> (A[, B])``."""
    if rows.ndim == 2:
        return rows @ v
    return jnp.einsum("acb,c->ab", rows, v)


def _forward(x: jax.Array, labels: jax.Array, where: jax.Array | None) -> Any:
    if where is not None:  # a masked row's NaN or inf reaches nothing, in any derivative
        x = jnp.where(_layout.expand(where), x, 0)
    p = jax.nn.softmax(x, axis=1)
    p_target = _layout.take_target(p, labels)
    counted = p
    if where is not None:
        # A product, not a select: it fuses into the column sum (XLA:CPU's fused reductions take no
        # select, which would cost a pass of its own); p is finite there, so masked rows give 0.
        counted = p * _layout.expand(where).astype(p.dtype)
        p_target = jnp.where(where, p_target, 0)
    num_classes = x.shape[1]
    tp = jax.ops.segment_sum(p_target.reshape(-1), labels.reshape(-1), num_segments=num_classes)
    return (tp, _class_sum(counted)), (p, p_target, labels, where)


def _backward(res: Any, g: Any) -> tuple[jax.Array, None, None]:
    p, p_target, labels, where = res
    g_tp, g_colsum = g
    g_target = g_tp[labels] * p_target  # p_{i,y_i} b_{y_i}, one per example (0 where masked)
    k = _row_dot(p, g_colsum) + g_target
    grad = p * (_layout.class_vector(g_colsum, p.ndim) - _layout.expand(k))
    if where is not None:  # fused into the same elementwise pass
        grad = jnp.where(_layout.expand(where), grad, 0)
    at_target = p_target * (g_colsum[labels] - k) + g_target  # 0 where masked: p_target = 0
    return _layout.set_target(grad, labels, at_target), None, None


@jax.custom_vjp
def _sums(x: jax.Array, labels: jax.Array, where: jax.Array | None) -> Any:
    return _forward(x, labels, where)[0]


_sums.defvjp(_forward, _backward)


def soft_counts(
    x: jax.Array, labels: jax.Array, where: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """``(tp, colsum)``, each of shape ``(C,)``, of softmax(``x``) over axis 1.

    Args:
      x: float rows ``(A, C)`` or ``(A, C, B)`` in the compute dtype.
      labels: int32 ``(A,)`` / ``(A, B)`` in ``[0, C)`` (callers sanitise labels first).
      where: ``None`` or a bool ``(A,)`` / ``(A, B)``; examples where it is False count nothing.

    >>> tp, colsum = soft_counts(jnp.array([[0.0, 0.0], [0.0, 0.0]]), jnp.array([0, 0]), None)
    >>> tp.tolist(), colsum.tolist()
    ([1.0, 0.0], [1.0, 1.0])
    """
    return _sums(x, labels, where)
