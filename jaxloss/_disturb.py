"""DisturbLabel and its regression counterpart: keyed, pure target transforms (seed 004)."""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxloss import _validate


def _check_key(key: jax.Array) -> None:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) or key.dtype == jnp.uint32):
        raise TypeError(
            f"key must be a PRNG key (jax.random.key or jax.random.PRNGKey), got dtype {key.dtype}"
        )


def _check_probability(name: str, value: jax.typing.ArrayLike, high: float) -> None:
    """Concrete scalars are checked against ``[0, high]``; traced ones are taken as they are."""
    if isinstance(value, jax.core.Tracer):
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (numbers.Real, jax.Array))
        or (isinstance(value, jax.Array) and value.ndim != 0)
    ):
        raise TypeError(f"{name} must be a real scalar, got {name}={value!r}")
    if not 0.0 <= float(value) <= high:
        raise ValueError(f"{name} must lie in [0, {high:g}], got {name}={value!r}")


def disturb_labels(
    key: jax.Array,
    labels: jax.typing.ArrayLike,
    *,
    alpha: jax.typing.ArrayLike,
    num_classes: int,
) -> jax.Array:
    r"""DisturbLabel: redraws each label from the seed-004 multinoulli.

    Each label independently becomes class :math:`c` with probability

    .. math::
       P(\tilde y = y) = 1 - \frac{C - 1}{C}\frac{\alpha}{100},\qquad
       P(\tilde y = j) = \frac{1}{C}\frac{\alpha}{100}\quad (j \ne y),

    sampled as: with probability :math:`\alpha/100` replace the label by a uniformly drawn class
    (which may be the true one). The expected cross-entropy under the disturbed labels equals
    cross-entropy with uniform label smoothing :math:`\alpha/100` (``cross_entropy(...,
    label_smoothing=alpha/100)``).

    Args:
      key: a PRNG key (``jax.random.key(...)``; legacy ``PRNGKey`` arrays work too).
      labels: integer array of any shape ``(...)`` with values in ``[0, num_classes)``. Concrete
        out-of-range labels raise ``ValueError``; traced ones are kept when not redrawn.
      alpha: disturbance rate in percent, a scalar in [0, 100] (may be traced, e.g. scheduled).
      num_classes: :math:`C \ge 2`, a Python int (static).

    Returns:
      Labels of the same shape and dtype as ``labels``.

    References:
      Xie et al., "DisturbLabel: Regularizing CNN on the Loss Layer", CVPR 2016; ``DisturbLabel`` of
      seed ``004_1e0f039da5020c04.txt``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> labels = jnp.zeros(10_000, dtype=jnp.int32)
      >>> out = disturb_labels(jax.random.key(0), labels, alpha=30, num_classes=10)
      >>> out.shape, out.dtype
      ((10000,), dtype('int32'))
      >>> 0.70 < float(jnp.mean(out == 0)) < 0.76  # kept with probability 1 - 0.9 * 0.3 = 0.73
      True
    """
    _check_key(key)
    labels = _validate.as_label_array("labels", labels)
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes=!r}")
    _check_probability("alpha", alpha, 100.0)
    _validate.check_labels_in_range(labels, int(num_classes))
    return _disturb_labels(
        key, labels, jnp.asarray(alpha, jnp.float32), num_classes=int(num_classes)
    )


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _disturb_labels(key, labels, alpha, *, num_classes):
    flip_key, class_key = jax.random.split(key)
    flip = jax.random.bernoulli(flip_key, alpha / 100, labels.shape)
    drawn = jax.random.randint(class_key, labels.shape, 0, num_classes, dtype=labels.dtype)
    return jnp.where(flip, drawn, labels)


def disturb_values(
    key: jax.Array,
    targets: jax.typing.ArrayLike,
    *,
    rate: jax.typing.ArrayLike,
    scale: jax.typing.ArrayLike,
) -> jax.Array:
    r"""DisturbValue: Gaussian noise of std ``scale`` on a ``rate`` fraction of regression targets.

    .. math::
     \tilde y = y + m\,\sigma\,\xi,\qquad m \sim \operatorname{Bernoulli}(\text{rate}),\
     \xi \sim \mathcal N(0, 1)

    Args:
    key: a PRNG key.
    targets: float array of any shape ``(...)``.
    rate: fraction of targets to disturb, a scalar in [0, 1] (may be traced).
    scale: noise standard deviation :math:`\sigma \ge 0` (may be traced).

    Returns:
    Disturbed targets, same shape and dtype as ``targets``.

    References:
    The "disturb value" regulariser for regression mentioned in seed ``004_1e0f039da5020c04.txt``
    (Yi et al., "DisturbValue", 2019).

    Examples:
    >>> import jax, jax.numpy as jnp
    >>> y = jnp.zeros(10_000)
    >>> out = disturb_values(jax.random.key(0), y, rate=0.25, scale=2.0)
    >>> 0.23 < float(jnp.mean(out != 0)) < 0.27
    True
    """
    _check_key(key)
    targets = _validate.as_float_array("targets", targets)
    _check_probability("rate", rate, 1.0)
    if not isinstance(scale, jax.core.Tracer) and float(np.asarray(scale)) < 0:
        raise ValueError(f"scale must be >= 0, got {scale=!r}")
    return _disturb_values(
        key, targets, jnp.asarray(rate, jnp.float32), jnp.asarray(scale, targets.dtype)
    )


@jax.jit
def _disturb_values(key, targets, rate, scale):
    mask_key, noise_key = jax.random.split(key)
    mask = jax.random.bernoulli(mask_key, rate, targets.shape)
    noise = jax.random.normal(noise_key, targets.shape, targets.dtype) * scale
    return jnp.where(mask, targets + noise, targets)
