"""The per-row statistics every softmax loss here is built from.

For logits ``z`` of shape ``(..., C)`` and a target class ``t`` per row, all softmax losses in this
package depend on ``z`` only through

* ``z_t``, the target logit, and
* ``lse_o = logsumexp_{j != t} z_j``, the log-sum-exp over the *other* classes,
* (label smoothing only) ``sum_j v_j z_j`` for a class vector ``v`` (ones, or the class weights).

With ``d = lse_o - z_t``: ``log p_t = -softplus(d)``, ``log(1 - p_t) = -softplus(-d)`` and
``logsumexp(z) = z_t + softplus(d)``. Both logs are exact for every finite ``d``: ``1 - p_t`` is never
formed by subtraction, which is where the reference modules lose precision and their gradients turn
NaN (``(1 - p)**gamma`` with ``p == 1`` in floating point).

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
every finite input; only the speed differs. Under ``vmap`` the ``cond`` becomes a ``select`` and both
paths run.

Forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) is not available; reverse mode is, to any
order (the backward is itself differentiable JAX code).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax


def _flatten(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)


def _set_targets(rows: jax.Array, labels: jax.Array, value: jax.Array) -> jax.Array:
    """``rows[i, labels[i]] = value[i]``: an in-place scatter of ``N`` elements, not a masked pass."""
    index = jnp.arange(rows.shape[0])
    return rows.at[index, labels].set(
        value, indices_are_sorted=True, unique_indices=True, mode="promise_in_bounds"
    )


def _fast_path_limits(dtype, num_classes: int) -> tuple[float, float, float]:
    """``(clamp, lo, hi)``: the exponent clamp and the range of ``s_o`` where the fast path is exact.

    ``clamp`` keeps ``C * exp(clamp)`` finite. Any clamped term alone makes ``s_o >= exp(clamp) = hi``.
    Terms that underflow are each below ``tiny``; ``s_o >= lo = 2 (C - 1) tiny / eps`` bounds what
    they could have added by half an ulp of ``s_o``.
    """
    info = jnp.finfo(dtype)
    clamp = math.log(float(info.max)) - math.log(num_classes) - 1.0
    return clamp, 2.0 * (num_classes - 1) * float(info.tiny) / float(info.eps), math.exp(clamp)


def _exact_lse_others(x: jax.Array, labels: jax.Array) -> jax.Array:
    """Two passes (max of the others, then ``exp`` and sum): exact for every finite row."""
    is_target = jnp.arange(x.shape[-1]) == labels[:, None]
    others = jnp.where(is_target, -jnp.inf, x)
    # With C >= 2 every row has at least one finite "other" logit, so m_o is finite and the sum >= 1.
    m_o = lax.stop_gradient(jnp.max(others, axis=-1))
    return m_o + jnp.log(jnp.sum(jnp.exp(others - m_o[:, None]), axis=-1))


def _exact_grad(x, labels, lse_o, g_t, g_o):
    is_target = jnp.arange(x.shape[-1]) == labels[:, None]
    # Mask before exp: exp(z_t - lse_o) may overflow, and second-order gradients would see 0 * inf.
    softmax_others = jnp.exp(jnp.where(is_target, -jnp.inf, x) - lse_o[:, None])
    return jnp.where(is_target, g_t[:, None], g_o[:, None] * softmax_others)


def _forward(x, labels, v):
    """Flat ``(N, C)`` forward: ``(z_t, lse_o, z @ v or None)`` and the residuals of the backward."""
    x = jnp.asarray(x)
    z_t = x.at[jnp.arange(x.shape[0]), labels].get(  # a gather of N elements
        indices_are_sorted=True, unique_indices=True, mode="promise_in_bounds"
    )
    clamp, lo, hi = _fast_path_limits(x.dtype, x.shape[-1])
    # Shift by the target logit: s_o = sum_{j != t} exp(z_j - z_t) = (1 - p_t) / p_t. The shift is a
    # constant to autodiff (higher-order gradients differentiate this forward), so it must be added
    # back as the same constant: lse_o = shift + log(s_o) is then shift-invariant, as it should be.
    shift = lax.stop_gradient(z_t)
    e = jnp.exp(jnp.minimum(x - shift[:, None], clamp))
    e = _set_targets(e, labels, jnp.zeros_like(z_t))
    s_o = jnp.sum(e, axis=-1)
    fast = jnp.all((s_o >= lo) & (s_o < hi))  # false for NaN too
    lse_o = lax.cond(fast, lambda: shift + jnp.log(s_o), lambda: _exact_lse_others(x, labels))
    dot = None if v is None else x @ v
    return (z_t, lse_o, dot), (x, labels, v, e, s_o, lse_o, fast)


def _backward(res, g):
    x, labels, v, e, s_o, lse_o, fast = res
    g_t, g_o, g_s = g
    if v is not None:  # d(z @ v)/dz_j = v_j, added in the same pass
        g_t = g_t + g_s * v[labels]

    def fast_grad():
        grad = e * (g_o / s_o)[:, None]
        if v is not None:
            grad = grad + g_s[:, None] * v
        return _set_targets(grad, labels, g_t)

    def exact_grad():
        grad = _exact_grad(x, labels, lse_o, g_t, g_o)
        if v is not None:
            grad = grad + jnp.where(jnp.arange(x.shape[-1]) == labels[:, None], 0, g_s[:, None] * v)
        return grad

    grad = lax.cond(fast, fast_grad, exact_grad)
    grad_v = None if v is None else g_s @ x
    return grad, grad_v


@jax.custom_vjp
def _stats(x: jax.Array, labels: jax.Array, v: jax.Array | None):
    return _forward(x, labels, v)[0]


def _stats_fwd(x, labels, v):
    return _forward(x, labels, v)


def _stats_bwd(res, g):
    g_t, g_o, g_s = g
    grad, grad_v = _backward(res, (g_t, g_o, g_s))
    return grad, None, grad_v


_stats.defvjp(_stats_fwd, _stats_bwd)


def target_stats(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Returns ``(z_t, lse_o)``, each of shape ``logits.shape[:-1]``, in ``logits.dtype``.

    Args:
      logits: float array of shape ``(..., C)``, ``C >= 2``, finite.
      labels: int array of shape ``(...)`` with values in ``[0, C)`` (callers sanitise labels first).

    >>> z_t, lse_o = target_stats(jnp.array([[0.0, 1.0, 2.0]]), jnp.array([2]))
    >>> float(z_t[0]), round(float(lse_o[0]), 4)
    (2.0, 1.3133)
    """
    x, t = _flatten(logits, labels)
    z_t, lse_o, _ = _stats(x, t, None)
    return z_t.reshape(labels.shape), lse_o.reshape(labels.shape)


def target_stats_dot(
    logits: jax.Array, labels: jax.Array, v: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(z_t, lse_o, logits @ v)``: ``target_stats`` plus one row reduction, for label smoothing.

    ``sum_j v_j (-log p_j) = lse * sum(v) - logits @ v``; its gradient ``g * v`` is added inside the
    same backward pass.

    >>> z_t, lse_o, s = target_stats_dot(jnp.array([[0.0, 1.0, 2.0]]), jnp.array([2]), jnp.ones(3))
    >>> float(s[0])
    3.0
    """
    x, t = _flatten(logits, labels)
    z_t, lse_o, dot = _stats(x, t, v.astype(x.dtype))
    shape = labels.shape
    return z_t.reshape(shape), lse_o.reshape(shape), dot.reshape(shape)


def log_probs(z_t: jax.Array, lse_o: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(log p_t, log(1 - p_t), logsumexp(z))`` from the row statistics, all exact."""
    d = lse_o - z_t
    return -jax.nn.softplus(d), -jax.nn.softplus(-d), z_t + jax.nn.softplus(d)
