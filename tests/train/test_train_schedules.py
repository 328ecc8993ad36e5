"""Unit tests for train.schedules: hard-coded torch values, validation, a pure plateau state.

Reference numbers were produced by torch.optim.lr_scheduler 2.13 (the parity tests check the
same property over random inputs); they are exact float64 values unless marked approx.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from train.schedules import (
    PlateauState,
    ReduceLROnPlateau,
    constant_lr,
    cosine_annealing_lr,
    reduce_lr_on_plateau,
    step_lr,
)


# ------------------------------------------------------------------------------------------------
# step_lr / cosine_annealing_lr / constant_lr
# ------------------------------------------------------------------------------------------------
def test_step_lr_seed_000_setting():
    schedule = step_lr(0.001, step_size=7, gamma=0.1)  # seed 000: StepLR(step_size=7, gamma=0.1)
    lrs = [schedule(e) for e in range(22)]
    assert lrs[:7] == [0.001] * 7
    assert lrs[7:14] == [0.0001] * 7
    assert (
        lrs[14:21] == [1e-05] * 7
    )  # torch: (0.001 * 0.1) * 0.1; closed form 1.0000000000000003e-05
    assert lrs[21] == 1.0000000000000002e-06


def test_step_lr_is_a_repeated_product_like_torch():
    schedule = step_lr(0.1, step_size=5, gamma=0.7)  # seed 002: StepLR(step_size=5, gamma=0.7)
    assert [schedule(e) for e in (4, 5, 10)] == [0.1, 0.06999999999999999, 0.048999999999999995]
    assert (
        schedule(15) == 0.0343
    )  # torch's value; the closed form 0.1 * 0.7**3 is 0.03429999999999999
    assert schedule(15) != 0.1 * 0.7**3


def test_cosine_annealing_values_and_rise_past_t_max():
    schedule = cosine_annealing_lr(1.0, t_max=4, eta_min=0.0)
    got = [schedule(e) for e in range(10)]
    half = 0.5 + 0.5 * math.cos(math.pi / 4)
    expected = [1.0, half, 0.5, 1 - half, 0.0, 1 - half, 0.5, half, 1.0, half]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)
    assert got[4] < got[5] < got[6] < got[7] < got[8]  # rises again after t_max


def test_cosine_annealing_eta_min_and_t_max_one():
    schedule = cosine_annealing_lr(0.1, t_max=1, eta_min=0.01)
    np.testing.assert_allclose(
        [schedule(e) for e in range(5)], [0.1, 0.01, 0.1, 0.01, 0.1], rtol=1e-15
    )
    schedule = cosine_annealing_lr(0.1, t_max=10, eta_min=0.02)
    assert schedule(0) == 0.1
    assert schedule(10) == pytest.approx(0.02, abs=1e-16)


def test_constant_lr():
    schedule = constant_lr(0.25)
    assert [schedule(e) for e in (0, 1, 100)] == [0.25, 0.25, 0.25]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: step_lr(-0.1, 3), "base_lr"),
        (lambda: step_lr(float("nan"), 3), "base_lr"),
        (lambda: step_lr(0.1, 0), "step_size"),
        (lambda: step_lr(0.1, 2.5), "step_size"),
        (lambda: step_lr(0.1, True), "step_size"),
        (lambda: step_lr(0.1, 3, gamma=float("inf")), "gamma"),
        (lambda: step_lr(0.1, 3, gamma="0.1"), "gamma"),
        (lambda: cosine_annealing_lr(0.1, 0), "t_max"),
        (lambda: cosine_annealing_lr(0.1, -5), "t_max"),
        (lambda: cosine_annealing_lr(0.1, 10, eta_min=float("nan")), "eta_min"),
        (lambda: constant_lr(-1.0), "base_lr"),
    ],
)
def test_schedule_argument_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "schedule", [step_lr(0.1, 3), cosine_annealing_lr(0.1, 5), constant_lr(0.1)]
)
@pytest.mark.parametrize("epoch", [-1, 1.5, True])
def test_schedule_epoch_validation(schedule, epoch):
    with pytest.raises(ValueError, match="epoch"):
        schedule(epoch)


def test_schedules_accept_numpy_integers():
    assert step_lr(1.0, 2, 0.5)(np.int64(2)) == 0.5
    assert isinstance(cosine_annealing_lr(1.0, 2)(np.int32(1)), float)


# ------------------------------------------------------------------------------------------------
# reduce_lr_on_plateau
# ------------------------------------------------------------------------------------------------
def _run(plateau: ReduceLROnPlateau, metrics) -> list[float]:
    """LR used in each epoch 0..len(metrics) (the first is base_lr)."""
    state = plateau.init()
    lrs = [state.lr]
    for m in metrics:
        state = plateau.update(state, m)
        lrs.append(state.lr)
    return lrs


def test_plateau_init_state():
    state = reduce_lr_on_plateau(0.1).init()
    assert isinstance(state, PlateauState)
    assert state == PlateauState(
        lr=0.1, best=math.inf, num_bad_epochs=0, cooldown_counter=0, epoch=0
    )
    assert reduce_lr_on_plateau(0.1, mode="max").init().best == -math.inf


def test_plateau_reduces_when_bad_epochs_exceed_patience():
    # patience=2: the 3rd consecutive bad epoch (not the 2nd) triggers the reduction.
    plateau = reduce_lr_on_plateau(1.0, patience=2, factor=0.5)
    lrs = _run(plateau, [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 4.0])
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_plateau_patience_zero_doc_example():
    # torch's docstring: with patience 0, every epoch worse than the best reduces the LR.
    lrs = _run(reduce_lr_on_plateau(1.0, patience=0, factor=0.1), [1.0, 2.0, 2.0, 0.5, 0.5])
    assert lrs[:3] == [1.0, 1.0, 0.1]
    assert lrs[3] == pytest.approx(0.01, rel=1e-15)
    assert lrs[4] == lrs[3]  # 0.5 improves: no reduction
    assert lrs[5] == pytest.approx(0.001, rel=1e-15)  # a tie is not an improvement


def test_plateau_cooldown_ignores_bad_epochs():
    plateau = reduce_lr_on_plateau(1.0, patience=0, factor=0.5, cooldown=2)
    lrs = _run(plateau, [1.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    # reduce after epoch 1, then 2 cooldown epochs whose bad epochs do not count, then reduce again
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


def test_plateau_min_lr_and_eps():
    lrs = _run(reduce_lr_on_plateau(1.0, patience=0, factor=0.1, min_lr=0.05), [1.0] + [2.0] * 4)
    assert lrs == [1.0, 1.0, 0.1, 0.05, 0.05, 0.05]
    # a reduction of at most eps is skipped: 1 -> 0.5 (0.5 > 0.3) applies, 0.5 -> 0.25 does not
    lrs = _run(reduce_lr_on_plateau(1.0, patience=0, factor=0.5, eps=0.3), [1.0] + [2.0] * 3)
    assert lrs == [1.0, 1.0, 0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    "threshold_mode, metric, better",
    [
        ("rel", 0.9, False),  # needs < 1.0 * (1 - 0.2) = 0.8
        ("rel", 0.79, True),
        ("abs", 0.85, False),  # needs < 1.0 - 0.2 = 0.8
        ("abs", 0.79, True),
    ],
)
def test_plateau_threshold_modes_min(threshold_mode, metric, better):
    plateau = reduce_lr_on_plateau(1.0, threshold=0.2, threshold_mode=threshold_mode)
    state = plateau.update(plateau.init(), 1.0)
    state = plateau.update(state, metric)
    assert state.num_bad_epochs == (0 if better else 1)
    assert state.best == (metric if better else 1.0)


@pytest.mark.parametrize(
    "threshold_mode, metric, better",
    [
        ("rel", 1.1, False),  # needs > 1.0 * (1 + 0.2) = 1.2
        ("rel", 1.21, True),
        ("abs", 1.15, False),
        ("abs", 1.21, True),
    ],
)
def test_plateau_threshold_modes_max(threshold_mode, metric, better):
    plateau = reduce_lr_on_plateau(1.0, mode="max", threshold=0.2, threshold_mode=threshold_mode)
    state = plateau.update(plateau.init(), 1.0)
    state = plateau.update(state, metric)
    assert state.num_bad_epochs == (0 if better else 1)
    assert state.best == (metric if better else 1.0)


def test_plateau_nan_metric_is_a_bad_epoch():
    plateau = reduce_lr_on_plateau(1.0, patience=0, factor=0.5)
    state = plateau.update(plateau.update(plateau.init(), 1.0), float("nan"))
    assert state.lr == 0.5 and state.best == 1.0


def test_plateau_update_is_pure():
    plateau = reduce_lr_on_plateau(1.0, patience=0, factor=0.5, cooldown=1)
    s0 = plateau.init()
    s1 = plateau.update(s0, 1.0)
    s2 = plateau.update(s1, 3.0)
    assert s0 == plateau.init()  # inputs untouched
    assert s1 == PlateauState(lr=1.0, best=1.0, num_bad_epochs=0, cooldown_counter=0, epoch=1)
    assert s2 == PlateauState(lr=0.5, best=1.0, num_bad_epochs=0, cooldown_counter=1, epoch=2)
    assert plateau.update(s1, 3.0) == s2  # same inputs, same output
    # replaying from a restored state (e.g. a checkpoint) continues identically
    restored = PlateauState(*[type(v)(v) for v in s1])
    assert plateau.update(restored, 3.0) == s2


def test_plateau_accepts_array_metrics():
    plateau = reduce_lr_on_plateau(1.0)
    state = plateau.update(plateau.init(), jnp.asarray(0.5, jnp.float32))
    assert state.best == 0.5 and isinstance(state.best, float)
    state = plateau.update(state, np.float64(0.25))
    assert state.best == 0.25


def test_plateau_object_is_frozen():
    plateau = reduce_lr_on_plateau(1.0)
    with pytest.raises(AttributeError):
        plateau.patience = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mode="mean"), "mode"),
        (dict(threshold_mode="relative"), "threshold_mode"),
        (dict(factor=1.0), "factor"),
        (dict(factor=-0.1), "factor"),
        (dict(patience=-1), "patience"),
        (dict(patience=1.5), "patience"),
        (dict(threshold=-1e-4), "threshold"),
        (dict(cooldown=-1), "cooldown"),
        (dict(min_lr=-1.0), "min_lr"),
        (dict(eps=-1e-8), "eps"),
        (dict(eps=float("nan")), "eps"),
    ],
)
def test_plateau_argument_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        reduce_lr_on_plateau(0.1, **kwargs)
    with pytest.raises(ValueError, match="base_lr"):
        reduce_lr_on_plateau(-0.1)
