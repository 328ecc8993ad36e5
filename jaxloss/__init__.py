"""jaxloss: PyTorch-exact classification losses for JAX.

Every loss takes ``logits`` of shape ``(..., C)`` and integer ``labels`` of shape ``(...)`` (or
float ``targets`` for the sigmoid form), computes in float32 or wider, is compiled with ``jax.jit``
and is differentiable in reverse mode to any order. The ``linear_*`` forms take the classifier
head's ``features (..., D)`` and ``kernel (D, C)`` instead of logits and never materialise them.
See README.md for the torch equivalent of each function and the documented deviations from the
reference modules.
"""

from jaxloss._disturb import disturb_labels, disturb_values
from jaxloss._f1 import f1_loss
from jaxloss._focal import focal_loss
from jaxloss._linear_head import (
    linear_cross_entropy,
    linear_focal_loss,
    linear_label_smoothing_loss,
)
from jaxloss._sigmoid_focal import sigmoid_focal_loss
from jaxloss._smoothing import cross_entropy, label_smoothing_loss

__all__ = (
    "cross_entropy",
    "disturb_labels",
    "disturb_values",
    "f1_loss",
    "focal_loss",
    "label_smoothing_loss",
    "linear_cross_entropy",
    "linear_focal_loss",
    "linear_label_smoothing_loss",
    "sigmoid_focal_loss",
)

__version__ = "0.1.0"
