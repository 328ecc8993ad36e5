"""Edge cases: higher-order derivatives at saturation, gradient precision, label dtypes, traced smoothing.

References are computed with mpmath at 50 digits (closed forms, no finite differences), never with the
code under test.
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
@pytest.mark.parametrize("num_classes", [2, 3, 10])
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
