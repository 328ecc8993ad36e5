"""``sigmoid_focal_loss`` in the forms torch code passes it: ``where=`` (elementwise and one flag
per example, with ``axis=-1`` and ``axis=1``), unbatched and 0-d input, every reduction; values
and gradients against torchvision's function, float32 and float64.

``where=`` is compared with torchvision on the selected elements: ``"mean"`` is their mean,
``"sum"`` their sum, ``"none"`` their losses with zeros at the masked positions (built on the torch
side with ``torch.where``, so masked gradients are zero there too). Tolerances:
``parity_helpers.TOLERANCES``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference as ref
from hypothesis import given
from hypothesis import strategies as st
from parity_helpers import DTYPES, REDUCTIONS, assert_parity, gammas, to_torch

import jaxloss

# (N, C, d1) and classes-last shapes from a small menu (compiled programs are reused).
SHAPES = ((1, 2, 3), (3, 4, 2))
ALPHAS = st.sampled_from([0.25, -1.0]) | st.floats(0, 1)


def _targets(rng, shape):
    hard = rng.integers(0, 2, shape).astype(float)
    return np.where(rng.random(shape) < 0.5, hard, rng.uniform(0, 1, shape))


@st.composite
def masked_cases(draw):
    """``(logits, targets, where, axis)``: ``where`` elementwise or of the batch shape."""
    shape = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = rng.normal(size=shape) * draw(st.sampled_from([0.1, 1.0, 4.0]))
    axis = draw(st.sampled_from([-1, 1]))
    per_example = draw(st.booleans())
    mask_shape = shape
    if per_example:
        mask_shape = tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
    where = rng.random(mask_shape) < draw(st.sampled_from([0.3, 0.7, 1.0]))
    where.flat[rng.integers(where.size)] = True  # one selected element at least
    return logits, _targets(rng, shape), where, axis


def _full_mask(where, shape, axis):
    if where.shape != shape:
        where = np.expand_dims(where, axis)
    return np.broadcast_to(where, shape)


def _torch_masked(targets, mask, alpha, gamma, reduction, dtype):
    def fn(t):
        loss = ref.torchvision_sigmoid_focal_loss(
            t, to_torch(targets, dtype), alpha=alpha, gamma=gamma, reduction="none"
        )
        keep = torch.tensor(mask)
        if reduction == "none":
            return torch.where(keep, loss, torch.zeros_like(loss))
        selected = loss[keep]
        return selected.mean() if reduction == "mean" else selected.sum()

    return fn


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    case=masked_cases(),
    gamma=gammas,
    alpha=ALPHAS,
    reduction=st.sampled_from(REDUCTIONS),
)
def test_where_matches_torchvision_on_selected_elements(dtype, case, gamma, alpha, reduction):
    logits, targets, where, axis = case
    mask = _full_mask(where, logits.shape, axis)
    assert_parity(
        lambda x: jaxloss.sigmoid_focal_loss(
            x, targets, gamma=gamma, alpha=alpha, reduction=reduction, axis=axis, where=where
        ),
        _torch_masked(targets, mask, alpha, gamma, reduction, dtype),
        logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=masked_cases(), gamma=gammas, reduction=st.sampled_from(REDUCTIONS))
def test_where_target_gradient_matches_and_masked_gradients_are_zero(dtype, case, gamma, reduction):
    """The targets' gradient matches torchvision's; both gradients are exactly 0 where masked."""
    logits, targets, where, axis = case
    mask = _full_mask(where, logits.shape, axis)
    targets = np.clip(targets, 0.01, 0.99)

    def ours(x, t):
        return jaxloss.sigmoid_focal_loss(
            x, t, gamma=gamma, reduction=reduction, where=where, axis=axis
        )

    assert_parity(
        lambda t: ours(jnp.asarray(logits, t.dtype), t),
        _torch_masked_targets(logits, mask, gamma, reduction, dtype),
        targets,
        dtype,
    )
    with jax.enable_x64(dtype == np.float64):
        grads = jax.grad(lambda x, t: jnp.sum(ours(x, t)), argnums=(0, 1))(
            jnp.asarray(logits, dtype), jnp.asarray(targets, dtype)
        )
    for grad in grads:
        assert np.all(np.asarray(grad)[~mask] == 0)


def _torch_masked_targets(logits, mask, gamma, reduction, dtype):
    def fn(t):
        loss = ref.torchvision_sigmoid_focal_loss(
            to_torch(logits, dtype), t, alpha=0.25, gamma=gamma, reduction="none"
        )
        keep = torch.tensor(mask)
        if reduction == "none":
            return torch.where(keep, loss, torch.zeros_like(loss))
        return loss[keep].mean() if reduction == "mean" else loss[keep].sum()

    return fn


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.sampled_from([(), (5,)]),
    gamma=gammas,
    alpha=ALPHAS,
    reduction=st.sampled_from(REDUCTIONS),
)
def test_unbatched_and_0d_match_torchvision(dtype, seed, shape, gamma, alpha, reduction):
    """A scalar logit with a scalar target, and 1-D logits, as torchvision's function takes them."""
    rng = np.random.default_rng(seed)
    logits = np.asarray(rng.normal(size=shape) * 3)
    targets = np.asarray(_targets(rng, shape))
    assert_parity(
        lambda x: jaxloss.sigmoid_focal_loss(
            x, targets, gamma=gamma, alpha=alpha, reduction=reduction
        ),
        lambda t: ref.torchvision_sigmoid_focal_loss(
            t, to_torch(targets, dtype), alpha=alpha, gamma=gamma, reduction=reduction
        ),
        logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_0d_where_on_1d_logits_selects_all_or_nothing(dtype):
    """For ``(N,)`` logits the batch shape is ``()``: a 0-d ``where`` is one flag for all."""
    rng = np.random.default_rng(1)
    logits, targets = rng.normal(size=5), _targets(rng, (5,))
    for reduction in REDUCTIONS:
        for selected in (True, False):
            if not selected and reduction == "mean":  # torch's mean over nothing is NaN too
                got = jaxloss.sigmoid_focal_loss(logits, targets, where=np.bool_(False))
                assert np.isnan(float(got))
                continue
            assert_parity(
                lambda x, r=reduction, s=selected: jaxloss.sigmoid_focal_loss(
                    x, targets, reduction=r, where=np.asarray(s)
                ),
                _torch_masked(targets, np.full(5, selected), 0.25, 2.0, reduction, dtype),
                logits,
                dtype,
            )
