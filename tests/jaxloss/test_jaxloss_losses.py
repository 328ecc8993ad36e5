"""Unit tests of jaxloss: gradients, identities, dtypes, shapes, validation, compilation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxloss
from jaxloss._target_stats import target_stats

RNG = np.random.default_rng(0)
LOGITS = jnp.asarray(RNG.normal(size=(6, 5)) * 2, jnp.float32)
LABELS = jnp.asarray(RNG.integers(0, 5, 6), jnp.int32)
WEIGHT = jnp.asarray(RNG.uniform(0.5, 2.0, 5), jnp.float32)

SOFTMAX_LOSSES = {
    "focal": functools.partial(jaxloss.focal_loss, gamma=2.0),
    "focal_fractional_gamma": functools.partial(jaxloss.focal_loss, gamma=0.5, alpha=0.25),
    "focal_weighted": functools.partial(jaxloss.focal_loss, gamma=1.5, weight=WEIGHT),
    "cross_entropy": jaxloss.cross_entropy,
    "cross_entropy_smoothed": functools.partial(
        jaxloss.cross_entropy, label_smoothing=0.1, weight=WEIGHT
    ),
    "label_smoothing_others": functools.partial(jaxloss.label_smoothing_loss, smoothing=0.2),
    "f1": jaxloss.f1_loss,
    "f1_unclamped": functools.partial(jaxloss.f1_loss, clamp=False),
}


# ---------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", sorted(SOFTMAX_LOSSES))
def test_check_grads_first_and_second_order(name):
    loss = SOFTMAX_LOSSES[name]
    with jax.enable_x64(True):
        logits = jnp.asarray(LOGITS, jnp.float64)
        check_grads(
            lambda x: loss(x, LABELS), (logits,), order=2, modes=["rev"], atol=1e-6, rtol=1e-6
        )


def test_check_grads_sigmoid_focal_logits_and_soft_targets():
    with jax.enable_x64(True):
        targets = jnp.asarray(RNG.uniform(0.05, 0.95, (6, 5)), jnp.float64)
        logits = jnp.asarray(LOGITS, jnp.float64)
        check_grads(
            lambda x, t: jaxloss.sigmoid_focal_loss(x, t, gamma=1.5),
            (logits, targets),
            order=2,
            modes=["rev"],
            atol=1e-6,
            rtol=1e-6,
        )


def test_hessian_in_every_mode_order_agrees():
    x = jnp.array([[0.3, -1.0, 2.0]], jnp.float32)
    y = jnp.array([1])

    def loss(v):
        return jaxloss.focal_loss(v, y, gamma=0.5)

    hessian = jax.hessian(loss)(x).reshape(3, 3)
    np.testing.assert_allclose(
        hessian, jax.jacrev(jax.jacrev(loss))(x).reshape(3, 3), rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(hessian, hessian.T, atol=1e-6)
    np.testing.assert_allclose(hessian.sum(axis=1), 0.0, atol=1e-6)  # shift invariance
    np.testing.assert_allclose(
        jax.jacfwd(jax.jacfwd(loss))(x).reshape(3, 3), hessian, rtol=1e-5, atol=1e-7
    )
    _, tangent = jax.jvp(loss, (x,), (jnp.ones_like(x),))
    assert abs(float(tangent)) < 1e-6  # shift invariance, in forward mode


def test_target_stats_gradient_matches_autodiff_of_plain_formula():
    def plain(z, y):
        onehot = jax.nn.one_hot(y, z.shape[-1], dtype=bool)
        return (
            jnp.sum(jnp.where(onehot, z, 0), -1),
            jax.nn.logsumexp(jnp.where(onehot, -jnp.inf, z), axis=-1),
        )

    cot = (
        jnp.asarray(RNG.normal(size=6), jnp.float32),
        jnp.asarray(RNG.normal(size=6), jnp.float32),
    )
    _, ours = jax.vjp(lambda z: target_stats(z, LABELS), LOGITS)
    _, theirs = jax.vjp(lambda z: plain(z, LABELS), LOGITS)
    np.testing.assert_allclose(ours(cot)[0], theirs(cot)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SOFTMAX_LOSSES))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_finite_at_plus_minus_100_in_every_dtype(name, dtype):
    corners = jnp.asarray(RNG.choice([-100.0, 100.0], size=(8, 5)), dtype)
    labels = jnp.asarray(RNG.integers(0, 5, 8))
    value, grad = jax.value_and_grad(lambda x: SOFTMAX_LOSSES[name](x, labels))(corners)
    assert value.dtype == jnp.float32, "losses compute and return float32 for half inputs"
    assert grad.dtype == dtype, "the gradient comes back in the input dtype"
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad, np.float32)))


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 2.0])
def test_focal_gradient_finite_at_saturation_for_small_gamma(gamma):
    logits = jnp.array([[100.0, -100.0, -100.0], [-100.0, 100.0, -100.0]])
    grad = jax.grad(lambda x: jaxloss.focal_loss(x, jnp.array([0, 1]), gamma=gamma))(logits)
    np.testing.assert_array_equal(grad, 0.0)
    probs = jax.nn.softmax(logits)
    grad = jax.grad(
        lambda p: jaxloss.focal_loss(p, jnp.array([0, 1]), gamma=gamma, from_logits=False)
    )(probs)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("gamma", [0.05, 0.5, 2.0])
def test_sigmoid_focal_target_gradient_exact_at_saturation(gamma):
    """d loss / d targets at saturated logits (hard and soft targets) equals 50-digit mpmath."""
    import mpmath

    mpmath.mp.dps = 50
    z = np.array([100.0, -100.0, 95.0, -60.0, 50.0, 3.0])
    t = np.array([1.0, 0.0, 0.7, 1.0, 0.0, 0.2])

    def exact(zi, ti):
        zi, ti = mpmath.mpf(zi), mpmath.mpf(ti)

        def f(tt):
            p = 1 / (1 + mpmath.exp(-zi))
            bce = tt * mpmath.log1p(mpmath.exp(-zi)) + (1 - tt) * mpmath.log1p(mpmath.exp(zi))
            q = tt * (1 - p) + (1 - tt) * p
            return (0.25 * tt + 0.75 * (1 - tt)) * bce * q**gamma

        return float(mpmath.diff(f, ti))

    grad = jax.grad(lambda tt: jaxloss.sigmoid_focal_loss(z, tt, gamma=gamma, reduction="sum"))(
        jnp.asarray(t, jnp.float32)
    )
    expected = np.array([exact(a, b) for a, b in zip(z, t, strict=True)])
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=2e-5, atol=1e-30)


def test_sigmoid_focal_finite_at_plus_minus_100_bf16():
    logits = jnp.asarray([100.0, -100.0, 100.0, -100.0], jnp.bfloat16)
    targets = jnp.asarray([1.0, 0.0, 0.0, 1.0])
    value, grad = jax.value_and_grad(lambda x: jaxloss.sigmoid_focal_loss(x, targets, gamma=0.5))(
        logits
    )
    assert value.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad, np.float32)))
    np.testing.assert_allclose(float(value), (0.75 * 100 + 0.25 * 100) / 4, rtol=1e-3)


# --------------------------------------------------------------------------------- identities


def test_gamma_zero_is_cross_entropy():
    np.testing.assert_allclose(
        jaxloss.focal_loss(LOGITS, LABELS, gamma=0.0),
        jaxloss.cross_entropy(LOGITS, LABELS),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        jaxloss.focal_loss(LOGITS, LABELS, gamma=0.0, weight=WEIGHT),
        jaxloss.cross_entropy(LOGITS, LABELS, weight=WEIGHT),
        rtol=1e-6,
    )
    probs = jax.nn.softmax(LOGITS)
    np.testing.assert_allclose(
        jaxloss.focal_loss(probs, LABELS, gamma=0.0, from_logits=False),
        jaxloss.cross_entropy(LOGITS, LABELS),
        rtol=1e-5,
    )


def test_smoothing_zero_is_cross_entropy():
    ce = jaxloss.cross_entropy(LOGITS, LABELS, reduction="none")
    for spread in ("others", "uniform"):
        np.testing.assert_allclose(
            jaxloss.label_smoothing_loss(
                LOGITS, LABELS, smoothing=0.0, spread=spread, reduction="none"
            ),
            ce,
            rtol=1e-6,
        )
    np.testing.assert_allclose(
        jaxloss.cross_entropy(LOGITS, LABELS, label_smoothing=0.0), ce.mean(), rtol=1e-6
    )


def test_cross_entropy_hard_coded_value():
    # torch.nn.functional.cross_entropy(tensor([[1., 2., 3.]]), tensor([0])) = 2.4076059644443806
    np.testing.assert_allclose(
        jaxloss.cross_entropy(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([0])),
        2.4076059644443806,
        rtol=1e-6,
    )
    # focal gamma=2: (1 - 0.09003057)**2 * 2.40760596 = 1.99353...
    np.testing.assert_allclose(
        jaxloss.focal_loss(jnp.array([[1.0, 2.0, 3.0]]), jnp.array([0])),
        (1 - 0.0900305732) ** 2 * 2.4076059644,
        rtol=1e-6,
    )


def test_others_smoothing_equals_uniform_with_rescaled_epsilon():
    c = LOGITS.shape[-1]
    np.testing.assert_allclose(
        jaxloss.label_smoothing_loss(LOGITS, LABELS, smoothing=0.2, weight=WEIGHT),
        jaxloss.cross_entropy(LOGITS, LABELS, label_smoothing=0.2 * c / (c - 1), weight=WEIGHT),
        rtol=1e-6,
    )


def test_f1_clamp_zeroes_the_gradient_of_a_badly_missed_class():
    """Class 2 occurs once but gets probability ~2e-9 everywhere: F1_2 ~ 4e-9 < eps is clipped, so
    with clamp=True nothing pushes its logit up; clamp=False does."""
    logits = jnp.array([[8.0, 0.0, -12.0], [0.0, 8.0, -12.0], [8.0, 0.0, -12.0], [8.0, 0.0, -12.0]])
    labels = jnp.array([0, 1, 0, 2])
    clamped = jax.grad(lambda x: jaxloss.f1_loss(x, labels))(logits)
    free = jax.grad(lambda x: jaxloss.f1_loss(x, labels, clamp=False))(logits)
    assert np.all(np.isfinite(clamped)) and np.all(np.isfinite(free))
    # Every gradient on the -12 logits is ~1e-10 (softmax scales by p ~ 2e-9); what matters is that
    # the unclamped loss pushes the missed example's class-2 logit up 13x harder than the clamped
    # one, whose remaining push comes only from classes 0 and 1 through the softmax coupling.
    assert float(free[3, 2]) < 10 * float(clamped[3, 2]) < 0
    np.testing.assert_allclose(
        np.delete(np.asarray(free), 11), np.delete(np.asarray(clamped), 11), rtol=1e-4, atol=1e-12
    )
    # values differ only by the clipped class: (eps - F1_2) / C
    diff = float(jaxloss.f1_loss(logits, labels, clamp=False) - jaxloss.f1_loss(logits, labels))
    assert 0 < diff < 1e-7 / 3 + 1e-9


# -------------------------------------------------------------------------- shapes, vmap, jit


@pytest.mark.parametrize("name", sorted(SOFTMAX_LOSSES))
def test_one_example_two_classes(name):
    loss = SOFTMAX_LOSSES[name]
    if "weight" in getattr(loss, "keywords", {}):
        loss = functools.partial(loss, weight=jnp.array([0.5, 2.0]))
    value, grad = jax.value_and_grad(loss)(jnp.array([[0.3, -0.3]]), jnp.array([1]))
    assert value.shape == () and np.isfinite(float(value)) and grad.shape == (1, 2)
    assert float(value) > 0 and abs(float(grad.sum())) < 1e-6  # softmax losses: shift invariance


@pytest.mark.parametrize(
    "loss", [jaxloss.focal_loss, jaxloss.cross_entropy, jaxloss.label_smoothing_loss]
)
def test_reduction_none_keeps_batch_shape_and_vmap_equals_batch(loss):
    logits = jnp.asarray(RNG.normal(size=(3, 4, 5)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 5, (3, 4)))
    per_example = loss(logits, labels, reduction="none")
    assert per_example.shape == (3, 4) and per_example.dtype == jnp.float32
    vmapped = jax.vmap(lambda x, y: loss(x, y, reduction="none"))(logits, labels)
    np.testing.assert_allclose(vmapped, per_example, rtol=1e-6)
    np.testing.assert_allclose(loss(logits, labels), per_example.mean(), rtol=1e-6)


def test_f1_where_drops_examples_like_removing_them():
    where = jnp.array([True, False, True, True, False, True])
    bad_labels = jnp.where(where, LABELS, 99)  # masked-out labels are neither counted nor checked
    np.testing.assert_allclose(
        jaxloss.f1_loss(LOGITS, bad_labels, where=where),
        jaxloss.f1_loss(LOGITS[where], LABELS[where]),
        rtol=1e-6,
    )
    assert np.isnan(float(jax.jit(jaxloss.f1_loss)(LOGITS, bad_labels)))
    with pytest.raises(ValueError, match="where"):
        jaxloss.f1_loss(LOGITS, LABELS, where=jnp.ones(6))


def test_leading_axes_are_flattened_for_f1():
    logits = jnp.asarray(RNG.normal(size=(2, 3, 4)), jnp.float32)
    labels = jnp.asarray(RNG.integers(0, 4, (2, 3)))
    np.testing.assert_allclose(
        jaxloss.f1_loss(logits, labels),
        jaxloss.f1_loss(logits.reshape(6, 4), labels.reshape(6)),
        rtol=1e-6,
    )


def test_no_retrace_for_same_shapes_and_new_hyperparameter_values():
    from jaxloss import _focal, _smoothing

    x = jnp.asarray(RNG.normal(size=(7, 3)), jnp.float32)
    y = jnp.asarray(RNG.integers(0, 3, 7), jnp.int32)
    jaxloss.focal_loss(x, y, gamma=2.0)
    jaxloss.cross_entropy(x, y, label_smoothing=0.1)
    focal_before = _focal._focal_loss._cache_size()
    ce_before = _smoothing._cross_entropy._cache_size()
    for step in range(4):
        jaxloss.focal_loss(x + step, y, gamma=0.5 + step)
        jaxloss.cross_entropy(x - step, y, label_smoothing=0.1 * (step + 1))
    assert _focal._focal_loss._cache_size() == focal_before
    assert _smoothing._cross_entropy._cache_size() == ce_before


def test_usable_under_user_jit_grad_and_vmap():
    @jax.jit
    def step(x, y, gamma):
        return jax.grad(lambda v: jaxloss.focal_loss(v, y, gamma=gamma))(x)

    grad = step(LOGITS, LABELS, 2.0)
    np.testing.assert_allclose(
        grad, jax.grad(lambda v: jaxloss.focal_loss(v, LABELS))(LOGITS), rtol=1e-5, atol=1e-7
    )


# ------------------------------------------------------------------------ bad input, eager


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(gamma=-1.0), ValueError, "gamma"),
        (dict(gamma=float("nan")), ValueError, "gamma"),
        (dict(reduction="avg"), ValueError, "reduction"),
        (dict(alpha=jnp.ones(4)), ValueError, "alpha"),
        (dict(weight=jnp.ones(3)), ValueError, "weight"),
        (dict(ignore_index=1.5), TypeError, "ignore_index"),
        (dict(from_logits="yes"), TypeError, "from_logits"),
    ],
)
def test_focal_rejects_bad_static_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxloss.focal_loss(LOGITS, LABELS, **kwargs)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: jaxloss.cross_entropy(LOGITS[0, 0], LABELS[0]), ValueError, "class axis"),
        (lambda: jaxloss.cross_entropy(LOGITS, LABELS[:3]), ValueError, "labels.shape"),
        (lambda: jaxloss.cross_entropy(LOGITS, LABELS.astype(jnp.float32)), TypeError, "labels"),
        (lambda: jaxloss.cross_entropy(LOGITS.astype(jnp.int32), LABELS), TypeError, "logits"),
        (
            lambda: jaxloss.cross_entropy(LOGITS[:, :1], LABELS * 0),
            ValueError,
            "at least 2 classes",
        ),
        (
            lambda: jaxloss.cross_entropy(LOGITS, LABELS, label_smoothing=1.0),
            ValueError,
            "label_smoothing",
        ),
        (
            lambda: jaxloss.label_smoothing_loss(LOGITS, LABELS, smoothing=-0.1),
            ValueError,
            "smoothing",
        ),
        (lambda: jaxloss.label_smoothing_loss(LOGITS, LABELS, spread="all"), ValueError, "spread"),
        (lambda: jaxloss.f1_loss(LOGITS, LABELS, num_classes=4), ValueError, "num_classes"),
        (lambda: jaxloss.f1_loss(LOGITS, LABELS, epsilon=0.0), ValueError, "epsilon"),
        (lambda: jaxloss.sigmoid_focal_loss(LOGITS, LOGITS[:, :2]), ValueError, "targets.shape"),
        (lambda: jaxloss.sigmoid_focal_loss(LOGITS, LOGITS * 0 + 2), ValueError, "targets"),
        (lambda: jaxloss.sigmoid_focal_loss(LOGITS, LOGITS * 0, alpha=1.5), ValueError, "alpha"),
        (
            lambda: jaxloss.disturb_labels(jax.random.key(0), LABELS, alpha=101, num_classes=5),
            ValueError,
            "alpha",
        ),
        (
            lambda: jaxloss.disturb_labels(jax.random.key(0), LABELS, alpha=10, num_classes=1),
            ValueError,
            "num_classes",
        ),
        (
            lambda: jaxloss.disturb_labels(
                jnp.zeros(2, jnp.float32), LABELS, alpha=10, num_classes=5
            ),
            TypeError,
            "key",
        ),
        (
            lambda: jaxloss.disturb_values(jax.random.key(0), LABELS, rate=0.1, scale=1.0),
            TypeError,
            "targets",
        ),
        (
            lambda: jaxloss.disturb_values(jax.random.key(0), LOGITS, rate=0.1, scale=-1.0),
            ValueError,
            "scale",
        ),
    ],
)
def test_rejects_bad_arguments_with_named_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name", sorted(SOFTMAX_LOSSES))
@pytest.mark.parametrize("bad", [-1, 5, 1000])
def test_out_of_range_labels_raise_eagerly_and_give_nan_under_jit(name, bad):
    labels = LABELS.at[2].set(bad)
    loss = SOFTMAX_LOSSES[name]
    with pytest.raises(ValueError, match="labels must lie in"):
        loss(LOGITS, labels)
    assert np.isnan(float(jax.jit(loss)(LOGITS, labels)))


def test_out_of_range_under_jit_poisons_only_that_example():
    labels = LABELS.at[2].set(7)
    per_example = jax.jit(lambda x, y: jaxloss.focal_loss(x, y, reduction="none"))(LOGITS, labels)
    assert np.isnan(per_example[2]) and np.all(np.isfinite(np.delete(np.asarray(per_example), 2)))
    grad = jax.jit(jax.grad(lambda x, y: jaxloss.cross_entropy(x, y, reduction="sum")))(
        LOGITS, labels
    )
    assert np.all(np.isfinite(np.delete(np.asarray(grad), 2, axis=0)))


def test_ignore_index_masks_without_changing_shapes():
    labels = LABELS.at[1].set(-100).at[4].set(-100)
    per_example = jaxloss.cross_entropy(LOGITS, labels, ignore_index=-100, reduction="none")
    assert per_example.shape == (6,)
    assert per_example[1] == 0 and per_example[4] == 0
    kept = np.array([0, 2, 3, 5])
    np.testing.assert_allclose(
        jaxloss.cross_entropy(LOGITS, labels, ignore_index=-100),
        jaxloss.cross_entropy(LOGITS[kept], LABELS[kept]),
        rtol=1e-6,
    )
    grad = jax.grad(lambda x: jaxloss.focal_loss(x, labels, ignore_index=-100))(LOGITS)
    np.testing.assert_array_equal(grad[1], 0.0)


def test_sigmoid_focal_targets_outside_unit_interval_give_nan_under_jit():
    out = jax.jit(lambda x, t: jaxloss.sigmoid_focal_loss(x, t, reduction="none"))(
        jnp.zeros(3), jnp.array([0.0, 1.5, 1.0])
    )
    assert np.isnan(out[1]) and np.isfinite(out[0]) and np.isfinite(out[2])


def test_traced_hyperparameters_are_accepted():
    @jax.jit
    def f(gamma, alpha, smoothing, eps):
        return (
            jaxloss.focal_loss(LOGITS, LABELS, gamma=gamma),
            jaxloss.sigmoid_focal_loss(LOGITS, (LOGITS > 0).astype(jnp.float32), alpha=alpha),
            jaxloss.f1_loss(LOGITS, LABELS, epsilon=eps),
            jaxloss.disturb_labels(jax.random.key(0), LABELS, alpha=smoothing * 100, num_classes=5),
        )

    focal, sigmoid, f1, _ = f(1.0, 0.3, 0.2, 1e-7)
    np.testing.assert_allclose(focal, jaxloss.focal_loss(LOGITS, LABELS, gamma=1.0), rtol=1e-6)
    np.testing.assert_allclose(
        sigmoid,
        jaxloss.sigmoid_focal_loss(LOGITS, (LOGITS > 0).astype(jnp.float32), alpha=0.3),
        rtol=1e-6,
    )
    np.testing.assert_allclose(f1, jaxloss.f1_loss(LOGITS, LABELS), rtol=1e-6)


# ------------------------------------------------------------------------------- disturb


def test_disturb_labels_any_shape_dtype_and_legacy_keys():
    labels = jnp.asarray(RNG.integers(0, 4, (3, 5, 2)), jnp.int8)
    out = jaxloss.disturb_labels(jax.random.PRNGKey(0), labels, alpha=50, num_classes=4)
    assert out.shape == labels.shape and out.dtype == jnp.int8
    assert np.all((np.asarray(out) >= 0) & (np.asarray(out) < 4))


def test_disturb_values_rate_scale_and_identity():
    key = jax.random.key(1)
    y = jnp.zeros(200_000, jnp.float32)
    out = np.asarray(jaxloss.disturb_values(key, y, rate=0.3, scale=2.0))
    changed = out != 0
    assert abs(changed.mean() - 0.3) < 0.005
    assert abs(out[changed].std() - 2.0) < 0.03 and abs(out[changed].mean()) < 0.03
    np.testing.assert_array_equal(jaxloss.disturb_values(key, y, rate=0.0, scale=2.0), y)
    assert (
        jaxloss.disturb_values(key, y.astype(jnp.bfloat16), rate=0.5, scale=1.0).dtype
        == jnp.bfloat16
    )
