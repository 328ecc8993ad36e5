"""Forward mode against torch's own forward-mode AD: ``jax.jvp`` of each loss equals
``torch.func.jvp`` of its reference for random tangents, in float32 and float64.

The index forms' ``custom_jvp`` (``jaxloss._target_stats``, ``jaxloss._sigmoid_jvp``) is the same
rule reverse mode transposes; its gradients are compared in the other parity files. Tolerances are
``TOLERANCES`` of ``parity_helpers``, with ``atol`` scaled by the tangent's size (a tangent is a sum
over classes of tangent entries, so its rounding grows with them). Cross-entropy is also drawn at
saturation (logits up to about 100: torch's ``log_softmax`` is exact there); the focal references
form ``1 - p`` by subtraction, whose tangent turns NaN or inexact there (``parity_tests/
test_deviations.py``), so those are drawn at the usual scale and saturation is tested against
reverse mode in ``tests/jaxloss/test_forward_mode.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from parity_helpers import DTYPES, REDUCTIONS, TOLERANCES, cases, flat, gammas, to_torch

import jaxloss

# half the example budget, as the forms files: the gradients of the same rules are swept at the full
# budget by the other parity files (reverse mode is the transpose of this tangent rule)
FORWARD = settings(max_examples=max(1, settings().max_examples // 2))


def assert_jvp_parity(jax_fn, torch_fn, primals, tangents, dtype):
    """``jax.jvp(jax_fn)`` equals ``torch.func.jvp(torch_fn)`` at ``primals`` along ``tangents``."""
    jdtype = jnp.float64 if dtype == np.float64 else jnp.float32
    with jax.enable_x64(dtype == np.float64):
        jp = tuple(jnp.asarray(p, jdtype) for p in primals)
        jt = tuple(jnp.asarray(t, jdtype) for t in tangents)
        value, tangent = jax.jvp(jax_fn, jp, jt)
        value, tangent = np.asarray(value, np.float64), np.asarray(tangent, np.float64)
    tp = tuple(to_torch(p, dtype) for p in primals)
    tt = tuple(to_torch(t, dtype) for t in tangents)
    want_value, want_tangent = (t.detach().numpy() for t in torch.func.jvp(torch_fn, tp, tt))
    assert np.all(np.isfinite(tangent)), tangent
    rule = TOLERANCES[dtype]
    scale = 1.0 + max(float(np.max(np.abs(t))) for t in tangents)
    np.testing.assert_allclose(value, want_value, rtol=rule["rtol"], atol=rule["atol"])
    np.testing.assert_allclose(tangent, want_tangent, rtol=rule["rtol"], atol=rule["atol"] * scale)


def assert_logits_jvp_parity(jax_fn, torch_fn, case, reduction, dtype):
    """``assert_jvp_parity`` in the logits along a random tangent; ``torch_fn`` takes ``(N, C)``."""
    lead = case.logits.shape[:-1]
    assert_jvp_parity(
        jax_fn,
        flat(torch_fn, case.num_classes, lead, reduction),
        (case.logits,),
        (case.rng.normal(size=case.logits.shape),),
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@FORWARD
@given(
    case=cases(scale=30.0),
    smoothing=st.sampled_from([0.0, 0.2]),
    weighted=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_cross_entropy_jvp_matches_torch(dtype, case, smoothing, weighted, reduction):
    weight = case.rng.uniform(0.1, 3.0, case.num_classes) if weighted else None
    labels = case.labels.reshape(-1)
    tw = None if weight is None else to_torch(weight, dtype)
    assert_logits_jvp_parity(
        lambda x: jaxloss.cross_entropy(
            x, case.labels, weight=weight, label_smoothing=smoothing, reduction=reduction
        ),
        lambda t: F.cross_entropy(
            t, torch.tensor(labels), weight=tw, label_smoothing=smoothing, reduction=reduction
        ),
        case,
        reduction,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@FORWARD
@given(case=cases(), gamma=gammas, reduction=st.sampled_from(REDUCTIONS))
def test_focal_jvp_matches_the_reference(dtype, case, gamma, reduction):
    alpha = case.rng.uniform(0.1, 1.0, case.num_classes)
    labels = torch.tensor(case.labels.reshape(-1))
    assert_logits_jvp_parity(
        lambda x: jaxloss.focal_loss(x, case.labels, gamma=gamma, alpha=alpha, reduction=reduction),
        lambda t: ref.focal_reference(
            t, labels, gamma=gamma, alpha=to_torch(alpha, dtype), reduction=reduction
        ),
        case,
        reduction,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@FORWARD
@given(case=cases(), smoothing=st.floats(0.0, 0.9))
def test_label_smoothing_jvp_matches_the_seed_module(dtype, case, smoothing):
    module = ref.LabelSmoothingLoss(case.num_classes, smoothing=smoothing)
    labels = torch.tensor(case.labels.reshape(-1))
    assert_logits_jvp_parity(
        lambda x: jaxloss.label_smoothing_loss(x, case.labels, smoothing=smoothing),
        lambda t: module(t, labels),
        case,
        "mean",
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@FORWARD
@given(
    case=cases(),
    gamma=gammas,
    alpha=st.sampled_from([0.25, -1.0]),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_sigmoid_focal_jvp_in_logits_and_targets_matches_torchvision(
    dtype, case, gamma, alpha, reduction
):
    targets = case.rng.uniform(size=case.logits.shape)
    assert_jvp_parity(
        lambda z, t: jaxloss.sigmoid_focal_loss(
            z, t, gamma=gamma, alpha=alpha, reduction=reduction
        ),
        lambda z, t: ref.torchvision_sigmoid_focal_loss(
            z, t, alpha=alpha, gamma=gamma, reduction=reduction
        ),
        (case.logits, targets),
        (case.rng.normal(size=case.logits.shape), case.rng.normal(size=case.logits.shape)),
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_jvp_on_torchs_layout_with_ignore_index(dtype):
    """``axis=1`` and ``ignore_index`` (torch's -100) in forward mode, as ``F.cross_entropy``."""
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 4, 5, 2)) * 3
    labels = rng.integers(0, 4, size=(3, 5, 2))
    labels[0, 0, 0] = labels[2, 4, 1] = -100
    assert_jvp_parity(
        lambda x: jaxloss.cross_entropy(x, labels, axis=1, ignore_index=-100, label_smoothing=0.1),
        lambda t: F.cross_entropy(t, torch.tensor(labels), label_smoothing=0.1),
        (logits,),
        (rng.normal(size=logits.shape),),
        dtype,
    )
