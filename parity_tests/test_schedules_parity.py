"""train.schedules against torch.optim.lr_scheduler over random hyper-parameters and metrics.

The torch side is the usual loop: read ``param_groups[0]["lr"]`` for epoch ``e``, train
(``optimizer.step()``), then ``scheduler.step()`` (or ``scheduler.step(metric)``). The JAX side is
``schedule(e)`` / ``state.lr``.

Tolerance: **exact equality** (0 ulp). Both sides compute on the host in Python float64 with the
same operations in the same order (the schedules mirror PyTorch's recursive ``get_lr``), so any
difference is a semantic bug. ``ReduceLROnPlateau`` also compares its internal state
(``best``, ``num_bad_epochs``, ``cooldown_counter``, ``last_epoch``) after every epoch.

Hypothesis is derandomized (a fixed example set every run, no example database).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from train.schedules import cosine_annealing_lr, reduce_lr_on_plateau, step_lr

# At least 150 examples per test; more when the suite profile (conftest.py,
# JAXLOSS_HYPOTHESIS_EXAMPLES) asks for more.
SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=max(150, settings.default.max_examples),
)

base_lrs = st.floats(1e-6, 10.0, allow_nan=False, allow_infinity=False)


def _torch_optimizer(base_lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)


def _torch_epoch_lrs(make_scheduler, base_lr: float, num_epochs: int) -> list[float]:
    opt = _torch_optimizer(base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(num_epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@SETTINGS
@given(
    base_lr=base_lrs,
    step_size=st.integers(1, 12),
    gamma=st.floats(0.01, 1.5, allow_nan=False),
    num_epochs=st.integers(1, 60),
)
def test_step_lr_matches_torch(base_lr, step_size, gamma, num_epochs):
    expected = _torch_epoch_lrs(
        lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=step_size, gamma=gamma),
        base_lr,
        num_epochs,
    )
    schedule = step_lr(base_lr, step_size, gamma)
    assert [schedule(e) for e in range(num_epochs)] == expected


@SETTINGS
@given(
    base_lr=base_lrs,
    t_max=st.integers(1, 25),
    eta_min_fraction=st.one_of(st.just(0.0), st.floats(0.0, 2.0, allow_nan=False)),
    extra_periods=st.integers(0, 3),
)
def test_cosine_annealing_lr_matches_torch(base_lr, t_max, eta_min_fraction, extra_periods):
    eta_min = base_lr * eta_min_fraction  # includes eta_min > base_lr, which torch allows
    num_epochs = (1 + extra_periods) * 2 * t_max + 3  # well past t_max: the LR rises again
    expected = _torch_epoch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=t_max, eta_min=eta_min),
        base_lr,
        num_epochs,
    )
    schedule = cosine_annealing_lr(base_lr, t_max, eta_min)
    got = [schedule(e) for e in range(num_epochs)]
    assert got == expected
    # and both agree with the closed form to float tolerance (abs, relative to the LR range)
    closed = [
        eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * e / t_max)) / 2
        for e in range(num_epochs)
    ]
    np.testing.assert_allclose(got, closed, rtol=0, atol=1e-12 * max(base_lr, eta_min))


# Metric sequences with ties, plateaus, negative values and the odd NaN.
metric_values = st.one_of(
    st.integers(-3, 3).map(float),
    st.floats(-5.0, 5.0, allow_nan=False),
    st.sampled_from([1.0, 1.00005, 0.99995, 1.2, 0.8, float("nan")]),
)


@SETTINGS
@given(
    base_lr=base_lrs,
    mode=st.sampled_from(["min", "max"]),
    threshold_mode=st.sampled_from(["rel", "abs"]),
    factor=st.one_of(st.sampled_from([0.0, 0.1, 0.5]), st.floats(0.0, 0.99, allow_nan=False)),
    patience=st.integers(0, 5),
    threshold=st.one_of(st.sampled_from([0.0, 1e-4, 0.1]), st.floats(0.0, 0.5, allow_nan=False)),
    cooldown=st.integers(0, 4),
    min_lr_fraction=st.one_of(st.just(0.0), st.floats(0.0, 1.0, allow_nan=False)),
    eps=st.sampled_from([0.0, 1e-8, 1e-3, 0.05]),
    metrics=st.lists(metric_values, min_size=1, max_size=40),
)
# A reduction of exactly eps is skipped (1.0 -> 0.5 is applied, 0.5 -> 0.25 is not: 0.25 == eps).
@example(
    base_lr=1.0,
    mode="min",
    threshold_mode="rel",
    factor=0.5,
    patience=0,
    threshold=0.0,
    cooldown=0,
    min_lr_fraction=0.0,
    eps=0.25,
    metrics=[1.0, 2.0, 2.0, 2.0],
)
# torch's rel-mode quirk with negative metrics: best * (1 + threshold) lies *below* a negative best.
@example(
    base_lr=1.0,
    mode="max",
    threshold_mode="rel",
    factor=0.5,
    patience=1,
    threshold=0.1,
    cooldown=1,
    min_lr_fraction=0.0,
    eps=1e-8,
    metrics=[-1.0, -1.05, -1.05, -1.2, -1.2, -1.2],
)
# threshold 1 in rel/min mode: best * 0 with best = inf is NaN, so nothing is ever "better".
@example(
    base_lr=1.0,
    mode="min",
    threshold_mode="rel",
    factor=0.5,
    patience=1,
    threshold=1.0,
    cooldown=0,
    min_lr_fraction=0.0,
    eps=1e-8,
    metrics=[3.0, 2.0, 1.0, 0.0, -1.0],
)
# min_lr floor reached exactly, then further reductions are no-ops.
@example(
    base_lr=0.1,
    mode="min",
    threshold_mode="abs",
    factor=0.1,
    patience=0,
    threshold=0.0,
    cooldown=0,
    min_lr_fraction=0.05,
    eps=0.0,
    metrics=[1.0] * 6,
)
def test_reduce_lr_on_plateau_matches_torch(
    base_lr,
    mode,
    threshold_mode,
    factor,
    patience,
    threshold,
    cooldown,
    min_lr_fraction,
    eps,
    metrics,
):
    min_lr = base_lr * min_lr_fraction
    kwargs = dict(
        mode=mode,
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_lr=min_lr,
        eps=eps,
    )
    opt = _torch_optimizer(base_lr)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    plateau = reduce_lr_on_plateau(base_lr, **kwargs)
    state = plateau.init()
    assert state.lr == opt.param_groups[0]["lr"]
    for metric in metrics:
        opt.step()
        torch_sched.step(metric)
        new_state = plateau.update(state, metric)
        assert new_state.lr == opt.param_groups[0]["lr"]
        assert new_state.lr == torch_sched.get_last_lr()[0]
        assert new_state.best == torch_sched.best or (
            math.isnan(new_state.best) and math.isnan(torch_sched.best)
        )
        assert new_state.num_bad_epochs == torch_sched.num_bad_epochs
        assert new_state.cooldown_counter == torch_sched.cooldown_counter
        assert new_state.epoch == torch_sched.last_epoch
        state = new_state


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
def test_reduce_lr_on_plateau_long_run_reduces_like_torch(mode, threshold_mode):
    """A 200-epoch noisy plateau: several reductions, cooldowns and the min_lr floor all happen."""
    rng = np.random.default_rng(0)
    sign = 1.0 if mode == "min" else -1.0
    metrics = sign * (1.0 + 0.5 * np.exp(-np.arange(200) / 20.0)) + 0.01 * rng.normal(size=200)
    kwargs = dict(
        mode=mode,
        factor=0.5,
        patience=3,
        threshold=1e-3,
        threshold_mode=threshold_mode,
        cooldown=2,
        min_lr=1e-4,
        eps=1e-8,
    )
    opt = _torch_optimizer(0.1)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    plateau = reduce_lr_on_plateau(0.1, **kwargs)
    state = plateau.init()
    lrs, torch_lrs = [], []
    for metric in metrics.astype(np.float32):  # NumPy scalars are accepted (torch: float(metric))
        torch_lrs.append(opt.param_groups[0]["lr"])
        lrs.append(state.lr)
        opt.step()
        torch_sched.step(metric)
        state = plateau.update(state, metric)
    assert lrs == torch_lrs
    assert len(set(lrs)) >= 4  # the run really reduced several times
    assert lrs[-1] == 1e-4  # and reached min_lr
