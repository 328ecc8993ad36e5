"""Higher derivatives of the sigmoid focal loss from bounded pieces (`jax.custom_jvp`).

Each piece takes its value from the exact terms of `jaxloss._sigmoid_terms` and its derivative in
the logits from products of bounded quantities, so second and third derivatives never divide by an
underflowed `1 - p_t`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jaxloss._sigmoid_terms import (
    _balance,
    _bce_over_q,
    _log_q,
    _loss_and_dz_any_gamma,
    _sigmoid_focal_parts,
)
from jaxloss._stable import sigmoid, softplus


def _is_zero(tangent):
    return isinstance(tangent, SymbolicZero)


def _zeros_for(tangent, primal):
    return jnp.zeros_like(primal) if _is_zero(tangent) else tangent


def _c0_over_a(parts):
    """``c0 / A`` (0 where ``pure``: ``c0 = 0``), in [0, 1]."""
    scale = jnp.where(parts["log_scale"] > 0, 2.0**100, 1.0)
    return jnp.where(parts["pure"], 0.0, parts["c0"] * scale / parts["a_scaled"])


def _plain(z, t):
    """``(s, sb, q, B)`` by the textbook formulas (for derivatives in ``t`` only)."""
    s, sb = sigmoid(z), sigmoid(-z)
    return s, sb, t * sb + (1 - t) * s, t * softplus(-z) + (1 - t) * softplus(z)


def _primitive(value: Any, z_derivative: Any, plain: Any) -> Any:
    """A ``custom_jvp`` function of ``(z, t)`` with the value ``value(parts)``.

    Its derivative is ``z_derivative(z, t)`` in ``z`` and autodiff of ``plain(z, t)`` in ``t``
    (symbolic zeros skip what is not asked for).
    """

    @jax.custom_jvp
    def f(z, t):
        return value(_sigmoid_focal_parts(z, t))

    def f_jvp(primals, tangents):
        z, t = primals
        dz, dt = tangents
        out = f(z, t)
        tangent = jnp.zeros_like(out)
        if not _is_zero(dz):
            tangent = tangent + z_derivative(z, t) * dz
        if not _is_zero(dt):
            tangent = tangent + jax.jvp(lambda t_: plain(z, t_), (t,), (dt,))[1]
        return out, tangent

    f.defjvp(f_jvp, symbolic_zeros=True)
    return f


def _rho_value(parts):
    return parts["ratio"]


def _v_value(parts):
    v = (1 - parts["c0"]) * parts["e"] * parts["ratio"] - parts["r"] * _c0_over_a(parts)
    return jnp.where(parts["nonneg"], v, -v)  # +-(c1 e^2 - c0) r / A


def _k_value(parts):
    k = _c0_over_a(parts) - (1 - parts["c0"]) * parts["ratio"] / parts["r"]
    return jnp.where(parts["nonneg"], k, -k)  # +-(c0 - c1 e) / A


def _u(z, t):
    return (1 - 2 * t) * _rho(z, t)


def _plain_rho(z, t):
    s, sb, q, _ = _plain(z, t)
    return s * sb / q


def _plain_v(z, t):
    s, sb, q, _ = _plain(z, t)
    return (t * sb**2 - (1 - t) * s**2) / q


def _plain_k(z, t):
    s, sb, q, _ = _plain(z, t)
    return ((1 - t) * s - t * sb) / q


def _plain_y(z, t):
    _, _, q, bce = _plain(z, t)
    return bce / q


_rho: Any
_v: Any
_k: Any
_y: Any
_rho = _primitive(_rho_value, lambda z, t: _rho(z, t) * _v(z, t), _plain_rho)
_v = _primitive(
    _v_value, lambda z, t: -2 * sigmoid(z) * sigmoid(-z) - _u(z, t) * _v(z, t), _plain_v
)
_k = _primitive(_k_value, lambda z, t: _rho(z, t) - _k(z, t) * _u(z, t), _plain_k)
_y = _primitive(_bce_over_q, lambda z, t: _k(z, t) - _y(z, t) * _u(z, t), _plain_y)
_log_q_smooth = _primitive(_log_q, _u, lambda z, t: jnp.log(_plain(z, t)[2]))


@jax.custom_jvp
def _q_pow(z, t, gamma):
    """``Q = q**gamma = exp(gamma log q)`` with the exact ``log q`` (``gamma = 0``: exactly 1)."""
    return jnp.exp(gamma * _log_q(_sigmoid_focal_parts(z, t)))


def _q_pow_jvp(primals, tangents):
    z, t, gamma = primals
    dz, dt, dgamma = tangents
    q_gamma = _q_pow(z, t, gamma)
    tangent = jnp.zeros_like(q_gamma)
    if not _is_zero(dz):
        tangent = tangent + gamma * _u(z, t) * q_gamma * dz
    if not _is_zero(dgamma):
        tangent = tangent + q_gamma * _log_q_smooth(z, t) * dgamma
    if not _is_zero(dt):
        tangent = tangent + jax.jvp(lambda t_: _plain(z, t_)[2] ** gamma, (t,), (dt,))[1]
    return q_gamma, tangent


_q_pow.defjvp(_q_pow_jvp, symbolic_zeros=True)


def _smooth_parts(z, t, gamma, alpha, balance):
    bce = t * softplus(-z) + (1 - t) * softplus(z)
    return bce, _q_pow(z, t, gamma), _balance(t, alpha, balance)


def _smooth_loss(z, t, gamma, alpha, balance):
    bce, q_gamma, w = _smooth_parts(z, t, gamma, alpha, balance)
    return w * q_gamma * bce


def _smooth_dz(z, t, gamma, alpha, balance):
    """``d/dz = w Q (gamma u B + B')``."""
    bce, q_gamma, w = _smooth_parts(z, t, gamma, alpha, balance)
    d_bce = (1 - t) * sigmoid(z) - t * sigmoid(-z)
    return w * q_gamma * (gamma * _u(z, t) * bce + d_bce)


def _smooth_others(z, t, gamma, alpha, balance):
    """Elementwise ``(d/dt, d/dgamma, d/dalpha)`` in product form.

    ``w Q (-z + gamma (sb - s) y) [+ (2 alpha - 1) B Q]``, ``w B Q L`` and ``B Q (2t - 1)``.
    """
    bce, q_gamma, w = _smooth_parts(z, t, gamma, alpha, balance)
    one_minus_2p = sigmoid(-z) - sigmoid(z)
    d_t = w * q_gamma * (-z + gamma * one_minus_2p * _y(z, t))
    d_alpha = jnp.zeros_like(z)
    if balance:
        d_t = d_t + (2 * alpha - 1) * bce * q_gamma
        d_alpha = bce * q_gamma * (2 * t - 1)
    return d_t, w * bce * q_gamma * _log_q_smooth(z, t), d_alpha


def _fused_others(z, t, gamma, alpha, balance):
    """The fused first-order ``(d/dt, d/dgamma, d/dalpha)``, elementwise.

    ``d/dt = w (-z Q + gamma BCE (1 - 2p) q**(gamma - 1)) + (2 alpha - 1) BCE Q`` with
    ``1 - 2p = -+(1 - e) r``; ``d/dgamma = loss log q``; ``d/dalpha = BCE Q (2t - 1)``.
    """
    parts = _sigmoid_focal_parts(z, t)
    log_q, bce = _log_q(parts), parts["bce"]
    q_gamma = jnp.exp(gamma * log_q)
    w = _balance(t, alpha, balance)
    one_minus_2p = jnp.where(parts["nonneg"], parts["e"] - 1, 1 - parts["e"]) * parts["r"]
    # gamma BCE q**(gamma - 1) as q**gamma (BCE / q): q**(gamma - 1) overflows at saturation for
    # gamma < 1, while BCE / q stays bounded (-> 1 / r), see _bce_over_q.
    d_t = w * q_gamma * (-z + gamma * one_minus_2p * _bce_over_q(parts))
    d_alpha = jnp.zeros_like(z)
    if balance:
        d_t = d_t + (2 * alpha - 1) * bce * q_gamma
        d_alpha = bce * q_gamma * (2 * t - 1)
    return d_t, w * bce * q_gamma * log_q, d_alpha


def _with_smooth_z_derivative(fused, smooth):
    """A ``custom_jvp`` function with the value of ``fused(z, t, gamma, alpha, balance)``.

    Its derivative in ``z`` is autodiff of ``smooth`` (the same function in product form), its
    derivatives in ``t``, ``gamma`` and ``alpha`` are autodiff of ``fused``.
    """

    @functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
    def f(z, t, gamma, alpha, balance):
        return fused(z, t, gamma, alpha, balance)

    def f_jvp(balance, primals, tangents):
        z, t, gamma, alpha = primals
        dz, dt, dgamma, dalpha = tangents
        out = f(z, t, gamma, alpha, balance)
        tangent = jax.tree.map(jnp.zeros_like, out)
        if not _is_zero(dz):
            d = jax.jvp(lambda x: smooth(x, t, gamma, alpha, balance), (z,), (dz,))[1]
            tangent = jax.tree.map(jnp.add, tangent, d)
        if not (_is_zero(dt) and _is_zero(dgamma) and _is_zero(dalpha)):
            d = jax.jvp(
                lambda t_, g_, a_: fused(z, t_, g_, a_, balance),
                (t, gamma, alpha),
                (_zeros_for(dt, t), _zeros_for(dgamma, gamma), _zeros_for(dalpha, alpha)),
            )[1]
            tangent = jax.tree.map(jnp.add, tangent, d)
        return out, tangent

    f.defjvp(f_jvp, symbolic_zeros=True)
    return f


_loss_value = _with_smooth_z_derivative(
    lambda *args: _loss_and_dz_any_gamma(*args)[0], _smooth_loss
)
_dz = _with_smooth_z_derivative(lambda *args: _loss_and_dz_any_gamma(*args)[1], _smooth_dz)
_others = _with_smooth_z_derivative(_fused_others, _smooth_others)
