"""The losses bench_losses.py times: jaxloss's, the naive JAX ones, optax's and torch's.

Each JAX loss takes ``(logits (..., C), labels (...), targets (..., C) float)`` and returns the
mean; each torch callable takes the same three on ``(N, C)`` / ``(N,)`` tensors. Only the sigmoid
focal loss (one-hot targets) and ``cross_entropy_soft`` (probability targets: a softmax of random
scores) use ``targets``; every softmax loss that needs a one-hot builds it from the labels inside
the timed function, as jaxloss does.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "parity_tests"))

import jax
import jax.numpy as jnp
import optax
import torch.nn.functional as F
import torch_reference as ref

import jaxloss

GAMMA, SMOOTHING, SIGMOID_ALPHA = 2.0, 0.1, 0.25


def jax_ours(name, num_classes, axis=-1):
    """jaxloss's loss ``name``, with the classes on ``axis``."""
    return {
        "focal": lambda x, y, t: jaxloss.focal_loss(x, y, gamma=GAMMA, axis=axis),
        "focal_sigmoid": lambda x, y, t: jaxloss.sigmoid_focal_loss(
            x, t, gamma=GAMMA, alpha=SIGMOID_ALPHA
        ),
        "cross_entropy": lambda x, y, t: jaxloss.cross_entropy(x, y, axis=axis),
        "cross_entropy_ls": lambda x, y, t: jaxloss.cross_entropy(
            x, y, label_smoothing=SMOOTHING, axis=axis
        ),
        "cross_entropy_soft": lambda x, y, t: jaxloss.cross_entropy(x, t, axis=axis),
        "label_smoothing_others": lambda x, y, t: jaxloss.label_smoothing_loss(
            x, y, smoothing=SMOOTHING, axis=axis
        ),
        "f1": lambda x, y, t: jaxloss.f1_loss(x, y, axis=axis),
    }[name]


def _naive_log_pt(x, y):
    return jnp.take_along_axis(jax.nn.log_softmax(x, axis=-1), y[..., None], axis=-1)[..., 0]


def _naive_f1(x, y, t):
    c = x.shape[-1]
    p = jax.nn.softmax(x, axis=-1).reshape(-1, c)
    t = jax.nn.one_hot(y, c, dtype=x.dtype).reshape(-1, c)
    tp, fp, fn = (t * p).sum(0), ((1 - t) * p).sum(0), (t * (1 - p)).sum(0)
    eps = 1e-7
    precision, recall = tp / (tp + fp + eps), tp / (tp + fn + eps)
    f1 = jnp.clip(2 * precision * recall / (precision + recall + eps), eps, 1 - eps)
    return 1 - f1.mean()


def _naive_sigmoid_focal(x, y, t):
    p = jax.nn.sigmoid(x)
    ce = jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
    p_t = p * t + (1 - p) * (1 - t)
    alpha_t = SIGMOID_ALPHA * t + (1 - SIGMOID_ALPHA) * (1 - t)
    return jnp.mean(alpha_t * ce * (1 - p_t) ** GAMMA)


def jax_naive(name, num_classes):
    """The textbook JAX composition of ``name`` (``log_softmax``, ``take_along_axis``, ``pow``)."""
    c = num_classes

    def focal(x, y, t):
        log_pt = _naive_log_pt(x, y)
        return jnp.mean(-((1 - jnp.exp(log_pt)) ** GAMMA) * log_pt)

    def smoothed(eps_target, eps_other):
        def loss(x, y, t):
            t = jax.nn.one_hot(y, c, dtype=x.dtype)  # built from the labels, as ours does
            dist = t * eps_target + (1 - t) * eps_other
            return jnp.mean(jnp.sum(-dist * jax.nn.log_softmax(x, axis=-1), axis=-1))

        return loss

    return {
        "focal": focal,
        "focal_sigmoid": _naive_sigmoid_focal,
        "cross_entropy": lambda x, y, t: -jnp.mean(_naive_log_pt(x, y)),
        "cross_entropy_soft": lambda x, y, t: (
            -jnp.mean(jnp.sum(t * jax.nn.log_softmax(x, axis=-1), axis=-1))
        ),
        "cross_entropy_ls": smoothed(1 - SMOOTHING + SMOOTHING / c, SMOOTHING / c),
        "label_smoothing_others": smoothed(1 - SMOOTHING, SMOOTHING / (c - 1)),
        "f1": _naive_f1,
    }[name]


def jax_optax(name, num_classes):
    """``optax.losses``' version of ``name``, or ``None`` where optax has none."""
    c = num_classes
    losses = optax.losses

    def smoothed(eps):
        def loss(x, y, t):
            onehot = jax.nn.one_hot(y, c, dtype=x.dtype)  # built from the labels, as ours does
            return jnp.mean(losses.softmax_cross_entropy(x, losses.smooth_labels(onehot, eps)))

        return loss

    return {
        "focal_sigmoid": lambda x, y, t: jnp.mean(
            losses.sigmoid_focal_loss(x, t, alpha=SIGMOID_ALPHA, gamma=GAMMA)
        ),
        "cross_entropy": lambda x, y, t: jnp.mean(
            losses.softmax_cross_entropy_with_integer_labels(x, y)
        ),
        "cross_entropy_ls": smoothed(SMOOTHING),
        "cross_entropy_soft": lambda x, y, t: jnp.mean(losses.softmax_cross_entropy(x, t)),
        # "others" with eps is torch/optax's uniform smoothing with eps * C / (C - 1).
        "label_smoothing_others": smoothed(SMOOTHING * c / (c - 1)),
    }.get(name)


def torch_module(name, num_classes):
    """A callable (x (N, C), y (N,), t (N, C)) -> mean loss, as the reference writes it."""
    if name == "focal":
        module = ref.FocalLossSeed000(alpha=1, gamma=GAMMA)
        return lambda x, y, t: module(x, y)
    if name == "focal_sigmoid":
        return lambda x, y, t: ref.torchvision_sigmoid_focal_loss(
            x, t, alpha=SIGMOID_ALPHA, gamma=GAMMA, reduction="mean"
        )
    if name == "cross_entropy":
        return lambda x, y, t: F.cross_entropy(x, y)
    if name == "cross_entropy_ls":
        return lambda x, y, t: F.cross_entropy(x, y, label_smoothing=SMOOTHING)
    if name == "cross_entropy_soft":
        return lambda x, y, t: F.cross_entropy(x, t)
    if name == "label_smoothing_others":
        module = ref.LabelSmoothingLoss(num_classes, smoothing=SMOOTHING)
        return lambda x, y, t: module(x, y)
    if name == "f1":
        module = ref.F1Loss(num_classes)
        return lambda x, y, t: module(x, y)
    raise KeyError(name)
