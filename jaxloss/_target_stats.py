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

How it is computed (the fusion). ``target_stats`` is a ``jax.custom_jvp`` whose tangent is linear:
``(dz_t, d lse_o, d(z . v)) = (dz[t], sum_j P_j dz_j, dz . v + z . dv)`` with ``P`` the softmax of
the other classes. Reverse mode is its transpose (``grad = g_o P + g_s v``, ``g_t`` scattered onto
the target), forward mode (``jax.jvp``, ``jax.jacfwd``) the rule itself. Under ``jit`` the passes
over the ``(N, C)`` array are, on the fast path:

1. forward, one elementwise pass: ``e = exp(min(z - z_t, clamp))``, then ``e[t] = 0`` by an
   in-place scatter of ``N`` elements (no one-hot, no ``iota == label`` mask: on XLA:CPU such a mask
   costs more than the ``exp``). The shift is the *target* logit, gathered for free, so
   ``s_o = sum_j e_j = (1 - p_t) / p_t`` exactly, ``lse_o = z_t + log(s_o)``, no max pass is needed,
   and the target's term is removed exactly instead of subtracted.
2. forward, one row reduction: ``s_o = sum(e)`` (and ``z @ v`` for label smoothing).
3. backward, one elementwise pass: ``grad = e * (g_o / s_o) [+ g_s * v]`` (XLA fuses ``P = e / s``
   into it), then ``grad[t] = g_t`` in place. ``e`` is the one ``(N, C)`` residual, so the backward
   needs no second ``exp``.

The shift ``z_t`` fails only when a row is saturated: another logit exceeds ``z_t`` by more than
``clamp`` (``exp`` would overflow; float32, C=1000: about 80) or the others are so far below ``z_t``
that ``s_o`` underflows (margin above about 64). Both are detected from ``s_o`` (one comparison per
row), and then the whole batch is recomputed with the exact two-pass method (max of the other
logits, then ``exp`` and sum), so the result is exact for every finite input; only the speed
differs. For the value alone that is a ``lax.cond`` on the row statistics; when a derivative is
taken, a ``lax.while_loop`` that runs once or never rewrites ``e`` in place (a ``cond`` branch that
passes ``e`` through makes XLA:CPU copy it: 25 % on every step). Under ``vmap`` both paths run.

Higher derivatives. Every derivative of the rule differentiates the forward above; the two pieces
of it that depend on the row sum are ``jax.custom_jvp`` functions whose values use the residuals
and whose derivatives never do: ``_softmax_from`` (``P = e / s``) and ``_lse_from`` (``lse_o = m +
log(s)``) both take their derivatives from ``_softmax_others``, the two-pass softmax of the other
classes, every intermediate in [0, C]. Autodiff of ``e / s`` or ``log(s)`` instead would form
``1 / s**2`` and ``1 / s**3``, which overflow where ``s`` is small (margins above about 29 in
float32). ``log p_t`` and ``log(1 - p_t)`` use ``jaxloss._stable.softplus``, whose derivatives of
every order are products of sigmoids. So reverse mode to any order, ``jax.hessian``, and forward
over forward all work.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxloss import _layout
from jaxloss._layout import expand
from jaxloss._stable import softplus


def _fast_path_limits(dtype: Any, num_classes: int) -> tuple[float, float, float]:
    """``(clamp, lo, hi)``: the exponent clamp and the range of ``s_o`` of the exact fast path.

    ``clamp`` keeps ``C * exp(clamp)`` finite. Any clamped term alone makes ``s_o >= hi =
    exp(clamp - 1)``: ``hi`` is a factor ``e`` below the clamped term, because ``exp(clamp)``
    evaluated in the logits' dtype rounds below ``exp(clamp)`` in float64 (float32, C = 12: by 2
    ulps), and with ``hi = exp(clamp)`` a row with one clamped term took the fast path and
    returned the clamp instead of the loss (float64 too, at C = 2 and 1000). Rows whose
    largest term lies in ``[hi, exp(clamp))`` take the exact path: only slower. Terms that
    underflow are each below ``tiny``; ``s_o >= lo = 2 (C - 1) tiny / eps`` bounds what they could
    have added by half an ulp of ``s_o``.
    """
    info = jnp.finfo(dtype)
    clamp = math.log(float(info.max)) - math.log(num_classes) - 1.0
    lo = 2.0 * (num_classes - 1) * float(info.tiny) / float(info.eps)
    return clamp, lo, math.exp(clamp - 1.0)


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
def _softmax_from(x, labels, e, s):
    """``softmax_others(x)`` from the forward's residuals: ``e / s`` (0 at the target).

    ``e`` and ``s`` are the fast path's ``exp(z - z_t)`` and its sum, or the exact path's
    ``exp(z - m_o)`` and its sum (``m_o`` the exact max of the others, so no rounding of ``lse_o``
    enters and the gradient is exact to a few ulps at any scale). The value is a function of ``x``
    only; its derivatives (second and higher order of the loss) come from :func:`_softmax_others`:
    autodiff of ``e / s`` with ``s`` as small as ``exp(-87)`` (the fast path at margins above about
    44 in float32) forms ``1 / s**2`` and turns into NaN.
    """
    return e * expand(1 / s)


@_softmax_from.defjvp
def _softmax_from_jvp(primals, tangents):
    x, labels = primals[:2]  # the residuals' tangents are implied by dx: ignored
    _, d_p = jax.jvp(lambda z: _softmax_others(z, labels), (x,), (tangents[0],))
    return _softmax_from(*primals), d_p


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


def _exact_terms(x: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(m_o, s, e)`` of the exact path: ``e = exp(z - m_o)`` (0 at the target), ``s = sum(e)``."""
    others = jnp.where(_layout.is_target(labels, x.shape[1]), -jnp.inf, x)
    # With C >= 2 every row has at least one finite "other" logit, so m_o is finite and s >= 1.
    m_o = lax.stop_gradient(jnp.max(others, axis=1))
    e = jnp.exp(others - expand(m_o))
    return m_o, jnp.sum(e, axis=1), e


def _exact_unless(fast, x, labels, m, s, e):
    """``(m, s, e)`` as given when ``fast``, else :func:`_exact_terms`, with ``e`` updated in place.

    A ``lax.while_loop`` that runs once or never, not a ``lax.cond``: XLA:CPU copies an ``(N, C)``
    array that a ``cond`` branch passes through (one more read and write of ``e`` on every fast
    step), while a loop's carry is updated in place. Nothing here is differentiated (the values
    are constants to autodiff; :func:`_softmax_from` and :func:`_lse_from` take their derivatives
    from the logits), so the loop needs no reverse-mode rule.
    """
    x, m, s, e = lax.stop_gradient((x, m, s, e))

    def body(carry):
        return (True, *_exact_terms(x, labels))

    return lax.while_loop(lambda carry: ~carry[0], body, (fast, m, s, e))[1:]


def _forward(x, labels, v, *, with_softmax):
    """``(z_t, lse_o, z @ v or None)`` on rows ``(A, C[, B])``, and ``softmax_others`` if asked."""
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
    # m is a constant to autodiff (the softmax is invariant to it). Only a derivative needs the
    # exact path's exp(z - m_o) itself (the value alone keeps the cond free of (N, C) outputs).
    p_o = None
    if with_softmax:
        m, s, e = _exact_unless(fast, x, labels, shift, s_o, e)
        p_o = _softmax_from(x, labels, e, s)
    else:
        m, s = lax.cond(fast, lambda: (shift, s_o), lambda: _exact_terms(x, labels)[:2])
    lse_o = _lse_from(x, labels, m, s)
    dot = None if v is None else _dot_classes(x, v)
    return (z_t, lse_o, dot), p_o


@jax.custom_jvp
def _stats(x: jax.Array, labels: jax.Array, v: jax.Array | None) -> Any:
    return _forward(x, labels, v, with_softmax=False)[0]


@functools.partial(_stats.defjvp, symbolic_zeros=True)
def _stats_jvp(primals, tangents):
    """The tangents ``(dz_t, d lse_o, d(z . v))``: linear in ``(dx, dv)``.

    ``d lse_o = sum_j softmax_others_j dz_j``. Reverse mode transposes this: the gradient is
    ``g_o softmax_others + g_s v``, with ``g_t`` scattered onto the target (a gather's transpose),
    and ``g_s @ x`` for ``v``. Under ``jit`` XLA fuses all of it into one elementwise pass that
    reads the forward's ``e``: measured, this is 5 to 40 % faster than the ``custom_vjp`` it
    replaced (which ran its backward inside a ``lax.cond``), so forward mode costs nothing.
    """
    x, labels, v = primals
    dx, _, dv = tangents
    out, p_o = _forward(x, labels, v, with_softmax=True)
    zeros = jnp.zeros_like(out[0])
    d_t, d_lse, d_dot = zeros, zeros, zeros
    if not isinstance(dx, SymbolicZero):
        d_t = _layout.take_target(dx, labels)
        d_lse = jnp.sum(p_o * dx, axis=1)
        if v is not None:
            d_dot = _dot_classes(dx, v)
    if v is not None and not isinstance(dv, SymbolicZero):
        d_dot = d_dot + _dot_classes(x, dv)
    return out, (d_t, d_lse, None if v is None else d_dot)


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

    ``sum_j v_j (-log p_j) = lse * sum(v) - z . v``; its gradient ``g * v`` fuses into the same
    backward pass.

    >>> z_t, lse_o, s = target_stats_dot(jnp.array([[0.0, 1.0, 2.0]]), jnp.array([2]), jnp.ones(3))
    >>> float(s[0])
    3.0
    """
    return _stats(rows, labels, v.astype(rows.dtype))


def log_probs(z_t: jax.Array, lse_o: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(log p_t, log(1 - p_t), logsumexp(z))`` from the row statistics, all exact."""
    d = lse_o - z_t
    return -softplus(d), -softplus(-d), z_t + softplus(d)
