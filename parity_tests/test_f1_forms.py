"""``jaxloss.f1_loss`` in the forms torch code passes it: ``axis=1``, ``where=``, unbatched input.

Values and gradients against seed 001's ``F1Loss`` (``torch_reference.F1Loss``), float32 and
float64. The seed takes ``(N, C)`` only, so it gets the same data moved to classes-last
(``movedim``, on the torch side only); ``where=`` is compared with the seed on the selected
examples, so a masked example's gradient must be exactly 0 and every other one equal. Tolerances:
``parity_helpers.TOLERANCES``, unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch_reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from parity_helpers import DTYPES, assert_parity

import jaxloss

# Half the suite's example budget per test (each shape repeats, so most examples reuse a program).
FORMS = settings(max_examples=max(1, settings().max_examples // 2))

# (N, C, d1, ...) shapes: one example upwards, one or two spatial axes, 2..7 classes.
SPATIAL_SHAPES = ((1, 2, 3), (3, 5, 4), (2, 3, 2, 3), (4, 7, 1, 2))
EPSILONS = st.sampled_from([1e-7, 1e-4, 0.01])


class _F1NoClamp(ref.F1Loss):
    """Seed 001's F1Loss with the final clamp removed (our ``clamp=False``)."""

    def forward(self, y_pred, y_true):
        return 1 - self.per_class_f1(y_pred, y_true).mean()


def _seed(num_classes: int, epsilon: float, clamp: bool) -> torch.nn.Module:
    return (ref.F1Loss if clamp else _F1NoClamp)(classes=num_classes, epsilon=epsilon)


@st.composite
def spatial(draw):
    """``(logits (N, C, d...), labels (N, d...), where (N, d...) with one True at least)``."""
    shape = draw(st.sampled_from(SPATIAL_SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = rng.normal(size=shape) * draw(st.sampled_from([0.1, 1.0, 4.0]))
    batch = shape[:1] + shape[2:]
    where = rng.random(batch) < 0.7
    where.reshape(-1)[rng.integers(where.size)] = True
    return logits, rng.integers(0, shape[1], size=batch), where


def _classes_last(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, d...)`` to ``(N * d..., C)``: what the seed module takes."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


@pytest.mark.parametrize("dtype", DTYPES)
@FORMS
@given(case=spatial(), epsilon=EPSILONS, clamp=st.booleans())
def test_axis1_matches_the_seed_on_classes_last(dtype, case, epsilon, clamp):
    logits, labels, _ = case
    module = _seed(logits.shape[1], epsilon, clamp)
    assert_parity(
        lambda x: jaxloss.f1_loss(x, labels, axis=1, epsilon=epsilon, clamp=clamp),
        lambda t: module(_classes_last(t), torch.tensor(labels.reshape(-1))),
        logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@FORMS
@given(case=spatial(), axis=st.sampled_from([1, -1]), epsilon=EPSILONS)
def test_where_equals_the_seed_on_the_selected_examples(dtype, case, axis, epsilon):
    logits, labels, where = case
    num_classes = logits.shape[1]
    if axis == -1:  # the same examples, classes last: (N * d..., C)
        logits = np.moveaxis(logits, 1, -1).reshape(-1, num_classes)
        labels, where = labels.reshape(-1), where.reshape(-1)
    module = _seed(num_classes, epsilon, clamp=True)
    keep = torch.tensor(where.reshape(-1))
    selected = torch.tensor(labels.reshape(-1))[keep]

    def on_selected(t: torch.Tensor) -> torch.Tensor:
        rows = _classes_last(t) if axis == 1 else t
        return module(rows[keep], selected)

    assert_parity(
        lambda x: jaxloss.f1_loss(x, labels, axis=axis, where=where, epsilon=epsilon),
        on_selected,
        logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@FORMS
@given(
    num_classes=st.sampled_from([2, 7]),
    seed=st.integers(0, 2**32 - 1),
    scale=st.sampled_from([0.1, 1.0, 4.0]),
    epsilon=EPSILONS,
)
def test_unbatched_is_one_example(dtype, num_classes, seed, scale, epsilon):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=num_classes) * scale
    label = int(rng.integers(num_classes))
    module = _seed(num_classes, epsilon, clamp=True)
    assert_parity(
        lambda x: jaxloss.f1_loss(x, np.int32(label), epsilon=epsilon),
        lambda t: module(t[None], torch.tensor([label])),
        logits,
        dtype,
    )
