"""The sigmoid focal loss's ``custom_jvp``: one fused pass for the value, one for the derivative."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxloss._sigmoid_derivatives import _dz, _loss_value, _others
from jaxloss._sigmoid_terms import _loss_and_dz_any_gamma


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _sigmoid_focal_elementwise(z, t, gamma, alpha, balance):
    """``alpha_t * BCE * (1 - p_t)**gamma`` elementwise.

    A ``custom_jvp`` because autodiff of this chain makes XLA:CPU materialise about ten ``(..., C)``
    intermediates (it will not duplicate an ``exp`` or ``log`` into several consumers) and evaluate
    about twice as many transcendentals. The tangent is ``d/dz dz + d/dt dt + d/dgamma dgamma +
    d/dalpha dalpha``, linear in the tangents, so reverse mode transposes it into ``g * d/dz`` (and
    so on): the forward is one fused pass writing the loss, the derivative one fused pass that
    recomputes the pieces and writes ``g * d/dz`` (recomputing an ``exp`` and a ``log`` is cheaper
    on this CPU than writing and re-reading the intermediates). The derivatives in ``t``, ``gamma``
    and ``alpha`` cost nothing unless asked for (symbolic zeros). A ``gamma`` of 0, 1, 2, 3 or 4
    (checked at run time; ``gamma`` stays traced) uses multiplication instead of
    ``exp(gamma * log q)``. Forward mode (``jax.jvp``, ``jax.jacfwd``) is the same rule.

    Higher orders (reverse over reverse, ``jax.hessian``, ``jacfwd`` of ``jacfwd``) differentiate
    the rule itself: it is made of :func:`_with_smooth_z_derivative` functions, so those
    derivatives are finite and exact for every finite logit.
    """
    return _loss_and_dz_any_gamma(z, t, gamma, alpha, balance)[0]


@functools.partial(_sigmoid_focal_elementwise.defjvp, symbolic_zeros=True)
def _sigmoid_focal_jvp(balance, primals, tangents):
    z, t, gamma, alpha = primals
    dz, dt, d_gamma, d_alpha = tangents
    # _loss_value, not the plain formula: higher orders differentiate this value too, and autodiff
    # of the lax.switch would transpose zero cotangents through coefficients that overflow at
    # saturation (0 * inf = NaN).
    loss = _loss_value(z, t, gamma, alpha, balance)
    # The barriers stop XLA from merging the derivative's recomputation with the value's (CSE),
    # which would turn the two single-output passes back into several materialised intermediates.
    # One barrier each: a barrier's derivative instantiates the zero tangents of all its operands,
    # and a non-symbolic zero tangent of t would send higher orders in z through the t-derivatives.
    z = lax.optimization_barrier(z)
    t = lax.optimization_barrier(t)
    tangent = jnp.zeros_like(loss)
    if not isinstance(dz, SymbolicZero):
        tangent = tangent + _dz(z, t, gamma, alpha, balance) * dz
    if not all(isinstance(d, SymbolicZero) for d in (dt, d_gamma, d_alpha)):
        by_t, by_gamma, by_alpha = _others(z, t, gamma, alpha, balance)
        if not isinstance(dt, SymbolicZero):
            tangent = tangent + by_t * dt
        if not isinstance(d_gamma, SymbolicZero):
            tangent = tangent + by_gamma * d_gamma
        if balance and not isinstance(d_alpha, SymbolicZero):
            tangent = tangent + by_alpha * d_alpha
    return loss, tangent
