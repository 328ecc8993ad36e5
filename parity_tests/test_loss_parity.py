"""Values and gradients of every jaxloss loss against its PyTorch reference, option by option.

Every test draws random shapes (one example upwards, one or two leading axes, 2..12 classes),
logit scales, hyper-parameters and reductions with hypothesis (derandomized), and runs in float32
and float64. Tolerances: ``parity_helpers.TOLERANCES`` (float64 rtol 1e-10, float32 rtol 2e-5).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_reference as ref
from hypothesis import given
from hypothesis import strategies as st
from parity_helpers import DTYPES, REDUCTIONS, assert_parity, cases, flat, gammas, to_torch

import jaxloss


def _labels(case):
    return torch.tensor(case.labels.reshape(-1))


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    case=cases(), gamma=gammas, alpha=st.floats(0.05, 4.0), reduction=st.sampled_from(REDUCTIONS)
)
def test_focal_seed000_scalar_alpha(dtype, case, gamma, alpha, reduction):
    module = ref.FocalLossSeed000(alpha=alpha, gamma=gamma, reduction=reduction)
    assert_parity(
        lambda x: jaxloss.focal_loss(x, case.labels, gamma=gamma, alpha=alpha, reduction=reduction),
        flat(lambda t: module(t, _labels(case)), case.num_classes, case.labels.shape, reduction),
        case.logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=cases(), gamma=gammas, weighted=st.booleans(), reduction=st.sampled_from(REDUCTIONS))
def test_focal_seed001_class_weights(dtype, case, gamma, weighted, reduction):
    weight = case.rng.uniform(0.1, 3.0, case.num_classes) if weighted else None
    module = ref.FocalLossSeed001(
        weight=None if weight is None else to_torch(weight, dtype), gamma=gamma, reduction=reduction
    )
    assert_parity(
        lambda x: jaxloss.focal_loss(
            x, case.labels, gamma=gamma, weight=weight, reduction=reduction
        ),
        flat(lambda t: module(t, _labels(case)), case.num_classes, case.labels.shape, reduction),
        case.logits,
        dtype,
    )


def _seed003_without_smooth(alpha, gamma, with_logits):
    """Seed 003's module with its ``+1e-8`` set to 0: the formula we implement. The deviation the
    ``+1e-8`` causes is tested separately in test_deviations.py."""
    module = ref.FocalLossSeed003(alpha=list(alpha), gamma=gamma, with_logits=with_logits)
    module.smooth = 0.0
    return module


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=cases(), gamma=gammas, with_logits=st.booleans())
def test_focal_seed003_per_class_alpha(dtype, case, gamma, with_logits):
    alpha = case.rng.uniform(0.1, 100.0, case.num_classes)
    module = _seed003_without_smooth(alpha, gamma, with_logits)
    x = case.logits
    if not with_logits:  # the module then takes probabilities
        x = np.exp(x - x.max(-1, keepdims=True))
        x = x / x.sum(-1, keepdims=True)
    assert_parity(
        lambda v: jaxloss.focal_loss(
            v, case.labels, gamma=gamma, alpha=alpha, from_logits=with_logits
        ),
        lambda t: module(t.reshape(-1, case.num_classes), _labels(case)),
        x,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    case=cases(),
    gamma=gammas,
    alpha_kind=st.sampled_from([None, "scalar", "vector"]),
    weighted=st.booleans(),
    ignore=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_focal_all_options_combined(dtype, case, gamma, alpha_kind, weighted, ignore, reduction):
    c = case.num_classes
    alpha = {None: None, "scalar": 0.25, "vector": case.rng.uniform(0.1, 2.0, c)}[alpha_kind]
    weight = case.rng.uniform(0.1, 3.0, c) if weighted else None
    labels = case.labels.copy()
    ignore_index = None
    if ignore:
        ignore_index = -100
        labels[case.rng.random(labels.shape) < 0.3] = ignore_index
        labels.reshape(-1)[0] = (
            0  # keep one counted example: the all-ignored mean is tested on its own
        )
    t_alpha = None if alpha is None else to_torch(np.asarray(alpha), dtype)
    t_weight = None if weight is None else to_torch(weight, dtype)
    assert_parity(
        lambda x: jaxloss.focal_loss(
            x,
            labels,
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
        ),
        flat(
            lambda t: ref.focal_reference(
                t,
                torch.tensor(labels.reshape(-1)),
                gamma=gamma,
                alpha=t_alpha,
                weight=t_weight,
                ignore_index=ignore_index,
                reduction=reduction,
            ),
            c,
            labels.shape,
            reduction,
        ),
        case.logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    case=cases(),
    smoothing=st.sampled_from([0.0, 0.1, 0.2]) | st.floats(0.0, 0.99),
    weighted=st.booleans(),
    ignore=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_cross_entropy_matches_torch(dtype, case, smoothing, weighted, ignore, reduction):
    c = case.num_classes
    weight = case.rng.uniform(0.1, 3.0, c) if weighted else None
    labels = case.labels.copy()
    ignore_index = None
    if ignore:
        ignore_index = int(case.rng.integers(-5, c))  # torch allows an in-range ignore_index too
        labels[case.rng.random(labels.shape) < 0.3] = ignore_index
        if np.all(labels == ignore_index):
            labels.reshape(-1)[0] = (ignore_index + 1) % c
    t_kwargs = dict(
        weight=None if weight is None else to_torch(weight, dtype),
        label_smoothing=smoothing,
        reduction=reduction,
    )
    if ignore_index is not None:
        t_kwargs["ignore_index"] = ignore_index
    assert_parity(
        lambda x: jaxloss.cross_entropy(
            x,
            labels,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=smoothing,
            reduction=reduction,
        ),
        flat(
            lambda t: F.cross_entropy(t, torch.tensor(labels.reshape(-1)), **t_kwargs),
            c,
            labels.shape,
            reduction,
        ),
        case.logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=cases(), smoothing=st.sampled_from([0.0, 0.1, 0.2]) | st.floats(0.0, 0.99))
def test_label_smoothing_others_matches_seed_module(dtype, case, smoothing):
    module = ref.LabelSmoothingLoss(classes=case.num_classes, smoothing=smoothing)
    assert_parity(
        lambda x: jaxloss.label_smoothing_loss(x, case.labels, smoothing=smoothing),
        lambda t: module(t.reshape(-1, case.num_classes), _labels(case)),
        case.logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    case=cases(),
    smoothing=st.floats(0.0, 0.99),
    weighted=st.booleans(),
    ignore=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_label_smoothing_others_weight_and_ignore(
    dtype, case, smoothing, weighted, ignore, reduction
):
    c = case.num_classes
    weight = case.rng.uniform(0.1, 3.0, c) if weighted else None
    labels = case.labels.copy()
    ignore_index = None
    if ignore:
        ignore_index = -1
        labels[case.rng.random(labels.shape) < 0.3] = -1
        labels.reshape(-1)[0] = 0
    t_weight = None if weight is None else to_torch(weight, dtype)
    assert_parity(
        lambda x: jaxloss.label_smoothing_loss(
            x,
            labels,
            smoothing=smoothing,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
        ),
        flat(
            lambda t: ref.label_smoothing_others_reference(
                t,
                torch.tensor(labels.reshape(-1)),
                smoothing=smoothing,
                weight=t_weight,
                ignore_index=ignore_index,
                reduction=reduction,
            ),
            c,
            labels.shape,
            reduction,
        ),
        case.logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=cases(), smoothing=st.floats(0.0, 0.99), reduction=st.sampled_from(REDUCTIONS))
def test_label_smoothing_uniform_is_torch_cross_entropy(dtype, case, smoothing, reduction):
    assert_parity(
        lambda x: jaxloss.label_smoothing_loss(
            x, case.labels, smoothing=smoothing, spread="uniform", reduction=reduction
        ),
        flat(
            lambda t: F.cross_entropy(
                t, _labels(case), label_smoothing=smoothing, reduction=reduction
            ),
            case.num_classes,
            case.labels.shape,
            reduction,
        ),
        case.logits,
        dtype,
    )


class _F1NoClamp(ref.F1Loss):
    """Seed 001's F1Loss with the final clamp removed (our ``clamp=False``)."""

    def forward(self, y_pred, y_true):
        return 1 - self.per_class_f1(y_pred, y_true).mean()


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=cases(), epsilon=st.sampled_from([1e-7, 1e-4, 0.01]), clamp=st.booleans())
def test_f1_loss_matches_seed_module(dtype, case, epsilon, clamp):
    module = (ref.F1Loss if clamp else _F1NoClamp)(classes=case.num_classes, epsilon=epsilon)
    assert_parity(
        lambda x: jaxloss.f1_loss(
            x, case.labels, num_classes=case.num_classes, epsilon=epsilon, clamp=clamp
        ),
        lambda t: module(t.reshape(-1, case.num_classes), _labels(case)),
        case.logits,
        dtype,
    )


@st.composite
def binary_cases(draw):
    shape = draw(st.sampled_from([(1,), (7,), (4, 3), (2, 3, 5)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = rng.normal(size=shape) * draw(st.sampled_from([0.1, 1.0, 4.0]))
    kind = draw(st.sampled_from(["hard", "soft", "mixed"]))
    targets = {
        "hard": lambda: rng.integers(0, 2, shape).astype(float),
        "soft": lambda: rng.uniform(0, 1, shape),
        "mixed": lambda: np.where(
            rng.random(shape) < 0.5, rng.integers(0, 2, shape), rng.uniform(0, 1, shape)
        ),
    }[kind]()
    return logits, targets


@pytest.mark.parametrize("dtype", DTYPES)
@given(
    case=binary_cases(),
    gamma=gammas,
    alpha=st.sampled_from([0.25, -1.0, 0.0, 1.0]) | st.floats(0, 1),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_sigmoid_focal_matches_torchvision(dtype, case, gamma, alpha, reduction):
    logits, targets = case
    assert_parity(
        lambda x: jaxloss.sigmoid_focal_loss(
            x, targets, gamma=gamma, alpha=alpha, reduction=reduction
        ),
        lambda t: ref.torchvision_sigmoid_focal_loss(
            t, to_torch(targets, dtype), alpha=alpha, gamma=gamma, reduction=reduction
        ),
        logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@given(case=binary_cases(), gamma=gammas)
def test_sigmoid_focal_gradient_wrt_soft_targets(dtype, case, gamma):
    """Soft targets may come from another network (distillation): their gradient matches too."""
    logits, targets = case
    targets = np.clip(targets, 0.01, 0.99)
    assert_parity(
        lambda t: jaxloss.sigmoid_focal_loss(jnp.asarray(logits, t.dtype), t, gamma=gamma),
        lambda t: ref.torchvision_sigmoid_focal_loss(
            to_torch(logits, dtype), t, gamma=gamma, reduction="mean"
        ),
        targets,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", ["focal", "cross_entropy", "smoothing"])
def test_edge_one_example_two_classes(dtype, reduction, loss):
    logits = np.array([[0.3, -1.2]])
    labels = np.array([1])
    jax_fn, torch_fn = {
        "focal": (
            functools.partial(jaxloss.focal_loss, labels=labels, gamma=2.0, reduction=reduction),
            lambda t: ref.FocalLossSeed000(gamma=2.0, reduction=reduction)(t, torch.tensor(labels)),
        ),
        "cross_entropy": (
            functools.partial(
                jaxloss.cross_entropy, labels=labels, label_smoothing=0.3, reduction=reduction
            ),
            lambda t: F.cross_entropy(
                t, torch.tensor(labels), label_smoothing=0.3, reduction=reduction
            ),
        ),
        "smoothing": (
            functools.partial(jaxloss.label_smoothing_loss, labels=labels, smoothing=0.3),
            lambda t: ref.LabelSmoothingLoss(2, 0.3)(t, torch.tensor(labels)),
        ),
    }[loss]
    assert_parity(lambda x: jax_fn(x), torch_fn, logits, dtype)


def test_all_ignored_mean_is_nan_like_torch():
    logits = np.random.default_rng(0).normal(size=(4, 3))
    labels = np.full(4, -100)
    ours = float(jaxloss.cross_entropy(logits, labels, ignore_index=-100))
    theirs = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), ignore_index=-100).item()
    assert np.isnan(ours) and np.isnan(theirs)
    assert np.isnan(float(jaxloss.focal_loss(logits, labels, ignore_index=-100)))
    assert float(jaxloss.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")) == 0.0
