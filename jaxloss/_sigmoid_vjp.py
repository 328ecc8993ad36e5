"""The sigmoid focal loss's ``custom_vjp``: a fused forward pass and a fused backward pass."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxloss._sigmoid_derivatives import _dz, _loss_value, _others
from jaxloss._sigmoid_terms import _loss_and_dz_any_gamma


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _sigmoid_focal_elementwise(z, t, gamma, alpha, balance):
    """``alpha_t * BCE * (1 - p_t)**gamma`` elementwise.

    A ``custom_vjp`` because autodiff of this chain makes XLA:CPU materialise about ten ``(..., C)``
    intermediates (it will not duplicate an ``exp`` or ``log`` into several consumers) and evaluate
    about twice as many transcendentals. Here the forward pass is one fused pass writing the loss,
    and the backward one fused pass that recomputes the pieces and writes ``g * d/dz`` (recomputing
    an ``exp`` and a ``log`` is cheaper on this CPU than writing and re-reading the intermediates).
    The derivatives in ``t``, ``gamma`` and ``alpha`` cost nothing unless asked for (XLA drops
    them). A ``gamma`` of 0, 1, 2, 3 or 4 (checked at run time; ``gamma`` stays traced) uses
    multiplication instead of ``exp(gamma * log q)``.

    Higher orders (reverse over reverse, ``jax.hessian``) differentiate the forward and backward
    themselves: both are made of :func:`_with_smooth_z_derivative` functions, so those derivatives
    are finite and exact for every finite logit. Forward mode of this function itself is not
    available (a ``custom_vjp``).
    """
    return _loss_and_dz_any_gamma(z, t, gamma, alpha, balance)[0]


def _sigmoid_focal_fwd(z, t, gamma, alpha, balance):
    # _loss_value, not the plain formula: higher orders differentiate the forward too; its tangents
    # are discarded, but autodiff of the lax.switch would transpose zero cotangents through
    # coefficients that overflow at saturation (0 * inf = NaN).
    loss = _loss_value(z, t, gamma, alpha, balance)
    return loss, (z, t, gamma, alpha)


def _sigmoid_focal_bwd(balance, res, g):
    z, t, gamma, alpha = res
    # The barrier stops XLA from merging this recomputation with the forward's (CSE), which would
    # turn the two single-output passes back into several materialised intermediates. One barrier
    # each: a barrier's derivative instantiates the zero tangents of all its operands, and a
    # non-symbolic zero tangent of t would send higher orders in z through the t-derivatives.
    z = lax.optimization_barrier(z)
    t = lax.optimization_barrier(t)
    d_z = _dz(z, t, gamma, alpha, balance)
    d_t, d_gamma, d_alpha = _others(z, t, gamma, alpha, balance)
    grad_alpha = jnp.sum(g * d_alpha) if balance else jnp.zeros_like(alpha)
    return g * d_z, g * d_t, jnp.sum(g * d_gamma), grad_alpha


_sigmoid_focal_elementwise.defvjp(_sigmoid_focal_fwd, _sigmoid_focal_bwd)
