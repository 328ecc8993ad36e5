"""The exact elementwise terms of the sigmoid focal loss and its first derivative in the logits."""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
from jax import lax

_SATURATED = 43.0  # |z| above which exp(-|z|) < 2e-19 may leave 1 - p_t below sqrt(tiny)
_LOG_SCALE = 100 * math.log(2.0)  # 2**100 rescales such 1 - p_t back into the normal range


_INTEGER_GAMMAS = (0, 1, 2, 3, 4)  # q**gamma by multiplication: no log(q) needed


# 2 atanh(s) = sum_k 2 s**(2k+1) / (2k + 1): the coefficients 1 / (2k + 1), highest first. With
# s <= 1/3 the first omitted term is below 1.5e-8 of the sum (0.12 ulp of float32).
_ATANH_SERIES = tuple(1.0 / (2 * k + 1) for k in range(6, -1, -1))


def _log1p(e):
    """``log1p(e)`` for ``e`` in [0, 1], to a few ulps.

    float32 (and narrower): ``log1p(e) = 2 atanh(s)``, ``s = e / (2 + e)`` in [0, 1/3], as
    ``e * (2 h) * P(s**2)`` with ``h = 1 / (2 + e)`` and ``P`` the atanh series to ``s**12 / 13``
    (so ``log1p(e) = e`` exactly for tiny ``e``). Measured against float64 over every normal
    ``e = exp(-a)``, ``a`` in [0, 104]: at most 3.1 ulps, 0.13 on average (XLA's ``log1p``: 2.4
    and 0.07), and about 4x cheaper than XLA:CPU's ``log1p`` after an ``exp`` (3.5 ms against
    9.7 ms for ``log1p(exp(-a))`` over 8.2 M elements), the largest cost of the loss.
    float64: XLA's own ``log1p`` (the series would need 17 terms).

    Not Kahan's ``log(u) * e / (u - 1)`` with ``u = 1 + e``: under ``jax.jit`` XLA simplifies
    ``(1 + e) - 1`` to ``e``, which turns it into ``log(1 + e)`` and loses up to 75 % relative
    accuracy of the loss for ``|z|`` between 8 and 17 (float32).
    """
    if e.dtype == jnp.float64:
        return jnp.log1p(e)
    h = 1 / (2 + e)
    s = e * h
    s2 = s * s
    poly = jnp.asarray(_ATANH_SERIES[0], e.dtype)
    for c in _ATANH_SERIES[1:]:
        poly = poly * s2 + c
    return e * (2 * h * poly)


def _sigmoid_focal_parts(z, t):
    """The shared elementwise pieces of the sigmoid focal loss and its gradient, all exact.

    With ``a = |z|``, ``e = exp(-a)``, ``r = 1 / (1 + e)`` and ``l = log1p(e)``:
    ``softplus(+-z) = max(+-z, 0) + l``, so ``BCE = l + t max(-z, 0) + (1 - t) max(z, 0)``, and
    ``q = 1 - p_t = t (1 - p) + (1 - t) p`` equals ``A r`` with ``A = c0 + c1 e`` (``c0 = 1 - t,
    c1 = t`` for ``z >= 0``, swapped for ``z < 0``): two non-negative terms, no cancellation, so
    ``log q = log(A) - l`` (see ``_log_q``), and ``p (1 - p) / q = e r / A``.

    ``A`` can only leave the normal range when ``a > 43`` (``c0`` is 0 or at least ``6e-8`` for
    ``z >= 0``, ``c0 = t`` for ``z < 0``); there ``A * 2**100`` is formed instead, from
    ``exp(-a) * 2**100`` (exact, a power of two, while ``exp(-a)`` is normal; beyond that the same
    ``exp`` is taken with the exponent shifted by ``log(2**100)``); ``c0 == 0``
    (``pure``) means ``A = e`` exactly. One ``exp`` and one ``log1p`` (``_log1p``) cover every
    case. Branches select on ``z >= 0`` and on ``a``, never through ``abs``.
    """
    nonneg = z >= 0
    a = jnp.where(nonneg, z, -z)
    big = a > _SATURATED
    log_scale = jnp.where(big, _LOG_SCALE, 0.0).astype(z.dtype)
    # exp(-a) * 2**100 where big. While exp(-a) is normal it is taken as it is and scaled exactly
    # (a power of two); only beyond that is the exponent shifted, because log(2**100) rounded to
    # the dtype is off by up to half its ulp (float32: 3.8e-6, i.e. 32 ulps of exp(-a)).
    shifted = a > -math.log(float(jnp.finfo(z.dtype).tiny))  # exp(-a) subnormal (float32: 87.34)
    ex = jnp.exp(jnp.where(shifted, log_scale, 0.0) - a)
    e_scaled = jnp.where(big & ~shifted, ex * 2.0**100, ex)
    e = jnp.where(shifted, ex * 2.0**-100, ex)
    log1p_e = _log1p(e)
    r = 1 / (1 + e)
    c0 = jnp.where(nonneg, 1 - t, t)
    pure = big & (c0 == 0)
    a_scaled = jnp.where(pure, 1.0, c0 * jnp.where(big, 2.0**100, 1.0) + (1 - c0) * e_scaled)
    return dict(
        nonneg=nonneg,
        a=a,
        e=e,
        r=r,
        l=log1p_e,
        c0=c0,
        pure=pure,
        a_scaled=a_scaled,
        log_scale=log_scale,
        bce=log1p_e + jnp.where(nonneg, (1 - t) * a, t * a),
        ratio=jnp.where(pure, r, r * e_scaled / a_scaled),
    )  # p (1 - p) / q


def _log_q(parts):
    """``log(1 - p_t)``, exact and finite for finite logits."""
    log_a = jnp.where(parts["pure"], -parts["a"], jnp.log(parts["a_scaled"]) - parts["log_scale"])
    return log_a - parts["l"]


def _bce_over_q(parts):
    """``BCE / (1 - p_t)``, finite for finite logits: both are formed in the same scaled domain.

    ``BCE = l + c0 a`` on both branches; where ``a > 43`` the numerator is scaled by ``2**100`` like
    ``A`` (and ``l = log1p(e) = e`` to working precision there); ``pure`` means ``A = e`` and
    ``BCE = l = e``, so the ratio is ``1 / r``.
    """
    big = parts["log_scale"] > 0
    scale = jnp.where(big, 2.0**100, 1.0)
    bce_scaled = jnp.where(big, parts["e"] * scale, parts["l"]) + parts["c0"] * parts["a"] * scale
    return jnp.where(parts["pure"], 1 / parts["r"], bce_scaled / (parts["a_scaled"] * parts["r"]))


def _balance(t, alpha, balance):
    return alpha * t + (1 - alpha) * (1 - t) if balance else 1


def _loss_and_dz(z, t, gamma, alpha, balance, power):
    """Elementwise loss and its exact derivative in ``z``.

    With ``Q = q**gamma`` and ``w = alpha_t``:
    ``d/dz = w Q ((p - t) + gamma BCE (1 - 2t) p (1 - p) / q)``, ``p - t = +-(c0 - e r)``.
    ``power`` is a static integer equal to ``gamma`` (``Q`` by multiplication, ``q = A r`` may
    underflow only where ``Q`` does) or ``None`` (``Q = exp(gamma log q)``, one more ``log``).
    """
    parts = _sigmoid_focal_parts(z, t)
    nonneg, e, r, c0, bce = (parts[k] for k in ("nonneg", "e", "r", "c0", "bce"))
    if power is None:
        # log_q is finite for finite logits, so gamma = 0 multiplies by exactly 1 (torch: 0**0 = 1).
        q_gamma = jnp.exp(gamma * _log_q(parts))
    else:
        q_gamma = lax.integer_pow(r * (c0 + (1 - c0) * e), power)
    w = _balance(t, alpha, balance)
    p_minus_t = jnp.where(nonneg, c0 - e * r, e * r - c0)
    d_z = w * q_gamma * (p_minus_t + gamma * bce * (1 - 2 * t) * parts["ratio"])
    return w * bce * q_gamma, d_z


def _loss_and_dz_any_gamma(z, t, gamma, alpha, balance):
    """Picks the multiplication path at run time when the (traced) ``gamma`` is 0, 1, 2, 3 or 4."""
    is_int = (gamma == jnp.round(gamma)) & (gamma >= 0) & (gamma <= _INTEGER_GAMMAS[-1])
    index = jnp.where(is_int, gamma, len(_INTEGER_GAMMAS)).astype(jnp.int32)
    branches = [functools.partial(_loss_and_dz, power=k) for k in _INTEGER_GAMMAS]
    branches.append(functools.partial(_loss_and_dz, power=None))
    return lax.switch(
        index, [lambda *args, f=f: f(*args, balance) for f in branches], z, t, gamma, alpha
    )


# ----------------------------------------------------------- second and higher derivatives in z
#
# With s = sigmoid(z), sb = sigmoid(-z), q = 1 - p_t = t sb + (1 - t) s, Q = q**gamma, L = log q,
# B = BCE = t softplus(-z) + (1 - t) softplus(z) and B' = (1 - t) s - t sb, the loss is w Q B and
#
#   rho = s sb / q                  in [0, 2]        rho' = rho v
#   u   = q' / q = (1 - 2t) rho     in [-2, 2]       Q' = gamma u Q,  L' = u
#   v   = (t sb**2 - (1 - t) s**2) / q   in [-1, 1]  v' = -2 s sb - u v
#   k   = B' / q                    in [-1, 1]       k' = rho - k u
#   y   = B / q                     in [0, 2 |z| + 2]   y' = k - y u
#
# plus s' = s sb, sb' = -s sb (jaxloss._stable). So every derivative in z of every order of the loss
# and of its first derivatives (in z, t, gamma, alpha) is w Q times a polynomial in bounded terms:
# no division, no q**(gamma - 1), nothing that overflows or cancels to 0 * inf while the true value
# is finite. Each of rho, v, k, y, L, Q below is a custom_jvp function whose value comes from the
# exact pieces of _sigmoid_focal_parts and whose derivative in z is the product above. The loss, its
# d/dz and its other first derivatives keep their fused first-order formulas as values (so first-
# order results are unchanged) and take their derivatives in z from the same formulas written with
# these functions (_smooth_*). Derivatives in t, gamma or alpha of those first derivatives (mixed
# second order) are plain autodiff of the first-order formulas, as before; they may overflow where
# 1 - p_t underflows.
