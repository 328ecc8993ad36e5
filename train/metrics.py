"""Classification metrics accumulated on device: loss, confusion matrix, accuracy, macro-F1, recall.

An epoch's metrics are a small pytree of sums (`Metrics`) that the jitted steps add to without any
host synchronisation; the host fetches it once per epoch (`jax.device_get`) and `summarize` turns it
into plain floats. Macro-F1 equals scikit-learn's `f1_score(y_true, y_pred, average="macro")`:
the mean over the classes that occur in the labels or the predictions of `2 tp / (2 tp + fp + fn)`
(classes absent from both are left out, as sklearn's default `labels=None` does; a class with
support but no predictions scores 0, and so does a predicted class with no support).
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

__all__ = [
    "Metrics",
    "accuracy",
    "batch_metrics",
    "confusion_matrix",
    "empty_metrics",
    "macro_f1",
    "per_class_recall",
    "summarize",
]


@flax.struct.dataclass
class Metrics:
    """Sums over an epoch; add two with `+`.

    Attributes:
      loss_sum: float32 scalar, sum over batches of `batch_loss * batch_count`.
      count: float32 scalar, number of (unmasked) examples seen.
      confusion: int32 `(num_classes, num_classes)`, rows true class, columns predicted class.
    """

    loss_sum: jax.Array
    count: jax.Array
    confusion: jax.Array

    def __add__(self, other: Metrics) -> Metrics:
        return _add(self, other)


@jax.jit
def _add(a: Metrics, b: Metrics) -> Metrics:
    return jax.tree.map(jnp.add, a, b)


@jax.jit
def _scores(cm: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return accuracy(cm), macro_f1(cm), per_class_recall(cm)


def empty_metrics(num_classes: int) -> Metrics:
    """Zero sums for `num_classes` classes.

    Examples:
      >>> empty_metrics(3).confusion.shape
      (3, 3)
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes=}")
    return Metrics(
        loss_sum=jnp.zeros((), jnp.float32),
        count=jnp.zeros((), jnp.float32),
        confusion=jnp.zeros((num_classes, num_classes), jnp.int32),
    )


def confusion_matrix(
    labels: jax.typing.ArrayLike,
    preds: jax.typing.ArrayLike,
    num_classes: int,
    mask: jax.typing.ArrayLike | None = None,
) -> jax.Array:
    """Counts `(true, predicted)` pairs, skipping masked-out examples.

    Args:
      labels: int `(batch,)` true classes in `[0, num_classes)`.
      preds: int `(batch,)` predicted classes.
      num_classes: number of classes `C`.
      mask: optional bool `(batch,)`; False entries are not counted.

    Returns:
      int32 `(C, C)` matrix, `cm[t, p]` = number of examples of class `t` predicted as `p`.

    Examples:
      >>> confusion_matrix(jnp.array([0, 1, 1]), jnp.array([0, 0, 1]), 2).tolist()
      [[1, 0], [1, 1]]
    """
    labels = jnp.asarray(labels, jnp.int32)
    preds = jnp.asarray(preds, jnp.int32)
    weight = jnp.ones(labels.shape, jnp.int32) if mask is None else jnp.asarray(mask, jnp.int32)
    flat = labels * num_classes + preds
    counts = jnp.zeros((num_classes * num_classes,), jnp.int32).at[flat].add(weight, mode="drop")
    return counts.reshape(num_classes, num_classes)


def batch_metrics(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    loss: jax.typing.ArrayLike,
    mask: jax.typing.ArrayLike | None = None,
) -> Metrics:
    """Metrics of one batch, ready to add to the epoch's running sums.

    Args:
      logits: float `(batch, C)`.
      labels: int `(batch,)`.
      loss: float scalar, the batch's mean loss over its unmasked examples.
      mask: optional bool `(batch,)`.

    Returns:
      `Metrics` for this batch.

    Examples:
      >>> m = batch_metrics(jnp.array([[2., 0.], [0., 1.], [5., 0.]]), jnp.array([0, 0, 1]),
      ...                   jnp.float32(0.5), mask=jnp.array([True, True, False]))
      >>> float(m.count), float(m.loss_sum), m.confusion.tolist()
      (2.0, 1.0, [[1, 1], [0, 0]])
    """
    logits = jnp.asarray(logits)
    count = (
        jnp.float32(logits.shape[0]) if mask is None else jnp.sum(jnp.asarray(mask, jnp.float32))
    )
    preds = jnp.argmax(logits, axis=-1)
    cm = confusion_matrix(labels, preds, logits.shape[-1], mask)
    return Metrics(loss_sum=jnp.asarray(loss, jnp.float32) * count, count=count, confusion=cm)


def accuracy(cm: jax.typing.ArrayLike) -> jax.Array:
    """Fraction of correct predictions, `trace(cm) / sum(cm)` (0 for an empty matrix).

    Examples:
      >>> float(accuracy(jnp.array([[3, 1], [0, 4]])))
      0.875
    """
    cm = jnp.asarray(cm, jnp.float32)
    total = jnp.sum(cm)
    return jnp.where(total > 0, jnp.trace(cm) / jnp.maximum(total, 1.0), 0.0)


def per_class_recall(cm: jax.typing.ArrayLike) -> jax.Array:
    """Recall of each class, `tp / support`; 0 for a class with no support.

    Equals sklearn's `recall_score(average=None, zero_division=0)`.

    Returns:
      float32 `(C,)`.

    Examples:
      >>> per_class_recall(jnp.array([[3, 1, 0], [0, 4, 0], [0, 1, 0]])).tolist()
      [0.75, 1.0, 0.0]
    """
    cm = jnp.asarray(cm, jnp.float32)
    support = jnp.sum(cm, axis=1)
    return jnp.where(support > 0, jnp.diag(cm) / jnp.maximum(support, 1.0), 0.0)


def macro_f1(cm: jax.typing.ArrayLike) -> jax.Array:
    r"""Macro-averaged F1 equal to sklearn's `f1_score(y_true, y_pred, average="macro")`.

    .. math:: \frac{1}{|K|} \sum_{k \in K} \frac{2 tp_k}{2 tp_k + fp_k + fn_k}

    where `K` are the classes that occur in the labels or the predictions.

    Examples:
      >>> round(float(macro_f1(jnp.array([[3, 1, 0], [0, 4, 0], [0, 0, 0]]))), 6)  # class 2 absent
      0.873016
    """
    cm = jnp.asarray(cm, jnp.float32)
    tp = jnp.diag(cm)
    predicted = jnp.sum(cm, axis=0)
    support = jnp.sum(cm, axis=1)
    denom = predicted + support  # 2 tp + fp + fn
    present = denom > 0
    f1 = jnp.where(present, 2.0 * tp / jnp.maximum(denom, 1.0), 0.0)
    return jnp.where(jnp.any(present), jnp.sum(f1) / jnp.maximum(jnp.sum(present), 1), 0.0)


def summarize(
    metrics: Metrics | Any, prefix: str = "", *, confusion: bool = False
) -> dict[str, Any]:
    """Host-side floats from an epoch's sums (call after one `jax.device_get`).

    Returns:
      `{prefix+"loss", prefix+"accuracy", prefix+"f1", prefix+"recall" (list per class),
      prefix+"count"}` as Python floats / lists, and `prefix+"confusion"` (nested lists, rows
      true class) when `confusion` is True.

    Examples:
      >>> s = summarize(Metrics(jnp.float32(3.0), jnp.float32(4.0), jnp.array([[2, 0], [1, 1]])),
      ...               prefix="val_")
      >>> s["val_loss"], s["val_accuracy"], s["val_recall"]
      (0.75, 0.75, [1.0, 0.5])
    """
    count = float(metrics.count)
    acc, f1, recall = jax.device_get(_scores(jnp.asarray(metrics.confusion)))
    out = {
        prefix + "loss": float(metrics.loss_sum) / count if count > 0 else float("nan"),
        prefix + "accuracy": float(acc),
        prefix + "f1": float(f1),
        prefix + "recall": [float(r) for r in recall],
        prefix + "count": int(count),
    }
    if confusion:
        out[prefix + "confusion"] = jax.device_get(metrics.confusion).tolist()
    return out
