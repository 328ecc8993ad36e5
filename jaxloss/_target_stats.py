"""The per-row statistics every softmax loss here is built from.

For logits ``z`` of shape ``(..., C)`` and a target class ``t`` per row, all softmax losses in this
package depend on ``z`` only through

* ``z_t``, the target logit, and
* ``lse_o = logsumexp_{j != t} z_j``, the log-sum-exp over the *other* classes,
* (label smoothing only) ``sum_j v_j z_j`` for a class vector ``v`` (ones, or the class weights).

With ``d = lse_o - z_t``: ``log p_t = -softplus(d)``, ``log(1 - p_t) = -softplus(-d)`` and
``logsumexp(z) = z_t + softplus(d)``. Both logs are exact for every finite ``d``: ``1 - p_t`` is
never formed by subtraction, which is where the reference modules lose precision and their gradients
turn NaN (``(1 - p)**gamma`` with ``p == 1`` in floating point).

How it is computed (the fusion). ``target_stats`` is a ``jax.custom_vjp`` whose passes over the
``(N, C)`` array are, on the fast path:

1. forward, one elementwise pass: ``e = exp(min(z - z_t, clamp))``, then ``e[t] = 0`` by an
   in-place scatter of ``N`` elements (no one-hot, no ``iota == label`` mask: on XLA:CPU such a mask
   costs more than the ``exp``). The shift is the *target* logit, gathered for free, so
   ``s_o = sum_j e_j = (1 - p_t) / p_t`` exactly, ``lse_o = z_t + log(s_o)``, no max pass is needed,
   and the target's term is removed exactly instead of subtracted.
2. forward, one row reduction: ``s_o = sum(e)`` (and ``z @ v`` for label smoothing).
3. backward, one elementwise pass: ``grad = e * (g_o / s_o) [+ g_s * v]``, then ``grad[t] = g_t``
   in place. ``e`` is saved, so the backward needs no second ``exp``; the price is memory: the
   residuals are the logits (for the exact path) and ``e``, one ``(N, C)`` array more than before.

The shift ``z_t`` fails only when a row is saturated: another logit exceeds ``z_t`` by more than
``clamp`` (``exp`` would overflow; float32, C=1000: about 80) or the others are so far below ``z_t``
that ``s_o`` underflows (margin above about 64). Both are detected from ``s_o`` (one comparison per
row), and then a ``lax.cond`` recomputes the whole batch with the exact two-pass method (max of the
other logits, then ``exp`` and sum; the backward from the saved logits), so the result is exact for
every finite input; only the speed differs. Under ``vmap`` the ``cond`` becomes a ``select`` and
both paths run.

Residuals and higher derivatives. The forward saves ``(x, labels, v, e, m, s, fast)``: the logits,
``e``, the row statistics ``(m, s)`` with ``lse_o = m + log(s)`` (``m = z_t`` on the fast path, the
exact max of the others on the exact one) and the path flag. The backward is differentiable JAX
code, so reverse mode works to any order and ``jax.hessian`` (forward over reverse) works too;
forward mode of the loss itself (``jax.jvp``, ``jax.jacfwd``) is not available (a ``custom_vjp``).
The two pieces that higher orders differentiate are ``jax.custom_jvp`` functions whose values use
the residuals and whose derivatives never do: ``_others_grad`` (the backward's
``g_o * softmax_others``) and ``_lse_from`` (the forward's ``lse_o``) both take their derivatives
from ``_softmax_others``, the two-pass softmax of the other classes, every intermediate in [0, C].
Autodiff of ``e / s`` or ``log(s)`` instead would form ``1 / s**2`` and ``1 / s**3``, which overflow
where ``s`` is small (margins above about 29 in float32). ``log p_t`` and ``log(1 - p_t)`` use
``jaxloss._stable.softplus``, whose derivatives of every order are products of sigmoids.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss import _layout
from jaxloss._layout import expand
from jaxloss._stable import softplus


def _fast_path_limits(dtype: Any, num_classes: int) -> tuple[float, float, float]:
    """``(clamp, lo, hi)``: the exponent clamp and the range of ``s_o`` of the exact fast path.

    ``clamp`` keeps ``C * exp(clamp)`` finite. Any clamped term alone makes ``s_o >= exp(clamp) =
    hi``. Terms that underflow are each below ``tiny``; ``s_o >= lo = 2 (C - 1) tiny / eps`` bounds
    what they could have added by half an ulp of ``s_o``.
    """
    info = jnp.finfo(dtype)
    clamp = math.log(float(info.max)) - math.log(num_classes) - 1.0
    return clamp, 2.0 * (num_classes - 1) * float(info.tiny) / float(info.eps), math.exp(clamp)


def _exact_sum_others(x: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Two passes: ``m_o = max`` of the others, then ``sum_{j != t} exp(z_j - m_o)`` (in [1, C))."""
    others = jnp.where(_layout.is_target(labels, x.shape[1]), -jnp.inf, x)
    # With C >= 2 every row has at least one finite "other" logit, so m_o is finite and the sum >=
    # 1.
    m_o = lax.stop_gradient(jnp.max(others, axis=1))
    return m_o, jnp.sum(jnp.exp(others - expand(m_o)), axis=1)


def _softmax_others(x: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax over the classes other than the target (0 at the target), by the two-pass method.

    Used for derivatives of the gradient only (Hessians, higher orders): every intermediate is in
    [0, C], so autodiff of it to any order never forms ``0 * inf``.
    """
    others = jnp.where(_layout.is_target(labels, x.shape[1]), -jnp.inf, x)
    m_o = lax.stop_gradient(jnp.max(others, axis=1, keepdims=True))
    e = jnp.exp(others - m_o)
    return e / jnp.sum(e, axis=1, keepdims=True)


@jax.custom_jvp
def _others_grad(x, g_o, labels, e, m, s, fast, g_s, v):
    """``g_o * softmax_others(x) [+ g_s v]``, from the forward's residuals.

    ``e * (g_o / s)`` on the fast path, ``exp(z - m_o) * (g_o / s)`` on the exact one (``m_o`` is
    the exact max of the others, so no rounding of ``lse_o`` enters and the gradient is exact to a
    few ulps at any scale). With label smoothing (``v`` not ``None``) the gradient of ``z . v``,
    ``g_s v``, is added inside each branch, in the same elementwise pass (added after the ``cond``
    it was one more read and write of the ``(N, C)`` gradient: 12 % of the smoothed loss).

    The value is a function of ``x``, ``g_o``, ``g_s`` and ``v`` only; ``e``, ``m``, ``s`` and
    ``fast`` are the forward's residuals. Its derivatives (second and higher order of the loss)
    come from :func:`_softmax_others` instead: autodiff of ``e / s`` with ``s`` as small as
    ``exp(-87)`` (the fast path at margins above about 44 in float32) forms ``1 / s**2`` and turns
    into NaN.
    """
    g_over_s = expand(g_o / s)

    def plus_smoothing(grad):
        if v is None:
            return grad
        return grad + expand(g_s) * _layout.class_vector(v, x.ndim)

    def exact():
        is_target = _layout.is_target(labels, x.shape[1])
        return plus_smoothing(jnp.exp(jnp.where(is_target, -jnp.inf, x) - expand(m)) * g_over_s)

    return lax.cond(fast, lambda: plus_smoothing(e * g_over_s), exact)


@_others_grad.defjvp
def _others_grad_jvp(primals, tangents):
    x, g_o, labels = primals[:3]
    g_s, v = primals[7:]
    dx, dg_o = tangents[:2]  # the residuals' tangents are implied by dx: ignored
    _, d_out = jax.jvp(lambda z, g: expand(g) * _softmax_others(z, labels), (x, g_o), (dx, dg_o))
    if v is not None:
        dg_s, dv = tangents[7:]
        _, d_smooth = jax.jvp(
            lambda g, w: expand(g) * _layout.class_vector(w, x.ndim), (g_s, v), (dg_s, dv)
        )
        d_out = d_out + d_smooth
    return _others_grad(*primals), d_out


@jax.custom_jvp
def _lse_from(x, labels, m, s):
    """``lse_o = m + log(s)`` from the forward's row statistics, a function of ``x`` only.

    Higher-order derivatives of the loss differentiate the forward too (the cotangent of ``lse_o``
    depends on ``lse_o``); autodiff of ``log(s)`` forms ``1 / s**2`` and ``1 / s**3``, which
    overflow where ``s`` is small (fast path, margins above about 29 in float32). The derivative is
    taken from :func:`_softmax_others` instead: ``d lse_o = sum_j softmax_others_j dz_j``.
    """
    return m + jnp.log(s)


@_lse_from.defjvp
def _lse_from_jvp(primals, tangents):
    x, labels = primals[:2]
    d_lse = jnp.sum(_softmax_others(x, labels) * tangents[0], axis=1)
    return _lse_from(*primals), d_lse


def _dot_classes(x: jax.Array, v: jax.Array) -> jax.Array:
    """``sum_j v_j z_j`` per example: ``x @ v`` for ``(A, C)`` rows, else over axis 1."""
    return x @ v if x.ndim == 2 else jnp.einsum("acb,c->ab", x, v)


def _forward(x, labels, v):
    """``(z_t, lse_o, z @ v or None)`` on rows ``(A, C[, B])``, and the backward's residuals."""
    x = jnp.asarray(x)
    z_t = _layout.take_target(x, labels)  # a gather of one element per example
    clamp, lo, hi = _fast_path_limits(x.dtype, x.shape[1])
    # Shift by the target logit: s_o = sum_{j != t} exp(z_j - z_t) = (1 - p_t) / p_t. The shift is a
    # constant to autodiff (higher-order gradients differentiate this forward), so it must be added
    # back as the same constant: lse_o = shift + log(s_o) is then shift-invariant, as it should be.
    shift = lax.stop_gradient(z_t)
    e = jnp.exp(jnp.minimum(x - expand(shift), clamp))
    e = _layout.set_target(e, labels, jnp.zeros_like(z_t))
    s_o = jnp.sum(e, axis=1)
    fast = jnp.all((s_o >= lo) & (s_o < hi))  # false for NaN too
    # Both paths give (m, s) with lse_o = m + log(s) and softmax of the others exp(z_j - m) / s;
    # m is a constant to autodiff (the softmax is invariant to it).
    m, s = lax.cond(fast, lambda: (shift, s_o), lambda: _exact_sum_others(x, labels))
    lse_o = _lse_from(x, labels, m, s)
    dot = None if v is None else _dot_classes(x, v)
    return (z_t, lse_o, dot), (x, labels, v, e, m, s, fast)


def _backward(res, g):
    x, labels, v, e, m, s, fast = res
    g_t, g_o, g_s = g
    if v is not None:  # d(z @ v)/dz_j = v_j, added in the same pass
        g_t = g_t + g_s * v[labels]
    grad = _others_grad(x, g_o, labels, e, m, s, fast, g_s if v is not None else None, v)
    grad = _layout.set_target(grad, labels, g_t)
    grad_v = None
    if v is not None:
        grad_v = g_s @ x if x.ndim == 2 else jnp.einsum("ab,acb->c", g_s, x)
    return grad, grad_v


@jax.custom_vjp
def _stats(x: jax.Array, labels: jax.Array, v: jax.Array | None) -> Any:
    return _forward(x, labels, v)[0]


def _stats_fwd(x, labels, v):
    return _forward(x, labels, v)


def _stats_bwd(res, g):
    g_t, g_o, g_s = g
    grad, grad_v = _backward(res, (g_t, g_o, g_s))
    return grad, None, grad_v


_stats.defvjp(_stats_fwd, _stats_bwd)


def target_stats(rows: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(z_t, lse_o)``, each of ``labels.shape``, in ``rows.dtype``.

    Args:
      rows: float logits viewed as ``(A, C)`` or ``(A, C, B)`` (``jaxloss._layout``), ``C >= 2``.
      labels: int array ``(A,)`` or ``(A, B)`` with values in ``[0, C)`` (callers sanitise labels
        first).

    >>> z_t, lse_o = target_stats(jnp.array([[0.0, 1.0, 2.0]]), jnp.array([2]))
    >>> float(z_t[0]), round(float(lse_o[0]), 4)
    (2.0, 1.3133)
    >>> z_t, lse_o = target_stats(jnp.array([[[0.0], [1.0], [2.0]]]), jnp.array([[2]]))
    >>> round(float(lse_o[0, 0]), 4)
    1.3133
    """
    z_t, lse_o, _ = _stats(rows, labels, None)
    return z_t, lse_o


def target_stats_dot(
    rows: jax.Array, labels: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(z_t, lse_o, sum_j v_j z_j)``: ``target_stats`` plus one class reduction, for smoothing.

    ``sum_j v_j (-log p_j) = lse * sum(v) - z . v``; its gradient ``g * v`` is added inside the
    same backward pass.

    >>> z_t, lse_o, s = target_stats_dot(jnp.array([[0.0, 1.0, 2.0]]), jnp.array([2]), jnp.ones(3))
    >>> float(s[0])
    3.0
    """
    return _stats(rows, labels, v.astype(rows.dtype))


def log_probs(z_t: jax.Array, lse_o: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(log p_t, log(1 - p_t), logsumexp(z))`` from the row statistics, all exact."""
    d = lse_o - z_t
    return -softplus(d), -softplus(-d), z_t + softplus(d)
