"""The float64 half of `jaxloss-verify --train-steps`: the trainer's step against torch's, float64.

Float64 rounding is 2**29 times finer than float32's, so no activation lands within it of a ReLU
or max-pool kink and no rounding event can upset this comparison: a difference of the training
step's computation fails it, and only that. torch is imported only when it runs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxloss import parity
from train.pytorch import step_sync
from train.pytorch.step_report import step_row

__all__ = ["FLOAT64_RULE", "FLOAT64_RULES", "compare_float64"]

FLOAT64_RULE = parity.Reference(ulps=2.0**20, max_k=2.0)
"""The float64 comparison's rule: torch float64 is its own reference (torch's error is 0), so
Flax float64 must be within 2**20 ulps (2.3e-10) of each tensor's largest value, in RMS and max.
Float64 rounding is 2**29 times finer than float32's, so no activation lands within it of a kink;
a difference of the training step's logic (a 1e-6 relative one included) fails by orders of
magnitude. The loss is the exception (`FLOAT64_RULES`): the trainer's metrics hold it in float32,
so it is compared to 8 float32 ulps."""

FLOAT64_RULES: dict[str, parity.Reference] = {
    "": FLOAT64_RULE,
    "loss": parity.Reference(ulps=8.0 * 2.0**29, max_k=2.0),
}
"""`FLOAT64_RULE` for every tensor; the loss (a float32 metric) within 8 float32 ulps."""


def compare_float64(
    state_dict: Mapping[str, np.ndarray],
    torch_model: Any,
    *,
    model: str,
    layout: str,
    num_classes: int,
    width: int,
    image_shape: tuple[int, int, int],
    optimizer: str,
    lr: float,
    adam_eps: float,
    momentum: float,
    batches: list[tuple[np.ndarray, np.ndarray]],
    train_fn: Any,
    tx: Any,
    rename: Any,
) -> tuple[Any, float]:
    """The trainer's `train_step` in float64 against torch float64: ``(report, worst)``.

    Both run free from ``state_dict`` on ``batches`` and are compared after every step as in
    `train.pytorch.verify_steps.compare_training` (the same state names), under `FLOAT64_RULES`
    with torch float64 as the reference: the verdict on the training step's logic that float32
    rounding cannot upset. ``train_fn``, ``tx``, ``rename``: the jitted `train.step.train_step`,
    the optax optimizer and the Flax-to-torch names (the float32 comparison's own).
    ``worst`` is the largest relative difference (``max |flax - torch| / max |torch|``) of any
    parameter, moment or running statistic at any step.

    Examples:
      >>> FLOAT64_RULE.describe()
      'error vs float64 <= 2 x torch float32 error + 1.04858e+06 ulp (rms 2 x, max 2 x)'
    """
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        state = step_sync.flax_state(
            state_dict, model=model, layout=layout, num_classes=num_classes, width=width,
            image_shape=image_shape, tx=tx, dtype=jnp.float64,
        )  # fmt: skip
        flax_step, _ = step_sync.flax_loop(state, train_fn, rename=rename, image_dtype=np.float64)
        torch64, _ = step_sync.torch_loop(
            copy.deepcopy(torch_model).double(), optimizer, lr, momentum=momentum, eps=adam_eps
        )
        last: dict[str, dict] = {}
        worst = [0.0]

        def flax_side(batch: tuple[np.ndarray, np.ndarray]) -> dict:
            last["flax"] = flax_step(batch)
            return last["flax"]

        def torch_side(batch: tuple[np.ndarray, np.ndarray]) -> dict:
            last["torch"] = torch64(batch)
            row = step_row(0, last["flax"], last["torch"], passed=True)
            worst[0] = max(worst[0], row.params, row.moments, row.stats)
            return last["torch"]

        report = parity.compare_steps(
            flax_side, torch_side, batches, reference_step=lambda _: last["torch"],
            tolerance=FLOAT64_RULES,
        )  # fmt: skip
    return dataclasses.replace(report, title="float64 training steps"), worst[0]
