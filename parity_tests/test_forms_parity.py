"""The softmax losses in every form torch code passes them: ``axis=1``, ``where=``, probability
targets and unbatched input, values and gradients against torch, float32 and float64.

References: ``torch.nn.functional.cross_entropy`` takes ``(N, C, d1, ...)`` logits, probability
targets and unbatched ``(C,)`` input itself; the seed modules take ``(N, C)``, so they get the same
data moved to classes-last (``movedim``, on the torch side only). ``where=`` is compared with torch
on the selected examples (masked ones give 0 and a zero gradient). Tolerances:
``parity_helpers.TOLERANCES``, unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from parity_helpers import DTYPES, REDUCTIONS, TOLERANCES, assert_parity, gammas, to_torch

import jaxloss

# Half the suite's example budget per test (JAXLOSS_HYPOTHESIS_EXAMPLES raises both): each form's
# test draws every option; the shapes repeat, so most examples reuse a compiled program.
FORMS = settings(max_examples=max(1, settings().max_examples // 2))

# (N, C, d1, ...) shapes: one example upwards, one or two spatial axes, 2..7 classes.
SPATIAL_SHAPES = ((1, 2, 3), (3, 5, 4), (2, 3, 2, 3), (4, 7, 1, 2))


@dataclasses.dataclass(frozen=True)
class Spatial:
    """Logits ``(N, C, d...)`` (float64), labels ``(N, d...)`` and a mask with one True at least."""

    logits: np.ndarray
    labels: np.ndarray
    where: np.ndarray
    rng: np.random.Generator

    @property
    def num_classes(self) -> int:
        return self.logits.shape[1]


@st.composite
def spatial(draw) -> Spatial:
    shape = draw(st.sampled_from(SPATIAL_SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    logits = rng.normal(size=shape) * draw(st.sampled_from([0.1, 1.0, 4.0]))
    batch = shape[:1] + shape[2:]
    where = rng.random(batch) < 0.7
    where.reshape(-1)[rng.integers(where.size)] = True
    return Spatial(logits, rng.integers(0, shape[1], size=batch), where, rng)


def _classes_last(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, d...)`` to ``(N * d..., C)``: what the seed modules take."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def _seed_on_spatial(loss, case: Spatial, reduction: str):
    """A ``(N, C)`` torch loss applied to ``(N, C, d...)`` logits, returning jax's output shape."""
    labels = torch.tensor(case.labels.reshape(-1))

    def fn(t: torch.Tensor) -> torch.Tensor:
        out = loss(_classes_last(t), labels)
        return out.reshape(case.labels.shape) if reduction == "none" else out

    return fn


def _on_selected(loss, case: Spatial, reduction: str):
    """A ``(N, C)`` torch loss on the examples ``case.where`` selects; ``"none"``: 0 elsewhere."""
    keep = torch.tensor(case.where.reshape(-1))
    labels = torch.tensor(case.labels.reshape(-1))[keep]

    def fn(t: torch.Tensor) -> torch.Tensor:
        out = loss(_classes_last(t)[keep], labels)
        if reduction != "none":
            return out
        full = torch.zeros(keep.shape, dtype=out.dtype).masked_scatter(keep, out)
        return full.reshape(case.labels.shape)

    return fn


@pytest.mark.parametrize("dtype", DTYPES)
@FORMS
@given(
    case=spatial(),
    smoothing=st.sampled_from([0.0, 0.3]),
    weighted=st.booleans(),
    ignore=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_cross_entropy_axis1_is_torchs_own_layout(
    dtype, case, smoothing, weighted, ignore, reduction
):
    weight = case.rng.uniform(0.1, 3.0, case.num_classes) if weighted else None
    labels = case.labels.copy()
    ignore_index = None
    if ignore:  # torch's default ignore_index, on some pixels (never all of them)
        labels.reshape(-1)[1:][case.rng.random(labels.size - 1) < 0.3] = -100
        ignore_index = -100
    tw = None if weight is None else to_torch(weight, dtype)
    assert_parity(
        lambda x: jaxloss.cross_entropy(
            x,
            labels,
            axis=1,
            weight=weight,
            ignore_index=ignore_index,
            label_smoothing=smoothing,
            reduction=reduction,
        ),
        lambda t: F.cross_entropy(
            t,
            torch.tensor(labels),
            weight=tw,
            label_smoothing=smoothing,
            reduction=reduction,
            **({} if ignore_index is None else {"ignore_index": ignore_index}),
        ),
        case.logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@FORMS
@given(case=spatial(), gamma=gammas, reduction=st.sampled_from(REDUCTIONS))
def test_focal_axis1_matches_the_seed_modules(dtype, case, gamma, reduction):
    alpha = case.rng.uniform(0.1, 1.0, case.num_classes)
    ta = to_torch(alpha, dtype)
    assert_parity(
        lambda x: jaxloss.focal_loss(
            x, case.labels, axis=1, gamma=gamma, alpha=alpha, reduction=reduction
        ),
        _seed_on_spatial(
            lambda t, y: ref.focal_reference(t, y, gamma=gamma, alpha=ta, reduction=reduction),
            case,
            reduction,
        ),
        case.logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@FORMS
@given(case=spatial(), smoothing=st.floats(0.0, 0.9))
def test_label_smoothing_axis1_matches_the_seed_module(dtype, case, smoothing):
    module = ref.LabelSmoothingLoss(case.num_classes, smoothing=smoothing)
    assert_parity(
        lambda x: jaxloss.label_smoothing_loss(x, case.labels, axis=1, smoothing=smoothing),
        _seed_on_spatial(module, case, "mean"),
        case.logits,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
@FORMS
@given(
    case=spatial(),
    name=st.sampled_from(["cross_entropy", "focal", "label_smoothing"]),
    axis=st.sampled_from([1, -1]),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_where_equals_torch_on_the_selected_examples(dtype, case, name, axis, reduction):
    weight = case.rng.uniform(0.1, 3.0, case.num_classes)
    tw = to_torch(weight, dtype)
    x, where, labels = case.logits, case.where, case.labels
    if axis == -1:  # the same examples, classes last: (N * d..., C)
        x = np.moveaxis(x, 1, -1).reshape(-1, case.num_classes)
        where, labels = where.reshape(-1), labels.reshape(-1)
        case = Spatial(x[:, :, None], labels[:, None], where[:, None], case.rng)
    jax_loss, torch_loss = {
        "cross_entropy": (
            lambda z: jaxloss.cross_entropy(
                z, labels, axis=axis, where=where, weight=weight, label_smoothing=0.2,
                reduction=reduction,
            ),
            lambda t, y: F.cross_entropy(t, y, weight=tw, label_smoothing=0.2, reduction=reduction),
        ),
        "focal": (
            lambda z: jaxloss.focal_loss(
                z, labels, axis=axis, where=where, weight=weight, gamma=1.5, alpha=0.3,
                reduction=reduction,
            ),
            lambda t, y: ref.focal_reference(
                t, y, gamma=1.5, alpha=torch.tensor(0.3, dtype=t.dtype), weight=tw,
                reduction=reduction,
            ),
        ),
        "label_smoothing": (
            lambda z: jaxloss.label_smoothing_loss(
                z, labels, axis=axis, where=where, weight=weight, smoothing=0.2,
                reduction=reduction,
            ),
            lambda t, y: ref.label_smoothing_others_reference(
                t, y, smoothing=0.2, weight=tw, reduction=reduction
            ),
        ),
    }[name]  # fmt: skip
    torch_fn = _on_selected(torch_loss, case, reduction)
    if axis == -1:
        on_rows = torch_fn

        def torch_fn(t):
            out = on_rows(t[:, :, None])
            return out.reshape(labels.shape) if reduction == "none" else out

    assert_parity(jax_loss, torch_fn, x, dtype)


def _dirichlet(rng, shape, axis):
    """Random probability targets of ``shape``, summing to 1 along ``axis``; some one-hot rows."""
    classes_last = np.moveaxis(np.empty(shape), axis, -1).shape
    t = rng.dirichlet(np.full(classes_last[-1], 0.5), size=classes_last[:-1])
    hard = rng.random(classes_last[:-1]) < 0.2
    t[hard] = np.eye(classes_last[-1])[rng.integers(0, classes_last[-1], int(hard.sum()))]
    return np.moveaxis(t, -1, axis)


@pytest.mark.parametrize("dtype", DTYPES)
@FORMS
@given(
    case=spatial(),
    axis=st.sampled_from([1, -1]),
    smoothing=st.sampled_from([0.0, 0.25]),
    weighted=st.booleans(),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_probability_targets_match_torch_values_and_both_gradients(
    dtype, case, axis, smoothing, weighted, reduction
):
    """torch's probability-target form (mean over examples, not weights), also d/d targets."""
    x = case.logits if axis == 1 else np.moveaxis(case.logits, 1, -1)
    targets = _dirichlet(case.rng, x.shape, axis)
    weight = case.rng.uniform(0.1, 3.0, case.num_classes) if weighted else None
    tw = None if weight is None else to_torch(weight, dtype)

    def torch_loss(t, p):
        if axis == -1:
            t, p = t.movedim(-1, 1), p.movedim(-1, 1)
        return F.cross_entropy(t, p, weight=tw, label_smoothing=smoothing, reduction=reduction)

    assert_parity(
        lambda z: jaxloss.cross_entropy(
            z, targets, axis=axis, weight=weight, label_smoothing=smoothing, reduction=reduction
        ),
        lambda t: torch_loss(t, to_torch(targets, dtype)),
        x,
        dtype,
    )
    # The gradient in the targets (distillation with a learned teacher, label learning).
    assert_parity(
        lambda p: jaxloss.cross_entropy(
            jnp.asarray(x, p.dtype), p, axis=axis, weight=weight, label_smoothing=smoothing,
            reduction=reduction,
        ),
        lambda p: torch_loss(to_torch(x, dtype), p),
        targets,
        dtype,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@FORMS
@given(case=spatial(), reduction=st.sampled_from(REDUCTIONS))
def test_probability_targets_with_where_and_uniform_smoothing(dtype, case, reduction):
    """``label_smoothing_loss(spread="uniform")`` is the same form; ``where`` counts examples."""
    targets = _dirichlet(case.rng, case.logits.shape, 1)
    keep = torch.tensor(case.where.reshape(-1))

    def torch_fn(t):
        p = _classes_last(to_torch(targets, dtype))[keep]
        out = F.cross_entropy(_classes_last(t)[keep], p, label_smoothing=0.1, reduction=reduction)
        if reduction != "none":
            return out
        full = torch.zeros(keep.shape, dtype=out.dtype).masked_scatter(keep, out)
        return full.reshape(case.labels.shape)

    assert_parity(
        lambda z: jaxloss.label_smoothing_loss(
            z, targets, axis=1, spread="uniform", smoothing=0.1, where=case.where,
            reduction=reduction,
        ),
        torch_fn,
        case.logits,
        dtype,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_classes", [2, 5])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched_logits_and_a_scalar_label(dtype, num_classes, reduction):
    """torch's ``CrossEntropyLoss`` takes ``(C,)`` with a 0-d target; so does every loss here."""
    rng = np.random.default_rng(num_classes)
    x = rng.normal(size=num_classes) * 3
    label = int(rng.integers(num_classes))
    probs = _dirichlet(rng, (num_classes,), 0)
    weight = rng.uniform(0.1, 3.0, num_classes)
    tw = to_torch(weight, dtype)
    assert_parity(
        lambda z: jaxloss.cross_entropy(
            z, np.int64(label), weight=weight, label_smoothing=0.1, reduction=reduction
        ),
        lambda t: F.cross_entropy(
            t, torch.tensor(label), weight=tw, label_smoothing=0.1, reduction=reduction
        ),
        x,
        dtype,
    )
    assert_parity(
        lambda z: jaxloss.cross_entropy(z, probs, weight=weight, reduction=reduction),
        lambda t: F.cross_entropy(t, to_torch(probs, dtype), weight=tw, reduction=reduction),
        x,
        dtype,
    )
    assert_parity(
        lambda z: jaxloss.focal_loss(z, label, gamma=2.0, weight=weight, reduction=reduction),
        lambda t: ref.focal_reference(
            t[None], torch.tensor([label]), gamma=2.0, weight=tw, reduction=reduction
        ).reshape(()),
        x,
        dtype,
    )
    assert_parity(
        lambda z: jaxloss.label_smoothing_loss(z, label, smoothing=0.3, reduction=reduction),
        lambda t: ref.label_smoothing_others_reference(
            t[None], torch.tensor([label]), smoothing=0.3, reduction=reduction
        ).reshape(()),
        x,
        dtype,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_narrow_and_wide_label_dtypes_with_axis1(dtype):
    """uint8 and int64 labels in torch's layout, with an ignore_index the dtype can hold."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 3, 3)) * 2
    labels = rng.integers(0, 4, size=(2, 3, 3))
    labels[0, 0, 0] = 255
    for narrow_or_wide in (labels.astype(np.uint8), labels.astype(np.int64)):
        with jax.enable_x64(narrow_or_wide.dtype == np.int64 or dtype == np.float64):
            assert_parity(
                functools.partial(
                    lambda z, y: jaxloss.cross_entropy(z, y, axis=1, ignore_index=255),
                    y=narrow_or_wide,
                ),
                lambda t: F.cross_entropy(t, torch.tensor(labels), ignore_index=255),
                x,
                dtype,
                tolerances=TOLERANCES[dtype],
            )
