"""Training losses by name, built from jaxloss, with masked (padded) examples left out.

`create_loss(name, num_classes=..., **hyper_parameters)` returns `loss_fn(logits, labels, mask)`
giving the mean loss over the examples whose `mask` is True (all of them when `mask is None`).
Every loss gets the mask as jaxloss's `where=` (one path for all five): the per-example losses are
summed over the unmasked examples (`reduction="sum"`) and divided by their count, so a padded
evaluation batch counts exactly its real examples and padding gets a zero gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

import jaxloss

__all__ = ["LOSSES", "LossFn", "create_loss", "loss_from_config"]

LossFn = Callable[[jax.Array, jax.Array, "jax.Array | None"], jax.Array]


def _mean_over(total: jax.Array, mask: jax.Array | None, batch: int, per_example: int = 1):
    """``total`` (a ``reduction="sum"`` loss over the unmasked examples) over their count.

    An all-masked batch gives 0 (and a zero gradient), not jaxloss's ``0 / 0``: a micro-batch made
    only of padding must not turn the accumulated gradient into NaN.
    """
    count = batch if mask is None else jnp.maximum(jnp.sum(mask), 1)
    return total / (jnp.asarray(count, total.dtype) * per_example)


def _where(mask: jax.Array | None) -> jax.Array | None:
    return None if mask is None else jnp.asarray(mask, bool)


def _ce(logits, labels, mask, *, label_smoothing):
    total = jaxloss.cross_entropy(
        logits, labels, label_smoothing=label_smoothing, where=_where(mask), reduction="sum"
    )
    return _mean_over(total, mask, labels.size)


def _focal(logits, labels, mask, *, gamma, alpha):
    total = jaxloss.focal_loss(
        logits, labels, gamma=gamma, alpha=alpha, where=_where(mask), reduction="sum"
    )
    return _mean_over(total, mask, labels.size)


def _smoothing(logits, labels, mask, *, smoothing, spread):
    total = jaxloss.label_smoothing_loss(
        logits, labels, smoothing=smoothing, spread=spread, where=_where(mask), reduction="sum"
    )
    return _mean_over(total, mask, labels.size)


def _sigmoid_focal(logits, labels, mask, *, gamma, alpha):
    targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    total = jaxloss.sigmoid_focal_loss(
        logits, targets, gamma=gamma, alpha=alpha, where=_where(mask), reduction="sum"
    )
    # torchvision's "mean" is over all elements: the examples' count times the classes
    return _mean_over(total, mask, labels.size, logits.shape[-1])


def _f1(logits, labels, mask, *, epsilon):
    return jaxloss.f1_loss(logits, labels, epsilon=epsilon, where=_where(mask))


LOSSES: dict[str, Callable[..., jax.Array]] = {
    "ce": _ce,
    "focal": _focal,
    "label_smoothing": _smoothing,
    "f1": _f1,
    "sigmoid_focal": _sigmoid_focal,
}


def _alpha(focal_alpha: float | Sequence[float] | None, num_classes: int, name: str):
    if focal_alpha is None or isinstance(focal_alpha, (int, float)):
        return focal_alpha
    alpha = tuple(float(a) for a in focal_alpha)
    if len(alpha) == 1:
        return alpha[0]
    if name == "sigmoid_focal":
        raise ValueError(f"sigmoid_focal takes a scalar alpha, got {focal_alpha=}")
    if len(alpha) != num_classes:
        raise ValueError(
            f"focal alpha needs one value per class ({num_classes}), got {focal_alpha=}"
        )
    return jnp.asarray(alpha, jnp.float32)


def create_loss(
    name: str,
    *,
    num_classes: int,
    focal_gamma: float = 2.0,
    focal_alpha: float | Sequence[float] | None = None,
    label_smoothing: float | None = None,
    smoothing_spread: str = "others",
    f1_epsilon: float = 1e-7,
) -> LossFn:
    """Builds `loss_fn(logits, labels, mask=None) -> scalar` by name.

    Args:
      name: one of `LOSSES`: "ce" (torch cross-entropy, `label_smoothing` spread over all classes),
        "focal" (softmax focal, `focal_gamma`, `focal_alpha` scalar or one value per class),
        "label_smoothing" (the seeds' loss, `label_smoothing` default 0.2 as seed 004,
        `smoothing_spread`), "f1" (soft macro-F1, `f1_epsilon`), "sigmoid_focal" (torchvision's,
        one-hot targets from the labels, `focal_alpha` scalar default 0.25).
      num_classes: number of classes `C`.
      focal_gamma: focal / sigmoid_focal gamma, >= 0.
      focal_alpha: focal alpha: None, a scalar or one value per class (sigmoid_focal: a scalar).
      label_smoothing: "ce": torch's label_smoothing (default 0); "label_smoothing": the smoothing
        (default 0.2), in [0, 1).
      smoothing_spread: "label_smoothing": "others" (the seeds) or "uniform" (torch).
      f1_epsilon: the F1 loss epsilon, in (0, 0.5).

    Returns:
      A function of float `(batch, C)` logits, int `(batch,)` labels and an optional bool `(batch,)`
      mask, returning the float32 mean loss over the unmasked examples.

    Examples:
      >>> loss = create_loss("focal", num_classes=3, focal_gamma=0.0)
      >>> logits, labels = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]), jnp.array([0, 1])
      >>> round(float(loss(logits, labels, jnp.array([True, False]))), 4)  # CE of example 0
      0.2413
    """
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes=}")
    alpha = _alpha(focal_alpha, num_classes, name)
    if name == "ce":
        kw = dict(label_smoothing=0.0 if label_smoothing is None else float(label_smoothing))
        if not 0.0 <= kw["label_smoothing"] < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing=}")
    elif name == "focal":
        kw = dict(gamma=float(focal_gamma), alpha=alpha)
    elif name == "label_smoothing":
        kw = dict(
            smoothing=0.2 if label_smoothing is None else float(label_smoothing),
            spread=smoothing_spread,
        )
        if not 0.0 <= kw["smoothing"] < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing=}")
        if smoothing_spread not in ("others", "uniform"):
            raise ValueError(
                f"smoothing_spread must be 'others' or 'uniform', got {smoothing_spread=}"
            )
    elif name == "sigmoid_focal":
        kw = dict(gamma=float(focal_gamma), alpha=0.25 if alpha is None else float(alpha))
    else:
        if not 0.0 < f1_epsilon < 0.5:
            raise ValueError(f"f1_epsilon must be in (0, 0.5), got {f1_epsilon=}")
        kw = dict(epsilon=float(f1_epsilon))
    if name in ("focal", "sigmoid_focal") and focal_gamma < 0:
        raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma=}")
    fn = functools.partial(LOSSES[name], **kw)

    def loss_fn(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        return fn(logits, labels, mask)

    return loss_fn


_cached_loss = functools.lru_cache(maxsize=16)(create_loss)


def loss_from_config(config: Any, num_classes: int) -> LossFn:
    """The run's loss: :func:`create_loss` from a ``train.config.Config``'s loss fields.

    ``loss``, ``focal_gamma``, ``focal_alpha``, ``label_smoothing``, ``smoothing_spread`` and
    ``f1_epsilon``. Equal settings give the same function (cached), so the jitted steps that close
    over it (``train.step.compiled_steps``) compile once per process.

    Examples:
      >>> from train.config import Config
      >>> loss_fn = loss_from_config(Config(loss="focal"), num_classes=3)
      >>> loss_fn is loss_from_config(Config(loss="focal"), num_classes=3)
      True
      >>> round(float(loss_fn(jnp.zeros((2, 3)), jnp.array([0, 1]))), 4)  # (2/3)**2 * log 3
      0.4883
    """
    return _cached_loss(
        config.loss,
        num_classes=num_classes,
        focal_gamma=config.focal_gamma,
        focal_alpha=config.focal_alpha,
        label_smoothing=config.label_smoothing,
        smoothing_spread=config.smoothing_spread,
        f1_epsilon=config.f1_epsilon,
    )
