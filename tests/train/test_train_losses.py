"""train.losses: registry, masking, hyper-parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxloss
from train import losses

_RNG = np.random.default_rng(0)
LOGITS = jnp.asarray(_RNG.normal(size=(12, 5)) * 2, jnp.float32)
LABELS = jnp.asarray(_RNG.integers(0, 5, size=12), jnp.int32)
MASK = jnp.asarray([True] * 8 + [False] * 4)


@pytest.mark.parametrize(
    "name,kw,reference",
    [
        ("ce", {}, lambda x, y: jaxloss.cross_entropy(x, y)),
        (
            "ce",
            {"label_smoothing": 0.1},
            lambda x, y: jaxloss.cross_entropy(x, y, label_smoothing=0.1),
        ),
        (
            "focal",
            {"focal_gamma": 2.0, "focal_alpha": (1, 2, 3, 4, 5)},
            lambda x, y: jaxloss.focal_loss(x, y, gamma=2.0, alpha=jnp.arange(1.0, 6.0)),
        ),
        (
            "focal",
            {"focal_gamma": 1.5, "focal_alpha": 0.25},
            lambda x, y: jaxloss.focal_loss(x, y, gamma=1.5, alpha=0.25),
        ),
        ("label_smoothing", {}, lambda x, y: jaxloss.label_smoothing_loss(x, y, smoothing=0.2)),
        (
            "label_smoothing",
            {"label_smoothing": 0.3, "smoothing_spread": "uniform"},
            lambda x, y: jaxloss.label_smoothing_loss(x, y, smoothing=0.3, spread="uniform"),
        ),
        ("f1", {"f1_epsilon": 1e-6}, lambda x, y: jaxloss.f1_loss(x, y, epsilon=1e-6)),
        (
            "sigmoid_focal",
            {},
            lambda x, y: jaxloss.sigmoid_focal_loss(x, jax.nn.one_hot(y, 5), gamma=2.0, alpha=0.25),
        ),
    ],
)
def test_masked_loss_equals_loss_on_unmasked_subset(name, kw, reference):
    fn = losses.create_loss(name, num_classes=5, **kw)
    full = float(fn(LOGITS, LABELS))
    np.testing.assert_allclose(full, float(reference(LOGITS, LABELS)), rtol=1e-6)
    masked = float(jax.jit(fn)(LOGITS, LABELS, MASK))
    np.testing.assert_allclose(masked, float(reference(LOGITS[:8], LABELS[:8])), rtol=1e-5)
    assert abs(masked - full) > 1e-4  # the mask changed something
    # padded examples may hold any label
    junk = LABELS.at[8:].set(0)
    np.testing.assert_allclose(float(fn(LOGITS, junk, MASK)), masked, rtol=1e-6)


def test_gradient_ignores_masked_examples():
    fn = losses.create_loss("focal", num_classes=5)
    g = jax.grad(lambda x: fn(x, LABELS, MASK))(LOGITS)
    assert np.all(np.asarray(g[8:]) == 0) and np.any(np.asarray(g[:8]) != 0)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"name": "hinge"}, "unknown loss 'hinge'"),
        ({"name": "focal", "focal_alpha": (1.0, 2.0)}, "one value per class"),
        ({"name": "sigmoid_focal", "focal_alpha": (1.0, 2.0, 1, 1, 1)}, "scalar alpha"),
        ({"name": "label_smoothing", "label_smoothing": 1.0}, "label_smoothing must be in"),
        ({"name": "label_smoothing", "smoothing_spread": "all"}, "smoothing_spread"),
        ({"name": "f1", "f1_epsilon": 0.0}, "f1_epsilon"),
        ({"name": "focal", "focal_gamma": -1.0}, "focal_gamma"),
    ],
)
def test_bad_hyper_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        losses.create_loss(num_classes=5, **kw)
