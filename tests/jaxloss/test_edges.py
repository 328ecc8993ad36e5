"""Edge cases: higher-order derivatives at saturation, gradient precision, label dtypes, traced
smoothing.

References are computed with mpmath at 50 digits (closed forms, no finite differences), never with
the code under test.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest

import jaxloss
from jaxloss import _smoothing, _validate

mpmath.mp.dps = 50

# ------------------------------------------------------------ references for softmax losses


def _softmax_losses_of_d(gamma):
    """``(F', F'', F''')`` of ``F(d) = sigmoid(d)**gamma * softplus(d)`` as closed forms.

    Every softmax loss here is ``F(d)`` plus a function linear in ``z`` with ``d = lse_o - z_t``:
    cross-entropy and label smoothing have ``gamma = 0`` (``-log p_t = softplus(d)``,
    ``lse = z_t + softplus(d)``), the focal loss ``F = (1 - p_t)**gamma (-log p_t)``.
    """

    def derivs(d):
        a = 1 / (1 + mpmath.exp(-d))  # 1 - p_t
        b = 1 / (1 + mpmath.exp(d))  # p_t
        s = mpmath.log1p(mpmath.exp(d)) if d < 0 else d + mpmath.log1p(mpmath.exp(-d))
        ag = a**gamma if gamma else mpmath.mpf(1)
        g0 = gamma * b * s + a
        g1 = a * b * (1 + gamma - gamma * s)
        g2 = a * b * ((b - a) * (1 + gamma - gamma * s) - gamma * a)
        f1 = ag * g0
        f2 = ag * (gamma * b * g0 + g1)
        f3 = ag * (gamma * b * (gamma * b * g0 + g1) - gamma * a * b * g0 + gamma * b * g1 + g2)
        return f1, f2, f3

    return derivs


def _row_reference(z, t, v, gamma):
    """mpmath Hessian ``(C, C)`` and third directional derivative along ``v`` of ``F(d(z))``."""
    z = [mpmath.mpf(float(x)) for x in z]
    v = [mpmath.mpf(float(x)) for x in v]
    c = len(z)
    others = [j for j in range(c) if j != t]
    m_o = max(z[j] for j in others)
    e = {j: mpmath.exp(z[j] - m_o) for j in others}
    total = sum(e.values())
    lse_o = m_o + mpmath.log(total)
    p = {j: e[j] / total for j in others}
    d = lse_o - z[t]
    f1, f2, f3 = _softmax_losses_of_d(gamma)(d)
    grad_d = [p[j] if j != t else mpmath.mpf(-1) for j in range(c)]
    hess = np.empty((c, c), dtype=object)
    for i in range(c):
        for k in range(c):
            h_d = mpmath.mpf(0)
            if i != t and k != t:
                if i == k:  # p_i (1 - p_i) with 1 - p_i = sum of the other others / total
                    h_d = p[i] * sum(e[j] for j in others if j != i) / total
                else:
                    h_d = -p[i] * p[k]
            hess[i, k] = f2 * grad_d[i] * grad_d[k] + f1 * h_d
    mu = sum(p[j] * v[j] for j in others)
    d1 = mu - v[t]
    d2 = sum(p[j] * (v[j] - mu) ** 2 for j in others)
    d3 = sum(p[j] * (v[j] - mu) ** 3 for j in others)
    third = f3 * d1**3 + 3 * f2 * d1 * d2 + f1 * d3
    a1 = sum(p[j] * abs(v[j]) for j in others) + abs(v[t])
    a3 = sum(p[j] * abs(v[j] - mu) ** 3 for j in others)
    # |F'''| may vanish by cancellation (b - a at d = 0); |F''| bounds its rounding error.
    scale3 = (abs(f3) + abs(f2)) * a1**3 + 3 * abs(f2) * a1 * d2 + abs(f1) * a3
    to_float = np.vectorize(float, otypes=[np.float64])
    return to_float(hess), float(third), float(scale3)


SOFTMAX = {
    "cross_entropy": (jaxloss.cross_entropy, 0.0),
    "focal_gamma2": (functools.partial(jaxloss.focal_loss, gamma=2.0), 2.0),
    "focal_gamma0.5": (functools.partial(jaxloss.focal_loss, gamma=0.5), 0.5),
    # Smoothing adds (eps / C) (C lse - sum z), whose second derivatives equal those of -log p_t.
    "label_smoothing": (functools.partial(jaxloss.label_smoothing_loss, smoothing=0.1), 0.0),
    "cross_entropy_smoothed": (functools.partial(jaxloss.cross_entropy, label_smoothing=0.3), 0.0),
}
MARGINS = [0.0, 1.0, 5.0, 20.0, 44.0, 50.0, 60.0, 70.0, 90.0, 100.0, 200.0, 360.0, 500.0, 600.0]
MARGINS += [700.0, 1000.0, 1e4]


def _rows(margin, sign, num_classes):
    """Target 0 at logit 0, the others at ``-sign * (margin + j / 2)``: margin ``sign * margin``."""
    z = np.zeros(num_classes)
    z[1:] = -sign * (margin + 0.5 * np.arange(num_classes - 1))
    return z


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("num_classes", [2, 10])  # the two-class edge and a general C
@pytest.mark.parametrize("name", sorted(SOFTMAX))
def test_hessian_and_third_order_finite_and_exact_on_a_grid_of_margins(name, num_classes, dtype):
    loss, gamma = SOFTMAX[name]
    rtol = 2e-4 if dtype == "float32" else 1e-9
    tiny = float(np.finfo(dtype).tiny)
    v = np.random.default_rng(num_classes).normal(size=num_classes)
    y = jnp.array([0])
    with jax.enable_x64(dtype == "float64"):
        f = lambda x: loss(x[None], y)  # noqa: E731
        hessian = jax.jit(jax.hessian(f))
        hvp_rev = jax.jit(lambda x, u: jax.grad(lambda w: jnp.vdot(jax.grad(f)(w), u))(x))

        def along(x, u):
            return lambda s: f(x + s * u)

        third = jax.jit(lambda x, u: jax.grad(jax.grad(jax.grad(along(x, u))))(0.0))
        for margin in MARGINS:
            for sign in (1.0, -1.0):
                z = _rows(margin, sign, num_classes)
                x = jnp.asarray(z, dtype)
                u = jnp.asarray(v, dtype)
                h_ref, t_ref, t_scale = _row_reference(np.asarray(x, np.float64), 0, v, gamma)
                where = f"{name} C={num_classes} {dtype} margin={sign * margin}"
                h = np.asarray(hessian(x), np.float64)
                assert np.all(np.isfinite(h)), where
                # Entries within 1e4 smallest normals of 0 are only absolutely accurate (underflow).
                atol = rtol * np.abs(h_ref).max() + 1e4 * tiny
                np.testing.assert_allclose(h, h_ref, rtol=rtol, atol=atol, err_msg=where)
                hv = np.asarray(hvp_rev(x, u), np.float64)
                np.testing.assert_allclose(
                    hv, h_ref @ np.asarray(u, np.float64), rtol=rtol, atol=10 * atol, err_msg=where
                )
                t3 = float(third(x, u))
                assert np.isfinite(t3), where
                np.testing.assert_allclose(
                    t3, t_ref, rtol=rtol, atol=rtol * t_scale + 1e4 * tiny, err_msg=where
                )


# ------------------------------------------------------ gradient precision on the exact path


def _grad_reference(z, t, loss_of_d_prime):
    """mpmath gradient of ``F(d(z))``: ``F'(d) softmax_others`` and ``-F'(d)`` at the target."""
    z = [mpmath.mpf(float(x)) for x in z]
    others = [j for j in range(len(z)) if j != t]
    m_o = max(z[j] for j in others)
    e = {j: mpmath.exp(z[j] - m_o) for j in others}
    total = sum(e.values())
    d = m_o + mpmath.log(total) - z[t]
    f1 = loss_of_d_prime(d)
    return np.array([float(-f1) if j == t else float(f1 * e[j] / total) for j in range(len(z))])


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4, 1e30])
@pytest.mark.parametrize("name", ["cross_entropy", "focal_gamma2", "label_smoothing"])
def test_saturated_gradient_exact_to_a_few_ulps_and_rows_sum_to_zero(name, scale):
    loss, gamma = SOFTMAX[name]
    rows = np.array(
        [
            [-1.0, 1.0, 1.0, 1.0, 1.0],  # target far below four equal others: exactly 0.25 each
            [1.0, 1.0, -1.0, 1.0, 1.0],
            [-1.0, 1.0, 1.0, 1.0, -1.0],
            [1.0, -1.0, -1.0, 1.0, -1.0],
        ],
        np.float32,
    )
    logits = jnp.asarray(rows * np.float32(scale))
    labels = jnp.array([0, 2, 0, 1])
    grad = np.asarray(jax.grad(lambda x: loss(x, labels, reduction="sum"))(logits), np.float64)
    f1 = lambda d: _softmax_losses_of_d(gamma)(d)[0]  # noqa: E731
    for i in range(rows.shape[0]):
        ref = _grad_reference(np.asarray(logits[i], np.float64), int(labels[i]), f1)
        if name == "label_smoothing":  # plus (eps' / C) (softmax - 1), eps' = 0.1 C / (C - 1)
            continue
        np.testing.assert_allclose(grad[i], ref, rtol=4e-7, atol=1e-30, err_msg=f"row {i}")
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-6)
    if name == "cross_entropy":
        np.testing.assert_array_equal(grad[0], [-1.0, 0.25, 0.25, 0.25, 0.25])


# ------------------------------------------------------------------------- label dtypes

LABEL_LOSSES = {
    "focal_loss": functools.partial(jaxloss.focal_loss, reduction="none"),
    "cross_entropy": functools.partial(jaxloss.cross_entropy, reduction="none"),
    "label_smoothing_loss": functools.partial(
        jaxloss.label_smoothing_loss, smoothing=0.1, reduction="none"
    ),
    "f1_loss": jaxloss.f1_loss,
}
INT_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]


@pytest.mark.parametrize("name", sorted(LABEL_LOSSES))
@pytest.mark.parametrize("value", [2**32 + 1, 2**40, -(2**32) + 1, 2**64 - 1])
def test_64_bit_host_labels_outside_the_32_bit_range_raise_instead_of_wrapping(name, value):
    dtype = np.uint64 if value >= 2**63 else np.int64
    labels = np.array([0, value, 1], dtype)
    logits = jnp.zeros((3, 4))
    assert not jax.config.jax_enable_x64
    with pytest.raises(ValueError, match="labels must lie in"):
        LABEL_LOSSES[name](logits, labels)


@pytest.mark.parametrize("name", sorted(LABEL_LOSSES))
def test_64_bit_host_labels_inside_the_32_bit_range_are_accepted(name):
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)), jnp.float32)
    expected = LABEL_LOSSES[name](logits, jnp.array([0, 3, 1], jnp.int32))
    for dtype in (np.int64, np.uint64, np.uint32):
        got = LABEL_LOSSES[name](logits, np.array([0, 3, 1], dtype))
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", sorted(LABEL_LOSSES))
@pytest.mark.parametrize("num_classes", [2, 300, 70000])
@pytest.mark.parametrize("dtype", INT_DTYPES)
def test_every_label_dtype_matches_int32_eager_and_under_jit(name, num_classes, dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(num_classes)
    values = np.array([0, num_classes - 1, min(100, num_classes - 1), 1, num_classes // 2])
    values = np.minimum(
        values, min(int(info.max), 2**31 - 1)
    )  # e.g. uint8 labels up to 255 with C = 300
    logits = jnp.asarray(rng.normal(size=(5, num_classes)), jnp.float32)
    loss = LABEL_LOSSES[name]
    expected = np.asarray(loss(logits, jnp.asarray(values, jnp.int32)))
    assert np.all(np.isfinite(expected))
    labels = np.asarray(values, dtype)
    for got in (loss(logits, labels), jax.jit(loss)(logits, labels)):
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6, err_msg=dtype)
    # The largest value of the dtype is out of range (unless C exceeds it): raise eagerly, NaN
    # under jit, never a wrapped class.
    if int(info.max) >= num_classes:
        bad = labels.copy()
        bad[2] = info.max
        with pytest.raises(ValueError, match="labels must lie in"):
            loss(logits, bad)
        if np.dtype(dtype).itemsize == 8:
            return  # with x64 off, jnp.asarray itself wraps 64-bit values before any loss sees them
        out = np.asarray(jax.jit(loss)(logits, jnp.asarray(bad)))
        assert np.isnan(out[2] if out.ndim else out)
        if out.ndim:
            np.testing.assert_allclose(np.delete(out, 2), np.delete(expected, 2), rtol=1e-6)


def test_uint32_labels_beyond_int32_give_nan_under_jit_not_a_wrapped_ignore_index():
    logits = jnp.zeros((3, 4))
    labels = jnp.array([0, 2**32 - 100, 1], jnp.uint32)  # -100 if wrapped to int32
    out = jax.jit(lambda x, y: jaxloss.cross_entropy(x, y, ignore_index=-100, reduction="none"))(
        logits, labels
    )
    assert np.isnan(out[1]) and np.isfinite(out[0]) and np.isfinite(out[2])
    with pytest.raises(ValueError, match="labels must lie in"):
        jaxloss.cross_entropy(logits, labels, ignore_index=-100)


@pytest.mark.parametrize("name", ["focal_loss", "cross_entropy", "label_smoothing_loss"])
def test_unrepresentable_ignore_index_matches_nothing(name):
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(3, 300)), jnp.float32)
    loss = LABEL_LOSSES[name]
    expected = loss(logits, jnp.array([0, 100, 156], jnp.int32))
    labels = np.array([0, 100, 156], np.uint8)  # 156 is -100 as int8
    for got in (
        loss(logits, labels, ignore_index=-100),
        jax.jit(functools.partial(loss, ignore_index=-100))(logits, labels),
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    # int8 labels can hold -100: it is ignored (loss 0), the others are unchanged.
    labels = np.array([0, 100, -100], np.int8)
    got = loss(logits, labels, ignore_index=-100)
    np.testing.assert_allclose(got[:2], expected[:2], rtol=1e-6)
    assert float(got[2]) == 0.0


# ------------------------------------------------- sigmoid focal loss: relative accuracy


def _sigmoid_focal_reference(z, t, gamma, alpha=0.25):
    """mpmath loss and d/dz for a hard target (t = 1; t = 0 by z -> -z)."""
    zz = mpmath.mpf(float(z)) * (1 if t == 1 else -1)  # the loss of t = 1 at zz
    w = mpmath.mpf(alpha) if t == 1 else 1 - mpmath.mpf(alpha)
    sig = lambda x: 1 / (1 + mpmath.exp(-x))  # noqa: E731
    sp_neg = mpmath.log1p(mpmath.exp(-zz)) if zz > 0 else -zz + mpmath.log1p(mpmath.exp(zz))
    q = sig(-zz)
    qg = q**gamma if gamma else mpmath.mpf(1)
    loss = w * qg * sp_neg
    d = -w * qg * (gamma * sig(zz) * sp_neg + q)
    return float(loss), float(d if t == 1 else -d)


SIGMOID_Z = np.unique(np.concatenate([np.arange(-40, 40.01, 0.25), np.arange(8, 17.01, 0.05)]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("target", [0.0, 1.0])
def test_sigmoid_focal_relative_error_against_mpmath(dtype, gamma, target):
    with jax.enable_x64(dtype == "float64"):
        z = jnp.asarray(np.concatenate([SIGMOID_Z, -SIGMOID_Z]), dtype)
        t = jnp.full_like(z, target)
        f = jax.jit(lambda x: jaxloss.sigmoid_focal_loss(x, t, gamma=gamma, reduction="none"))
        loss = np.asarray(f(z), np.float64)
        grad = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(f(x))))(z), np.float64)
    ref = np.array([_sigmoid_focal_reference(a, target, gamma) for a in np.asarray(z, np.float64)])
    tiny = float(np.finfo(dtype).tiny)
    keep = np.abs(ref) > 1e3 * tiny  # relative error is meaningful above the underflow threshold
    rel_loss = np.abs(loss - ref[:, 0])[keep[:, 0]] / np.abs(ref[:, 0])[keep[:, 0]]
    rel_grad = np.abs(grad - ref[:, 1])[keep[:, 1]] / np.abs(ref[:, 1])[keep[:, 1]]
    rtol = 2e-6 if dtype == "float32" else 1e-14  # achieved: 4.6e-7 and 1.8e-15
    assert rel_loss.max() < rtol, rel_loss.max()
    assert rel_grad.max() < rtol, rel_grad.max()
    assert np.all(np.abs(loss - ref[:, 0])[~keep[:, 0]] < 1e4 * tiny)


# ------------------------------------ sigmoid focal loss: Hessian and third order vs mpmath

SIGMOID_HIGHER_Z = (0.0, 1e-3, -1e-3, 1.0, -1.0, 3.5, -3.5, 8.0, -8.0, 17.0, -17.0, 30.0, -30.0)
SIGMOID_HIGHER_Z += (43.5, -43.5, 50.0, -50.0, 88.0, -88.0, 100.0, -100.0)
SIGMOID_HIGHER_T = (0.0, 1.0, 0.3)
SIGMOID_HIGHER_GAMMAS = (0.0, 0.5, 1.0, 2.0, 3.5)


@functools.cache
def _sigmoid_focal_derivatives(z, t, gamma, alpha):
    """Derivatives 0 to 3 in ``z`` of ``alpha_t (1 - p_t)**gamma BCE``.

    ``mpmath.diffs`` at 80 digits on the textbook formula (nothing shared with the code under test).
    """
    t_, g_ = mpmath.mpf(t), mpmath.mpf(gamma)
    w = alpha * t_ + (1 - alpha) * (1 - t_) if alpha >= 0 else 1

    def softplus(x):
        return mpmath.log1p(mpmath.exp(x)) if x < 0 else x + mpmath.log1p(mpmath.exp(-x))

    def f(x):
        q = t_ / (1 + mpmath.exp(x)) + (1 - t_) / (1 + mpmath.exp(-x))  # 1 - p_t
        return w * (q**g_ if gamma else 1) * (t_ * softplus(-x) + (1 - t_) * softplus(x))

    with mpmath.workdps(80):
        return tuple(float(d) for d in mpmath.diffs(f, mpmath.mpf(z), 3))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("alpha", [0.25, -1.0])
def test_sigmoid_focal_hessian_and_third_order_finite_and_exact(dtype, alpha):
    """Orders 1 to 3 in reverse mode and ``jax.hessian`` on logits in [-100, 100] vs mpmath.

    Every gamma in ``SIGMOID_HIGHER_GAMMAS``, hard and soft targets. Each entry is compared relative
    to the largest ``|f^(k)|`` within 0.5 of its ``z`` (a zero crossing of ``f^(k)`` is judged at
    its neighbours' scale, while saturated entries as small as ``exp(-100 (gamma + 1))`` stay
    relative), entries near underflow absolutely (1e4 smallest normals). Achieved: 3.3e-6 (float32)
    and 2.5e-14 (float64) for every order, where orders 2 and 3 used to lose all accuracy or be NaN.
    """
    rtol = 2e-4 if dtype == "float32" else 1e-9
    tiny = float(np.finfo(dtype).tiny)
    z_grid = np.repeat(SIGMOID_HIGHER_Z, len(SIGMOID_HIGHER_T))
    t_grid = np.tile(SIGMOID_HIGHER_T, len(SIGMOID_HIGHER_Z))
    with jax.enable_x64(dtype == "float64"):
        z, t = jnp.asarray(z_grid, dtype), jnp.asarray(t_grid, dtype)

        def f(x, gamma):
            return jaxloss.sigmoid_focal_loss(x, t, gamma=gamma, alpha=alpha, reduction="sum")

        d1 = jax.grad(f)
        d2 = jax.grad(lambda x, g: jnp.sum(d1(x, g)))
        d3 = jax.grad(lambda x, g: jnp.sum(d2(x, g)))
        orders = jax.jit(lambda x, g: (d1(x, g), d2(x, g), jax.hessian(f)(x, g), d3(x, g)))
        for gamma in SIGMOID_HIGHER_GAMMAS:
            g1, g2, hess, g3 = (np.asarray(a, np.float64) for a in orders(z, gamma))
            assert np.all(hess - np.diag(np.diag(hess)) == 0), (dtype, gamma)
            for k, got in ((1, g1), (2, g2), (2, np.diag(hess)), (3, g3)):
                assert np.all(np.isfinite(got)), (dtype, gamma, k)
                for x, target, value in zip(z_grid, t_grid, got, strict=True):
                    refs = [
                        _sigmoid_focal_derivatives(x + d, target, gamma, alpha)
                        for d in (-0.5, 0.0, 0.5)
                    ]
                    scale = max(abs(r[k]) for r in refs)
                    where = f"{dtype} gamma={gamma} t={target} alpha={alpha} z={x} order {k}"
                    error = abs(value - refs[1][k])
                    assert error <= rtol * scale + 1e4 * tiny, (where, value, refs[1][k])


# ------------------------------------------------------------------- traced smoothing


def test_traced_and_0d_smoothing_match_python_floats_without_recompiling():
    z = jnp.asarray(np.random.default_rng(3).normal(size=(6, 5)), jnp.float32)
    y = jnp.array([0, 1, 2, 3, 4, 0])
    ce = jax.jit(lambda s: jaxloss.cross_entropy(z, y, label_smoothing=s))
    ls = jax.jit(lambda s: jaxloss.label_smoothing_loss(z, y, smoothing=s))
    for s in (0.1, 0.3):
        np.testing.assert_allclose(ce(s), jaxloss.cross_entropy(z, y, label_smoothing=s), rtol=1e-6)
        np.testing.assert_allclose(
            ls(s), jaxloss.label_smoothing_loss(z, y, smoothing=s), rtol=1e-6
        )
        np.testing.assert_allclose(
            jaxloss.cross_entropy(z, y, label_smoothing=jnp.float32(s)),
            jaxloss.cross_entropy(z, y, label_smoothing=s),
            rtol=1e-6,
        )
        np.testing.assert_allclose(
            jaxloss.label_smoothing_loss(z, y, smoothing=np.float64(s)),
            jaxloss.label_smoothing_loss(z, y, smoothing=s),
            rtol=1e-6,
        )
    assert float(ce(0.0)) == float(jaxloss.cross_entropy(z, y))  # 0 traced: exactly CE
    before = _smoothing._cross_entropy._cache_size()
    for s in (0.05, 0.15, 0.25):
        jaxloss.cross_entropy(z, y, label_smoothing=jnp.float32(s))
    assert _smoothing._cross_entropy._cache_size() == before
    with pytest.raises(ValueError, match="label_smoothing"):
        jaxloss.cross_entropy(z, y, label_smoothing=jnp.float32(1.0))
    with pytest.raises(TypeError, match="smoothing"):
        jaxloss.label_smoothing_loss(z, y, smoothing="0.1")


# ------------------------------------------------------------------- validation helpers


def test_check_int_and_check_real_follow_the_type_value_rule():
    assert _validate.check_int("n", np.int64(3), minimum=1) == 3
    for bad in (True, 2.0, "3", None):
        with pytest.raises(TypeError, match="n must be an integer"):
            _validate.check_int("n", bad, minimum=1)
        with pytest.raises(ValueError, match="n must be an integer"):  # ArgumentTypeError is both
            _validate.check_int("n", bad, minimum=1)
    with pytest.raises(ValueError) as info:
        _validate.check_int("n", 0, minimum=1)
    assert str(info.value) == "n must be an integer >= 1, got n=0"
    assert _validate.check_real("r", np.float32(0.5), low=0.0) == 0.5
    assert _validate.check_real("r", jnp.array(0.25), high=1.0) == 0.25
    assert _validate.check_real("r", np.array(2), low=0.0) == 2.0
    for bad in (True, np.bool_(True), "0.5", 1j, np.ones(2)):
        with pytest.raises(TypeError, match="r must be a real number"):
            _validate.check_real("r", bad)
    cases = [
        (dict(low=0.0), -1.0, "r must be a finite number >= 0.0, got r=-1.0"),
        (dict(low=0.0, low_open=True), 0.0, "r must be a finite number > 0.0, got r=0.0"),
        (dict(high=1.0), 2.0, "r must be a finite number <= 1.0, got r=2.0"),
        (dict(high=1.0, high_open=True), 1.0, "r must be a finite number < 1.0, got r=1.0"),
        (
            dict(low=0.0, high=1.0, high_open=True),
            1.0,
            "r must be a finite number in [0.0, 1.0), got r=1.0",
        ),
        ({}, float("inf"), "r must be a finite number, got r=inf"),
    ]
    for kwargs, value, message in cases:
        with pytest.raises(ValueError) as info:
            _validate.check_real("r", value, **kwargs)
        assert str(info.value) == message
