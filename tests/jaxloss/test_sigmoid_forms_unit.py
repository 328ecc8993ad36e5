"""``sigmoid_focal_loss``'s ``axis=`` and ``where=``: bad input, and masked elements holding NaN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss._validate import ArgumentTypeError

RNG = np.random.default_rng(0)
LOGITS = jnp.asarray(RNG.normal(size=(3, 4, 2)) * 2, jnp.float32)  # (N, C, d1)
TARGETS = jnp.asarray(RNG.uniform(0, 1, (3, 4, 2)), jnp.float32)
MASK = jnp.asarray(RNG.random((3, 4, 2)) < 0.6).at[0, 0, 0].set(True)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(axis=3), ValueError, r"axis must lie in \[-3, 3\)"),
        (dict(axis=-4), ValueError, "axis"),
        (dict(axis=1.0), ArgumentTypeError, "axis must be an int"),
        (dict(axis=True), ArgumentTypeError, "axis must be an int"),
        (dict(where=np.ones((3, 4, 2), np.int32)), ArgumentTypeError, "where must be a boolean"),
        (dict(where=np.ones((3, 2), np.float32)), ArgumentTypeError, "where must be a boolean"),
        (
            dict(where=np.ones((3, 4), bool), axis=1),
            ValueError,
            r"shape \(3, 4, 2\).*batch shape \(3, 2\).*where.shape=\(3, 4\)",
        ),
        (dict(where=np.ones((3, 2), bool), axis=-1), ValueError, r"batch shape \(3, 4\)"),
        (dict(where=np.ones((4, 2), bool)), ValueError, "where.shape=\\(4, 2\\)"),
    ],
)
def test_bad_axis_and_where_raise_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxloss.sigmoid_focal_loss(LOGITS, TARGETS, **kwargs)


def test_bad_where_for_0d_logits_and_axis_of_0d_logits():
    with pytest.raises(ValueError, match=r"where must have the logits' shape \(\)"):
        jaxloss.sigmoid_focal_loss(1.0, 1.0, where=np.ones(1, bool))
    with pytest.raises(ValueError, match="axis"):
        jaxloss.sigmoid_focal_loss(1.0, 1.0, axis=1)
    assert np.isfinite(float(jaxloss.sigmoid_focal_loss(jnp.float32(1.0), 1.0, axis=0)))


def test_batch_shaped_where_with_axis_1_equals_its_broadcast():
    per_example = MASK[:, 0, :]  # (N, d1)
    full = jnp.broadcast_to(per_example[:, None, :], LOGITS.shape)
    for reduction in ("mean", "sum", "none"):
        np.testing.assert_array_equal(
            jaxloss.sigmoid_focal_loss(
                LOGITS, TARGETS, axis=1, where=per_example, reduction=reduction
            ),
            jaxloss.sigmoid_focal_loss(LOGITS, TARGETS, where=full, reduction=reduction),
        )


def test_masked_targets_are_not_range_checked():
    bad = TARGETS.at[~MASK].set(7.0)
    with pytest.raises(ValueError, match="targets must lie in"):
        jaxloss.sigmoid_focal_loss(LOGITS, bad)
    np.testing.assert_allclose(
        jaxloss.sigmoid_focal_loss(LOGITS, bad, where=MASK),
        jaxloss.sigmoid_focal_loss(LOGITS, TARGETS, where=MASK),
        rtol=1e-6,
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_masked_elements_holding_nan_or_inf_affect_neither_value_nor_gradient(reduction, poison):
    def loss(x, t):
        return jnp.sum(jaxloss.sigmoid_focal_loss(x, t, where=MASK, reduction=reduction))

    f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    clean_value, (clean_gx, clean_gt) = f(LOGITS, TARGETS)
    value, (gx, gt) = f(jnp.where(MASK, LOGITS, poison), jnp.where(MASK, TARGETS, poison))
    assert np.isfinite(float(value)) and float(value) == float(clean_value)
    for got, clean in ((gx, clean_gx), (gt, clean_gt)):
        assert np.all(np.isfinite(got))
        np.testing.assert_array_equal(got, clean)
        np.testing.assert_array_equal(np.asarray(got)[~np.asarray(MASK)], 0.0)


def test_all_masked_mean_is_nan_with_zero_gradient_sum_is_zero():
    nothing = jnp.zeros(LOGITS.shape, bool)
    value, grad = jax.value_and_grad(
        lambda x: jaxloss.sigmoid_focal_loss(x, TARGETS, where=nothing)
    )(LOGITS)
    assert np.isnan(float(value))
    np.testing.assert_array_equal(grad, 0.0)
    assert float(jaxloss.sigmoid_focal_loss(LOGITS, TARGETS, where=nothing, reduction="sum")) == 0


def test_traced_where_and_second_order_under_mask():
    f = jax.jit(lambda x, m: jaxloss.sigmoid_focal_loss(x, TARGETS, where=m, reduction="sum"))
    np.testing.assert_allclose(
        f(LOGITS, MASK),
        jnp.sum(jnp.where(MASK, jaxloss.sigmoid_focal_loss(LOGITS, TARGETS, reduction="none"), 0)),
        rtol=1e-6,
    )
    poisoned = jnp.where(MASK, LOGITS, jnp.nan)
    hess_diag = jax.grad(lambda x: jnp.sum(jax.grad(lambda y: f(y, MASK))(x)))(poisoned)
    assert np.all(np.isfinite(hess_diag))
    np.testing.assert_array_equal(np.asarray(hess_diag)[~np.asarray(MASK)], 0.0)


def test_0d_logits_value_and_gradient():
    value, grad = jax.value_and_grad(
        lambda x: jaxloss.sigmoid_focal_loss(x, 1.0, reduction="none")
    )(jnp.float32(0.5))
    assert value.shape == () and grad.shape == ()
    np.testing.assert_allclose(
        value, jaxloss.sigmoid_focal_loss(jnp.array([0.5]), jnp.array([1.0])), rtol=1e-6
    )
