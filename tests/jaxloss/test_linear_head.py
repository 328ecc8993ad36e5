"""`jaxloss.linear_*`: the logits forms' results without the logits, at the edges of the promise.

Each fused loss equals its logits form of ``x @ W + b`` (values and the gradients of features,
kernel and bias) to float32 rounding; masked rows' NaN features reach nothing; half precision
computes in float32; bad static input is a named ``ValueError``/``TypeError``, bad traced labels
give NaN; no array of shape ``(N, C)`` is allocated (XLA's own memory analysis); second derivatives
equal the logits form's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss import _linear_head

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 3, 5)).astype(np.float32)  # (..., D): batch (2, 3)
W = (RNG.normal(size=(5, 11)) * 2).astype(np.float32)
B = RNG.normal(size=11).astype(np.float32)
Y = RNG.integers(0, 11, size=(2, 3))

FORMS = {
    "focal": (jaxloss.linear_focal_loss, jaxloss.focal_loss, dict(gamma=1.5, alpha=0.3)),
    "focal-weighted": (
        jaxloss.linear_focal_loss,
        jaxloss.focal_loss,
        dict(gamma=2.0, alpha=RNG.uniform(0.1, 1, 11), weight=RNG.uniform(0.5, 2, 11)),
    ),
    "ce": (jaxloss.linear_cross_entropy, jaxloss.cross_entropy, dict(ignore_index=3)),
    "ce-smoothed": (
        jaxloss.linear_cross_entropy,
        jaxloss.cross_entropy,
        dict(label_smoothing=0.2, weight=RNG.uniform(0.5, 2, 11)),
    ),
    "smoothing-others": (
        jaxloss.linear_label_smoothing_loss,
        jaxloss.label_smoothing_loss,
        dict(smoothing=0.1),
    ),
}


def _pair(form, reduction="mean", chunk_size=4, where=None, labels=Y):
    fused, logits_form, options = FORMS[form]

    def f(x, w, b):
        return fused(x, w, labels, bias=b, reduction=reduction, chunk_size=chunk_size,
                     where=where, **options)  # fmt: skip

    def g(x, w, b):
        return logits_form(x @ w + b, labels, reduction=reduction, where=where, **options)

    return f, g


def _value_and_grads(fn, *args):
    out, vjp = jax.vjp(fn, *args)
    cot = jnp.asarray(np.random.default_rng(1).normal(size=out.shape), out.dtype)
    return out, vjp(cot)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "chunk_size,reduction", [(1, "none"), (4, "mean"), (11, "sum"), (64, "mean")]
)
def test_equals_the_logits_form(form, reduction, chunk_size):
    """Chunks of 1 (every class its own), 4 (not dividing 11), 11 (one, exactly) and 64."""
    f, g = _pair(form, reduction, chunk_size)
    (got, got_grads), (want, want_grads) = (_value_and_grads(h, X, W, B) for h in (f, g))
    assert got.shape == want.shape == (() if reduction != "none" else (2, 3))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    for a, b in zip(got_grads, want_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6 * float(np.abs(b).max()))


def test_no_bias_is_a_zero_bias_and_its_gradient_matches():
    got = jaxloss.linear_focal_loss(X, W, Y, chunk_size=4)
    np.testing.assert_allclose(got, jaxloss.focal_loss(X @ W, Y), rtol=2e-6)
    db = jax.grad(lambda b: jaxloss.linear_focal_loss(X, W, Y, bias=b, chunk_size=4))(B)
    db_logits = jax.grad(lambda b: jaxloss.focal_loss(X @ W + b, Y))(B)
    np.testing.assert_allclose(db, db_logits, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("form", ["focal", "ce-smoothed"])
def test_masked_rows_nan_features_reach_nothing(form):
    where = np.array([[True, False, True], [False, True, True]])
    x = X.copy()
    x[~where] = np.nan
    f, g = _pair(form, "mean", 4, where=where)
    value, grads = _value_and_grads(f, x, W, B)
    assert np.isfinite(value) and all(np.isfinite(a).all() for a in grads)
    assert (np.asarray(grads[0])[~where] == 0).all()
    want, want_grads = _value_and_grads(g, np.where(where[..., None], X, 0), W, B)
    np.testing.assert_allclose(value, want, rtol=2e-6)
    for a, b in zip(grads[1:], want_grads[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6 * float(np.abs(b).max()))


def test_half_precision_computes_in_float32():
    xb, wb = jnp.asarray(X, jnp.bfloat16), jnp.asarray(W, jnp.bfloat16)
    got = jaxloss.linear_cross_entropy(xb, wb, Y, chunk_size=4)
    assert got.dtype == jnp.float32
    want = jaxloss.cross_entropy(xb.astype(jnp.float32) @ wb.astype(jnp.float32), Y)
    np.testing.assert_allclose(got, want, rtol=2e-6)
    gx, gw = jax.grad(
        lambda a, b: jaxloss.linear_cross_entropy(a, b, Y, chunk_size=4), argnums=(0, 1)
    )(xb, wb)
    assert gx.dtype == gw.dtype == jnp.bfloat16  # cotangents in the inputs' dtypes


def test_second_derivatives_equal_the_logits_form():
    x, w, y = X[0], W, Y[0]

    def fused(v):
        return jaxloss.linear_focal_loss(v, w, y, gamma=2.0, chunk_size=4)

    def logits_form(v):
        return jaxloss.focal_loss(v @ w, y, gamma=2.0)

    np.testing.assert_allclose(
        jax.hessian(fused)(x), jax.hessian(logits_form)(x), rtol=1e-4, atol=1e-6
    )


def test_no_array_of_the_logits_shape_is_allocated():
    """XLA's memory analysis of value+grad: the fused head's temporaries stay under 1/8 of one
    ``(N, C)`` float32 array; the materialised version's exceed it (so the check can fail)."""
    n, d, c = 512, 16, 32768
    shapes = (
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, c), jnp.float32),
        jax.ShapeDtypeStruct((c,), jnp.float32),
    )
    y = jnp.zeros(n, jnp.int32)
    logits_bytes = n * c * 4

    def temp(loss):
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        return step.lower(*shapes).compile().memory_analysis().temp_size_in_bytes

    fused = temp(lambda x, w, b: jaxloss.linear_focal_loss(x, w, y, bias=b, chunk_size=1024))
    materialised = temp(lambda x, w, b: jaxloss.focal_loss(x @ w + b, y))
    assert materialised >= logits_bytes, materialised
    assert fused <= logits_bytes / 8, (fused, logits_bytes)


def test_out_of_range_labels_raise_and_give_nan_under_jit():
    bad = np.array([[0, 11, 2], [1, 2, 3]])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 11\)"):
        jaxloss.linear_focal_loss(X, W, bad)
    traced = jax.jit(lambda y: jaxloss.linear_cross_entropy(X, W, y, reduction="none"))(bad)
    assert np.isnan(traced[0, 1]) and np.isfinite(np.delete(np.asarray(traced).ravel(), 1)).all()
    assert np.isnan(jax.jit(lambda y: jaxloss.linear_cross_entropy(X, W, y))(bad))


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(kernel=W[:4]), ValueError, r"kernel must have shape \(D, C\) with D = .* = 5"),
        (dict(kernel=W[:, :1]), ValueError, r"and C >= 2"),
        (dict(kernel=W[0]), ValueError, r"kernel must have shape \(D, C\)"),
        (dict(bias=B[:3]), ValueError, r"bias must have shape \(11,\)"),
        (dict(labels=Y[0]), ValueError, r"labels.shape must equal features.shape\[:-1\]"),
        (dict(labels=Y.astype(np.float32)), TypeError, r"integer"),
        (dict(features=np.float32(1.0)), ValueError, r"features must have shape \(\.\.\., D\)"),
        (dict(chunk_size=0), ValueError, r"chunk_size"),
        (dict(reduction="avg"), ValueError, r"reduction"),
        (dict(where=np.ones(3, bool)), ValueError, r"where must have the batch shape"),
    ],
)
@pytest.mark.parametrize("fn", [jaxloss.linear_focal_loss, jaxloss.linear_cross_entropy])
def test_bad_arguments_are_named_errors(fn, kwargs, error, message):
    args = dict(features=X, kernel=W, labels=Y, bias=None)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        fn(args.pop("features"), args.pop("kernel"), args.pop("labels"), **args)


def test_default_chunk_size_and_the_single_chunk_path():
    assert _linear_head.CHUNK_SIZE == 8192
    np.testing.assert_allclose(  # 11 classes: one chunk at the default
        jaxloss.linear_focal_loss(X, W, Y), jaxloss.linear_focal_loss(X, W, Y, chunk_size=3),
        rtol=2e-6,
    )  # fmt: skip


def test_class_weight_gradient_equals_the_logits_form():
    """The smoothing sum's class vector is differentiable too (a learned class weighting)."""
    w0 = RNG.uniform(0.5, 2, 11)

    def fused(v):
        return jaxloss.linear_cross_entropy(X, W, Y, bias=B, weight=v, label_smoothing=0.3,
                                            chunk_size=4)  # fmt: skip

    def logits_form(v):
        return jaxloss.cross_entropy(X @ W + B, Y, weight=v, label_smoothing=0.3)

    np.testing.assert_allclose(jax.grad(fused)(w0), jax.grad(logits_form)(w0), rtol=1e-5, atol=1e-7)


def test_forward_mode_is_not_available():
    """A ``custom_vjp`` (unlike the logits losses' index forms, a ``custom_jvp``): ``jax.jvp``
    raises TypeError instead of computing anything."""
    with pytest.raises(TypeError):
        jax.jvp(lambda x: jaxloss.linear_focal_loss(x, W, Y, chunk_size=4), (X,), (X,))


def test_the_readme_example_runs():
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Classifier head and loss in one pass: `linear_*`", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    x, kernel, labels = (namespace[k] for k in ("x", "kernel", "labels"))
    np.testing.assert_allclose(namespace["loss"], jaxloss.focal_loss(x @ kernel, labels))
    assert namespace["grads"][1].shape == kernel.shape


def test_traced_gamma_and_smoothing_equal_the_concrete_values():
    """The docstrings promise traced hyper-parameters: jitted over gamma and smoothing, the same
    losses as with Python floats (a traced smoothing of 0 is plain cross-entropy)."""
    focal = jax.jit(lambda g: jaxloss.linear_focal_loss(X, W, Y, gamma=g, chunk_size=4))
    ce = jax.jit(lambda e: jaxloss.linear_cross_entropy(X, W, Y, label_smoothing=e, chunk_size=4))
    others = jax.jit(lambda e: jaxloss.linear_label_smoothing_loss(X, W, Y, smoothing=e,
                                                                    chunk_size=4))  # fmt: skip
    for g in (0.0, 0.5, 2.0):
        want = jaxloss.linear_focal_loss(X, W, Y, gamma=g, chunk_size=4)
        np.testing.assert_allclose(focal(g), want, rtol=1e-6)
    for e in (0.0, 0.2):
        want = jaxloss.linear_cross_entropy(X, W, Y, label_smoothing=e, chunk_size=4)
        np.testing.assert_allclose(ce(e), want, rtol=1e-6)
        want = jaxloss.linear_label_smoothing_loss(X, W, Y, smoothing=e, chunk_size=4)
        np.testing.assert_allclose(others(e), want, rtol=1e-6)


def test_bad_spread_and_hyperparameters_are_named():
    with pytest.raises(ValueError, match=r"spread must be one of"):
        jaxloss.linear_label_smoothing_loss(X, W, Y, spread="all")
    with pytest.raises(ValueError, match=r"smoothing"):
        jaxloss.linear_label_smoothing_loss(X, W, Y, smoothing=1.0)
    with pytest.raises(ValueError, match=r"gamma"):
        jaxloss.linear_focal_loss(X, W, Y, gamma=-1.0)
