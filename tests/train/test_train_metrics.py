"""train.metrics against scikit-learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score

from train import metrics


@pytest.mark.parametrize("seed", range(6))
def test_matches_sklearn_on_random_data(seed):
    rng = np.random.default_rng(seed)
    c = int(rng.integers(2, 9))
    n = int(rng.integers(1, 60))
    # Skewed draws so that some classes have no support and some no predictions.
    y = rng.choice(c, size=n, p=rng.dirichlet(np.full(c, 0.3)))
    p = rng.choice(c, size=n, p=rng.dirichlet(np.full(c, 0.3)))
    cm = metrics.confusion_matrix(y, p, c)
    np.testing.assert_allclose(
        float(metrics.macro_f1(cm)), f1_score(y, p, average="macro"), atol=1e-6
    )
    np.testing.assert_allclose(float(metrics.accuracy(cm)), accuracy_score(y, p), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(metrics.per_class_recall(cm)),
        recall_score(y, p, labels=list(range(c)), average=None, zero_division=0),
        atol=1e-6,
    )


def test_edge_cases_match_sklearn():
    # class 2 predicted but never true (no support), class 1 true but never predicted,
    # class 3 absent
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([0, 2, 0, 0, 0])
    cm = metrics.confusion_matrix(y, p, 4)
    expected = f1_score(y, p, average="macro")  # over classes {0, 1, 2}: (4/7 + 0 + 0) / 3
    assert expected == pytest.approx(4 / 21)
    assert float(metrics.macro_f1(cm)) == pytest.approx(expected, abs=1e-7)
    assert float(metrics.macro_f1(metrics.confusion_matrix(y, y, 4))) == 1.0


def test_mask_excludes_examples_and_accumulation_is_a_sum():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(10, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=10)
    mask = np.array([True] * 7 + [False] * 3)
    m = metrics.batch_metrics(logits, labels, jnp.float32(2.0), mask)
    assert float(m.count) == 7.0 and float(m.loss_sum) == 14.0
    np.testing.assert_array_equal(
        np.asarray(m.confusion),
        np.asarray(metrics.confusion_matrix(labels[:7], logits[:7].argmax(-1), 4)),
    )
    total = jax.jit(lambda a, b: a + b)(m, metrics.batch_metrics(logits, labels, jnp.float32(1.0)))
    s = metrics.summarize(jax.device_get(total), prefix="train_")
    assert s["train_count"] == 17 and s["train_loss"] == pytest.approx(24.0 / 17)
    preds = np.concatenate([logits[:7].argmax(-1), logits.argmax(-1)])
    ys = np.concatenate([labels[:7], labels])
    assert s["train_f1"] == pytest.approx(f1_score(ys, preds, average="macro"), abs=1e-6)
    assert s["train_accuracy"] == pytest.approx(accuracy_score(ys, preds), abs=1e-6)
    assert len(s["train_recall"]) == 4
