"""Where jaxloss deliberately differs from the reference modules, and by how much.

1. Saturation. Seeds 000/001 form ``1 - p_t`` by subtraction: once ``p_t`` rounds to 1 their
   gradient is NaN for ``0 < gamma < 1`` (``0**(gamma-1) * 0``) and their value has lost all
   relative precision well before. jaxloss is finite there and equals the exact (float64 reference,
   or analytic) value.
2. Seed 003 adds ``1e-8`` to ``p_t`` before the log: the values agree to a bound set by that
   ``1e-8`` except where ``p_t`` is tiny, where the seed's loss is capped near ``-log(1e-8) =
   18.4``.
3. Seed 003's binary branch ignores the target; ``sigmoid_focal_loss`` is the correct binary form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import torch
import torch_reference as ref

import jaxloss


def _saturated_logits(gap: float, num_classes: int = 4) -> np.ndarray:
    logits = np.zeros((3, num_classes))
    logits[:, 1] = gap  # target class 1 dominates by `gap`
    return logits


def _exact_focal_row(row: np.ndarray, label: int, gamma: float) -> tuple[float, np.ndarray]:
    """Loss and gradient of one row's focal loss at 50 significant digits (mpmath)."""
    mpmath.mp.dps = 50

    def loss(*z):
        p = mpmath.exp(z[label]) / mpmath.fsum(mpmath.exp(v) for v in z)
        one_minus = mpmath.fsum(mpmath.exp(v) for i, v in enumerate(z) if i != label) / mpmath.fsum(
            mpmath.exp(v) for v in z
        )
        return -(one_minus**gamma) * mpmath.log(p)

    z = [mpmath.mpf(float(v)) for v in row]
    grad = [
        mpmath.diff(lambda v, i=i: loss(*(z[:i] + [v] + z[i + 1 :])), z[i]) for i in range(len(z))
    ]
    return float(loss(*z)), np.array([float(g) for g in grad])


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("seed_module", ["000", "001"])
def test_saturation_reference_is_nan_ours_is_exact(gamma, seed_module):
    labels = np.ones(3, dtype=np.int64)
    logits = _saturated_logits(30.0)  # 1 - p_t = 2.8e-13: p_t rounds to 1 in float32
    module = {"000": ref.FocalLossSeed000(gamma=gamma), "001": ref.FocalLossSeed001(gamma=gamma)}[
        seed_module
    ]
    t32 = torch.tensor(logits, dtype=torch.float32, requires_grad=True)
    module(t32, torch.tensor(labels)).backward()
    assert torch.isnan(t32.grad).all(), "the reference's float32 gradient is NaN at saturation"

    value, grad = jax.value_and_grad(lambda x: jaxloss.focal_loss(x, labels, gamma=gamma))(
        jnp.asarray(logits, jnp.float32)
    )
    exact_value, exact_row_grad = _exact_focal_row(logits[0], 1, gamma)
    assert np.all(np.isfinite(grad))
    # float32 logits: d = lse_others - z_t carries ~1e-6 relative error, hence rtol 1e-5.
    np.testing.assert_allclose(float(value), exact_value, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad), np.tile(exact_row_grad / 3, (3, 1)), rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.0, 0.3, 1.0, 2.0])
def test_extreme_saturation_equals_analytic_limit(gamma):
    """At a logit gap of 200 (the [-100, 100] corners) the loss and gradient are 0 up to e^-200."""
    labels = np.ones(3, dtype=np.int32)
    logits = _saturated_logits(100.0)
    logits[:, [0, 2, 3]] = -100.0
    for loss in (
        lambda x: jaxloss.focal_loss(x, labels, gamma=gamma),
        lambda x: jaxloss.cross_entropy(x, labels),
    ):
        value, grad = jax.value_and_grad(loss)(jnp.asarray(logits, jnp.float32))
        assert float(value) == 0.0
        np.testing.assert_array_equal(np.asarray(grad), 0.0)
    # the wrong-way corner: target at -100, another class at +100: -log p_t = 200 exactly,
    # gradient -1/B on the target and +1/B on the winner.
    wrong = -_saturated_logits(100.0)
    wrong[:, 0] = 100.0
    value, grad = jax.value_and_grad(lambda x: jaxloss.focal_loss(x, labels, gamma=gamma))(
        jnp.asarray(wrong, jnp.float32)
    )
    np.testing.assert_allclose(float(value), 200.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad)[:, 1], -1 / 3, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(grad)[:, 0], 1 / 3, rtol=1e-5)


def test_seed003_epsilon_differs_only_where_pt_is_tiny():
    rng = np.random.default_rng(0)
    num_classes, gamma = 5, 2.0
    logits = rng.normal(size=(400, num_classes)) * 3
    logits[:50, 0] = -40.0  # p_t ~ e^-40 for the first 50 rows (label 0): "tiny"
    labels = np.where(np.arange(400) < 50, 0, rng.integers(0, num_classes, 400))
    alpha = rng.uniform(0.5, 2.0, num_classes)
    module = ref.FocalLossSeed003(alpha=list(alpha), gamma=gamma)
    t = torch.tensor(logits)
    seed = module._multiple_class(t, torch.tensor(labels)).numpy()
    with jax.enable_x64(True):
        ours = np.asarray(
            jaxloss.focal_loss(
                jnp.asarray(logits), labels, gamma=gamma, alpha=alpha, reduction="none"
            )
        )
    p_t = torch.softmax(t, -1).numpy()[np.arange(400), labels]
    # first-order effect of p -> p + 1e-8 on -a (1-p)^g log p: a 1e-8 (1/p + g |log p| / (1-p))
    bound = (
        alpha[labels] * 1e-8 * (1 / p_t + gamma * np.abs(np.log(p_t)) / (1 - p_t)) * 1.01 + 1e-15
    )
    normal = p_t > 1e-6
    assert normal.sum() >= 300
    assert np.all(np.abs(ours - seed)[normal] <= bound[normal])
    tiny = p_t < 1e-12
    assert tiny.sum() == 50
    np.testing.assert_allclose(ours[tiny], alpha[labels][tiny] * -np.log(p_t[tiny]), rtol=1e-9)
    assert np.all(seed[tiny] < alpha[labels][tiny] * 18.5)  # capped by -log(1e-8)
    assert np.all(ours[tiny] > 2 * seed[tiny])


def test_seed003_binary_branch_ignores_target():
    """The seed's binary branch gives the same loss for targets 0 and 1; torchvision's does not."""
    module = ref.FocalLossSeed003(alpha=0.25, gamma=2.0)
    x = torch.tensor([1.5, -0.5, 0.2])
    ones, zeros = torch.ones(3), torch.zeros(3)
    assert module(x, ones).item() == module(x, zeros).item()
    ours_1 = float(jaxloss.sigmoid_focal_loss(x.numpy(), ones.numpy()))
    ours_0 = float(jaxloss.sigmoid_focal_loss(x.numpy(), zeros.numpy()))
    np.testing.assert_allclose(
        ours_1, ref.torchvision_sigmoid_focal_loss(x, ones, reduction="mean").item(), rtol=1e-6
    )
    assert abs(ours_1 - ours_0) > 0.1


@pytest.mark.parametrize("gamma", [0.25, 0.5])
def test_sigmoid_focal_saturation_finite_where_torchvision_is_nan(gamma):
    x = np.array([40.0, -40.0, 100.0, -100.0], dtype=np.float32)
    y = np.array([1.0, 0.0, 1.0, 0.0], dtype=np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ref.torchvision_sigmoid_focal_loss(tx, torch.tensor(y), gamma=gamma, reduction="sum").backward()
    assert torch.isnan(tx.grad).any()
    value, grad = jax.value_and_grad(
        lambda v: jaxloss.sigmoid_focal_loss(v, y, gamma=gamma, reduction="sum")
    )(x)
    assert np.isfinite(float(value)) and np.all(np.isfinite(grad))
    assert float(value) < 1e-17 and np.all(np.abs(grad) < 1e-17)
