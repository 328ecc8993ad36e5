"""``softplus`` and ``sigmoid`` whose derivatives of every order are exact and finite.

``jax.nn.softplus``'s second derivative is formed as ``sigmoid(x) (1 - sigmoid(x))``-style
differences (``1 - sigmoid(x)`` rounds to 0 for ``x`` above about 17 in float32, where the true
value is ``exp(-x)``), so Hessians built on it lose all relative accuracy at saturation. Here the
derivatives are products of sigmoids, never differences:

* ``softplus'(x) = sigmoid(x)``,
* ``sigmoid'(x) = sigmoid(x) sigmoid(-x)``,

so every derivative of every order is a sum of products of terms in [0, 1], each exact to a few
ulps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_jvp
def sigmoid(x: jax.Array) -> jax.Array:
    """``1 / (1 + exp(-x))`` with relative accuracy for every ``x``.

    Below 0 it is computed as ``exp(x) / (1 + exp(x))``.

    >>> float(sigmoid(jnp.float32(-30.0)))  # doctest: +ELLIPSIS
    9.35762...e-14
    """
    e = jnp.exp(-jnp.abs(x))
    return jnp.where(x >= 0, 1, e) / (1 + e)


@sigmoid.defjvp
def _sigmoid_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    s = sigmoid(x)
    return s, s * sigmoid(-x) * t


@jax.custom_jvp
def softplus(x: jax.Array) -> jax.Array:
    """``log(1 + exp(x))``, exact for every finite ``x``.

    >>> float(softplus(jnp.float32(0.0)))  # doctest: +ELLIPSIS
    0.693147...
    """
    return jnp.logaddexp(x, 0)


@softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return softplus(x), sigmoid(x) * t
