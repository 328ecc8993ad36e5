"""Unit tests of ``jaxloss.f1_loss``'s forms: ``axis``, ``where``, unbatched input, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss
from jaxloss import _validate

RNG = np.random.default_rng(12)
LOGITS = jnp.asarray(RNG.normal(size=(8, 5)) * 2, jnp.float32)
LABELS = jnp.asarray(RNG.integers(0, 5, 8), jnp.int32)
WHERE = jnp.array([True, False, True, True, False, True, True, False])


def test_axis_moves_the_class_axis_without_changing_the_loss():
    images = jnp.asarray(RNG.normal(size=(2, 5, 3, 4)), jnp.float32)  # torch's (N, C, H, W)
    labels = jnp.asarray(RNG.integers(0, 5, (2, 3, 4)))
    last = jnp.moveaxis(images, 1, -1)
    value, grad = jax.value_and_grad(lambda x: jaxloss.f1_loss(x, labels, axis=1))(images)
    expected, expected_grad = jax.value_and_grad(lambda x: jaxloss.f1_loss(x, labels))(last)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, jnp.moveaxis(expected_grad, -1, 1), rtol=1e-5, atol=1e-9)
    for axis in (0, -2):  # classes first, as a negative axis
        np.testing.assert_allclose(
            jaxloss.f1_loss(LOGITS.T, LABELS, axis=axis), jaxloss.f1_loss(LOGITS, LABELS), rtol=1e-6
        )
    assert jaxloss.f1_loss(LOGITS, LABELS, num_classes=5, axis=1).shape == ()


def test_axis1_reads_the_logits_in_place():
    images = jnp.zeros((2, 5, 3, 4))
    labels = jnp.zeros((2, 3, 4), jnp.int32)
    jaxpr = jax.make_jaxpr(jax.value_and_grad(lambda x: jaxloss.f1_loss(x, labels, axis=1)))
    assert "transpose" not in str(jaxpr(images))


def test_unbatched_is_a_batch_of_one():
    x = LOGITS[3]
    value, grad = jax.value_and_grad(lambda v: jaxloss.f1_loss(v, LABELS[3]))(x)
    expected, expected_grad = jax.value_and_grad(lambda v: jaxloss.f1_loss(v, LABELS[3:4]))(x[None])
    assert value.shape == () and grad.shape == (5,)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, expected_grad[0], rtol=1e-6)
    assert jaxloss.f1_loss(x, 2, axis=0).shape == ()


@pytest.mark.parametrize("axis", [-1, 1])
def test_where_equals_dropping_the_examples(axis):
    images = jnp.asarray(RNG.normal(size=(4, 5, 6)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 5, (4, 6)))
    where = jnp.asarray(RNG.random((4, 6)) < 0.6)
    if axis == -1:
        images = jnp.moveaxis(images, 1, -1)
    kept = (images if axis == -1 else jnp.moveaxis(images, 1, -1))[where]
    value, grad = jax.value_and_grad(lambda x: jaxloss.f1_loss(x, labels, axis=axis, where=where))(
        images
    )
    expected, expected_grad = jax.value_and_grad(lambda x: jaxloss.f1_loss(x, labels[where]))(kept)
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    grad_last = grad if axis == -1 else jnp.moveaxis(grad, 1, -1)
    np.testing.assert_allclose(grad_last[where], expected_grad, rtol=1e-5, atol=1e-9)
    np.testing.assert_array_equal(grad_last[~where], 0.0)


@pytest.mark.parametrize("bad", [jnp.nan, -jnp.inf])
def test_masked_rows_hold_nan_value_and_gradient_unaffected(bad):
    poisoned = jnp.where(WHERE[:, None], LOGITS, bad)
    labels = jnp.where(WHERE, LABELS, 99)  # masked labels are neither used nor checked

    def loss(x, y):
        return jaxloss.f1_loss(x, y, where=WHERE)

    clean, clean_grad = jax.value_and_grad(loss)(LOGITS, LABELS)
    for f in (jax.value_and_grad(loss), jax.jit(jax.value_and_grad(loss))):
        value, grad = f(poisoned, labels)
        np.testing.assert_array_equal(value, clean)
        np.testing.assert_array_equal(grad, clean_grad)
        np.testing.assert_array_equal(grad[~WHERE], 0.0)
    hessian = jax.jit(jax.hessian(lambda x: loss(x, labels)))(poisoned)
    assert np.all(np.isfinite(hessian))
    np.testing.assert_array_equal(hessian[~WHERE], 0.0)


def test_check_grads_with_where_and_axis1():
    with jax.enable_x64(True):
        images = jnp.asarray(RNG.normal(size=(3, 4, 2)), jnp.float64)
        labels = jnp.asarray(RNG.integers(0, 4, (3, 2)))
        where = jnp.array([[True, False], [True, True], [False, True]])
        check_grads(
            lambda x: jaxloss.f1_loss(x, labels, axis=1, where=where, clamp=False),
            (images,),
            order=2,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


def test_hessian_is_finite_and_symmetric():
    hessian = jax.hessian(lambda x: jaxloss.f1_loss(x, LABELS))(LOGITS).reshape(40, 40)
    assert np.all(np.isfinite(hessian))
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float64])
def test_compute_dtype_and_gradient_dtype(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = LOGITS.astype(dtype)
        value, grad = jax.value_and_grad(lambda v: jaxloss.f1_loss(v, LABELS, where=WHERE))(x)
        assert value.dtype == (jnp.float64 if dtype == jnp.float64 else jnp.float32)
        assert grad.dtype == dtype
        np.testing.assert_allclose(value, jaxloss.f1_loss(LOGITS, LABELS, where=WHERE), rtol=2e-2)


def test_traced_labels_out_of_range_give_nan_unless_masked():
    labels = LABELS.at[1].set(7)  # example 1 is masked by WHERE
    loss = jax.jit(lambda x, y, w: jaxloss.f1_loss(x, y, where=w))
    assert np.isfinite(float(loss(LOGITS, labels, WHERE)))
    assert np.isnan(float(loss(LOGITS, labels, jnp.ones(8, bool))))
    with pytest.raises(ValueError, match="labels must lie in"):
        jaxloss.f1_loss(LOGITS, labels)
    jaxloss.f1_loss(LOGITS, labels, where=WHERE)  # concrete and masked: not checked


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"axis": 2}, ValueError, "axis must lie in"),
        ({"axis": -3}, ValueError, "axis must lie in"),
        ({"axis": 1.0}, _validate.ArgumentTypeError, "axis must be an int"),
        ({"axis": True}, _validate.ArgumentTypeError, "axis must be an int"),
        ({"axis": None}, TypeError, "axis must be an int"),
        ({"axis": 0}, ValueError, "labels.shape"),  # classes of LOGITS are on axis 1
        ({"where": jnp.ones(8)}, _validate.ArgumentTypeError, "where must be a boolean"),
        ({"where": jnp.ones(8, jnp.int32)}, TypeError, "where must be a boolean"),
        ({"where": jnp.ones(7, bool)}, ValueError, "where must have the batch shape"),
        ({"where": jnp.ones((8, 1), bool)}, ValueError, "where must have the batch shape"),
        ({"num_classes": 8}, ValueError, r"num_classes must equal logits.shape\[axis\]=5"),
    ],
)
def test_bad_forms_raise_named_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxloss.f1_loss(LOGITS, LABELS, **kwargs)


def test_bad_shapes_raise_named_errors():
    with pytest.raises(ValueError, match="class axis"):
        jaxloss.f1_loss(jnp.float32(1.0), 0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        jaxloss.f1_loss(jnp.zeros(1), 0)
    with pytest.raises(ValueError, match="labels.shape"):
        jaxloss.f1_loss(jnp.zeros((2, 5, 3)), jnp.zeros((2, 5), jnp.int32), axis=1)
    with pytest.raises(ValueError, match="where must have the batch shape"):
        jaxloss.f1_loss(jnp.zeros((2, 5, 3)), jnp.zeros((2, 3), jnp.int32), axis=1, where=WHERE)
