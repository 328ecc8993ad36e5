"""The per-row statistics every softmax loss here is built from.

For logits ``z`` of shape ``(..., C)`` and a target class ``t`` per row, all softmax losses in this
package depend on ``z`` only through

* ``z_t``, the target logit, and
* ``lse_o = logsumexp_{j != t} z_j``, the log-sum-exp over the *other* classes.

With ``d = lse_o - z_t``: ``log p_t = -softplus(d)``, ``log(1 - p_t) = -softplus(-d)`` and
``logsumexp(z) = z_t + softplus(d)``. Both logs are exact for every finite ``d``: ``1 - p_t`` is never
formed by subtraction, which is where the reference modules lose precision and their gradients turn
NaN (``(1 - p)**gamma`` with ``p == 1`` in floating point).

The function is a ``jax.custom_vjp``: the forward pass reads the logits twice (row max, then one
``exp`` and sum), the backward pass writes ``g_t * onehot + g_o * softmax_{others}`` in one fused
pass from the saved ``lse_o``; no ``(..., C)`` intermediate is stored. Reverse mode works to any
order and so does forward-over-reverse (``jax.hessian``); forward mode applied to the loss itself
(``jax.jvp``, ``jax.jacfwd``) raises ``TypeError``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _stats(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  is_target = jnp.arange(logits.shape[-1]) == labels[..., None]
  z_t = jnp.sum(jnp.where(is_target, logits, 0), axis=-1)
  others = jnp.where(is_target, -jnp.inf, logits)
  m_o = jnp.max(others, axis=-1)
  # With C >= 2 every row has at least one finite "other" logit, so m_o is finite and the sum >= 1.
  s_o = jnp.sum(jnp.exp(others - m_o[..., None]), axis=-1)
  return z_t, m_o + jnp.log(s_o)


@jax.custom_vjp
def target_stats(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns ``(z_t, lse_o)``, each of shape ``logits.shape[:-1]``, in ``logits.dtype``.

  Args:
    logits: float array of shape ``(..., C)``, ``C >= 2``, finite.
    labels: int array of shape ``(...)`` with values in ``[0, C)`` (callers sanitise labels first).

  >>> z_t, lse_o = target_stats(jnp.array([[0.0, 1.0, 2.0]]), jnp.array([2]))
  >>> float(z_t[0]), round(float(lse_o[0]), 4)
  (2.0, 1.3133)
  """
  return _stats(logits, labels)


def _fwd(logits, labels):
  z_t, lse_o = _stats(logits, labels)
  return (z_t, lse_o), (logits, labels, lse_o)


def _bwd(res, g):
  logits, labels, lse_o = res
  g_t, g_o = g
  is_target = jnp.arange(logits.shape[-1]) == labels[..., None]
  # Mask before exp: exp(z_t - lse_o) may overflow, and second-order gradients would see 0 * inf.
  softmax_others = jnp.exp(jnp.where(is_target, -jnp.inf, logits) - lse_o[..., None])
  grad = jnp.where(is_target, g_t[..., None], g_o[..., None] * softmax_others)
  return grad.astype(logits.dtype), None


target_stats.defvjp(_fwd, _bwd)


def log_probs(z_t: jax.Array, lse_o: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``(log p_t, log(1 - p_t), logsumexp(z))`` from the row statistics, all exact."""
  d = lse_o - z_t
  return -jax.nn.softplus(d), -jax.nn.softplus(-d), z_t + jax.nn.softplus(d)
