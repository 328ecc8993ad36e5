r"""Adam's moment scaling as torch computes it: bias corrections from the betas in double precision.

``optax.scale_by_adam`` computes the bias correction ``1 - b2**t`` in float32, from ``b2`` rounded
to float32: ``float32(0.999) = 0.99900001``, so ``1 - b2`` is ``9.99987e-4`` instead of ``1e-3``,
1.3e-5 relative, and every update of the first steps is ``6.4e-6`` relative too small (the square
root of it). torch computes ``1 - beta2 ** step`` in Python floats (double). The difference was
found by `jaxloss.parity.compare_steps` (an Adam step of 0.1 on a zero bias: 6.7e-7 off where
torch's own float32 error was 1e-8); this module computes the correction as
``-expm1(t * log(b))`` with ``log(b)`` taken in double, within 3e-7 relative in float32, and
otherwise follows torch's update (``torch.optim.adam._single_tensor_adam``):

.. math::
  m \leftarrow m + (1 - \beta_1)(g - m), \quad v \leftarrow \beta_2 v + (1 - \beta_2) g^2,
  \quad u = \frac{m / (1 - \beta_1^t)}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}

The state is ``optax.ScaleByAdamState`` (``count``, ``mu``, ``nu``), the same as optax's, so
checkpoints and ``optax.tree_utils.tree_get(state, "mu")`` see no difference.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["bias_correction", "scale_by_torch_adam"]


def bias_correction(decay: float, count: jax.Array, dtype: Any = jnp.float32) -> jax.Array:
    """``1 - decay**count`` in ``dtype`` (float32 or wider), within 3e-7 relative in float32.

    optax's float32 formula is 1.3e-5 off at ``decay = 0.999``; in float64 this is exact to about
    1e-16, as torch's.

    Examples:
      >>> float(bias_correction(0.999, jnp.int32(1)))  # optax's float32 formula: 0.00099998713
      0.0009999998...
      >>> float(bias_correction(0.0, jnp.int32(3)))
      1.0
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay=}")
    dtype = jnp.promote_types(dtype, jnp.float32)
    if decay == 0.0:
        return jnp.ones((), dtype)
    log_decay = jnp.asarray(math.log(decay), dtype)  # in double, rounded once
    return -jnp.expm1(count.astype(dtype) * log_decay)


def scale_by_torch_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
    """Adam's scaling (before the learning rate) with torch's bias corrections and update order.

    Args:
      b1: ``betas[0]``, in [0, 1).
      b2: ``betas[1]``, in [0, 1).
      eps: added to the bias-corrected ``sqrt(v)``, as torch does.

    Returns:
      An optax transformation whose state is ``optax.ScaleByAdamState``.

    Examples:
      >>> tx = scale_by_torch_adam(0.9, 0.999, 1e-8)
      >>> params = {"w": jnp.zeros(2)}
      >>> u, s = tx.update({"w": jnp.array([0.5, -2.0])}, tx.init(params))
      >>> u["w"].tolist(), int(s.count)  # the first update is g / |g|
      ([1.0, -1.0], 1)
    """
    for name, value in (("b1", b1), ("b2", b2)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {name}={value}")

    def init_fn(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: m + (1 - b1) * (g - m), state.mu, updates)  # torch lerp_
        nu = jax.tree.map(lambda v, g: v * b2 + (1 - b2) * (g * g), state.nu, updates)
        count = optax.safe_increment(state.count)

        def scale(m, v):
            bc1 = bias_correction(b1, count, m.dtype).astype(m.dtype)
            bc2_sqrt = jnp.sqrt(bias_correction(b2, count, v.dtype)).astype(v.dtype)
            return (m / bc1) / (jnp.sqrt(v) / bc2_sqrt + eps)

        new = jax.tree.map(scale, mu, nu)
        return new, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)
