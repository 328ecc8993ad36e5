"""The softmax losses' forms at their edges: bad ``axis``, ``where`` and probability targets raise
named errors when concrete and give NaN (never a plausible number) when traced; masked examples
reach nothing, not even with NaN logits; unbatched input; forward mode where it exists.

Values against torch are in ``parity_tests/test_forms_parity.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from jaxloss._validate import ArgumentTypeError

LOGITS = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 5)), jnp.float32)  # (N, C, d)
LABELS = jnp.asarray(np.random.default_rng(1).integers(0, 3, size=(4, 5)), jnp.int32)
PROBS = jax.nn.softmax(jnp.asarray(np.random.default_rng(2).normal(size=(4, 3, 5))), axis=1)
WHERE = jnp.asarray(np.random.default_rng(3).random((4, 5)) < 0.6).at[0, 0].set(True)

SOFTMAX_LOSSES = {
    "cross_entropy": lambda x, y, **kw: jaxloss.cross_entropy(x, y, label_smoothing=0.1, **kw),
    "focal": lambda x, y, **kw: jaxloss.focal_loss(x, y, gamma=2.0, alpha=0.5, **kw),
    "label_smoothing": lambda x, y, **kw: jaxloss.label_smoothing_loss(x, y, smoothing=0.2, **kw),
}


@pytest.mark.parametrize("name", SOFTMAX_LOSSES)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"axis": 3}, ValueError, r"axis must lie in \[-3, 3\)"),
        ({"axis": -4}, ValueError, "axis must lie"),
        ({"axis": 1.0}, ArgumentTypeError, "axis must be an int"),
        ({"axis": True}, ArgumentTypeError, "axis must be an int"),
        ({"axis": -1}, ValueError, "labels.shape must equal"),  # labels are (N, d), not (N, C)
        ({"axis": 1, "where": WHERE.astype(jnp.int32)}, ArgumentTypeError, "where must be a bool"),
        (
            {"axis": 1, "where": WHERE[:, :2]},
            ValueError,
            r"where must have the batch shape \(4, 5\)",
        ),
        ({"axis": 1, "where": WHERE[None]}, ValueError, "where must have the batch shape"),
    ],
)
def test_bad_axis_and_where_raise_named_errors(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        SOFTMAX_LOSSES[name](LOGITS, LABELS, **kwargs)


@pytest.mark.parametrize(
    ("targets", "kwargs", "match"),
    [
        (PROBS * 0.9, {}, "must sum to 1 over the class axis 1"),
        (PROBS.at[0, 0, 0].add(-2.0).at[0, 1, 0].add(2.0), {}, r"lie in \[0, 1\]"),
        (PROBS.at[1, 2, 3].set(jnp.nan), {}, r"lie in \[0, 1\]"),
        (PROBS[:, :, :2], {}, "labels must be integer class indices"),
        (PROBS, {"ignore_index": -100}, "ignore_index applies to integer labels only"),
    ],
)
def test_bad_probability_targets_raise_named_errors(targets, kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxloss.cross_entropy(LOGITS, targets, axis=1, **kwargs)


def test_probability_target_checks_skip_masked_examples_and_others_spread_is_refused():
    bad = PROBS.at[0, :, 1].set(7.0)
    where = jnp.ones((4, 5), bool).at[0, 1].set(False)
    loss = jaxloss.cross_entropy(LOGITS, bad, axis=1, where=where)
    assert loss == pytest.approx(float(jaxloss.cross_entropy(LOGITS, PROBS, axis=1, where=where)))
    with pytest.raises(ValueError, match="spread='others' needs integer labels"):
        jaxloss.label_smoothing_loss(LOGITS, PROBS, axis=1, smoothing=0.1)
    uniform = jaxloss.label_smoothing_loss(LOGITS, PROBS, axis=1, smoothing=0.1, spread="uniform")
    assert float(uniform) == float(
        jaxloss.cross_entropy(LOGITS, PROBS, axis=1, label_smoothing=0.1)
    )


def test_traced_bad_probability_targets_give_nan_for_their_example_only():
    bad = PROBS.at[2, 0, 4].set(-0.5)
    per = jax.jit(lambda t: jaxloss.cross_entropy(LOGITS, t, axis=1, reduction="none"))(bad)
    assert np.isnan(per[2, 4]) and np.isfinite(np.delete(np.asarray(per).ravel(), 2 * 5 + 4)).all()
    assert np.isnan(jax.jit(lambda t: jaxloss.cross_entropy(LOGITS, t, axis=1))(bad))
    nan = PROBS.at[1, 1, 1].set(jnp.nan)
    assert np.isnan(jax.jit(lambda t: jaxloss.cross_entropy(LOGITS, t, axis=1))(nan))
    # Rows that do not sum to 1 are used as given under jit (torch's formula, linear in t).
    doubled = jax.jit(lambda t: jaxloss.cross_entropy(LOGITS, t, axis=1))(PROBS * 0.5)
    assert float(doubled) == pytest.approx(
        0.5 * float(jaxloss.cross_entropy(LOGITS, PROBS, axis=1))
    )


@pytest.mark.parametrize("name", [*SOFTMAX_LOSSES, "soft"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_masked_examples_with_nan_logits_reach_neither_value_nor_gradient(name, reduction):
    """Padding of NaN (or inf) behind ``where``: the same value as clean padding, gradient 0."""
    hole = ~WHERE[:, None, :]
    dirty = jnp.where(hole, jnp.nan, LOGITS)
    dirty = dirty.at[1, 0, :].set(jnp.where(WHERE[1], LOGITS[1, 0, :], jnp.inf))
    if name == "soft":

        def loss(x):
            return jaxloss.cross_entropy(x, PROBS, axis=1, where=WHERE, reduction=reduction)
    else:

        def loss(x):
            fn = SOFTMAX_LOSSES[name]
            return fn(x, LABELS, axis=1, where=WHERE, reduction=reduction)

    def total(x):
        return jnp.sum(loss(x))

    clean_value, clean_grad = jax.value_and_grad(total)(LOGITS)
    value, grad = jax.jit(jax.value_and_grad(total))(dirty)
    np.testing.assert_allclose(value, clean_value, rtol=1e-6)
    np.testing.assert_allclose(grad, clean_grad, rtol=1e-6, atol=1e-7)
    assert np.all(np.asarray(grad)[np.broadcast_to(np.asarray(hole), grad.shape)] == 0)
    if reduction == "none":
        assert np.all(np.asarray(loss(dirty))[~np.asarray(WHERE)] == 0)


def test_where_combines_with_ignore_index_and_weight_and_an_all_masked_mean_is_nan():
    labels = LABELS.at[0, 1].set(-100)
    weight = jnp.array([0.5, 2.0, 1.0])
    kw = dict(axis=1, weight=weight, ignore_index=-100)
    per = jaxloss.cross_entropy(LOGITS, labels, reduction="none", **kw)
    both = (labels != -100) & WHERE
    denominator = jnp.sum(jnp.where(both, weight[jnp.where(both, labels, 0)], 0))
    expected = jnp.sum(jnp.where(both, per, 0)) / denominator
    assert float(jaxloss.cross_entropy(LOGITS, labels, where=WHERE, **kw)) == pytest.approx(
        float(expected), rel=1e-6
    )
    nothing = jnp.zeros((4, 5), bool)
    assert np.isnan(jaxloss.focal_loss(LOGITS, LABELS, axis=1, where=nothing))
    assert float(jaxloss.focal_loss(LOGITS, LABELS, axis=1, where=nothing, reduction="sum")) == 0.0
    # A masked example's label is not checked, even far out of range.
    wild = LABELS.at[0, 2].set(99)
    masked = WHERE.at[0, 2].set(False)
    assert np.isfinite(jaxloss.cross_entropy(LOGITS, wild, axis=1, where=masked))
    with pytest.raises(ValueError, match="labels must lie in"):
        jaxloss.cross_entropy(LOGITS, wild, axis=1, where=masked.at[0, 2].set(True))


def test_unbatched_input_and_axis_zero_of_one_example_agree():
    x, y = LOGITS[0, :, 0], LABELS[0, 0]
    batched = jaxloss.focal_loss(x[None], y[None], reduction="none")
    assert jaxloss.focal_loss(x, y, reduction="none").shape == ()
    assert float(jaxloss.focal_loss(x, y)) == pytest.approx(float(batched[0]))
    assert float(jaxloss.cross_entropy(x, y, axis=0)) == float(jaxloss.cross_entropy(x, y))
    with pytest.raises(ValueError, match="labels.shape must equal"):
        jaxloss.cross_entropy(x, LABELS[0])


def test_axis1_equals_classes_last_to_rounding_for_values_and_gradients():
    moved = jnp.moveaxis(LOGITS, 1, -1)
    for name, fn in SOFTMAX_LOSSES.items():
        a, ga = jax.value_and_grad(lambda x, f=fn: f(x, LABELS, axis=1))(LOGITS)
        b, gb = jax.value_and_grad(lambda x, f=fn: f(x, LABELS))(moved)
        np.testing.assert_allclose(a, b, rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(ga, jnp.moveaxis(gb, -1, 1), rtol=1e-5, atol=1e-7, err_msg=name)


def test_forward_mode_works_for_probability_targets_and_agrees_with_the_index_form():
    """Probability targets are plain autodiff and the index forms a ``custom_jvp``: both take
    ``jax.jvp``, ``jacfwd`` and ``check_grads`` in both modes, and one-hot targets give the index
    form's tangent."""
    from jax.test_util import check_grads

    x = jnp.asarray(LOGITS, jnp.float64) if jax.config.x64_enabled else LOGITS

    def soft(z):
        return jaxloss.cross_entropy(z, PROBS, axis=1, label_smoothing=0.1)

    check_grads(soft, (x,), order=2, modes=["fwd", "rev"], atol=5e-2, rtol=5e-2)
    _, tangent = jax.jvp(soft, (x,), (jnp.ones_like(x),))
    assert abs(float(tangent)) < 1e-5  # softmax is shift-invariant per example
    direction = jnp.sin(jnp.arange(x.size, dtype=x.dtype)).reshape(x.shape)
    one_hot = jnp.moveaxis(jax.nn.one_hot(LABELS, x.shape[1], dtype=x.dtype), -1, 1)
    _, from_index = jax.jvp(lambda z: jaxloss.cross_entropy(z, LABELS, axis=1), (x,), (direction,))
    _, from_probs = jax.jvp(lambda z: jaxloss.cross_entropy(z, one_hot, axis=1), (x,), (direction,))
    assert abs(float(from_index)) > 1e-3
    np.testing.assert_allclose(from_index, from_probs, rtol=1e-5)


def test_half_precision_probability_targets_compute_in_float32():
    """The README's dtype promise for the probability form: bf16/fp16 in, float32 loss out."""
    reference = float(jaxloss.cross_entropy(LOGITS, PROBS.astype(jnp.float32), axis=1))
    for half in (jnp.bfloat16, jnp.float16):
        x, p = LOGITS.astype(half), PROBS.astype(half)
        loss, grad = jax.value_and_grad(lambda z, t=p: jaxloss.cross_entropy(z, t, axis=1))(x)
        assert loss.dtype == jnp.float32 and grad.dtype == half
        assert np.isfinite(np.asarray(grad, np.float32)).all()
        assert float(loss) == pytest.approx(reference, rel=2e-2)


@pytest.mark.parametrize("spread", ["others", "uniform"])
def test_logits_without_a_class_axis_raise_one_named_error_in_every_form(spread):
    for labels in (jnp.int32(0), jnp.float32(1.0)):
        if spread == "others" and labels.dtype == jnp.float32:
            continue  # refused earlier: "others" needs class indices
        with pytest.raises(ValueError, match="logits must have a class axis"):
            jaxloss.label_smoothing_loss(jnp.float32(0.5), labels, smoothing=0.1, spread=spread)
