"""DisturbLabel against seed 004's multinoulli: exact distribution tests with fixed keys.

Significance level for every goodness-of-fit test: p > 1e-3 (fixed keys, so each test is
deterministic; a wrong distribution at these sample sizes gives p < 1e-30).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch_reference as ref
from scipy import stats

import jaxloss

N = 60_000


def _expected(labels: np.ndarray, alpha: float, num_classes: int) -> np.ndarray:
    """Expected counts table[true, drawn] from the seed module's own p_c and p_i."""
    module = ref.DisturbLabel(alpha=alpha, num_classes=num_classes)
    table = np.full((num_classes, num_classes), module.p_i)
    np.fill_diagonal(table, module.p_c)
    return np.bincount(labels, minlength=num_classes)[:, None] * table


def _counts(labels: np.ndarray, drawn: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels * num_classes + drawn, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


@pytest.mark.parametrize("num_classes", [2, 10])
@pytest.mark.parametrize("alpha", [5.0, 30.0, 60.0, 100.0])
def test_kept_rate_and_spread_match_the_seed_multinoulli(alpha, num_classes):
    labels = np.random.default_rng(1).integers(0, num_classes, N)
    drawn = np.asarray(
        jaxloss.disturb_labels(jax.random.key(7), labels, alpha=alpha, num_classes=num_classes)
    )
    counts = _counts(labels, drawn, num_classes)
    expected = _expected(labels, alpha, num_classes)
    # kept-label rate: a binomial test against p_c
    p_c = ref.DisturbLabel(alpha, num_classes).p_c
    assert stats.binomtest(int(np.trace(counts)), N, p_c).pvalue > 1e-3
    # the full table (kept and every other class): chi-square goodness of fit
    dof = num_classes * (num_classes - 1)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, dof) > 1e-3
    # the spread over the *other* classes is uniform, for each true class
    for true in range(num_classes):
        others = np.delete(counts[true], true)
        if num_classes > 2:
            assert stats.chisquare(others).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [10.0, 50.0])
def test_seed_module_and_ours_draw_the_same_distribution(alpha):
    num_classes = 5
    labels = np.random.default_rng(2).integers(0, num_classes, 20_000)
    torch.manual_seed(0)
    theirs = ref.DisturbLabel(alpha, num_classes)(torch.tensor(labels)).numpy()
    ours = np.asarray(
        jaxloss.disturb_labels(jax.random.key(3), labels, alpha=alpha, num_classes=num_classes)
    )
    table = np.stack(
        [_counts(labels, theirs, num_classes).ravel(), _counts(labels, ours, num_classes).ravel()]
    )
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_alpha_zero_is_identity_and_keys_matter():
    labels = np.arange(1000) % 7
    np.testing.assert_array_equal(
        jaxloss.disturb_labels(jax.random.key(0), labels, alpha=0.0, num_classes=7), labels
    )
    a = jaxloss.disturb_labels(jax.random.key(0), labels, alpha=50.0, num_classes=7)
    b = jaxloss.disturb_labels(jax.random.key(0), labels, alpha=50.0, num_classes=7)
    c = jaxloss.disturb_labels(jax.random.key(1), labels, alpha=50.0, num_classes=7)
    np.testing.assert_array_equal(a, b)
    assert np.mean(np.asarray(a) != np.asarray(c)) > 0.2


@pytest.mark.parametrize("alpha", [30.0, 70.0])
def test_expected_ce_under_disturbed_labels_is_uniform_label_smoothing(alpha):
    """E[CE(z, disturbed y)] = CE, label_smoothing alpha/100 spread uniformly (Monte Carlo)."""
    num_classes, draws = 3, 20_000
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(32, num_classes)) * 2, jnp.float32)
    labels = jnp.asarray(rng.integers(0, num_classes, 32))

    def one_draw(key):
        disturbed = jaxloss.disturb_labels(key, labels, alpha=alpha, num_classes=num_classes)
        return jaxloss.cross_entropy(logits, disturbed)

    samples = np.asarray(jax.jit(jax.vmap(one_draw))(jax.random.split(jax.random.key(5), draws)))
    mean, se = samples.mean(), samples.std(ddof=1) / np.sqrt(draws)
    uniform = float(jaxloss.cross_entropy(logits, labels, label_smoothing=alpha / 100))
    others = float(jaxloss.label_smoothing_loss(logits, labels, smoothing=alpha / 100))
    assert abs(mean - uniform) < 4 * se
    assert abs(mean - others) > 4 * se  # the test can tell the two spreads apart
