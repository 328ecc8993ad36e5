"""Forward mode of the index forms (``jax.jvp``, ``jax.jacfwd``, ``check_grads`` in both modes),
at the edges: saturated rows on both sides of the fast path's limits, masked NaN logits, ignored
labels, torch's layout, unbatched input, half precision; and the boundary of the promise:
``f1_loss`` and the ``linear_*`` losses keep a ``custom_vjp``, so forward mode raises there.

Against torch's own forward mode: ``parity_tests/test_forward_mode_parity.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss
from jaxloss._target_stats import _fast_path_limits

INDEX_LOSSES = {
    "cross_entropy": lambda x, y, **kw: jaxloss.cross_entropy(x, y, **kw),
    "smoothed_ce": lambda x, y, **kw: jaxloss.cross_entropy(
        x, y, label_smoothing=0.1, weight=jnp.linspace(0.5, 2.0, x.shape[kw.get("axis", -1)]), **kw
    ),
    "focal": lambda x, y, **kw: jaxloss.focal_loss(x, y, gamma=0.5, alpha=0.25, **kw),
    "focal_gamma2": lambda x, y, **kw: jaxloss.focal_loss(x, y, gamma=2.0, **kw),
    "smoothing_others": lambda x, y, **kw: jaxloss.label_smoothing_loss(x, y, smoothing=0.2, **kw),
    "smoothing_uniform": lambda x, y, **kw: jaxloss.label_smoothing_loss(
        x, y, smoothing=0.2, spread="uniform", **kw
    ),
}


@pytest.mark.parametrize("name", INDEX_LOSSES)
def test_check_grads_in_both_modes_to_second_order(name):
    """``reduction="none"``: the whole per-example Jacobian; the reductions after it are linear
    (and tested in forward mode against torch in the parity suite)."""
    reduction = "none"
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(5, 4)) * 2)
        y = jnp.asarray(rng.integers(0, 4, size=5))
        fn = INDEX_LOSSES[name]
        check_grads(lambda z: fn(z, y, reduction=reduction), (x,), order=2, modes=["fwd", "rev"])


def _saturated_rows(dtype, num_classes):
    """Rows around the fast path's limits: one other logit above the target by ``clamp`` +- a few
    (the case that once returned the clamp), margins that underflow ``s_o``, logits of 1e4."""
    clamp, _, _ = _fast_path_limits(dtype, num_classes)
    # with the rest far below, a clamped term is all of s_o: the case that once returned the clamp
    rows, labels = [], []
    for rest in (0.0, -1e3):  # the remaining classes level with the target, or far below it
        for margin in (clamp - 3, clamp - 1, clamp - 0.01, clamp, clamp + 0.01, clamp + 2, 200.0):
            row = np.full(num_classes, rest)
            row[0] = 0.0
            row[1] = margin  # one other class far above the target (class 0)
            rows.append(row)
            labels.append(0)
    for margin in (30.0, 50.0, 120.0, 800.0):  # the target far above the others (rows 14 to 17)
        row = np.zeros(num_classes)
        row[0] = margin
        rows.append(row)
        labels.append(0)
    rows.append(np.linspace(-1e4, 1e4, num_classes))
    labels.append(num_classes // 2)
    return np.stack(rows), np.asarray(labels)


def _exact_loss_and_grad(x, y):
    """Cross-entropy per row and its gradient, in float64 NumPy, exact to ~1e-16 relative even
    for tiny losses: ``log1p(sum_{j != t} exp(x_j - x_t))`` where the others are below the
    target (``lse - x_t`` by subtraction loses every digit there), shifted by the largest other
    above it."""
    rows = np.arange(len(y))
    d = x - x[rows, y][:, None]  # x_j - x_t
    others = d.copy()
    others[rows, y] = -np.inf
    a = np.maximum(others.max(axis=1), 0.0)
    loss = np.where(
        a > 0,
        a + np.log(np.exp(-a) + np.exp(others - a[:, None]).sum(axis=1)),
        np.log1p(np.exp(np.minimum(others, 0.0)).sum(axis=1)),
    )
    grad = np.exp(d - loss[:, None])
    grad[rows, y] = -np.exp(others - loss[:, None]).sum(axis=1)  # p_t - 1, without cancellation
    return loss, grad


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("num_classes", [2, 12, 1000])
def test_values_and_derivatives_exact_across_the_fast_paths_limits(dtype, num_classes):
    """The regression: with one clamped term and a float32 ``exp(clamp)`` rounded below the
    float64 limit, the loss was the clamp (85.24 instead of 90.24 at C = 12, margin clamp + 5).

    Each row alone (the fast path is decided per batch: one saturated row sends the whole batch
    down the exact path), then all rows as one batch."""
    with jax.enable_x64(dtype == jnp.float64):
        x, y = _saturated_rows(dtype, num_classes)
        want, want_grad = _exact_loss_and_grad(x, y)
        # the exact values rounded to the dtype (7.7e-53 is 0 in float32)
        want = want.astype(dtype).astype(np.float64)
        xs = jnp.asarray(x, dtype)
        # 64 ulp: XLA:CPU's exp is a polynomial good to a few ulp and the sum over C adds
        # log2(C) (measured worst: 27 ulp in float64 at C = 12); the regression was 10 %
        eps = float(jnp.finfo(dtype).eps)

        def total(z, t):
            return jaxloss.cross_entropy(z, t, reduction="sum")

        value_and_grad = jax.jit(jax.value_and_grad(total))
        forward = jax.jit(jax.jacfwd(total))
        for i in range(len(y)):
            row, label = xs[i : i + 1], jnp.asarray(y[i : i + 1])
            value, grad = value_and_grad(row, label)
            np.testing.assert_allclose(float(value), want[i], rtol=64 * eps, atol=1e-300, err_msg=i)
            np.testing.assert_allclose(grad[0], want_grad[i], atol=8 * eps, err_msg=str(i))
            np.testing.assert_allclose(forward(row, label)[0], want_grad[i], atol=8 * eps)
        batch = np.asarray(jaxloss.cross_entropy(xs, y, reduction="none"), np.float64)
        np.testing.assert_allclose(batch, want, rtol=64 * eps, atol=1e-300)
        np.testing.assert_allclose(jax.grad(total)(xs, y), want_grad, atol=8 * eps)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", INDEX_LOSSES)
def test_jacfwd_equals_jacrev_and_hessians_agree_at_saturation(dtype, name):
    with jax.enable_x64(dtype == jnp.float64):
        x, y = _saturated_rows(dtype, 12)
        xs = jnp.asarray(x, dtype)
        fn = INDEX_LOSSES[name]

        def loss(z):
            return fn(z, y, reduction="sum")

        forward, reverse = jax.jacfwd(loss)(xs), jax.jacrev(loss)(xs)
        assert bool(jnp.all(jnp.isfinite(forward)))
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(forward, reverse, rtol=64 * eps, atol=64 * eps)
        # rows alone, so each takes its own path (the batch above took the exact one): margin
        # clamp - 3 and target + 30 (fast), clamp + 2 (overflow) and target + 120 (underflow)
        for i in (0, 5, 14, 16):

            def one(z, i=i):
                return fn(z[None], y[i : i + 1], reduction="sum")

            row = xs[i]
            np.testing.assert_allclose(
                jax.jacfwd(one)(row), jax.grad(one)(row), rtol=64 * eps, atol=64 * eps
            )
            h_ff = jax.jacfwd(jax.jacfwd(one))(row)
            assert bool(jnp.all(jnp.isfinite(h_ff))), i
            np.testing.assert_allclose(h_ff, jax.hessian(one)(row), rtol=1e3 * eps, atol=1e3 * eps)


@pytest.mark.parametrize("name", INDEX_LOSSES)
def test_masked_nan_logits_reach_no_tangent_and_axis1_matches_classes_last(name):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)  # (N, C, d): torch's layout
    y = jnp.asarray(rng.integers(0, 4, size=(3, 5)))
    where = jnp.asarray(rng.random((3, 5)) < 0.6).at[0, 0].set(True).at[1, 2].set(False)
    poisoned = x.at[1, :, 2].set(jnp.nan)
    tangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    fn = INDEX_LOSSES[name]
    value, d = jax.jvp(lambda z: fn(z, y, axis=1, where=where), (poisoned,), (tangent,))
    clean_value, clean_d = jax.jvp(lambda z: fn(z, y, axis=1, where=where), (x,), (tangent,))
    assert np.isfinite(float(d))
    np.testing.assert_allclose(value, clean_value, rtol=1e-6)
    np.testing.assert_allclose(d, clean_d, rtol=1e-5, atol=1e-7)
    moved = jnp.moveaxis(x, 1, -1)
    _, d_last = jax.jvp(lambda z: fn(z, y, where=where), (moved,), (jnp.moveaxis(tangent, 1, -1),))
    np.testing.assert_allclose(d, d_last, rtol=1e-5, atol=1e-6)


def test_ignored_labels_unbatched_input_and_half_precision():
    x = jnp.array([[0.3, -1.0, 2.0], [1.0, 0.5, -0.5]], jnp.float32)
    y = jnp.array([1, -100])
    dx = jnp.array([[1.0, 2.0, -1.0], [5.0, 5.0, 5.0]], jnp.float32)
    _, d = jax.jvp(lambda z: jaxloss.cross_entropy(z, y, ignore_index=-100), (x,), (dx,))
    _, d_one = jax.jvp(lambda z: jaxloss.cross_entropy(z, y[:1]), (x[:1],), (dx[:1],))
    np.testing.assert_allclose(d, d_one, rtol=1e-6)  # the ignored row contributes nothing
    _, d_unbatched = jax.jvp(lambda z: jaxloss.focal_loss(z, y[0]), (x[0],), (dx[0],))
    _, d_batched = jax.jvp(lambda z: jaxloss.focal_loss(z, y[:1]), (x[:1],), (dx[:1],))
    np.testing.assert_allclose(d_unbatched, d_batched, rtol=1e-6)
    for half in (jnp.bfloat16, jnp.float16):
        value, d_half = jax.jvp(
            lambda z: jaxloss.cross_entropy(z, y[:1]), (x[:1].astype(half),), (dx[:1].astype(half),)
        )
        assert value.dtype == jnp.float32
        np.testing.assert_allclose(float(d_half), float(d_one), rtol=1e-2)


def test_out_of_range_labels_under_jit_give_nan_in_forward_mode_too():
    x = jnp.zeros((2, 3))
    y = jnp.array([1, 3])  # 3 is out of range for C = 3
    value, d = jax.jit(lambda z, t: jax.jvp(lambda v: jaxloss.cross_entropy(v, t), (z,), (z + 1,)))(
        x, y
    )
    assert np.isnan(float(value))


def test_sigmoid_focal_forward_mode_in_every_argument():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        z = jnp.asarray(rng.normal(size=(4, 3)) * 3)
        t = jnp.asarray(rng.uniform(size=(4, 3)))

        def loss(z, t, gamma, alpha):
            return jaxloss.sigmoid_focal_loss(z, t, gamma=gamma, alpha=alpha)

        args = (z, t, jnp.asarray(1.5), jnp.asarray(0.25))
        check_grads(loss, args, order=1, modes=["fwd", "rev"])
        check_grads(lambda z, t: loss(z, t, 1.5, 0.25), args[:2], order=2, modes=["fwd", "rev"])
        saturated = jnp.array([-100.0, -50.0, 0.0, 50.0, 100.0])
        hard = jnp.array([1.0, 1.0, 0.0, 0.0, 0.0])
        one = lambda v: jaxloss.sigmoid_focal_loss(v, hard, gamma=2.0)  # noqa: E731
        np.testing.assert_allclose(jax.jacfwd(one)(saturated), jax.grad(one)(saturated), rtol=1e-12)
        h_ff = jax.jacfwd(jax.jacfwd(one))(saturated)
        assert bool(jnp.all(jnp.isfinite(h_ff)))
        np.testing.assert_allclose(h_ff, jax.hessian(one)(saturated), rtol=1e-10, atol=1e-300)


def test_sigmoid_focal_forward_mode_with_where_axis1_and_masked_nan_logits():
    """The README's "every form" for the sigmoid focal loss in forward mode: a batch-shaped
    ``where`` with ``axis=1`` (torch's layout), NaN logits and targets where it is False."""
    rng = np.random.default_rng(3)
    z = jnp.asarray(rng.normal(size=(3, 4, 5)) * 3, jnp.float32)
    t = jnp.asarray(rng.uniform(size=(3, 4, 5)), jnp.float32)
    where = jnp.asarray(rng.random((3, 5)) < 0.6).at[0, 0].set(True).at[1, 2].set(False)
    dz, dt = (jnp.asarray(rng.normal(size=z.shape), jnp.float32) for _ in range(2))

    def loss(z, t):
        return jaxloss.sigmoid_focal_loss(z, t, axis=1, where=where)

    value, d = jax.jvp(loss, (z.at[1, :, 2].set(jnp.nan), t.at[1, :, 2].set(jnp.nan)), (dz, dt))
    clean_value, clean_d = jax.jvp(loss, (z, t), (dz, dt))
    assert np.isfinite(float(d)) and abs(float(clean_d)) > 1e-3
    np.testing.assert_allclose(value, clean_value, rtol=1e-6)
    np.testing.assert_allclose(d, clean_d, rtol=1e-5, atol=1e-7)
    grad_z, grad_t = jax.grad(loss, argnums=(0, 1))(z, t)
    want = jnp.sum(grad_z * dz) + jnp.sum(grad_t * dt)
    np.testing.assert_allclose(clean_d, want, rtol=1e-5, atol=1e-6)


def test_f1_and_linear_losses_keep_reverse_mode_only():
    """The boundary of the promise: these raise instead of computing anything in forward mode."""
    x = jnp.array([[0.3, -1.0, 2.0], [1.0, 0.5, -0.5]])
    y = jnp.array([1, 2])
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda z: jaxloss.f1_loss(z, y), (x,), (jnp.ones_like(x),))
    kernel = jnp.ones((3, 4))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda z: jaxloss.linear_cross_entropy(z, kernel, y), (x,), (jnp.ones_like(x),))
